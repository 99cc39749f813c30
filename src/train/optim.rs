//! SGD and Adam with state that can be saved and restored exactly.
//!
//! tch wraps libtorch's C++ optimizers, whose state (momentum buffers, Adam moments) cannot be
//! saved, so an exact `--resume` needs our own. The updates follow `torch.optim.SGD` and
//! `torch.optim.Adam`/`AdamW` step for step (the same formulas; tch lacks the fused `alpha`
//! arguments, so results may differ from PyTorch's in the last bit).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Which optimizer and its hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD(momentum, dampening=0, weight_decay, nesterov)`.
    Sgd {
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
    },
    /// `torch.optim.Adam` (L2 weight decay) or, with `decoupled`, `AdamW`.
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    },
}

impl Default for OptimizerConfig {
    /// torchcv's SSD recipe: SGD, momentum 0.9, weight decay 1e-4.
    fn default() -> Self {
        Self::Sgd {
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
        }
    }
}

/// One trainable tensor and whether weight decay applies to it.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub decay: bool,
}

/// A VarStore's trainable variables, sorted by name, all with weight decay (as torchcv).
pub fn trainable_params(vs: &tch::nn::VarStore) -> Vec<Param> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
        .into_iter()
        .map(|(name, tensor)| Param {
            name,
            tensor,
            decay: true,
        })
        .collect()
}

/// An optimizer over named parameters, with its state keyed by parameter name.
pub struct Optimizer {
    pub config: OptimizerConfig,
    params: Vec<Param>,
    /// SGD: `momentum.<name>`; Adam: `exp_avg.<name>`, `exp_avg_sq.<name>`.
    state: BTreeMap<String, Tensor>,
    /// Steps taken (Adam's bias correction; also saved for SGD).
    steps: i64,
}

impl Optimizer {
    /// params: the trainable tensors, in a fixed order (e.g. sorted by name).
    pub fn new(config: OptimizerConfig, params: Vec<Param>) -> Self {
        Self {
            config,
            params,
            state: BTreeMap::new(),
            steps: 0,
        }
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Set every parameter's gradient to zero (`set_to_none` semantics are not available in
    /// tch; zeros are what the update expects).
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
    }

    /// One update with learning rate `lr`. Parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) {
        let _no_grad = tch::no_grad_guard();
        self.steps += 1;
        let t = self.steps as f64;
        for p in &mut self.params {
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            match self.config {
                OptimizerConfig::Sgd {
                    momentum,
                    weight_decay,
                    nesterov,
                } => {
                    let mut d_p = grad;
                    if p.decay && weight_decay != 0.0 {
                        d_p = d_p.g_add(&(&p.tensor * weight_decay));
                    }
                    if momentum != 0.0 {
                        let key = format!("momentum.{}", p.name);
                        let buf = match self.state.get_mut(&key) {
                            Some(buf) => {
                                let _ = buf.g_mul_scalar_(momentum).g_add_(&d_p);
                                buf.shallow_clone()
                            }
                            None => {
                                let buf = d_p.detach().copy();
                                self.state.insert(key, buf.shallow_clone());
                                buf
                            }
                        };
                        d_p = if nesterov { d_p + buf * momentum } else { buf };
                    }
                    let _ = p.tensor.g_add_(&(d_p * -lr));
                }
                OptimizerConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled,
                } => {
                    let mut g = grad;
                    if p.decay && weight_decay != 0.0 {
                        if decoupled {
                            let _ = p.tensor.g_mul_scalar_(1.0 - lr * weight_decay);
                        } else {
                            g = g.g_add(&(&p.tensor * weight_decay));
                        }
                    }
                    let m_key = format!("exp_avg.{}", p.name);
                    let v_key = format!("exp_avg_sq.{}", p.name);
                    let m = self
                        .state
                        .entry(m_key)
                        .or_insert_with(|| p.tensor.zeros_like());
                    let _ = m.lerp_(&g, 1.0 - beta1);
                    let m = m.shallow_clone();
                    let v = self
                        .state
                        .entry(v_key)
                        .or_insert_with(|| p.tensor.zeros_like());
                    let _ = v.g_mul_scalar_(beta2).g_add_(&(&g * &g * (1.0 - beta2)));
                    let bias_correction1 = 1.0 - beta1.powf(t);
                    let bias_correction2_sqrt = (1.0 - beta2.powf(t)).sqrt();
                    let denom = v.sqrt() / bias_correction2_sqrt + eps;
                    let _ = p.tensor.g_add_(&(m / denom * (-lr / bias_correction1)));
                }
            }
        }
    }

    /// Lay out every 4-D state tensor (the buffers of convolution weights) in `format`, as
    /// [`crate::device::convert_variables`] does the variables; values are unchanged.
    pub fn convert_state(&mut self, format: crate::device::MemoryFormat) -> Result<()> {
        for (key, value) in self.state.iter_mut() {
            if value.dim() == 4 {
                *value = crate::device::to_memory_format(value, format)
                    .with_context(|| format!("optimizer state {key:?}"))?;
            }
        }
        Ok(())
    }

    /// The state as named tensors (for a checkpoint), plus the step count.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .state
            .iter()
            .map(|(k, v)| (k.clone(), v.shallow_clone()))
            .collect();
        out.push(("steps".into(), Tensor::from_slice(&[self.steps])));
        out
    }

    /// Restore [`Self::state_tensors`]. Every state tensor must belong to a known parameter
    /// with the same shape and a float dtype, and `steps` must be one integer >= 0; anything
    /// else is bad input (a damaged or foreign checkpoint), named.
    pub fn load_state(&mut self, mut tensors: BTreeMap<String, Tensor>) -> Result<()> {
        let steps = tensors
            .remove("steps")
            .ok_or_else(|| crate::bad_input("optimizer state: missing `steps`"))?;
        let steps = step_count(&steps)?;
        let mut state = BTreeMap::new();
        for (key, value) in tensors {
            let name = key.split_once('.').map(|(_, n)| n).unwrap_or_default();
            let param = self.params.iter().find(|p| p.name == name).ok_or_else(|| {
                crate::bad_input(format!("optimizer state {key:?}: no parameter {name:?}"))
            })?;
            if value.size() != param.tensor.size() {
                crate::bail_input!(
                    "optimizer state {key:?}: shape {:?}, parameter has {:?}",
                    value.size(),
                    param.tensor.size()
                );
            }
            if !value.is_floating_point() {
                crate::bail_input!(
                    "optimizer state {key:?}: expected a float tensor, got {:?}",
                    value.kind()
                );
            }
            state.insert(
                key,
                value
                    .f_to_device(param.tensor.device())?
                    .f_to_kind(param.tensor.kind())?,
            );
        }
        self.state = state;
        self.steps = steps;
        Ok(())
    }
}

/// The `steps` of a saved optimizer state: one integer >= 0 (`[1]` int64 as saved).
fn step_count(steps: &Tensor) -> Result<i64> {
    let is_integer = matches!(
        steps.kind(),
        tch::Kind::Int64 | tch::Kind::Int | tch::Kind::Int16 | tch::Kind::Int8 | tch::Kind::Uint8
    );
    // Reads a tensor of exactly one element (of any shape), else fails.
    match i64::try_from(steps) {
        Ok(n) if is_integer && n >= 0 => Ok(n),
        Ok(n) if is_integer => {
            crate::bail_input!("optimizer state `steps`: expected an integer >= 0, got {n}")
        }
        _ => crate::bail_input!(
            "optimizer state `steps`: expected one integer >= 0, got {:?} with shape {:?}",
            steps.kind(),
            steps.size()
        ),
    }
}
