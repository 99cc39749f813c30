//! Learning-rate schedules: linear warm-up, then constant, steps or cosine.

use std::str::FromStr;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bail_input;

/// The decay after warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Decay {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` at each milestone iteration (`torch.optim.lr_scheduler.MultiStepLR`).
    Step { milestones: Vec<u64>, gamma: f64 },
    /// Half a cosine from the base rate to `min_factor * base` at the last iteration.
    Cosine { min_factor: f64 },
}

impl FromStr for Decay {
    type Err = anyhow::Error;

    /// `constant`, `cosine`, `cosine:0.01`, `step:8000,11000` or `step:8000,11000:0.1`.
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or_default();
        let (arg, extra) = (parts.next(), parts.next());
        let number = |x: &str, what: &str| -> Result<f64> {
            x.parse::<f64>().map_err(|_| {
                crate::bad_input(format!("--lr-schedule {s:?}: {what} {x:?} is not a number"))
            })
        };
        match kind {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine { min_factor: arg.map(|x| number(x, "min factor")).transpose()?.unwrap_or(0.0) }),
            "step" => {
                let Some(list) = arg.filter(|a| !a.is_empty()) else {
                    bail_input!("--lr-schedule {s:?}: expected step:ITER[,ITER...][:GAMMA]");
                };
                let milestones = list
                    .split(',')
                    .map(|m| m.trim().parse::<u64>().map_err(|_| crate::bad_input(format!("--lr-schedule {s:?}: milestone {m:?} is not an iteration"))))
                    .collect::<Result<Vec<_>>>()?;
                let gamma = extra.map(|g| number(g, "gamma")).transpose()?.unwrap_or(0.1);
                Ok(Self::Step { milestones, gamma })
            }
            _ => bail_input!("--lr-schedule {s:?}: expected constant, cosine[:MIN_FACTOR] or step:ITER,...[:GAMMA]"),
        }
    }
}

/// A learning rate for every iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub base_lr: f64,
    /// Iterations of linear warm-up from `warmup_factor * base_lr`.
    pub warmup_iters: u64,
    pub warmup_factor: f64,
    pub decay: Decay,
    /// The run's last iteration (cosine needs it).
    pub total_iters: u64,
}

impl Schedule {
    /// The learning rate at 0-based iteration `iter`.
    pub fn lr(&self, iter: u64) -> f64 {
        let decayed = match &self.decay {
            Decay::Constant => self.base_lr,
            Decay::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| iter >= m).count() as i32;
                self.base_lr * gamma.powi(passed)
            }
            Decay::Cosine { min_factor } => {
                let progress = iter as f64 / self.total_iters.max(1) as f64;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
                self.base_lr * (min_factor + (1.0 - min_factor) * cos)
            }
        };
        if iter < self.warmup_iters {
            let alpha = iter as f64 / self.warmup_iters as f64;
            decayed * (self.warmup_factor * (1.0 - alpha) + alpha)
        } else {
            decayed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(decay: Decay) -> Schedule {
        Schedule {
            base_lr: 0.1,
            warmup_iters: 10,
            warmup_factor: 0.1,
            decay,
            total_iters: 100,
        }
    }

    #[test]
    fn warmup_then_steps() {
        let s = schedule("step:50,80".parse().unwrap());
        assert!((s.lr(0) - 0.01).abs() < 1e-12);
        assert!((s.lr(5) - 0.1 * (0.1 * 0.5 + 0.5)).abs() < 1e-12);
        assert_eq!(s.lr(10), 0.1);
        assert_eq!(s.lr(49), 0.1);
        assert!((s.lr(50) - 0.01).abs() < 1e-12);
        assert!((s.lr(80) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn cosine_ends_at_min() {
        let s = schedule("cosine:0.01".parse().unwrap());
        assert!((s.lr(100) - 0.001).abs() < 1e-12);
        assert!((s.lr(50) - 0.1 * (0.01 + 0.99 * 0.5)).abs() < 1e-12);
    }

    #[test]
    fn bad_schedules_are_named() {
        for bad in ["step", "step:a,b", "linear", "cosine:x", "step:10:y"] {
            let err = bad.parse::<Decay>().unwrap_err();
            assert!(format!("{err}").contains(bad), "{err}");
        }
    }
}
