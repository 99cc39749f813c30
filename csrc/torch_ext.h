// torch_ext: libtorch calls that tch 0.24 does not bind, behind a C ABI: autocast for a chosen
// device type and dtype (tch's `autocast` is CUDA-only with libtorch's default dtype), tensor
// memory formats (channels-last), and the device caching allocator's memory statistics.
//
// Conventions as in c10d_shim.h: a function that can fail returns NULL on success or an error
// message allocated with malloc (the caller frees it with free()); no C++ exception crosses
// this boundary. Tensors are `at::Tensor*` (tch's `C_tensor`).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void* tchcv_tensor;

// c10::DeviceType values: 0 = CPU, 1 = CUDA. Dtypes are c10::ScalarType values (5 = Half,
// 15 = BFloat16).

// The autocast state of `device_type` on this thread: *enabled (0/1) and its *scalar_type.
char* tchcv_autocast_get(int device_type, int* enabled, int* scalar_type);
// Turn autocast for `device_type` on or off; scalar_type >= 0 also sets its dtype.
char* tchcv_autocast_set(int device_type, int enabled, int scalar_type);
// Python's autocast __enter__/__exit__ bookkeeping: the nesting count after the change; leaving
// the outermost region (count 0) clears the cast cache.
int tchcv_autocast_enter(void);
int tchcv_autocast_exit(void);

// Memory formats: 0 = contiguous (NCHW), 1 = channels-last (NHWC strides).
// *out = tensor.contiguous(format), a new tensor (tch frees it).
char* tchcv_contiguous(tchcv_tensor tensor, int memory_format, tchcv_tensor* out);
// tensor.is_contiguous(format).
char* tchcv_is_contiguous(tchcv_tensor tensor, int memory_format, int* out);

// The caching allocator of (device_type, index): bytes allocated now and at peak, bytes
// reserved now and at peak (all pools).
char* tchcv_device_memory(int device_type, int index, int64_t* allocated, int64_t* peak_allocated,
                          int64_t* reserved, int64_t* peak_reserved);
// Start the peaks afresh (torch.cuda.reset_peak_memory_stats).
char* tchcv_device_memory_reset_peak(int device_type, int index);

// Copy the `len` elements of an integer tensor on any device to `out` as int64, in one
// device-to-host transfer (one wait for the device), under the named scope "tchcv::read_back".
char* tchcv_read_back_i64(tchcv_tensor tensor, int64_t* out, int64_t len);

// Whether cuDNN's autotuner is on (torch.backends.cudnn.benchmark): 1 or 0.
int tchcv_cudnn_benchmark(void);

// Operator counting through a global RecordFunction callback (every thread, the autograd
// engine's included). Only one count runs at a time.
// Start counting; fails if a count is already running.
char* tchcv_op_count_start(void);
// Stop counting; *report (malloc'd, freed by the caller) gets one line per operator call, in
// the order they started: its name, then the names of the operators it called directly,
// tab-separated.
char* tchcv_op_count_stop(char** report);

// Operator timing through a global RecordFunction callback: per operator name, the calls and
// wall nanoseconds of the outermost operator calls of each thread (an operator's nested calls
// count toward it; the autograd engine's `autograd::engine::evaluate_function: <Node>` scopes
// are outermost in a backward pass). Only one timing runs at a time.
char* tchcv_op_time_start(void);
// Stop timing; *report (malloc'd, freed by the caller) gets one line per operator name:
// name, calls, nanoseconds, tab-separated.
char* tchcv_op_time_stop(char** report);

// Undefine a tensor's gradient (`tensor.grad = None`, torch's zero_grad(set_to_none=True)):
// the next backward pass then stores its gradient instead of adding it to zeros.
char* tchcv_grad_set_none(tchcv_tensor tensor);

// One update of `n` float parameters of one device with libtorch's fused SGD kernel
// (at::_fused_sgd_, torch.optim.SGD(fused=True); dampening 0): momentum buffers `bufs` (unused
// when momentum is 0) are set to the gradients on the first step, else updated in place.
char* tchcv_fused_sgd(tchcv_tensor* params, tchcv_tensor* grads, tchcv_tensor* bufs, int64_t n,
                      double weight_decay, double momentum, double lr, int nesterov,
                      int is_first_step);
// One Adam update (at::_fused_adam_, or at::_fused_adamw_ when `decoupled`), moments updated in
// place; `step` counts the updates including this one (1 on the first).
char* tchcv_fused_adam(tchcv_tensor* params, tchcv_tensor* grads, tchcv_tensor* exp_avgs,
                       tchcv_tensor* exp_avg_sqs, int64_t n, double lr, double beta1, double beta2,
                       double weight_decay, double eps, int decoupled, int64_t step);

#ifdef __cplusplus
}
#endif
