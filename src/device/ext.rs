//! The raw binding of `csrc/torch_ext.cpp`: libtorch calls that tch 0.24 does not bind. The safe
//! API is [`super::autocast`], [`super::layout`], [`super::op_count`], [`super::op_time`],
//! [`super::fused`] and [`crate::memory::device_memory`].

use std::ffi::{c_char, c_int, c_void};

use anyhow::{anyhow, Result};
use tch::{Device, Tensor};

extern "C" {
    pub fn tchcv_autocast_get(
        device_type: c_int,
        enabled: *mut c_int,
        dtype: *mut c_int,
    ) -> *mut c_char;
    pub fn tchcv_autocast_set(device_type: c_int, enabled: c_int, dtype: c_int) -> *mut c_char;
    pub fn tchcv_autocast_enter() -> c_int;
    pub fn tchcv_autocast_exit() -> c_int;
    pub fn tchcv_cudnn_benchmark() -> c_int;
    pub fn tchcv_contiguous(
        tensor: *mut c_void,
        memory_format: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn tchcv_is_contiguous(
        tensor: *mut c_void,
        memory_format: c_int,
        out: *mut c_int,
    ) -> *mut c_char;
    pub fn tchcv_device_memory(
        device_type: c_int,
        index: c_int,
        allocated: *mut i64,
        peak_allocated: *mut i64,
        reserved: *mut i64,
        peak_reserved: *mut i64,
    ) -> *mut c_char;
    pub fn tchcv_device_memory_reset_peak(device_type: c_int, index: c_int) -> *mut c_char;
    pub fn tchcv_read_back_i64(tensor: *mut c_void, out: *mut i64, len: i64) -> *mut c_char;
    pub fn tchcv_op_count_start() -> *mut c_char;
    pub fn tchcv_op_count_stop(report: *mut *mut c_char) -> *mut c_char;
    pub fn tchcv_op_time_start() -> *mut c_char;
    pub fn tchcv_op_time_stop(report: *mut *mut c_char) -> *mut c_char;
    pub fn tchcv_grad_set_none(tensor: *mut c_void) -> *mut c_char;
    pub fn tchcv_fused_sgd(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        bufs: *mut *mut c_void,
        n: i64,
        weight_decay: f64,
        momentum: f64,
        lr: f64,
        nesterov: c_int,
        is_first_step: c_int,
    ) -> *mut c_char;
    pub fn tchcv_fused_adam(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: c_int,
        step: i64,
    ) -> *mut c_char;
}

/// `Ok` for a null message, else the message as an error (the malloc'd C string is freed).
pub fn check(message: *mut c_char) -> Result<()> {
    // SAFETY: torch_ext.cpp allocates its messages with malloc; each is freed once, here.
    crate::error::shim_result(message, |m| unsafe { libc::free(m.cast()) })
}

/// c10's `DeviceType` of `device` and its index: CPU = 0, CUDA = 1.
pub fn device_type(device: Device) -> Result<(c_int, c_int)> {
    match device {
        Device::Cpu => Ok((0, -1)),
        Device::Cuda(i) => Ok((1, i as c_int)),
        other => Err(anyhow!(
            "{other:?}: only CPU and CUDA devices are supported here"
        )),
    }
}

/// The `at::Tensor*` behind a tch tensor, for the extension's tensor arguments.
pub fn raw(tensor: &Tensor) -> *mut c_void {
    tensor.as_ptr() as *mut c_void
}

/// The text of a malloc'd C string from the extension, which this frees ("" for null).
pub fn take_string(text: *mut c_char) -> String {
    // SAFETY: torch_ext.cpp allocates its strings with malloc; each is freed once, here.
    crate::error::take_c_string(text, |t| unsafe { libc::free(t.cast()) })
}
