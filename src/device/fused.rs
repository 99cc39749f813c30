//! libtorch's fused optimizer kernels (what `torch.optim.SGD(fused=True)` and
//! `torch.optim.Adam(fused=True)` / `AdamW(fused=True)` call): one pass over each parameter,
//! its gradient and its state, for a whole list of parameters in one call, on the CPU (since
//! libtorch 2.4) and on CUDA. Instead of a loop over parameters with half a dozen operators
//! each, every one allocating a temporary.
//!
//! Also `tensor.grad = None` ([`clear_grad`]), which tch does not bind.

use std::ffi::{c_int, c_void};

use anyhow::{ensure, Result};
use tch::Tensor;

use super::ext;

/// SGD's hyper-parameters for one call (dampening 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdArgs {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// The momentum buffers are set to the gradients (their first step) instead of updated.
    pub first_step: bool,
}

/// Adam's hyper-parameters for one call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamArgs {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW: decay the weights directly instead of adding `weight_decay * p` to the gradient.
    pub decoupled: bool,
    /// Updates so far, this one included (1 on the first).
    pub step: i64,
}

fn raw_list(tensors: &[&Tensor]) -> Vec<*mut c_void> {
    tensors.iter().map(|t| ext::raw(t)).collect()
}

/// One fused SGD update: `params[i]` from `grads[i]`, with momentum buffers `bufs[i]` (unused,
/// and may be empty, when momentum is 0). Every tensor float, on one device, shapes pairwise
/// equal.
pub fn fused_sgd(
    params: &[&Tensor],
    grads: &[&Tensor],
    bufs: &[&Tensor],
    a: SgdArgs,
) -> Result<()> {
    ensure!(
        params.len() == grads.len() && (a.momentum == 0.0 || bufs.len() == params.len()),
        "fused SGD: {} parameters, {} gradients, {} buffers",
        params.len(),
        grads.len(),
        bufs.len()
    );
    let (mut p, mut g, mut b) = (raw_list(params), raw_list(grads), raw_list(bufs));
    // SAFETY: the lists hold live tensors (borrowed for the call) and have the lengths passed.
    ext::check(unsafe {
        ext::tchcv_fused_sgd(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            b.as_mut_ptr(),
            p.len() as i64,
            a.weight_decay,
            a.momentum,
            a.lr,
            c_int::from(a.nesterov),
            c_int::from(a.first_step),
        )
    })
}

/// One fused Adam (or AdamW) update of `params` from `grads`, the moments `exp_avgs` and
/// `exp_avg_sqs` updated in place. Every tensor float, on one device, shapes pairwise equal.
pub fn fused_adam(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    a: AdamArgs,
) -> Result<()> {
    let n = params.len();
    ensure!(
        grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n,
        "fused Adam: {n} parameters, {} gradients, {} and {} moments",
        grads.len(),
        exp_avgs.len(),
        exp_avg_sqs.len()
    );
    let (mut p, mut g) = (raw_list(params), raw_list(grads));
    let (mut m, mut v) = (raw_list(exp_avgs), raw_list(exp_avg_sqs));
    // SAFETY: the lists hold live tensors (borrowed for the call) and have length n.
    ext::check(unsafe {
        ext::tchcv_fused_adam(
            p.as_mut_ptr(),
            g.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            n as i64,
            a.lr,
            a.beta1,
            a.beta2,
            a.weight_decay,
            a.eps,
            c_int::from(a.decoupled),
            a.step,
        )
    })
}

/// `tensor.grad = None`: the next backward pass stores its gradient instead of adding it to a
/// zeroed one (torch's `zero_grad(set_to_none=True)`, its default).
pub fn clear_grad(tensor: &Tensor) -> Result<()> {
    // SAFETY: a live tensor, borrowed for the call.
    ext::check(unsafe { ext::tchcv_grad_set_none(ext::raw(tensor)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn fused_sgd_is_sgd_with_momentum() {
        let p = Tensor::from_slice(&[1.0f32, -2.0]);
        let g = Tensor::from_slice(&[0.5f32, 0.25]);
        let b = p.zeros_like();
        let a = SgdArgs {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            nesterov: false,
            first_step: true,
        };
        fused_sgd(&[&p], &[&g], &[&b], a).unwrap();
        // First step: buf = g, p -= lr * g.
        assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![0.5, 0.25]);
        assert_eq!(Vec::<f32>::try_from(&p).unwrap(), vec![0.95, -2.025]);
        let second = SgdArgs {
            first_step: false,
            ..a
        };
        fused_sgd(&[&p], &[&g], &[&b], second).unwrap();
        // buf = 0.9 * buf + g.
        let buf = Vec::<f32>::try_from(&b).unwrap();
        assert!((buf[0] - 0.95).abs() < 1e-6 && (buf[1] - 0.475).abs() < 1e-6);
        assert!(fused_sgd(&[&p], &[], &[&b], a).is_err());
    }

    #[test]
    fn gradients_clear_to_none() {
        let x = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        (&x * 2.0).sum(Kind::Float).backward();
        assert!(x.grad().defined());
        clear_grad(&x).unwrap();
        assert!(!x.grad().defined());
        (&x * 3.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), vec![3.0; 3]);
    }
}
