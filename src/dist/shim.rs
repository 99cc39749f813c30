//! Safe handles over `csrc/c10d_shim.cpp` (libtorch's c10d behind a C ABI): a key-value
//! [`Store`] (TCPStore, PrefixStore) and a [`Comm`]unicator (ProcessGroupGloo or
//! ProcessGroupNCCL).
//!
//! Without `cfg(tchcv_dist)` (the shim was not compiled: no Gloo headers, or `TCHCV_NO_DIST`)
//! the same API exists and every call fails with the reason, so nothing above this file needs a
//! `cfg`.

use std::ffi::{c_char, c_int, c_void, CString};
use std::ptr::NonNull;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tch::Tensor;

/// Opaque C++ objects.
#[allow(non_camel_case_types)]
mod raw {
    pub enum tchcv_store {}
    pub enum tchcv_comm {}
}
use raw::{tchcv_comm, tchcv_store};

/// The shim's functions, declared once: as the real `extern "C"` functions with
/// `cfg(tchcv_dist)`, else as stand-ins that report that distributed support is not compiled in.
macro_rules! shim_api {
    ($(fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;)*) => {
        #[cfg(tchcv_dist)]
        mod ffi {
            use super::*;
            extern "C" {
                $(pub fn $name($($arg: $ty),*) -> $ret;)*
            }
        }
        #[cfg(not(tchcv_dist))]
        mod ffi {
            use super::*;
            $(
                #[allow(unused_variables, clippy::missing_safety_doc)]
                pub unsafe fn $name($($arg: $ty),*) -> $ret {
                    Unavailable::unavailable()
                }
            )*
        }
    };
}

shim_api! {
    fn tchcv_c10d_backends() -> c_int;
    fn tchcv_c10d_free_error(message: *mut c_char) -> ();
    fn tchcv_c10d_free_bytes(bytes: *mut u8) -> ();
    fn tchcv_store_tcp(host: *const c_char, port: u16, is_server: c_int, world_size: i64,
        wait_workers: c_int, timeout_ms: i64, out: *mut *mut tchcv_store) -> *mut c_char;
    fn tchcv_store_prefixed(store: *mut tchcv_store, prefix: *const c_char,
        out: *mut *mut tchcv_store) -> *mut c_char;
    fn tchcv_store_clone(store: *mut tchcv_store, out: *mut *mut tchcv_store) -> *mut c_char;
    fn tchcv_store_free(store: *mut tchcv_store) -> ();
    fn tchcv_store_set(store: *mut tchcv_store, key: *const c_char, value: *const u8,
        len: usize) -> *mut c_char;
    fn tchcv_store_get(store: *mut tchcv_store, key: *const c_char, value: *mut *mut u8,
        len: *mut usize) -> *mut c_char;
    fn tchcv_store_add(store: *mut tchcv_store, key: *const c_char, delta: i64,
        out: *mut i64) -> *mut c_char;
    fn tchcv_store_check(store: *mut tchcv_store, keys: *const *const c_char, n: usize,
        exists: *mut c_int) -> *mut c_char;
    fn tchcv_comm_gloo(store: *mut tchcv_store, rank: c_int, size: c_int, timeout_ms: i64,
        out: *mut *mut tchcv_comm) -> *mut c_char;
    fn tchcv_comm_nccl(store: *mut tchcv_store, rank: c_int, size: c_int, timeout_ms: i64,
        device_index: c_int, out: *mut *mut tchcv_comm) -> *mut c_char;
    fn tchcv_comm_free(comm: *mut tchcv_comm) -> ();
    fn tchcv_comm_allreduce_sum(comm: *mut tchcv_comm, tensors: *const *mut c_void, n: usize,
        timeout_ms: i64) -> *mut c_char;
    fn tchcv_comm_broadcast(comm: *mut tchcv_comm, tensors: *const *mut c_void, n: usize,
        root: c_int, timeout_ms: i64) -> *mut c_char;
    fn tchcv_comm_barrier(comm: *mut tchcv_comm, device_index: c_int, timeout_ms: i64)
        -> *mut c_char;
    fn tchcv_set_grad(param: *mut c_void, grad: *mut c_void) -> *mut c_char;
}

/// What a stand-in returns when the shim is not compiled in.
#[cfg_attr(tchcv_dist, allow(dead_code))]
trait Unavailable {
    fn unavailable() -> Self;
}

impl Unavailable for *mut c_char {
    /// A static message; the stand-in `tchcv_c10d_free_error` does not free it.
    fn unavailable() -> Self {
        c"tchcv was built without distributed support (see `tchcv info`)"
            .as_ptr()
            .cast_mut()
    }
}

impl Unavailable for c_int {
    fn unavailable() -> Self {
        0
    }
}

impl Unavailable for () {
    fn unavailable() -> Self {}
}

/// Whether the shim is compiled in, with its backends: `(gloo, nccl)`.
pub(crate) fn compiled_backends() -> (bool, bool) {
    // SAFETY: no arguments; returns a bit set.
    let bits = unsafe { ffi::tchcv_c10d_backends() };
    (bits & 1 != 0, bits & 2 != 0)
}

/// `Ok` for a null message, else the message as an error (the C string is freed).
fn check(message: *mut c_char) -> Result<()> {
    // SAFETY: freed once, by the allocator that made it.
    crate::error::shim_result(message, |m| unsafe { ffi::tchcv_c10d_free_error(m) })
}

fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| crate::bad_input(format!("{what} {s:?} contains a NUL byte")))
}

fn millis(d: Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// A c10d key-value store handle (TCPStore, possibly seen through a PrefixStore).
pub(crate) struct Store {
    raw: NonNull<tchcv_store>,
}

// SAFETY: c10d stores serialise their own operations (TCPStore holds a lock per request); the
// handle is only an owning pointer.
unsafe impl Send for Store {}

/// The object a shim constructor made through its out-pointer, or its error.
fn created<R>(what: &str, make: impl FnOnce(*mut *mut R) -> *mut c_char) -> Result<NonNull<R>> {
    let mut out = std::ptr::null_mut();
    check(make(&mut out))?;
    NonNull::new(out).ok_or_else(|| anyhow!("c10d returned no {what}"))
}

fn make_store(make: impl FnOnce(*mut *mut tchcv_store) -> *mut c_char) -> Result<Store> {
    created("store", make).map(|raw| Store { raw })
}

impl Store {
    /// A TCPStore client of `host:port`. With `is_server` this process also hosts the store
    /// and, with `wait_workers`, waits for `world_size` clients (itself included).
    pub fn tcp(
        host: &str,
        port: u16,
        is_server: bool,
        world_size: usize,
        wait_workers: bool,
        timeout: Duration,
    ) -> Result<Self> {
        let host_c = c_string("master address", host)?;
        // SAFETY: valid C string, out-pointer to a local.
        make_store(|out| unsafe {
            ffi::tchcv_store_tcp(
                host_c.as_ptr(),
                port,
                is_server as c_int,
                world_size as i64,
                wait_workers as c_int,
                millis(timeout),
                out,
            )
        })
    }

    /// This store with every key under `prefix`.
    pub fn prefixed(&self, prefix: &str) -> Result<Self> {
        let prefix_c = c_string("store prefix", prefix)?;
        // SAFETY: live handle, valid C string.
        make_store(|out| unsafe {
            ffi::tchcv_store_prefixed(self.raw.as_ptr(), prefix_c.as_ptr(), out)
        })
    }

    /// A second connection to the same store (for another thread).
    pub fn try_clone(&self) -> Result<Self> {
        // SAFETY: live handle.
        make_store(|out| unsafe { ffi::tchcv_store_clone(self.raw.as_ptr(), out) })
    }

    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let key_c = c_string("store key", key)?;
        // SAFETY: live handle; value points to len bytes.
        check(unsafe {
            ffi::tchcv_store_set(
                self.raw.as_ptr(),
                key_c.as_ptr(),
                value.as_ptr(),
                value.len(),
            )
        })
        .with_context(|| format!("store: setting {key}"))
    }

    /// The value of `key`, waiting up to the store's timeout for it to appear.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let key_c = c_string("store key", key)?;
        let mut bytes = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: live handle; out-pointers to locals.
        check(unsafe {
            ffi::tchcv_store_get(self.raw.as_ptr(), key_c.as_ptr(), &mut bytes, &mut len)
        })
        .with_context(|| format!("store: getting {key}"))?;
        if bytes.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: the shim returned `len` bytes at `bytes`, which we own and free once.
        let value = unsafe { std::slice::from_raw_parts(bytes, len) }.to_vec();
        unsafe { ffi::tchcv_c10d_free_bytes(bytes) };
        Ok(value)
    }

    /// Add `delta` to the integer at `key` (0 when absent) and return the new value; never
    /// waits, so `add(key, 0)` reads a counter.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let key_c = c_string("store key", key)?;
        let mut value = 0i64;
        // SAFETY: live handle; out-pointer to a local.
        check(unsafe {
            ffi::tchcv_store_add(self.raw.as_ptr(), key_c.as_ptr(), delta, &mut value)
        })
        .with_context(|| format!("store: adding to {key}"))?;
        Ok(value)
    }

    /// Whether `key` exists (never waits).
    pub fn has(&self, key: &str) -> Result<bool> {
        let key_c = c_string("store key", key)?;
        let keys = [key_c.as_ptr()];
        let mut exists: c_int = 0;
        // SAFETY: live handle; one valid C string; out-pointer to a local.
        check(unsafe { ffi::tchcv_store_check(self.raw.as_ptr(), keys.as_ptr(), 1, &mut exists) })
            .with_context(|| format!("store: checking {key}"))?;
        Ok(exists != 0)
    }

    /// The value of `key` when it exists, without waiting.
    pub fn get_now(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if self.has(key)? {
            self.get(key).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::tchcv_store_free(self.raw.as_ptr()) }
    }
}

/// A c10d backend (ProcessGroupGloo or ProcessGroupNCCL) of one process group.
pub(crate) struct Comm {
    raw: NonNull<tchcv_comm>,
}

// SAFETY: c10d backends are used from one thread at a time here (the group owning this handle
// is not Sync); the handle is only an owning pointer.
unsafe impl Send for Comm {}

fn make_comm(make: impl FnOnce(*mut *mut tchcv_comm) -> *mut c_char) -> Result<Comm> {
    created("process group", make).map(|raw| Comm { raw })
}

impl Comm {
    /// ProcessGroupGloo over `store` (network devices from `GLOO_SOCKET_IFNAME`, else the
    /// host's default).
    pub fn gloo(store: &Store, rank: usize, size: usize, timeout: Duration) -> Result<Self> {
        // SAFETY: live store handle; out-pointer to a local.
        make_comm(|out| unsafe {
            ffi::tchcv_comm_gloo(
                store.raw.as_ptr(),
                rank as c_int,
                size as c_int,
                millis(timeout),
                out,
            )
        })
    }

    /// ProcessGroupNCCL over `store`, on CUDA device `device_index`.
    pub fn nccl(
        store: &Store,
        rank: usize,
        size: usize,
        timeout: Duration,
        device_index: usize,
    ) -> Result<Self> {
        // SAFETY: live store handle; out-pointer to a local.
        make_comm(|out| unsafe {
            ffi::tchcv_comm_nccl(
                store.raw.as_ptr(),
                rank as c_int,
                size as c_int,
                millis(timeout),
                device_index as c_int,
                out,
            )
        })
    }

    /// Run a shim collective over `tensors` (passed as `at::Tensor*`, borrowed for the call).
    fn over_tensors(
        &self,
        tensors: &[Tensor],
        call: impl FnOnce(*mut tchcv_comm, *const *mut c_void, usize) -> *mut c_char,
    ) -> Result<()> {
        let ptrs: Vec<*mut c_void> = tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        check(call(self.raw.as_ptr(), ptrs.as_ptr(), ptrs.len()))
    }

    /// Sum each tensor across ranks, in place. Tensors: dense, contiguous, on the backend's
    /// device kind. All are issued before any is waited on.
    pub fn all_reduce_sum(&self, tensors: &[Tensor], timeout: Duration) -> Result<()> {
        // SAFETY: live handle; `n` tensor pointers, live for the call.
        self.over_tensors(tensors, |comm, ptrs, n| unsafe {
            ffi::tchcv_comm_allreduce_sum(comm, ptrs, n, millis(timeout))
        })
    }

    /// Copy each tensor of rank `root` into the same tensor of every other rank.
    pub fn broadcast(&self, tensors: &[Tensor], root: usize, timeout: Duration) -> Result<()> {
        // SAFETY: as in all_reduce_sum.
        self.over_tensors(tensors, |comm, ptrs, n| unsafe {
            ffi::tchcv_comm_broadcast(comm, ptrs, n, root as c_int, millis(timeout))
        })
    }

    /// Wait until every rank reaches the barrier (`device_index`: the CUDA device for NCCL).
    pub fn barrier(&self, device_index: Option<usize>, timeout: Duration) -> Result<()> {
        let device = device_index.map_or(-1, |i| i as c_int);
        // SAFETY: live handle.
        check(unsafe { ffi::tchcv_comm_barrier(self.raw.as_ptr(), device, millis(timeout)) })
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once (shuts the backend down first).
        unsafe { ffi::tchcv_comm_free(self.raw.as_ptr()) }
    }
}

/// `param.grad = grad` (for a parameter whose gradient is still undefined).
pub(crate) fn set_grad(param: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: both are live `at::Tensor*`; the shim copies the handle of `grad`.
    check(unsafe {
        ffi::tchcv_set_grad(param.as_ptr() as *mut c_void, grad.as_ptr() as *mut c_void)
    })
}
