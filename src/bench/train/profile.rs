//! `tchcv bench train --profile`: where one tchcv training iteration's time goes, in this
//! process, with the bench's model, data and recipe, on tchcv's best split of the cores (the
//! comparison's probe; `--workers-split` with one candidate fixes it):
//!
//! 1. the iteration by part, as the trainer's step runs them: waiting for the loader's batch,
//!    the copy to the device, forward, loss (with the read-back of its sums), zero_grad,
//!    backward, the optimizer step, logging (the metrics.jsonl record and the console line);
//! 2. forward, loss and backward by operator (libtorch's RecordFunction hook,
//!    [`crate::device::op_time`]): layer types (`conv2d`, `batch_norm`, ...) and autograd nodes
//!    (`ConvolutionBackward0`, ...), from separate iterations (the hook adds about a microsecond
//!    per operator);
//! 3. the network alone, the floor of an iteration: forward + loss + backward + update on one
//!    fixed batch, no data and no logging; and there, before/after of the update path: the
//!    loop over parameters with zeroed gradients against libtorch's fused kernels with
//!    gradients set to none, alternated in the same run.
//!
//! On CUDA every part ends with a device synchronize, so the parts add up (the real loop
//! overlaps them).

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, Result};
use tch::{nn, Device};

use super::sides::{RunPlan, Side};
use super::{Context, Split};
use crate::bench::Comparison;
use crate::data::{Batch, Loader, LoaderConfig};
use crate::device::op_time::{short_name, time_ops, OpTimes};
use crate::dist::global_normalizer_by;
use crate::loss::{DetectionLoss, LossInputs};
use crate::models::Detector;
use crate::train::metrics::MetricsLog;
use crate::train::optim::{trainable_params, Optimizer, UpdateKernel};
use crate::train::schedule::Schedule;

/// The parts of an iteration, in order.
const PARTS: [&str; 8] = [
    "data wait",
    "to device",
    "forward",
    "loss",
    "zero_grad",
    "backward",
    "optimizer step",
    "logging",
];

/// Seconds per part, one row per iteration.
#[derive(Debug, Clone, Default)]
struct PartTimes {
    rows: Vec<[f64; 8]>,
}

impl PartTimes {
    /// Mean milliseconds per iteration of `part`.
    fn ms_per_iter(&self, part: usize) -> f64 {
        let sum: f64 = self.rows.iter().map(|r| r[part]).sum();
        sum * 1e3 / self.rows.len().max(1) as f64
    }

    /// Mean milliseconds per iteration, every part.
    fn total_ms(&self) -> f64 {
        (0..PARTS.len()).map(|p| self.ms_per_iter(p)).sum()
    }

    /// The median over iterations of the milliseconds of `parts` together (robust to an
    /// iteration that another process on the machine slowed).
    fn median_ms(&self, parts: &[usize]) -> f64 {
        let mut sums: Vec<f64> = self
            .rows
            .iter()
            .map(|r| parts.iter().map(|&p| r[p]).sum::<f64>() * 1e3)
            .collect();
        sums.sort_by(f64::total_cmp);
        sums.get(sums.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// Times the parts of one iteration: each [`Clock::lap`] ends the part under way.
struct Clock {
    device: Device,
    last: Instant,
    row: [f64; 8],
}

impl Clock {
    fn start(device: Device) -> Self {
        crate::device::synchronize(device);
        Self {
            device,
            last: Instant::now(),
            row: [0.0; 8],
        }
    }

    fn lap(&mut self, part: usize) {
        crate::device::synchronize(self.device);
        let now = Instant::now();
        self.row[part] += (now - self.last).as_secs_f64();
        self.last = now;
    }
}

/// The training objects, built as the trainer builds them.
struct Setup {
    device: Device,
    memory_format: crate::device::MemoryFormat,
    _vs: nn::VarStore,
    model: Box<dyn Detector>,
    loss: Box<dyn DetectionLoss + Send + Sync>,
    optimizer: Optimizer,
    schedule: Schedule,
    loader: Loader,
    metrics: MetricsLog,
}

fn setup(ctx: &Context, split: Split) -> Result<Setup> {
    tch::set_num_threads(split.threads as i32);
    let plan = RunPlan {
        side: Side::Tchcv,
        split,
        seed: ctx.bench.seeds[0],
        iters: ctx.bench.iters,
        snapshot_every: 0,
        dir: ctx.scratch.join("profile"),
    };
    let config = ctx.train_config(&plan, &plan.dir)?;
    std::fs::create_dir_all(&plan.dir)?;
    let vs = nn::VarStore::new(ctx.device);
    let model = crate::models::build(vs.root(), &ctx.spec, ctx.classes.len() as i64)?;
    let init = config
        .init
        .clone()
        .context("the profile's initial weights")?;
    crate::models::load_init(&vs, &ctx.spec, &init)?;
    crate::device::convert_variables(&vs, config.memory_format())?;
    let (kind, options) = config.loss_setup(&ctx.spec, 0, &[])?;
    let [w, h] = ctx.spec.input_size;
    let loader_config = LoaderConfig {
        batch_size: config.batch,
        workers: split.workers,
        seed: config.seed,
        input_size: [w as u32, h as u32],
        augment: Some(config.augment.clone()),
        pin_memory: ctx.device.is_cuda().then_some(ctx.device),
        ..LoaderConfig::default()
    };
    let coder = Arc::new(crate::bbox::BoxCoder::from_spec(&ctx.spec)?);
    Ok(Setup {
        device: ctx.device,
        memory_format: config.memory_format(),
        model,
        loss: kind.build(options)?,
        optimizer: Optimizer::new(config.optimizer_config(), trainable_params(&vs)),
        schedule: config.schedule(ctx.bench.iters)?,
        loader: Loader::new(Arc::clone(&ctx.dataset), coder, loader_config)?,
        metrics: MetricsLog::open(&plan.dir.join("metrics.jsonl"), false)?,
        _vs: vs,
    })
}

/// Operator times of the forward pass, the loss and the backward pass.
#[derive(Default)]
struct PhaseOps {
    forward: OpTimes,
    loss: OpTimes,
    backward: OpTimes,
}

/// `f` timed by operator into `into` when `ops` is on, else just run.
fn maybe_timed<T>(on: bool, into: &mut OpTimes, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !on {
        return f();
    }
    let (value, times) = time_ops(f)?;
    into.merge(&times);
    Ok(value)
}

impl Setup {
    /// One iteration as the trainer's step runs it, timed by part (and by operator into `ops`).
    fn iteration(
        &mut self,
        batch: &Batch,
        iter: u64,
        clock: &mut Clock,
        ops: Option<&mut PhaseOps>,
    ) -> Result<()> {
        let (on, mut scratch) = (ops.is_some(), PhaseOps::default());
        let ops = ops.unwrap_or(&mut scratch);
        let lr = self.schedule.lr(iter);
        let images = crate::device::to_device_async(&batch.images, self.device);
        let images = crate::device::to_memory_format(&images, self.memory_format)?;
        let loc_targets = crate::device::to_device_async(&batch.loc_targets, self.device);
        let cls_targets = crate::device::to_device_async(&batch.cls_targets, self.device);
        clock.lap(1);
        let (loc_preds, cls_preds) =
            maybe_timed(on, &mut ops.forward, || self.model.forward_t(&images, true))?;
        clock.lap(2);
        let (total, stats) = maybe_timed(on, &mut ops.loss, || {
            let inputs = LossInputs {
                loc_preds: &loc_preds,
                loc_targets: &loc_targets,
                cls_preds: &cls_preds,
                cls_targets: &cls_targets,
            };
            let sums = self.loss.sums(&inputs)?;
            let global = global_normalizer_by(
                None,
                &sums,
                self.loss.normalization(),
                self.loss.normalize_by(),
            )?;
            Ok((global.finish(sums).total, global.stats()))
        })?;
        clock.lap(3);
        self.optimizer.zero_grad();
        clock.lap(4);
        maybe_timed(on, &mut ops.backward, || {
            total.backward();
            Ok(())
        })?;
        clock.lap(5);
        self.optimizer.step(lr)?;
        clock.lap(6);
        self.metrics.write(&serde_json::json!({
            "kind": "step", "iter": iter, "loc_per_pos": stats.loc_per_pos,
            "cls_per_pos": stats.cls_per_pos, "total": stats.total, "num_pos": stats.num_pos,
            "num_neg": stats.num_neg, "lr": lr, "images": batch.len(),
        }))?;
        let line = format!(
            "iter {} | loc_loss {:.3} | cls_loss {:.3} | pos {} neg {} | lr {lr:.2e}",
            iter + 1,
            stats.loc_per_pos,
            stats.cls_per_pos,
            stats.num_pos,
            stats.num_neg
        );
        writeln!(std::io::sink(), "{line}")?;
        clock.lap(7);
        Ok(())
    }

    /// `iters` iterations from the loader (epochs as needed), timed by part, from iteration
    /// `first`; with `ops`, by operator too. Returns the last batch.
    fn loop_over_data(
        &mut self,
        first: u64,
        iters: usize,
        times: &mut PartTimes,
        mut ops: Option<&mut PhaseOps>,
    ) -> Result<Batch> {
        let (mut epoch, mut batches) = (0, self.loader.epoch(0));
        let mut last = None;
        for k in 0..iters as u64 {
            let mut clock = Clock::start(self.device);
            let batch = match batches.next() {
                Some(b) => b?,
                None => {
                    epoch += 1;
                    batches = self.loader.epoch(epoch);
                    batches.next().context("an epoch without batches")??
                }
            };
            clock.lap(0);
            self.iteration(&batch, first + k, &mut clock, ops.as_deref_mut())?;
            times.rows.push(clock.row);
            last = Some(batch);
        }
        last.context("no iteration ran")
    }

    /// The network alone on one fixed batch (`iters` iterations): forward, loss, zero_grad,
    /// backward, update, timed by part (logging runs but is not counted; no data).
    fn floor(&mut self, batch: &Batch, iters: usize, times: &mut PartTimes) -> Result<()> {
        for k in 0..iters as u64 {
            let mut clock = Clock::start(self.device);
            self.iteration(batch, k, &mut clock, None)?;
            clock.row[7] = 0.0;
            times.rows.push(clock.row);
        }
        Ok(())
    }

    /// The optimizer step alone on the gradients at hand, `rounds` times per update kernel,
    /// alternated: milliseconds `(per-parameter loop, fused)`, medians.
    fn step_alone(&mut self, rounds: usize) -> Result<(f64, f64)> {
        let mut times = [Vec::new(), Vec::new()];
        for _ in 0..rounds.max(1) {
            for (k, kernel) in [UpdateKernel::PerParameter, UpdateKernel::Fused]
                .into_iter()
                .enumerate()
            {
                self.optimizer.set_kernel(kernel);
                let start = Instant::now();
                self.optimizer.step(1e-6)?;
                crate::device::synchronize(self.device);
                times[k].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Ok((median(&mut times[0]), median(&mut times[1])))
    }
}

/// The update path of the "before" and "after" floors.
fn set_update_path(s: &mut Setup, fused: bool) {
    let kernel = if fused {
        UpdateKernel::Fused
    } else {
        UpdateKernel::PerParameter
    };
    s.optimizer.set_kernel(kernel);
    s.optimizer.set_zero_grad_to_none(fused);
}

/// What the profile measured.
struct Profile {
    /// Iterations over the data, by part.
    parts: PartTimes,
    ops: PhaseOps,
    /// The network alone with the per-parameter update and zeroed gradients, and with the
    /// fused update and gradients set to none (the defaults), alternated.
    before: PartTimes,
    after: PartTimes,
    /// The optimizer step alone, median ms: per-parameter loop, fused.
    step_alone: (f64, f64),
    images: usize,
}

/// The parts of the network alone (to device, forward, loss, zero_grad, backward, step).
const NETWORK: [usize; 6] = [1, 2, 3, 4, 5, 6];

/// Run the profile and make its report (the table as the row's detail).
pub fn run(ctx: &Context) -> Result<Comparison> {
    let (split, probes) = super::choose_split(ctx, Side::Tchcv, &ctx.candidates())?;
    let mut s = setup(ctx, split)?;
    let k = ctx.bench.profile_iters.max(1);
    s.loop_over_data(0, 2, &mut PartTimes::default(), None)?;
    let mut parts = PartTimes::default();
    let batch = s.loop_over_data(2, k, &mut parts, None)?;
    let mut ops = PhaseOps::default();
    s.loop_over_data(2 + k as u64, k, &mut PartTimes::default(), Some(&mut ops))?;
    let (mut before, mut after) = (PartTimes::default(), PartTimes::default());
    for _ in 0..k {
        set_update_path(&mut s, false);
        s.floor(&batch, 1, &mut before)?;
        set_update_path(&mut s, true);
        s.floor(&batch, 1, &mut after)?;
    }
    let step_alone = s.step_alone(4 * k)?;
    let p = Profile {
        parts,
        ops,
        before,
        after,
        step_alone,
        images: batch.len(),
    };
    let [w, h] = ctx.spec.input_size;
    let mut row = Comparison::new(
        &format!("{} train iteration profile", ctx.spec.name),
        &format!("N={} {w}x{h}, split {split}", ctx.bench.batch),
        &crate::device::device_name(ctx.device),
        p.parts.total_ms(),
        None,
    );
    row.detail = Some(profile_table(&p));
    row.extra = profile_json(&p, k);
    row.extra["split"] = serde_json::json!(split);
    row.extra["probes"] = serde_json::json!(probes);
    Ok(row)
}

/// The profile's numbers for the JSON report.
fn profile_json(p: &Profile, k: usize) -> serde_json::Value {
    let parts: serde_json::Map<String, serde_json::Value> = PARTS
        .iter()
        .enumerate()
        .map(|(i, name)| (name.to_string(), serde_json::json!(p.parts.ms_per_iter(i))))
        .collect();
    serde_json::json!({
        "parts_ms": parts,
        "iteration_ms": p.parts.total_ms(),
        "iteration_median_ms": p.parts.median_ms(&[0, 1, 2, 3, 4, 5, 6, 7]),
        "floor_ms": p.after.median_ms(&NETWORK),
        "floor_before_ms": p.before.median_ms(&NETWORK),
        "zero_grad_backward_ms": [p.before.median_ms(&[4, 5]), p.after.median_ms(&[4, 5])],
        "step_alone_ms": [p.step_alone.0, p.step_alone.1],
        "forward_ops": op_rows(&p.ops.forward, k),
        "loss_ops": op_rows(&p.ops.loss, k),
        "backward_ops": op_rows(&p.ops.backward, k),
        "threads": tch::get_num_threads(),
        "iterations": k,
    })
}

/// `[[name, calls per iteration, ms per iteration], ...]`.
fn op_rows(ops: &OpTimes, iters: usize) -> serde_json::Value {
    let n = iters.max(1) as f64;
    ops.ops
        .iter()
        .map(|o| serde_json::json!([o.name, o.calls as f64 / n, o.seconds * 1e3 / n]))
        .collect()
}

/// One phase's operators: the top 8 by time, ms per iteration and share.
fn op_line(what: &str, times: &OpTimes, iters: usize) -> String {
    let sum = times.total_seconds().max(1e-12);
    let top: Vec<String> = times
        .ops
        .iter()
        .take(8)
        .map(|o| {
            let ms = o.seconds * 1e3 / iters.max(1) as f64;
            format!(
                "{} {ms:.2} ({:.0}%)",
                short_name(&o.name),
                100.0 * o.seconds / sum
            )
        })
        .collect();
    format!(
        "{what} by operator (ms/iter, share; hook on): {}",
        top.join(", ")
    )
}

/// The profile as text: parts, operators, the floor and the update path's before/after.
fn profile_table(p: &Profile) -> String {
    let total = p.parts.total_ms();
    let per_s = |ms: f64| p.images as f64 * 1e3 / ms.max(1e-9);
    let mut out = vec![format!(
        "one iteration: {total:.1} ms mean ({:.1} images/s; median {:.1} ms), by part (mean ms, share):",
        per_s(total),
        p.parts.median_ms(&[0, 1, 2, 3, 4, 5, 6, 7])
    )];
    for (i, part) in PARTS.iter().enumerate() {
        let ms = p.parts.ms_per_iter(i);
        out.push(format!(
            "  {part:<16}{ms:9.2}  {:5.1}%",
            100.0 * ms / total.max(1e-9)
        ));
    }
    let k = p.parts.rows.len();
    out.push(op_line("forward", &p.ops.forward, k));
    out.push(op_line("loss", &p.ops.loss, k));
    out.push(op_line("backward", &p.ops.backward, k));
    let floor = p.after.median_ms(&NETWORK);
    out.push(format!(
        "network alone (fixed batch: to device, forward, loss, zero_grad, backward, update; median): {floor:.1} ms = {:.1} images/s; the whole iteration (mean) is {:.2}x that",
        per_s(floor),
        total / floor.max(1e-9)
    ));
    let (step_loop, step_fused) = p.step_alone;
    out.push(format!(
        "update path, same run (medians): optimizer step alone {step_loop:.2} ms per-parameter loop -> {step_fused:.2} ms fused ({:.2}x); zero_grad + backward {:.1} ms zeroed grads -> {:.1} ms grads to none; network alone {:.1} -> {floor:.1} ms",
        step_loop / step_fused.max(1e-9),
        p.before.median_ms(&[4, 5]),
        p.after.median_ms(&[4, 5]),
        p.before.median_ms(&NETWORK),
    ));
    out.join("\n    ")
}
