//! Counting the ATen operators a region dispatches: a device-independent measure of its host-side
//! dispatch work (on a GPU, most operators launch a kernel) and of the times it would make the
//! host wait for the device.
//!
//! The count comes from libtorch's RecordFunction hook, the one `torch.profiler` records from,
//! so a PyTorch region profiled in Python (`bench/op_count.py`) gives the same list of calls:
//! each operator call (nested ones included) with the operators it called directly. One
//! definition, here, turns such a list into the figures:
//!
//! - [`OpCounts::ops`]: every ATen operator call, views and allocations included (dispatch
//!   work on the host; on CUDA, the computing ones launch kernels);
//! - [`OpCounts::host_syncs`]: calls of operators that make the host wait for a CUDA device
//!   (values read back: `.item()`, `int64_value`, [`super::read_back`]; an output size that
//!   depends on the data: `nonzero`, `masked_select`, `unique`).
//!
//! The operator sequence does not depend on the device, so counted on the CPU these are what
//! the same code does on CUDA (where a few operators, like CUDA's `masked_select`, call others).

use std::ffi::c_char;

use anyhow::{anyhow, Result};

use super::ext;

/// One operator call and the operators it called directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpCall {
    pub name: String,
    pub children: Vec<String>,
}

/// The operator calls of a region in the order they started (ATen operators, and also the
/// autograd engine's `autograd::engine::evaluate_function: ...` scopes, which the figures leave
/// out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub calls: Vec<OpCall>,
}

/// Operators that wait for the device on CUDA: a scalar read back, or an output size that
/// depends on the data.
const HOST_SYNC: &[&str] = &[
    "tchcv::read_back",
    "aten::_local_scalar_dense",
    "aten::masked_select",
    "aten::nonzero",
    "aten::_unique2",
    "aten::unique_consecutive",
    "aten::unique_dim",
];

fn is_aten(name: &str) -> bool {
    name.starts_with("aten::")
}

impl OpCounts {
    /// Parse `torch_ext`'s report: one line per call, the name then its children's names,
    /// tab-separated.
    pub fn from_report(report: &str) -> Self {
        let calls = report
            .lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let mut names = line.split('\t').map(str::to_string);
                OpCall {
                    name: names.next().unwrap_or_default(),
                    children: names.collect(),
                }
            })
            .collect();
        Self { calls }
    }

    /// From the Python side's JSON, `[[name, [child, ...]], ...]` (`bench/op_count.py`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self> {
        let bad = || anyhow!("op_calls: expected a list of [name, [child names]]");
        let list = value.as_array().ok_or_else(bad)?;
        let calls = list
            .iter()
            .map(|call| {
                let pair = call.as_array().filter(|p| p.len() == 2).ok_or_else(bad)?;
                let name = pair[0].as_str().ok_or_else(bad)?.to_string();
                let children = pair[1]
                    .as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|c| c.as_str().map(str::to_string).ok_or_else(bad))
                    .collect::<Result<Vec<_>>>()?;
                Ok(OpCall { name, children })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { calls })
    }

    /// Every ATen operator call, nested ones included.
    pub fn ops(&self) -> usize {
        self.calls.iter().filter(|c| is_aten(&c.name)).count()
    }

    /// Calls that would make the host wait for a CUDA device.
    pub fn host_syncs(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| HOST_SYNC.contains(&c.name.as_str()))
            .count()
    }

    /// Calls of operator `name`.
    pub fn calls_of(&self, name: &str) -> usize {
        self.calls.iter().filter(|c| c.name == name).count()
    }

    /// `{"ops", "host_syncs"}` for reports.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "ops": self.ops(),
            "host_syncs": self.host_syncs(),
        })
    }
}

/// Run `f` and count the operators it dispatches, on every thread (the autograd engine's
/// included). One count at a time in a process: a nested or concurrent count is an error.
pub fn count_ops<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, OpCounts)> {
    // SAFETY: plain C call; errors come back as a message.
    ext::check(unsafe { ext::tchcv_op_count_start() })?;
    let value = f();
    let mut report: *mut c_char = std::ptr::null_mut();
    // SAFETY: `report` receives a malloc'd string on success, taken (and freed) below.
    ext::check(unsafe { ext::tchcv_op_count_stop(&mut report) })?;
    let counts = OpCounts::from_report(&ext::take_string(report));
    Ok((value?, counts))
}
