//! SGD and Adam with state that can be saved and restored exactly.
//!
//! tch wraps libtorch's C++ optimizers, whose state (momentum buffers, Adam moments) cannot be
//! saved, so an exact `--resume` needs our own. The updates follow `torch.optim.SGD` and
//! `torch.optim.Adam`/`AdamW` step for step. By default ([`UpdateKernel::Fused`]) they run as
//! libtorch's fused kernels (`torch.optim.SGD(fused=True)`: one pass over every parameter, its
//! gradient and its state, all parameters in one call); [`UpdateKernel::PerParameter`] is the
//! loop over parameters with a few tensor operations each (torch.optim's for-loop path, and the
//! fallback where the fused kernels do not apply). The two agree to the last bits (1e-6
//! relative: the fused kernels round `grad + wd * p` and the like once, the loop twice).
//!
//! [`Optimizer::zero_grad`] sets the gradients to none (torch's default since 2.0): the next
//! backward pass stores each gradient instead of adding it to zeros.

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

/// How [`Optimizer::step`] updates the parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpdateKernel {
    /// libtorch's fused kernels, one call per group of parameters sharing the weight decay and
    /// the first-step flag, where every parameter, gradient and state tensor is f32 or f64 of
    /// one dtype and device and a gradient and its state have their parameter's strides (else,
    /// for that step, as `PerParameter`).
    #[default]
    Fused,
    /// A loop over the parameters, a few tensor operations each.
    PerParameter,
}

/// The tensors of one fused kernel call.
#[derive(Default)]
struct FusedLists {
    params: Vec<Tensor>,
    grads: Vec<Tensor>,
    /// Per state slot (momentum; or Adam's first and second moments), one tensor a parameter.
    state: Vec<Vec<Tensor>>,
}

impl FusedLists {
    fn params(&self) -> Vec<&Tensor> {
        self.params.iter().collect()
    }

    fn grads(&self) -> Vec<&Tensor> {
        self.grads.iter().collect()
    }

    /// State slot `slot` (empty when the parameters have none, e.g. SGD without momentum).
    fn state(&self, slot: usize) -> Vec<&Tensor> {
        self.state
            .get(slot)
            .map_or_else(Vec::new, |s| s.iter().collect())
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
    kernel: UpdateKernel,
    grads_to_none: bool,
}

impl Optimizer {
    /// params: the trainable tensors, in a fixed order (e.g. sorted by name).
    pub fn new(config: OptimizerConfig, params: Vec<Param>) -> Self {
        Self {
            config,
            params,
            state: BTreeMap::new(),
            steps: 0,
            kernel: UpdateKernel::default(),
            grads_to_none: true,
        }
    }

    /// Update with `kernel` from now on (the same results to the last bits; for timing).
    pub fn set_kernel(&mut self, kernel: UpdateKernel) {
        self.kernel = kernel;
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Whether [`Self::zero_grad`] sets the gradients to none (the default) or to zeros in
    /// place (the same results; for timing).
    pub fn set_zero_grad_to_none(&mut self, to_none: bool) {
        self.grads_to_none = to_none;
    }

    /// Set every parameter's gradient to none (torch's `zero_grad()`, `set_to_none=True`): the
    /// next backward pass stores the gradients, and a parameter that gets none is skipped by
    /// [`Self::step`]. (Where clearing fails, and after `set_zero_grad_to_none(false)`, the
    /// gradients are zeroed in place instead, and the next backward pass adds to them.)
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            if !self.grads_to_none || crate::device::fused::clear_grad(&p.tensor).is_err() {
                p.tensor.zero_grad();
            }
        }
    }

    /// One update with learning rate `lr`. Parameters without a gradient are skipped.
    ///
    /// A failing fused kernel call (checked beforehand by [`Self::fusable`], so not expected) is
    /// an error, not a fallback: some groups may already be updated and fresh momentum buffers
    /// are not set yet, so the step cannot be redone per parameter. The caller stops the run;
    /// the last checkpoint holds consistent weights and state.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _no_grad = tch::no_grad_guard();
        self.steps += 1;
        if self.kernel == UpdateKernel::Fused {
            let live: Vec<usize> = (0..self.params.len())
                .filter(|&i| self.params[i].tensor.grad().defined())
                .collect();
            if live.is_empty() {
                return Ok(());
            }
            if self.fusable(&live) {
                return self.step_fused(&live, lr).context(
                    "the fused optimizer step failed (the weights of this step are not usable; resume from the last checkpoint)",
                );
            }
        }
        self.step_per_parameter(lr);
        Ok(())
    }

    /// The state keys of a parameter: SGD's momentum buffer, or Adam's two moments.
    fn state_keys(&self, name: &str) -> Vec<String> {
        match self.config {
            OptimizerConfig::Sgd { momentum: 0.0, .. } => vec![],
            OptimizerConfig::Sgd { .. } => vec![format!("momentum.{name}")],
            OptimizerConfig::Adam { .. } => {
                vec![format!("exp_avg.{name}"), format!("exp_avg_sq.{name}")]
            }
        }
    }

    /// Whether the fused kernels apply to parameters `live` (see [`UpdateKernel::Fused`]).
    fn fusable(&self, live: &[usize]) -> bool {
        let first = &self.params[live[0]].tensor;
        let (kind, device) = (first.kind(), first.device());
        if !matches!(kind, tch::Kind::Float | tch::Kind::Double) {
            return false;
        }
        live.iter().all(|&i| {
            let p = &self.params[i];
            let like =
                |t: &Tensor| t.kind() == kind && t.device() == device && same_layout(t, &p.tensor);
            dense(&p.tensor)
                && like(&p.tensor)
                && like(&p.tensor.grad())
                && self
                    .state_keys(&p.name)
                    .iter()
                    .all(|k| self.state.get(k).is_none_or(like))
        })
    }

    /// The fused update of parameters `live` (their gradients defined, [`Self::fusable`]):
    /// missing state made first (the layout of its parameter), then one kernel call per group.
    fn step_fused(&mut self, live: &[usize], lr: f64) -> Result<()> {
        match self.config {
            OptimizerConfig::Sgd {
                momentum,
                weight_decay,
                nesterov,
            } => {
                let args = crate::device::fused::SgdArgs {
                    lr,
                    momentum,
                    weight_decay,
                    nesterov,
                    first_step: false,
                };
                self.step_fused_sgd(live, args)
            }
            OptimizerConfig::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let args = crate::device::fused::AdamArgs {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled,
                    step: self.steps,
                };
                self.step_fused_adam(live, args)
            }
        }
    }

    /// Fused SGD, one call per (weight decay, first step) group: a parameter without a momentum
    /// buffer gets one, which its first step sets to the gradient.
    fn step_fused_sgd(
        &mut self,
        live: &[usize],
        args: crate::device::fused::SgdArgs,
    ) -> Result<()> {
        let mut groups: BTreeMap<(bool, bool), Vec<usize>> = BTreeMap::new();
        for &i in live {
            let key = format!("momentum.{}", self.params[i].name);
            let first = args.momentum != 0.0 && !self.state.contains_key(&key);
            if first {
                let buf = self.params[i].tensor.f_empty_like()?;
                self.state.insert(key, buf);
            }
            groups
                .entry((self.params[i].decay, first))
                .or_default()
                .push(i);
        }
        for ((decay, first_step), members) in groups {
            let lists = self.fused_lists(&members);
            let group_args = crate::device::fused::SgdArgs {
                weight_decay: if decay { args.weight_decay } else { 0.0 },
                first_step,
                ..args
            };
            crate::device::fused::fused_sgd(
                &lists.params(),
                &lists.grads(),
                &lists.state(0),
                group_args,
            )?;
        }
        Ok(())
    }

    /// Fused Adam, one call per weight-decay group: missing moments start at zero.
    fn step_fused_adam(
        &mut self,
        live: &[usize],
        args: crate::device::fused::AdamArgs,
    ) -> Result<()> {
        let mut groups: BTreeMap<bool, Vec<usize>> = BTreeMap::new();
        for &i in live {
            for key in self.state_keys(&self.params[i].name) {
                if !self.state.contains_key(&key) {
                    let zeros = self.params[i].tensor.f_zeros_like()?;
                    self.state.insert(key, zeros);
                }
            }
            groups.entry(self.params[i].decay).or_default().push(i);
        }
        for (decay, members) in groups {
            let lists = self.fused_lists(&members);
            let group_args = crate::device::fused::AdamArgs {
                weight_decay: if decay { args.weight_decay } else { 0.0 },
                ..args
            };
            crate::device::fused::fused_adam(
                &lists.params(),
                &lists.grads(),
                &lists.state(0),
                &lists.state(1),
                group_args,
            )?;
        }
        Ok(())
    }

    /// For parameters `members`: the parameters, their gradients and their state tensors
    /// (shallow copies; a parameter's state in [`Self::state_keys`] order).
    fn fused_lists(&self, members: &[usize]) -> FusedLists {
        let mut lists = FusedLists::default();
        for &i in members {
            let p = &self.params[i];
            lists.params.push(p.tensor.shallow_clone());
            lists.grads.push(p.tensor.grad());
            for (slot, key) in self.state_keys(&p.name).iter().enumerate() {
                if lists.state.len() <= slot {
                    lists.state.push(Vec::new());
                }
                if let Some(t) = self.state.get(key) {
                    lists.state[slot].push(t.shallow_clone());
                }
            }
        }
        lists
    }

    /// [`Self::step`] as a loop over the parameters (the step count already advanced).
    fn step_per_parameter(&mut self, lr: f64) {
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

/// Same sizes, and the same strides wherever a dimension has more than one element (a size-1
/// dimension's stride says nothing of the layout): elementwise kernels over the memory of the
/// two then pair the same elements.
fn same_layout(a: &Tensor, b: &Tensor) -> bool {
    let size = a.size();
    size == b.size()
        && a.stride()
            .iter()
            .zip(b.stride())
            .zip(&size)
            .all(|((x, y), &n)| n <= 1 || *x == y)
}

/// Contiguous, or channels-last contiguous: no gaps, no overlaps.
fn dense(t: &Tensor) -> bool {
    t.is_contiguous()
        || (t.dim() == 4
            && crate::device::layout::is_memory_format(
                t,
                crate::device::MemoryFormat::ChannelsLast,
            )
            .unwrap_or(false))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{op_time::time_ops, to_memory_format, MemoryFormat};
    use tch::{Device, Kind};

    /// Two parameters (a channels-last 4-D one when `channels_last`), one without weight decay,
    /// with gradients from a backward pass, under `kernel`.
    fn optimizer(config: &OptimizerConfig, kernel: UpdateKernel, channels_last: bool) -> Optimizer {
        tch::manual_seed(3);
        let format = MemoryFormat::channels_last_if(channels_last);
        // A size-1 dimension (a depthwise convolution's weight), whose stride may differ
        // between the weight and its gradient.
        let w = Tensor::randn([4, 1, 3, 3], (Kind::Float, Device::Cpu));
        let w = to_memory_format(&w, format)
            .unwrap()
            .set_requires_grad(true);
        let b = Tensor::randn([4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let params = vec![
            Param {
                name: "w".into(),
                tensor: w,
                decay: true,
            },
            Param {
                name: "b".into(),
                tensor: b,
                decay: false,
            },
        ];
        let mut opt = Optimizer::new(config.clone(), params);
        opt.set_kernel(kernel);
        opt
    }

    /// `steps` updates, each after zero_grad and a backward pass; the operators of the last.
    fn train(opt: &mut Optimizer, steps: usize) -> Vec<String> {
        let _one_at_a_time = crate::device::op_time::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut names = Vec::new();
        for s in 0..steps {
            opt.zero_grad();
            let (w, b) = (&opt.params()[0].tensor, &opt.params()[1].tensor);
            let loss = (w * w).sum(Kind::Float) * (s + 1) as f64 + (b * 3.0).sum(Kind::Float);
            loss.backward();
            let ((), times) = time_ops(|| {
                opt.step(0.1).unwrap();
                Ok(())
            })
            .unwrap();
            names = times.ops.into_iter().map(|o| o.name).collect();
        }
        names
    }

    #[test]
    fn fused_and_per_parameter_updates_agree() {
        let configs = [
            OptimizerConfig::default(),
            OptimizerConfig::Sgd {
                momentum: 0.9,
                weight_decay: 1e-2,
                nesterov: true,
            },
            OptimizerConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-2,
                decoupled: true,
            },
        ];
        for config in configs {
            for channels_last in [false, true] {
                let mut fused = optimizer(&config, UpdateKernel::Fused, channels_last);
                let mut looped = optimizer(&config, UpdateKernel::PerParameter, channels_last);
                let fused_ops = train(&mut fused, 3);
                let loop_ops = train(&mut looped, 3);
                let is_fused = |ops: &[String]| ops.iter().any(|n| n.starts_with("aten::_fused_"));
                assert!(is_fused(&fused_ops), "{config:?}: {fused_ops:?}");
                assert!(!is_fused(&loop_ops), "{config:?}: {loop_ops:?}");
                for (a, b) in fused.params().iter().zip(looped.params()) {
                    let diff = (&a.tensor - &b.tensor).abs().max().double_value(&[]);
                    assert!(diff < 1e-6, "{config:?} {}: {diff}", a.name);
                }
                let state = |o: &Optimizer| {
                    o.state_tensors()
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect::<Vec<_>>()
                };
                assert_eq!(state(&fused), state(&looped));
            }
        }
    }

    #[test]
    fn zero_grad_sets_gradients_to_none() {
        let mut opt = optimizer(&OptimizerConfig::default(), UpdateKernel::Fused, false);
        train(&mut opt, 1);
        assert!(opt.params()[0].tensor.grad().defined());
        opt.zero_grad();
        assert!(opt.params().iter().all(|p| !p.tensor.grad().defined()));
        // A step without gradients changes nothing.
        let before = opt.params()[0].tensor.copy();
        opt.step(0.1).unwrap();
        assert!(opt.params()[0].tensor.equal(&before));
    }
}
