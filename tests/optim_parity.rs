//! tchcv's SGD and Adam/AdamW against torch.optim (tests/reference/optim.py): the same
//! parameters after K steps with the same gradients and learning rates, within 1e-6 relative
//! (the last bits may differ: rounding order), with libtorch's fused kernels (the default) and
//! with the loop over parameters, and the saved state restores to an identical continuation.

mod common;

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};
use tchcv::train::optim::{Optimizer, OptimizerConfig, Param, UpdateKernel};

const STEPS: usize = 6;

struct Case {
    params: Vec<Tensor>,
    decay: Vec<bool>,
    grads: Vec<Vec<Tensor>>,
    lrs: Vec<f64>,
}

fn case(seed: u64) -> Case {
    tch::manual_seed(seed as i64);
    let shapes: [&[i64]; 3] = [&[8, 3, 3, 3], &[8], &[5, 4]];
    let params: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
        .collect();
    let grads = (0..STEPS)
        .map(|_| {
            shapes
                .iter()
                .map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu)) * 0.1)
                .collect()
        })
        .collect();
    Case {
        params,
        decay: vec![true, false, true],
        grads,
        lrs: (0..STEPS).map(|s| 0.05 / (1.0 + s as f64)).collect(),
    }
}

fn optimizer(config: &OptimizerConfig, c: &Case) -> Optimizer {
    let params = c
        .params
        .iter()
        .zip(&c.decay)
        .enumerate()
        .map(|(i, (p, &decay))| Param {
            name: format!("p{i}"),
            tensor: p.copy().set_requires_grad(true),
            decay,
        })
        .collect();
    Optimizer::new(config.clone(), params)
}

fn run(opt: &mut Optimizer, c: &Case, steps: std::ops::Range<usize>) {
    for s in steps {
        for (p, g) in opt.params().iter().zip(&c.grads[s]) {
            let mut grad = p.tensor.grad();
            if !grad.defined() {
                // Create the gradient by a backward of sum(p * g).
                (&p.tensor * g).sum(Kind::Float).backward();
                continue;
            }
            grad.copy_(g);
        }
        opt.step(c.lrs[s]).unwrap();
    }
}

fn reference(
    config: &OptimizerConfig,
    c: &Case,
    name: &str,
) -> std::collections::HashMap<String, Tensor> {
    let dir = common::scratch(name);
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (i, p) in c.params.iter().enumerate() {
        named.push((format!("param.{i}"), p.shallow_clone()));
        named.push((
            format!("decay.{i}"),
            Tensor::from_slice(&[c.decay[i] as i64]),
        ));
    }
    for (s, gs) in c.grads.iter().enumerate() {
        named.push((format!("lr.{s}"), Tensor::from(c.lrs[s])));
        for (i, g) in gs.iter().enumerate() {
            named.push((format!("grad.{s}.{i}"), g.shallow_clone()));
        }
    }
    let case_path = dir.join("case.safetensors");
    Tensor::write_safetensors(&named, &case_path).unwrap();
    let out = dir.join("out.safetensors");
    let json = serde_json::to_string(config).unwrap();
    common::run_reference(
        "optim.py",
        &[
            "--case",
            case_path.to_str().unwrap(),
            "--config",
            &json,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    common::read_safetensors(&out)
}

/// Both update kernels (fused, the default; and the loop over parameters) match torch.optim,
/// and each resumes exactly.
fn check(config: OptimizerConfig, name: &str) {
    let c = case(common::fresh_seed(name));
    let want = reference(&config, &c, name);
    for kernel in [UpdateKernel::Fused, UpdateKernel::PerParameter] {
        check_kernel(&config, &c, &want, &format!("{name} ({kernel:?})"), kernel);
    }
}

fn check_kernel(
    config: &OptimizerConfig,
    c: &Case,
    want: &std::collections::HashMap<String, Tensor>,
    name: &str,
    kernel: UpdateKernel,
) {
    let with_kernel = |c: &Case| {
        let mut opt = optimizer(config, c);
        opt.set_kernel(kernel);
        opt
    };
    let mut opt = with_kernel(c);
    run(&mut opt, c, 0..STEPS);
    for (i, p) in opt.params().iter().enumerate() {
        common::assert_close(
            &format!("{name}: param {i}"),
            &p.tensor.detach(),
            &want[&format!("param.{i}")],
            1e-6,
            1e-7,
        );
    }
    let state: BTreeMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    for (key, value) in &state {
        if let Some((kind, p)) = key.split_once(".p") {
            common::assert_close(
                &format!("{name}: {key}"),
                value,
                &want[&format!("{kind}.{p}")],
                1e-6,
                1e-7,
            );
        }
    }
    // Resume: steps 0..3, save, restore into a fresh optimizer, steps 3..6: identical.
    let mut first = with_kernel(c);
    run(&mut first, c, 0..3);
    let saved: BTreeMap<String, Tensor> = first
        .state_tensors()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect();
    let mut resumed = with_kernel(c);
    for (dst, src) in resumed.params().iter().zip(first.params()) {
        tch::no_grad(|| dst.tensor.shallow_clone().copy_(&src.tensor));
    }
    resumed.load_state(saved).unwrap();
    // The fresh parameters have no gradient yet; `run` creates them with a backward pass.
    run(&mut resumed, c, 3..STEPS);
    for (a, b) in resumed.params().iter().zip(opt.params()) {
        assert!(a.tensor.equal(&b.tensor), "{name}: resumed run differs");
    }
}

#[test]
fn sgd_matches_torch_optim() {
    check(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 1e-2,
            nesterov: false,
        },
        "optim-sgd",
    );
}

#[test]
fn sgd_nesterov_matches_torch_optim() {
    check(
        OptimizerConfig::Sgd {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: true,
        },
        "optim-nesterov",
    );
}

#[test]
fn adam_matches_torch_optim() {
    let config = OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
        decoupled: false,
    };
    check(config, "optim-adam");
}

#[test]
fn adamw_matches_torch_optim() {
    let config = OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 5e-2,
        decoupled: true,
    };
    check(config, "optim-adamw");
}
