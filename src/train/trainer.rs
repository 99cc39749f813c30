//! The training loop (torchcv `examples/ssd/train.py`): data, model, loss, optimizer, schedule,
//! logging, evaluation, checkpoints, NaN guard, Ctrl-C, resume and data parallelism.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

use super::checkpoint::{self, EpochProgress, RunState};
use super::config::{EvalMetric, TrainConfig};
use super::metrics::MetricsLog;
use super::optim::{trainable_params, Optimizer, Param};
use super::progress::Progress;
use super::schedule::Schedule;
use super::two_stage::{SecondStage, StepTargets};
use crate::bbox::{BoxCoder, RpnCoder};
use crate::data::{
    open_dataset, ClassMap, Loader, LoaderConfig, ReadOptions, Shard, TargetEncoder, ThreadPlan,
    VocDataset,
};
use crate::dist::{global_normalizer_by, Backend, DistConfig, GradReduction, ProcessGroup};
use crate::eval::coco::{evaluate_detector_voc_coco, CocoEvalResult};
use crate::eval::recall::RecallResult;
use crate::eval::runner::evaluate_proposals;
use crate::eval::{evaluate_detector, VocEvalConfig, VocEvalResult};
use crate::loss::{DetectionLoss, LossInputs, LossKind, LossStats, LossSums};
use crate::models::{self, Detector};
use crate::spec::ModelSpec;

/// How a run is driven (not saved with it).
#[derive(Clone)]
pub struct TrainOptions {
    /// Continue from `out/last.safetensors`.
    pub resume: bool,
    /// Stop (as Ctrl-C does: checkpoint, then exit) once this many iterations are done.
    pub stop_after: Option<u64>,
    /// Set by a Ctrl-C handler: save a checkpoint and stop after the current step.
    pub interrupt: Arc<AtomicBool>,
    /// An indicatif progress line (on a terminal) instead of plain lines.
    pub progress_bar: bool,
    /// Plain log lines every this many iterations.
    pub log_every: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            resume: false,
            stop_after: None,
            interrupt: Arc::new(AtomicBool::new(false)),
            progress_bar: false,
            log_every: 1,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub out: PathBuf,
    /// Iterations completed (including resumed ones).
    pub iterations: u64,
    pub total_iterations: u64,
    /// Stopped by Ctrl-C or `stop_after` before the end (a checkpoint was saved).
    pub interrupted: bool,
    /// The last step's loss (global over ranks).
    pub last: Option<LossStats>,
    /// The last evaluation, when there was one (a detector's VOC mAP).
    pub eval: Option<VocEvalResult>,
    /// The last COCO evaluation (`--metric coco`), beside `eval` from the same detections.
    pub coco: Option<CocoEvalResult>,
    /// The last evaluation of a region proposal network (proposal recall).
    pub recall: Option<RecallResult>,
    pub nonfinite_skips: u64,
}

/// One evaluation of a run: a detector's VOC mAP (and with `--metric coco` its COCO AP, from
/// the same detections), or a region proposal network's recall.
#[derive(Debug, Clone)]
enum RunEval {
    Voc(VocEvalResult),
    Coco(VocEvalResult, Box<CocoEvalResult>),
    Recall(RecallResult),
}

impl RunEval {
    /// What `best` maximises: the VOC07 mAP, COCO's AP@[.5:.95], or AR@1000.
    fn score(&self) -> f64 {
        match self {
            RunEval::Voc(r) => r.map_voc07,
            RunEval::Coco(_, c) => c.stat("AP").unwrap_or(f64::NAN),
            RunEval::Recall(r) => r.ar_1000,
        }
    }
}

/// What the run's targets and evaluation are: a detector's (the box coder's targets, VOC mAP),
/// a region proposal network's (the RPN coder's class-agnostic labels, proposal recall), or a
/// two-stage detector's (the RPN coder's labels for its first stage, VOC mAP of its
/// detections; the box coder only maps them back to the images).
#[derive(Clone)]
enum Targets {
    Detection(Arc<BoxCoder>),
    Proposals(Arc<RpnCoder>),
    TwoStage(Arc<RpnCoder>),
}

impl Targets {
    /// The spec's: `head: "rpn"` trains proposals, `head: "faster_rcnn"` both stages.
    fn for_spec(spec: &ModelSpec) -> Result<Self> {
        Ok(if spec.is_two_stage() {
            Targets::TwoStage(Arc::new(RpnCoder::from_spec(spec)?))
        } else if spec.has_rpn() {
            Targets::Proposals(Arc::new(RpnCoder::from_spec(spec)?))
        } else {
            Targets::Detection(Arc::new(BoxCoder::from_spec(spec)?))
        })
    }

    /// The loader's target encoder.
    fn encoder(&self) -> Arc<dyn TargetEncoder> {
        match self {
            Targets::Detection(coder) => coder.clone(),
            Targets::Proposals(rpn) | Targets::TwoStage(rpn) => rpn.clone(),
        }
    }

    /// The box coder of a detector's evaluation (None: an RPN's, scored by recall).
    fn detection_coder(&self) -> Option<&BoxCoder> {
        match self {
            Targets::Detection(coder) => Some(coder),
            Targets::TwoStage(rpn) => Some(rpn.box_coder()),
            Targets::Proposals(_) => None,
        }
    }
}

/// The checkpoint files of a run folder.
pub fn last_checkpoint(out: &Path) -> PathBuf {
    out.join("last.safetensors")
}

/// The folder of a run's snapshots (`snapshot_every`).
pub fn snapshot_dir(out: &Path) -> PathBuf {
    out.join("snapshots")
}

/// The weights kept at `iteration` by `snapshot_every`.
pub fn snapshot_path(out: &Path, iteration: u64) -> PathBuf {
    snapshot_dir(out).join(format!("iter-{iteration:06}.safetensors"))
}

/// Whether iteration `it` is one of every `k` (never for k = 0).
fn every(it: u64, k: u64) -> bool {
    k > 0 && it.is_multiple_of(k)
}

/// The best checkpoint (highest VOC07 mAP, or lowest epoch loss without a test set).
pub fn best_checkpoint(out: &Path) -> PathBuf {
    out.join("best.safetensors")
}

/// The configuration a run folder was trained with (from `last.json`), for `--resume`.
pub fn saved_config(out: &Path) -> Result<serde_json::Value> {
    let path = last_checkpoint(out);
    if !path.is_file() {
        crate::bail_input!("--resume: {}: no checkpoint to resume from", path.display());
    }
    // The state inside the checkpoint, not the readable copy beside it: a crash between the two
    // renames could leave the copy a step behind.
    Ok(checkpoint::load(&path)?.state.config)
}

/// Everything a running training holds.
struct Run {
    config: TrainConfig,
    options: TrainOptions,
    device: Device,
    group: Option<ProcessGroup>,
    targets: Targets,
    loader: Loader,
    test_loader: Option<Loader>,
    vs: nn::VarStore,
    model: Box<dyn Detector>,
    loss: Box<dyn DetectionLoss + Send + Sync>,
    /// A two-stage detector's second stage (its first stage's loss is `loss`).
    second: Option<SecondStage>,
    optimizer: Optimizer,
    schedule: Schedule,
    total_iters: u64,
    state: RunState,
    metrics: Option<MetricsLog>,
    progress: Progress,
}

/// Train as `config` says. Rank 0 (the only process of a single-process run) writes the run
/// folder: `config.json`, `classes.json`, `metrics.jsonl`, `last.safetensors` (+ `.json`),
/// `best.safetensors`, `eval.json` and the plots.
pub fn train(config: TrainConfig, options: TrainOptions) -> Result<TrainSummary> {
    config.validate()?;
    let mut run = Run::new(config, options)?;
    let result = run.train_loop();
    if let Some(group) = run.group.take() {
        if result.is_ok() {
            group.finish()?;
        }
    }
    result
}

fn is_main(group: &Option<ProcessGroup>) -> bool {
    group.as_ref().is_none_or(|g| g.is_main())
}

/// Cores this process may use: the machine's, shared among the local ranks.
fn cores_for_this_process(group: &Option<ProcessGroup>) -> usize {
    let cores = ThreadPlan::available_cores();
    let local_world = std::env::var("LOCAL_WORLD_SIZE")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .or_else(|| {
            let g = group.as_ref()?;
            let local = matches!(
                g.config().master_addr.as_str(),
                "127.0.0.1" | "localhost" | "::1"
            );
            local.then_some(g.world_size())
        })
        .unwrap_or(1);
    (cores / local_world.max(1)).max(1)
}

/// How an epoch's steps ended.
enum EpochEnd {
    /// Every batch of the epoch was taken.
    Done,
    /// The run reached its last iteration within the epoch.
    Cut,
    /// Ctrl-C or `stop_after`: a checkpoint was saved.
    Interrupted,
}

/// One step's images (over all ranks), wall time since the previous step, and of that time
/// the seconds the loop waited for the loader's next batch.
#[derive(Debug, Clone, Copy)]
struct StepTiming {
    images: usize,
    seconds: f64,
    data_wait: f64,
}

/// Where this process trains: its process group (distributed launch), device and thread split.
struct Placement {
    group: Option<ProcessGroup>,
    device: Device,
    plan: ThreadPlan,
    rank: usize,
    world: usize,
}

impl Placement {
    /// The process group from the flags, else torchrun's variables; on CUDA, each rank on its
    /// own GPU (`cuda:LOCAL_RANK`). Applies the thread split and cuDNN's autotuner setting.
    fn new(config: &TrainConfig) -> Result<Self> {
        let dist = DistConfig::from_flags_or_env(
            config.world_size,
            config.rank,
            config.master.as_deref(),
        )?;
        let mut device = crate::device::parse_device(&config.device)?;
        let group = match dist {
            None => None,
            Some(mut d) => {
                d = d.with_timeout(Duration::from_secs_f64(config.dist_timeout));
                if let Some(b) = &config.dist_backend {
                    d = d.with_backend(b.parse::<Backend>()?);
                }
                if device.is_cuda() {
                    device = d.local_cuda_device(tch::Cuda::device_count())?;
                }
                Some(ProcessGroup::new(&d, device)?)
            }
        };
        let (rank, world) = group
            .as_ref()
            .map_or((0, 1), |g| (g.rank(), g.world_size()));
        let plan =
            ThreadPlan::for_device(device, cores_for_this_process(&group)).with_env_threads()?;
        plan.apply();
        if device.is_cuda() {
            crate::device::set_cudnn_benchmark(config.cudnn_benchmark);
        }
        Ok(Self {
            group,
            device,
            plan,
            rank,
            world,
        })
    }

    fn main(&self) -> bool {
        is_main(&self.group)
    }
}

/// The training data: loaders and what the loss needs from the dataset.
struct TrainData {
    classes: ClassMap,
    loader: Loader,
    test_loader: Option<Loader>,
    /// Objects per class, background first (static class weights).
    class_histogram: Vec<f64>,
}

impl Run {
    fn new(mut config: TrainConfig, options: TrainOptions) -> Result<Self> {
        let place = Placement::new(&config)?;
        let main = place.main();
        let resumed = if options.resume {
            Some(checkpoint::load(&last_checkpoint(&config.out)).context("--resume")?)
        } else {
            None
        };
        let spec = load_spec(&config, resumed.as_ref())?;
        // Scores have a background column exactly when the spec's head does.
        config.decode.background_column = spec.has_background_column();
        let targets = Targets::for_spec(&spec)?;
        let data = TrainData::open(&config, &spec, &targets.encoder(), resumed.as_ref(), &place)?;

        tch::manual_seed(config.seed as i64);
        let vs = nn::VarStore::new(place.device);
        let model = build_model(&vs, &config, &spec, &data.classes, resumed.is_none(), main)?;
        let loss = build_loss(&config, &spec, &place, &data.class_histogram)?;
        let second = SecondStage::new(&config, &spec, place.rank, place.world)?;
        let mut optimizer = Optimizer::new(config.optimizer_config(), trainable_params(&vs));
        let iters_per_epoch = data.loader.batches_per_epoch() as u64;
        let total_iters = total_iterations(&config, &data.loader)?;
        let schedule = config.schedule(total_iters)?;

        let mut state = fresh_state(&config, &spec, &data.classes, place.world)?;
        if let Some(ckpt) = resumed {
            state = restore(ckpt, state, &config, &vs, &mut optimizer, loss.as_ref())?;
        }
        if let Some(g) = &place.group {
            g.broadcast_varstore(&vs)?;
        }
        // After loading and broadcasting (the collectives take contiguous tensors). Buffers the
        // optimizer makes later copy their variable's layout; those a resume restored are
        // converted with the variables.
        crate::device::convert_variables(&vs, config.memory_format())?;
        optimizer.convert_state(config.memory_format())?;

        let metrics = if main {
            Some(prepare_run_folder(&config, &options, &data)?)
        } else {
            None
        };
        let progress = Progress::new(
            main,
            options.progress_bar,
            total_iters,
            state.iteration,
            options.log_every,
        );
        if main {
            progress.line(&start_line(
                &spec,
                &data,
                &place,
                iters_per_epoch,
                total_iters,
            ));
        }
        Ok(Self {
            config,
            options,
            device: place.device,
            group: place.group,
            targets,
            loader: data.loader,
            test_loader: data.test_loader,
            vs,
            model,
            loss,
            second,
            optimizer,
            schedule,
            total_iters,
            state,
            metrics,
            progress,
        })
    }

    fn main(&self) -> bool {
        is_main(&self.group)
    }

    fn train_loop(&mut self) -> Result<TrainSummary> {
        let mut last = None;
        let mut eval = None;
        let mut interrupted = false;
        while self.state.iteration < self.total_iters {
            let epoch = self.state.epoch;
            match self.run_epoch(epoch, &mut last)? {
                EpochEnd::Interrupted => {
                    interrupted = true;
                    break;
                }
                EpochEnd::Done => self.end_epoch(epoch, &mut eval)?,
                EpochEnd::Cut => {}
            }
        }
        if !interrupted {
            self.finish_run(&mut eval)?;
        }
        self.progress.finish();
        let (eval, coco, recall) = match eval {
            Some(RunEval::Voc(r)) => (Some(r), None, None),
            Some(RunEval::Coco(r, c)) => (Some(r), Some(*c), None),
            Some(RunEval::Recall(r)) => (None, None, Some(r)),
            None => (None, None, None),
        };
        Ok(TrainSummary {
            out: self.config.out.clone(),
            iterations: self.state.iteration,
            total_iterations: self.total_iters,
            interrupted,
            last,
            eval,
            coco,
            recall,
            nonfinite_skips: self.state.nonfinite_skips,
        })
    }

    /// The steps of `epoch` from `state.next_batch` on, until the epoch ends, the run reaches
    /// its last iteration, or a stop is asked for (a checkpoint is then saved). `last` keeps
    /// the last finite step's statistics.
    fn run_epoch(&mut self, epoch: u64, last: &mut Option<LossStats>) -> Result<EpochEnd> {
        let iters_per_epoch = self.loader.batches_per_epoch();
        let mut batches = self.loader.epoch_from(epoch, self.state.next_batch);
        let mut tick = Instant::now();
        let mut exhausted = false;
        while self.state.iteration < self.total_iters {
            let wait_start = Instant::now();
            let Some(batch) = batches.next() else {
                exhausted = true;
                break;
            };
            let data_wait = wait_start.elapsed().as_secs_f64();
            let batch = batch?;
            let iter = self.state.iteration;
            let lr = self.schedule.lr(iter);
            // The loss's random stream follows the run's step count, so a step skipped on an
            // all-unreadable batch leaves no drift between a resumed and an unbroken run.
            self.loss.set_calls(self.state.loss_calls);
            let stats = self.step(&batch, lr)?;
            self.state.iteration += 1;
            self.state.loss_calls += 1;
            self.state.next_batch = batch.index + 1;
            let images = batch.len() * self.group.as_ref().map_or(1, |g| g.world_size());
            let seconds = tick.elapsed().as_secs_f64();
            tick = Instant::now();
            let timing = StepTiming {
                images,
                seconds,
                data_wait,
            };
            self.record_step(iter, epoch, stats, lr, timing, last)?;
            if self.stop_requested()? {
                self.save(false)?;
                self.progress.line(&format!(
                    "stopped at iteration {}: checkpoint {} saved; continue with --resume",
                    self.state.iteration,
                    last_checkpoint(&self.config.out).display()
                ));
                return Ok(EpochEnd::Interrupted);
            }
            let saving = Instant::now();
            // (At an epoch's last batch the epoch end saves anyway.)
            if every(self.state.iteration, self.config.checkpoint_every)
                && self.state.next_batch < iters_per_epoch
            {
                self.save(false)?;
            }
            if every(self.state.iteration, self.config.snapshot_every) {
                self.snapshot()?;
            }
            // Checkpoints and snapshots stay out of the step times, as the epoch end's do.
            tick += saving.elapsed();
        }
        drop(batches);
        Ok(if exhausted || self.state.next_batch >= iters_per_epoch {
            EpochEnd::Done
        } else {
            EpochEnd::Cut
        })
    }

    /// Log a step's statistics, or count a non-finite one (and stop the run after
    /// `max_nonfinite` in a row).
    fn record_step(
        &mut self,
        iter: u64,
        epoch: u64,
        stats: Option<LossStats>,
        lr: f64,
        timing: StepTiming,
        last: &mut Option<LossStats>,
    ) -> Result<()> {
        let Some(s) = stats else {
            self.state.nonfinite_in_row += 1;
            self.state.nonfinite_skips += 1;
            self.log_nonfinite(iter, epoch)?;
            let nonfinite_in_row = self.state.nonfinite_in_row;
            if nonfinite_in_row >= self.config.max_nonfinite {
                bail!(
                    "stopping: {nonfinite_in_row} non-finite losses in a row (iterations {} to {iter}); \
                     lower --lr or add --warmup / --grad-clip. The last good checkpoint is {} (untouched)",
                    iter + 1 - nonfinite_in_row as u64,
                    last_checkpoint(&self.config.out).display()
                );
            }
            return Ok(());
        };
        self.state.nonfinite_in_row = 0;
        self.state
            .epoch_progress
            .add(&s, timing.images, timing.seconds, timing.data_wait);
        self.log_step(iter, epoch, &s, lr, timing)?;
        *last = Some(s);
        Ok(())
    }

    /// Whether to stop after this step: Ctrl-C or `stop_after`, on any rank (every rank then
    /// stops after the same step).
    fn stop_requested(&self) -> Result<bool> {
        let mut stop_now = self.options.interrupt.load(Ordering::Relaxed)
            || self
                .options
                .stop_after
                .is_some_and(|s| self.state.iteration >= s);
        if let Some(g) = &self.group {
            let mut any = [f64::from(u8::from(stop_now))];
            g.all_reduce_f64(&mut any)?;
            stop_now = any[0] > 0.0;
        }
        Ok(stop_now)
    }

    /// After a whole epoch: its summary, an evaluation when one is due (not after the last
    /// epoch: the run's end evaluates), the best score, a checkpoint.
    fn end_epoch(&mut self, epoch: u64, eval: &mut Option<RunEval>) -> Result<()> {
        let progress = std::mem::take(&mut self.state.epoch_progress);
        self.state.epoch += 1;
        self.state.next_batch = 0;
        self.epoch_summary(epoch, &progress);
        let eval_due = every(self.state.epoch, self.config.eval_every);
        let is_last = self.state.iteration >= self.total_iters;
        if eval_due && !is_last {
            *eval = self.evaluate()?.or(eval.take());
        }
        let improved = self.update_best(eval, &progress, eval_due && !is_last);
        self.save(improved)
    }

    /// The end of a run that was not stopped: the final evaluation (with a test set), the last
    /// checkpoint, the plots.
    fn finish_run(&mut self, eval: &mut Option<RunEval>) -> Result<()> {
        if self.config.test_sets.is_some() {
            *eval = self.evaluate()?.or(eval.take());
            let improved = self.update_best(eval, &EpochProgress::default(), true);
            self.save(improved)?;
        } else {
            self.save(false)?;
        }
        if self.main() {
            match crate::eval::plot::plot_run(&self.config.out, None) {
                Ok(plots) => {
                    for p in plots.loss.iter().chain(&plots.pr) {
                        self.progress.line(&format!("wrote {}", p.display()));
                    }
                }
                Err(e) => self.progress.line(&format!("warning: no plots: {e:#}")),
            }
        }
        Ok(())
    }

    /// One iteration: forward, loss normalised by the global positives, backward, all-reduce,
    /// update. `None` when the loss is NaN or inf (the step is skipped).
    fn step(&mut self, batch: &crate::data::Batch, lr: f64) -> Result<Option<LossStats>> {
        let empty = batch.is_empty();
        let (sums, second) = if empty {
            // Every image of this rank's batch was unreadable: contribute nothing, but take part
            // in the collectives like the other ranks.
            let zero = || LossSums::zero(self.device);
            (zero(), self.second.as_ref().map(|_| zero()))
        } else {
            self.forward_sums(batch)?
        };
        let global = global_normalizer_by(
            self.group.as_ref(),
            &sums,
            self.loss.normalization(),
            self.loss.normalize_by(),
        )?;
        let mut stats = global.stats();
        let mut total = global.finish(sums).total;
        if let (Some(stage), Some(sums)) = (&self.second, second) {
            let global = stage.normalizer(self.group.as_ref(), &sums)?;
            stats = stats.with_second_stage(&global.stats());
            total = total.f_add(&global.finish(sums).total)?;
        }
        if !(stats.total.is_finite() && stats.loc_sum.is_finite() && stats.cls_sum.is_finite()) {
            return Ok(None);
        }
        self.optimizer.zero_grad();
        if !empty {
            total.backward();
        }
        if let Some(g) = &self.group {
            g.all_reduce_varstore_gradients(&self.vs, GradReduction::Sum)?;
        }
        if let Some(max_norm) = self.config.grad_clip {
            clip_grad_norm(self.optimizer.params(), max_norm);
        }
        self.optimizer.step(lr)?;
        Ok(Some(stats))
    }

    /// The batch on the device, the forward pass and the loss's un-normalised parts (a
    /// two-stage detector's: both stages').
    fn forward_sums(&self, batch: &crate::data::Batch) -> Result<(LossSums, Option<LossSums>)> {
        // The loader pinned the batch on CUDA: the copies are queued, not waited for.
        let to_device = |t: &Tensor| crate::device::to_device_async(t, self.device);
        let images = to_device(&batch.images);
        let images = crate::device::to_memory_format(&images, self.config.memory_format())?;
        let loc_targets = to_device(&batch.loc_targets);
        let cls_targets = to_device(&batch.cls_targets);
        // As PyTorch's AMP recipe: forward and loss under autocast, backward outside.
        crate::device::autocast(self.device, self.config.autocast, || {
            if let (Some(stage), Some(model)) = (&self.second, self.model.two_stage()) {
                let targets = StepTargets {
                    images: &images,
                    loc_targets: &loc_targets,
                    cls_targets: &cls_targets,
                    batch,
                };
                let (first, second) =
                    stage.sums(model, self.loss.as_ref(), &targets, self.state.loss_calls)?;
                return Ok((first, Some(second)));
            }
            let (loc_preds, cls_preds) = self.model.forward_t(&images, true)?;
            let inputs = LossInputs {
                loc_preds: &loc_preds,
                loc_targets: &loc_targets,
                cls_preds: &cls_preds,
                cls_targets: &cls_targets,
            };
            Ok((self.loss.sums(&inputs)?, None))
        })
    }

    fn log_step(
        &mut self,
        iter: u64,
        epoch: u64,
        s: &LossStats,
        lr: f64,
        timing: StepTiming,
    ) -> Result<()> {
        let images_per_s = timing.images as f64 / timing.seconds.max(1e-9);
        if let Some(m) = &mut self.metrics {
            let mut record = json!({
                "kind": "step", "iter": iter, "epoch": epoch,
                "loc_per_pos": s.loc_per_pos, "cls_per_pos": s.cls_per_pos, "total": s.total,
                "num_pos": s.num_pos, "num_neg": s.num_neg, "lr": lr, "images_per_s": images_per_s,
                "images": timing.images, "seconds": timing.seconds,
                "data_wait_seconds": timing.data_wait,
            });
            if let Some(r) = &s.second_stage {
                record["roi_loc_per_pos"] = json!(r.loc_per_pos);
                record["roi_cls_per_pos"] = json!(r.cls_per_pos);
                record["roi_num_pos"] = json!(r.num_pos);
                record["roi_num_neg"] = json!(r.num_neg);
            }
            // On CUDA, the caching allocator's peak so far (torch.cuda.max_memory_allocated).
            if let Some(memory) = crate::memory::device_memory(self.device)? {
                record["peak_cuda_allocated_mib"] = json!(memory.peak_allocated_mib());
            }
            m.write(&record)?;
        }
        self.progress.step(iter, epoch, s, lr, images_per_s);
        Ok(())
    }

    fn log_nonfinite(&mut self, iter: u64, epoch: u64) -> Result<()> {
        if let Some(m) = &mut self.metrics {
            m.write(&json!({"kind": "nonfinite", "iter": iter, "epoch": epoch}))?;
        }
        self.progress.line(&format!(
            "iteration {iter}: the loss is NaN or inf, step skipped ({} so far)",
            self.state.nonfinite_skips
        ));
        Ok(())
    }

    fn epoch_summary(&mut self, epoch: u64, sum: &EpochProgress) {
        if sum.steps == 0 {
            return;
        }
        let n = sum.steps as f64;
        let line = format!(
            "epoch {epoch} done: {} iterations | loc_loss {:.4} | cls_loss {:.4} | total {:.4} (means per positive) | {:.1} img/s, {:.0}% of it waiting for data | unreadable images skipped so far {} | non-finite steps {}",
            sum.steps,
            sum.loc_per_pos / n,
            sum.cls_per_pos / n,
            sum.total / n,
            sum.images as f64 / sum.seconds.max(1e-9),
            100.0 * sum.data_wait_share(),
            self.loader.stats().skipped(),
            self.state.nonfinite_skips,
        );
        self.progress.line(&line);
        if let Some(m) = &mut self.metrics {
            let _ = m.write(&json!({
                "kind": "epoch", "epoch": epoch, "iter": self.state.iteration,
                "loc_per_pos": sum.loc_per_pos / n, "cls_per_pos": sum.cls_per_pos / n, "total": sum.total / n,
                "images_per_s": sum.images as f64 / sum.seconds.max(1e-9),
                "data_wait_share": sum.data_wait_share(),
                "skipped_images": self.loader.stats().skipped(),
            }));
        }
    }

    /// Evaluate on the test set (rank 0; the others wait): a detector's VOC mAP (with
    /// `--metric coco` also COCO's AP), or an RPN's proposal recall. Writes `eval.json` (and
    /// `eval_coco.json`) and a line in metrics.jsonl (`kind` `eval` or `recall`).
    fn evaluate(&mut self) -> Result<Option<RunEval>> {
        let coco = self.config.metric == EvalMetric::Coco;
        let result = match (&self.test_loader, self.targets.detection_coder()) {
            (Some(_), _) if !self.main() => None,
            (Some(loader), Some(coder)) if coco => {
                let (voc, coco) = evaluate_detector_voc_coco(
                    self.model.as_ref(),
                    coder,
                    loader,
                    &self.config.decode,
                    &VocEvalConfig::default(),
                    self.device,
                )?;
                Some(RunEval::Coco(voc, Box::new(coco)))
            }
            (Some(loader), Some(coder)) => {
                let voc = VocEvalConfig::default();
                let (result, _) = evaluate_detector(
                    self.model.as_ref(),
                    coder,
                    loader,
                    &self.config.decode,
                    &voc,
                    self.device,
                )?;
                Some(RunEval::Voc(result))
            }
            (Some(loader), None) => match &self.targets {
                Targets::Proposals(rpn) => Some(RunEval::Recall(evaluate_proposals(
                    self.model.as_ref(),
                    rpn,
                    loader,
                    self.device,
                )?)),
                _ => None,
            },
            (None, _) => None,
        };
        if let Some(result) = &result {
            self.record_eval(result)?;
        }
        self.wait_for_main()?;
        Ok(result)
    }

    /// `eval.json`, the log line and the metrics.jsonl record of an evaluation.
    fn record_eval(&mut self, result: &RunEval) -> Result<()> {
        let (iter, epochs_done) = (self.state.iteration, self.state.epoch);
        let path = self.config.out.join("eval.json");
        let (line, record) = match result {
            RunEval::Voc(r) => {
                r.write_json(&path)?;
                (
                    format!(
                        "mAP VOC07 {:.4} | area {:.4} ({} images)",
                        r.map_voc07, r.map_area, r.n_images
                    ),
                    json!({
                        "kind": "eval", "iter": iter, "epochs_done": epochs_done,
                        "map_voc07": r.map_voc07, "map_area": r.map_area,
                    }),
                )
            }
            RunEval::Coco(r, c) => {
                r.write_json(&path)?;
                c.write_json(&self.config.out.join("eval_coco.json"))?;
                coco_eval_line(r, c, iter, epochs_done)
            }
            RunEval::Recall(r) => {
                r.write_json(&path)?;
                (
                    r.line(),
                    json!({
                        "kind": "recall", "iter": iter, "epochs_done": epochs_done,
                        "ar_100": r.ar_100, "ar_300": r.ar_300, "ar_1000": r.ar_1000,
                        "recall_50": r.recall_50, "recall_70": r.recall_70,
                    }),
                )
            }
        };
        self.progress
            .line(&format!("eval at iteration {iter}: {line}"));
        if let Some(m) = &mut self.metrics {
            m.write(&record)?;
        }
        Ok(())
    }

    /// Record a new best: the eval's VOC07 mAP (an RPN's AR@1000) when `evaluated`, else (no
    /// test set) the epoch's mean loss (negated, so higher is better). Returns whether it
    /// improved.
    fn update_best(
        &mut self,
        eval: &Option<RunEval>,
        sum: &EpochProgress,
        evaluated: bool,
    ) -> bool {
        let score = if evaluated {
            eval.as_ref().map(RunEval::score).filter(|m| m.is_finite())
        } else if self.test_loader.is_none() && sum.steps > 0 {
            Some(-sum.total / sum.steps as f64)
        } else {
            None
        };
        match (score, self.state.best) {
            (Some(s), Some((best, _))) if s <= best => false,
            (Some(s), _) => {
                self.state.best = Some((s, self.state.iteration));
                true
            }
            (None, _) => false,
        }
    }

    /// Save `last` (and `best`); rank 0 writes, the others wait. Weights that hold NaN or inf
    /// (a step that blew up just before) are not saved: the last good checkpoint stays.
    fn save(&mut self, best: bool) -> Result<()> {
        if self.main() && !weights_finite(&self.vs) {
            self.progress.line(&format!(
                "warning: the weights hold NaN or inf at iteration {}: checkpoint not written, {} keeps the last good one",
                self.state.iteration,
                last_checkpoint(&self.config.out).display()
            ));
        } else if self.main() {
            let model: HashMap<String, Tensor> = self.vs.variables();
            let optim = self.optimizer.state_tensors();
            checkpoint::save(
                &last_checkpoint(&self.config.out),
                &model,
                &optim,
                &self.state,
            )?;
            if best {
                checkpoint::save(
                    &best_checkpoint(&self.config.out),
                    &model,
                    &optim,
                    &self.state,
                )?;
            }
        }
        self.wait_for_main()
    }

    /// The model's weights and the run state (no optimizer state) at this iteration, in
    /// [`snapshot_path`].
    fn snapshot(&mut self) -> Result<()> {
        if self.main() {
            let dir = snapshot_dir(&self.config.out);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = snapshot_path(&self.config.out, self.state.iteration);
            checkpoint::save(&path, &self.vs.variables(), &[], &self.state)?;
        }
        self.wait_for_main()
    }

    /// Other ranks wait (up to an hour) while rank 0 evaluates or writes.
    fn wait_for_main(&self) -> Result<()> {
        match &self.group {
            Some(g) => g.barrier_within(Duration::from_secs(3600)),
            None => Ok(()),
        }
    }
}

/// The model spec: the file's, which must equal the checkpoint's when resuming.
fn load_spec(config: &TrainConfig, resumed: Option<&checkpoint::Checkpoint>) -> Result<ModelSpec> {
    let spec = ModelSpec::load(&config.model)?;
    if let Some(ckpt) = resumed {
        if !same_model(&spec.to_json(), &ckpt.state.spec) {
            crate::bail_input!(
                "model spec {} does not match the checkpoint {} (trained with spec {:?})",
                config.model.display(),
                last_checkpoint(&config.out).display(),
                ckpt.state
                    .spec
                    .get("name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
            );
        }
    }
    Ok(spec)
}

impl TrainData {
    /// The training set and its loader (this rank's shard), and on rank 0 the test loader.
    fn open(
        config: &TrainConfig,
        spec: &ModelSpec,
        encoder: &Arc<dyn TargetEncoder>,
        resumed: Option<&checkpoint::Checkpoint>,
        place: &Placement,
    ) -> Result<Self> {
        let dataset = open_training_set(config, resumed, place.main())?;
        let classes = dataset.classes.clone();
        let [w, h] = spec.input_size;
        let input_size = [w as u32, h as u32];
        let loader_config = loader_config(config, place, input_size);
        let workers = loader_config.workers;
        let class_histogram = object_histogram(&dataset, classes.len(), config.use_difficult);
        let loader = Loader::new(Arc::new(dataset), encoder.clone(), loader_config)?;
        let test_loader = match (&config.test_sets, place.main()) {
            (Some(sets), true) => {
                let test = crate::eval::open_for_eval_from(
                    &config.data_source(),
                    &sets.split(',').map(str::to_string).collect::<Vec<_>>(),
                    Some(classes.clone()),
                    true,
                )?;
                Some(Loader::new(
                    Arc::new(test),
                    encoder.clone(),
                    LoaderConfig::eval(input_size, config.batch, workers),
                )?)
            }
            _ => None,
        };
        Ok(Self {
            classes,
            loader,
            test_loader,
            class_histogram,
        })
    }
}

/// The training images of `--data --sets`, with the checkpoint's classes, a given list, or the
/// discovered ones. Rank 0 reports the problems it skipped.
fn open_training_set(
    config: &TrainConfig,
    resumed: Option<&checkpoint::Checkpoint>,
    main: bool,
) -> Result<VocDataset> {
    let classes = match (resumed, &config.classes) {
        (Some(ckpt), _) => Some(ClassMap::new(ckpt.state.classes.clone())?),
        (None, Some(path)) => Some(ClassMap::load(path)?),
        (None, None) => None,
    };
    let read = ReadOptions {
        classes,
        ..ReadOptions::default()
    };
    let (dataset, report) = open_dataset(&config.data_source(), &config.set_specs()?, &read)?;
    if dataset.is_empty() {
        crate::bail_input!(
            "--data {} --sets {}: no usable images ({})",
            config.data.display(),
            dataset.sets.join(","),
            report.summary_line()
        );
    }
    if main && !report.problems.is_empty() {
        eprintln!("data: {} images; {}", dataset.len(), report.summary_line());
    }
    Ok(dataset)
}

/// The training loader's settings for this rank: its shard, its workers, and on CUDA batches
/// pinned for its own GPU.
fn loader_config(config: &TrainConfig, place: &Placement, input_size: [u32; 2]) -> LoaderConfig {
    let (rank, world) = (place.rank, place.world);
    LoaderConfig {
        batch_size: config.batch,
        workers: config.workers.unwrap_or(place.plan.workers).max(1),
        shuffle: true,
        drop_last: world > 1,
        seed: config.seed,
        input_size,
        augment: Some(config.augment.clone()),
        use_difficult: config.use_difficult,
        pin_memory: place.device.is_cuda().then_some(place.device),
        shard: Shard { rank, world },
        keep_empty_batches: world > 1,
        ..LoaderConfig::default()
    }
}

/// The detector of `spec` in `vs`; on a fresh start, its backbone from `--init` when given.
fn build_model(
    vs: &nn::VarStore,
    config: &TrainConfig,
    spec: &ModelSpec,
    classes: &ClassMap,
    fresh_start: bool,
    main: bool,
) -> Result<Box<dyn Detector>> {
    let model = models::build(vs.root(), spec, classes.len() as i64)
        .with_context(|| format!("building {}", config.model.display()))?;
    if let (Some(init), true) = (&config.init, fresh_start) {
        let (n, what) = match models::load_init(vs, spec, init)? {
            models::InitWeights::Model(n) => (n, "model"),
            models::InitWeights::Backbone(n) => (n, "backbone"),
        };
        if main {
            eprintln!("init: {n} {what} tensors from {}", init.display());
        }
    }
    Ok(model)
}

/// The loss [`TrainConfig::loss_setup`] describes; the RPN loss also learns this process's
/// place in a data-parallel run (its sampler keys images by their place in the global batch).
fn build_loss(
    config: &TrainConfig,
    spec: &ModelSpec,
    place: &Placement,
    class_histogram: &[f64],
) -> Result<Box<dyn DetectionLoss + Send + Sync>> {
    let (kind, mut options) = config.loss_setup(spec, place.rank, class_histogram)?;
    if kind == LossKind::Rpn {
        if let Some(o) = options.as_object_mut() {
            o.insert("rank".into(), json!(place.rank));
            o.insert("world_size".into(), json!(place.world));
        }
    }
    kind.build(options)
}

/// `--iters`, else `--epochs` (default 1) times the batches per epoch.
fn total_iterations(config: &TrainConfig, loader: &Loader) -> Result<u64> {
    let iters_per_epoch = loader.batches_per_epoch() as u64;
    if iters_per_epoch == 0 {
        crate::bail_input!(
            "--batch {} is larger than this process's share of the {} training images",
            config.batch,
            loader.dataset().len()
        );
    }
    Ok(config
        .iters
        .unwrap_or_else(|| config.epochs.unwrap_or(1) * iters_per_epoch))
}

/// The state of a run that has not taken a step.
fn fresh_state(
    config: &TrainConfig,
    spec: &ModelSpec,
    classes: &ClassMap,
    world: usize,
) -> Result<RunState> {
    Ok(RunState {
        tchcv_version: crate::version().to_string(),
        iteration: 0,
        epoch: 0,
        next_batch: 0,
        loss_calls: 0,
        nonfinite_skips: 0,
        nonfinite_in_row: 0,
        epoch_progress: Default::default(),
        world_size: world,
        best: None,
        classes: classes.names().to_vec(),
        spec: spec.to_json(),
        config: serde_json::to_value(config)?,
    })
}

/// Continue from `ckpt`: its weights into `vs`, its optimizer state, its place in the run (with
/// this run's configuration and world size) and the loss's random streams. Refuses what cannot
/// continue exactly: a half-done epoch on another batch size or world size, another optimizer.
fn restore(
    ckpt: checkpoint::Checkpoint,
    fresh: RunState,
    config: &TrainConfig,
    vs: &nn::VarStore,
    optimizer: &mut Optimizer,
    loss: &(dyn DetectionLoss + Send + Sync),
) -> Result<RunState> {
    let world = fresh.world_size;
    let file = last_checkpoint(&config.out);
    let saved: TrainConfig = serde_json::from_value(ckpt.state.config.clone()).map_err(|e| {
        crate::bad_input(format!(
            "--resume: {}: the run's saved configuration does not read: {e}",
            file.display()
        ))
    })?;
    check_resumable(&saved, config, &ckpt.state, world)?;
    crate::io::load_into_varstore(
        vs,
        &ckpt.model,
        false,
        &last_checkpoint(&config.out).display().to_string(),
    )?;
    optimizer
        .load_state(ckpt.optim)
        .with_context(|| format!("{}: restoring the optimizer state", file.display()))?;
    let state = RunState {
        config: fresh.config,
        world_size: world,
        ..ckpt.state
    };
    loss.set_calls(state.loss_calls);
    Ok(state)
}

/// Whether the run saved with configuration `saved` (and run state `state`) can go on under
/// `config` with `world` processes: the same batch and world mid-epoch, the same optimizer (its
/// state), and the same evaluation metric (`best` is the highest of one metric).
fn check_resumable(
    saved: &TrainConfig,
    config: &TrainConfig,
    state: &RunState,
    world: usize,
) -> Result<()> {
    let mid_epoch = state.next_batch > 0;
    if mid_epoch && (saved.batch != config.batch || state.world_size != world) {
        crate::bail_input!(
            "--resume: the run stopped in the middle of epoch {} with --batch {} on {} process(es); \
             it can only continue that epoch the same way (got --batch {} on {world})",
            state.epoch,
            saved.batch,
            state.world_size,
            config.batch
        );
    }
    if saved.optimizer != config.optimizer {
        crate::bail_input!(
            "--resume: the run was trained with --optimizer {:?}; its state does not fit {:?}",
            saved.optimizer,
            config.optimizer
        );
    }
    if saved.metric != config.metric {
        let name = |m: EvalMetric| format!("{m:?}").to_lowercase();
        crate::bail_input!(
            "--resume: the run picks `best` by --metric {}; resuming with --metric {} would compare unlike scores (resume with the run's metric, or start a new run)",
            name(saved.metric),
            name(config.metric)
        );
    }
    Ok(())
}

/// Rank 0's run folder: `config.json`, `classes.json` and `data.json` (the training images and
/// objects per class, which `tchcv compare` orders classes by) written, a fresh start's stale
/// checkpoints removed, and `metrics.jsonl` opened (appended to on resume).
fn prepare_run_folder(
    config: &TrainConfig,
    options: &TrainOptions,
    data: &TrainData,
) -> Result<MetricsLog> {
    let out = &config.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::io::write_bytes_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(config)?.as_bytes(),
    )?;
    data.classes.save_json(&out.join("classes.json"))?;
    let objects: serde_json::Map<String, serde_json::Value> = data
        .classes
        .names()
        .iter()
        .zip(data.class_histogram.iter().skip(1))
        .map(|(name, &count)| (name.clone(), json!(count as u64)))
        .collect();
    let summary = json!({
        "images": data.loader.dataset().len(),
        "objects_per_class": objects,
        "use_difficult": config.use_difficult,
    });
    crate::io::write_bytes_atomic(
        &out.join("data.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    if !options.resume && last_checkpoint(out).exists() {
        eprintln!(
            "note: {} holds an earlier run; starting afresh removes its checkpoints, evaluation and metrics (continue it with --resume instead)",
            out.display()
        );
        for stale in [
            last_checkpoint(out),
            best_checkpoint(out),
            out.join("eval.json"),
            out.join("eval_coco.json"),
        ] {
            let _ = std::fs::remove_file(checkpoint::state_json_path(&stale));
            let _ = std::fs::remove_file(&stale);
        }
    }
    MetricsLog::open(&out.join("metrics.jsonl"), options.resume)
}

/// The log line and the metrics.jsonl record of a `--metric coco` evaluation: COCO's AP,
/// AP50 and AP75, and the VOC mAP of the same detections.
fn coco_eval_line(
    voc: &VocEvalResult,
    coco: &CocoEvalResult,
    iter: u64,
    epochs_done: u64,
) -> (String, serde_json::Value) {
    let stat = |name: &str| coco.stat(name).unwrap_or(-1.0);
    let (ap, ap50, ap75) = (stat("AP"), stat("AP50"), stat("AP75"));
    (
        format!(
            "COCO AP {ap:.4} | AP50 {ap50:.4} | AP75 {ap75:.4} | mAP VOC07 {:.4} ({} images)",
            voc.map_voc07, voc.n_images
        ),
        json!({
            "kind": "eval", "iter": iter, "epochs_done": epochs_done,
            "map_voc07": voc.map_voc07, "map_area": voc.map_area,
            "coco_ap": ap, "coco_ap50": ap50, "coco_ap75": ap75,
        }),
    )
}

/// The line a run starts with: model, data, schedule and the thread split.
fn start_line(
    spec: &ModelSpec,
    data: &TrainData,
    place: &Placement,
    iters_per_epoch: u64,
    total_iters: u64,
) -> String {
    format!(
        "train: {} ({} anchors, {} classes) on {} | {} images, {} iterations/epoch, {} iterations | {} workers, {} torch threads{}",
        spec.name,
        spec.num_anchors(),
        data.classes.len(),
        crate::device::device_name(place.device),
        data.loader.dataset().len(),
        iters_per_epoch,
        total_iters,
        data.loader.config().workers,
        place.plan.torch_threads,
        place.group.as_ref().map_or(String::new(), |g| format!(" | rank 0 of {} ({})", g.world_size(), g.backend().name())),
    )
}

/// Whether every variable (weights and batch-norm statistics) is finite.
fn weights_finite(vs: &nn::VarStore) -> bool {
    let _no_grad = tch::no_grad_guard();
    vs.variables()
        .values()
        .all(|t| !t.is_floating_point() || t.isfinite().all().int64_value(&[]) == 1)
}

/// Two specs (as JSON) describe the same model: equal but for the free-text `description`.
fn same_model(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let without_description = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(fields) = v.as_object_mut() {
            fields.remove("description");
        }
        v
    };
    without_description(a) == without_description(b)
}

/// Objects per class in the training set (background count 0 first; crowd regions, which are
/// never positives, not counted), for static class weights.
fn object_histogram(dataset: &VocDataset, classes: usize, use_difficult: bool) -> Vec<f64> {
    let mut counts = vec![0.0; classes + 1];
    for object in dataset.records.iter().flat_map(|r| &r.objects) {
        if !object.crowd && (use_difficult || !object.difficult) {
            counts[object.class_id + 1] += 1.0;
        }
    }
    counts
}

/// Scale gradients so their global L2 norm is at most `max_norm` (`clip_grad_norm_`).
fn clip_grad_norm(params: &[Param], max_norm: f64) {
    let _no_grad = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .iter()
        .map(|p| p.tensor.grad())
        .filter(|g| g.defined())
        .collect();
    if grads.is_empty() {
        return;
    }
    let norms: Vec<Tensor> = grads
        .iter()
        .map(|g| g.norm().to_kind(Kind::Double))
        .collect();
    let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
    let scale = max_norm / (total + 1e-6);
    if scale < 1.0 {
        for mut g in grads {
            let _ = g.g_mul_scalar_(scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank `rank` of `world` on `device`, without a process group.
    fn placement(device: Device, rank: usize, world: usize) -> Placement {
        Placement {
            group: None,
            device,
            plan: ThreadPlan::for_device(device, 4),
            rank,
            world,
        }
    }

    #[test]
    fn each_rank_pins_batches_for_its_own_gpu() {
        let config = TrainConfig::default();
        for (rank, gpu) in [(0, 0), (1, 1), (3, 3)] {
            let place = placement(Device::Cuda(gpu), rank, 4);
            let loader = loader_config(&config, &place, [160, 160]);
            assert_eq!(loader.pin_memory, Some(Device::Cuda(gpu)), "rank {rank}");
            assert_eq!(loader.shard, Shard { rank, world: 4 });
        }
        let cpu = loader_config(&config, &placement(Device::Cpu, 0, 1), [160, 160]);
        assert_eq!(cpu.pin_memory, None);
    }
}
