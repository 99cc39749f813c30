//! Automatic mixed precision: libtorch's autocast for a region of code, on CPU or CUDA, in
//! float16 or bfloat16. This is PyTorch's `with torch.autocast(device_type, dtype):`; tch's own
//! `tch::autocast` covers only CUDA with libtorch's default dtype (float16).
//!
//! Inside the region the ops on autocast's lists run in the lower precision (convolutions,
//! matmuls) or in float32 (softmax, losses), as in PyTorch; parameters stay float32 and their
//! gradients come back float32. bfloat16 needs no loss scaling; float16 training does (a
//! gradient scaler, not provided here).

use std::marker::PhantomData;
use std::str::FromStr;

use anyhow::Result;
use tch::Device;

use super::ext;

/// The lower precision of an autocast region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutocastDtype {
    /// IEEE half precision (`torch.float16`).
    F16,
    /// bfloat16 (`torch.bfloat16`): float32's range with 8 bits of mantissa.
    Bf16,
}

impl AutocastDtype {
    /// c10's `ScalarType` value.
    fn scalar_type(self) -> i32 {
        match self {
            AutocastDtype::F16 => 5,
            AutocastDtype::Bf16 => 15,
        }
    }

    fn from_scalar_type(code: i32) -> Option<Self> {
        match code {
            5 => Some(AutocastDtype::F16),
            15 => Some(AutocastDtype::Bf16),
            _ => None,
        }
    }

    /// `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            AutocastDtype::F16 => "f16",
            AutocastDtype::Bf16 => "bf16",
        }
    }
}

impl FromStr for AutocastDtype {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bf16" | "bfloat16" => Ok(AutocastDtype::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(AutocastDtype::F16),
            _ => crate::bail_input!("autocast dtype {s:?}: expected bf16 or f16"),
        }
    }
}

impl std::fmt::Display for AutocastDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The autocast state of a device type: whether it is on, and its dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutocastState {
    pub enabled: bool,
    /// `None` when libtorch's autocast dtype is neither float16 nor bfloat16.
    pub dtype: Option<AutocastDtype>,
}

/// The raw state: (device type, enabled, scalar type).
fn raw_state(device: Device) -> Result<(i32, bool, i32)> {
    let (device_type, _) = ext::device_type(device)?;
    let (mut enabled, mut scalar_type) = (0, -1);
    // SAFETY: plain out-pointers to locals.
    ext::check(unsafe { ext::tchcv_autocast_get(device_type, &mut enabled, &mut scalar_type) })?;
    Ok((device_type, enabled != 0, scalar_type))
}

/// `scalar_type < 0` leaves the dtype as it is.
fn set_raw_state(device_type: i32, enabled: bool, scalar_type: i32) -> Result<()> {
    // SAFETY: integer arguments only; the extension checks them.
    ext::check(unsafe { ext::tchcv_autocast_set(device_type, enabled as i32, scalar_type) })
}

/// The autocast state of `device`'s type on this thread.
pub fn autocast_state(device: Device) -> Result<AutocastState> {
    let (_, enabled, scalar_type) = raw_state(device)?;
    Ok(AutocastState {
        enabled,
        dtype: AutocastDtype::from_scalar_type(scalar_type),
    })
}

/// An autocast region, open while the guard lives (autocast state is per thread, so the guard
/// is neither `Send` nor `Sync`). Dropping it restores the previous state, as leaving a Python
/// `with torch.autocast(...)` block does.
#[must_use = "autocast is on only while the guard lives"]
pub struct AutocastGuard {
    device_type: i32,
    previous_enabled: bool,
    previous_scalar_type: i32,
    _not_send: PhantomData<*const ()>,
}

impl AutocastGuard {
    /// Turn autocast on for `device`'s type with `dtype`, or off with `None` (as
    /// `torch.autocast(..., enabled=False)` does inside an autocast region).
    pub fn enter(device: Device, dtype: Option<AutocastDtype>) -> Result<Self> {
        let (device_type, previous_enabled, previous_scalar_type) = raw_state(device)?;
        let scalar_type = dtype.map_or(-1, AutocastDtype::scalar_type);
        set_raw_state(device_type, dtype.is_some(), scalar_type)?;
        // SAFETY: no arguments; libtorch's thread-local nesting count.
        unsafe { ext::tchcv_autocast_enter() };
        Ok(Self {
            device_type,
            previous_enabled,
            previous_scalar_type,
            _not_send: PhantomData,
        })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // SAFETY: pairs with the enter in `AutocastGuard::enter`, on this thread (the guard is
        // not Send); leaving the outermost region clears libtorch's cast cache.
        unsafe { ext::tchcv_autocast_exit() };
        // The state was read from libtorch, so setting it back cannot be refused.
        let _ = set_raw_state(
            self.device_type,
            self.previous_enabled,
            self.previous_scalar_type,
        );
    }
}

/// Run `f` with autocast in `dtype` on `device`; `None` runs `f` as it is.
pub fn autocast<T>(
    device: Device,
    dtype: Option<AutocastDtype>,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match dtype {
        None => f(),
        Some(_) => {
            let _guard = AutocastGuard::enter(device, dtype)?;
            f()
        }
    }
}
