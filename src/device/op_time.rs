//! Where a region's time goes, by operator: libtorch's RecordFunction hook (the one
//! `torch.profiler` and [`super::op_count`] use) times each thread's outermost operator calls,
//! so a forward pass splits into `aten::conv2d`, `aten::batch_norm`, `aten::relu`, ... (an
//! operator's nested calls count toward it), and a backward pass into the autograd engine's
//! `autograd::engine::evaluate_function: <Node>` scopes (`ConvolutionBackward0`,
//! `NativeBatchNormBackward0`, ...): time by layer type. The hook costs about a microsecond
//! per operator call; time the region without it for its total.

use std::ffi::c_char;

use anyhow::Result;

use super::ext;

/// One operator's outermost calls in a timed region.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    pub name: String,
    pub calls: u64,
    pub seconds: f64,
}

/// The operators of a timed region, the most time first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpTimes {
    pub ops: Vec<OpTime>,
}

impl OpTimes {
    /// Parse `torch_ext`'s report: one line per operator, `name\tcalls\tnanoseconds`.
    pub fn from_report(report: &str) -> Self {
        let mut ops: Vec<OpTime> = report
            .lines()
            .filter_map(|line| {
                let mut fields = line.rsplitn(3, '\t');
                let ns: f64 = fields.next()?.parse().ok()?;
                let calls: u64 = fields.next()?.parse().ok()?;
                let name = fields.next()?.to_string();
                Some(OpTime {
                    name,
                    calls,
                    seconds: ns * 1e-9,
                })
            })
            .collect();
        ops.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Self { ops }
    }

    /// Seconds over every operator.
    pub fn total_seconds(&self) -> f64 {
        self.ops.iter().map(|o| o.seconds).sum()
    }

    /// Add `other`'s calls and seconds to this one's, operator by operator.
    pub fn merge(&mut self, other: &OpTimes) {
        for op in &other.ops {
            match self.ops.iter_mut().find(|o| o.name == op.name) {
                Some(mine) => {
                    mine.calls += op.calls;
                    mine.seconds += op.seconds;
                }
                None => self.ops.push(op.clone()),
            }
        }
        self.ops.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    }
}

/// A layer type's short name from an operator or autograd node name:
/// `autograd::engine::evaluate_function: ConvolutionBackward0` -> `ConvolutionBackward0`,
/// `aten::conv2d` -> `conv2d`.
pub fn short_name(name: &str) -> &str {
    let name = name.rsplit(": ").next().unwrap_or(name);
    name.strip_prefix("aten::").unwrap_or(name)
}

/// Run `f` and time its operators, on every thread. One timing at a time in a process: a
/// nested or concurrent one is an error.
pub fn time_ops<T>(f: impl FnOnce() -> Result<T>) -> Result<(T, OpTimes)> {
    // SAFETY: plain C call; errors come back as a message.
    ext::check(unsafe { ext::tchcv_op_time_start() })?;
    let value = f();
    let mut report: *mut c_char = std::ptr::null_mut();
    // SAFETY: `report` receives a malloc'd string on success, taken (and freed) below.
    ext::check(unsafe { ext::tchcv_op_time_stop(&mut report) })?;
    let times = OpTimes::from_report(&ext::take_string(report));
    Ok((value?, times))
}

/// Held by the unit tests that time operators (one timing at a time in a process; cargo runs
/// tests on parallel threads).
#[cfg(test)]
pub(crate) static TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_parse_and_merge() {
        let a = OpTimes::from_report("aten::conv2d\t3\t3000000\nautograd::engine::evaluate_function: ReluBackward0\t2\t1000000\n");
        assert_eq!(a.ops[0].name, "aten::conv2d");
        assert_eq!(a.ops[0].calls, 3);
        assert!((a.total_seconds() - 0.004).abs() < 1e-12);
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.ops[0].calls, 6);
        assert_eq!(short_name(&b.ops[1].name), "ReluBackward0");
        assert_eq!(short_name("aten::conv2d"), "conv2d");
    }

    #[test]
    fn a_region_is_timed_by_operator() {
        let _one_at_a_time = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let x = tch::Tensor::ones([64, 64], (tch::Kind::Float, tch::Device::Cpu));
        let ((), times) = time_ops(|| {
            let _ = x.matmul(&x).relu();
            Ok(())
        })
        .unwrap();
        let names: Vec<&str> = times.ops.iter().map(|o| o.name.as_str()).collect();
        assert!(names.contains(&"aten::matmul"), "{names:?}");
        assert!(names.contains(&"aten::relu"), "{names:?}");
        // mm runs inside matmul: counted there, not on its own.
        assert!(!names.contains(&"aten::mm"), "{names:?}");
        assert!(time_ops(|| time_ops(|| Ok(()))).is_err());
    }
}
