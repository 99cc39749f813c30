//! `tchcv bench train`: a whole training run, tchcv against the ordinary PyTorch script for the
//! same detector (`bench/train_reference.py`), one after the other in one run: end-to-end
//! images per second (the training loop's wall clock: data, augmentation, encoding, forward,
//! loss, backward, update, logging; start-up reported apart), the share of the loop spent
//! waiting for data, peak memory, and after equal iterations the VOC07 mAP of both on the same
//! test split, scored by the same evaluator.
//!
//! What makes the two runs the same work:
//!
//! - the same images: the reference reads the list tchcv's reader made of `--data --sets`
//!   (paths, non-difficult boxes in 0-based pixels, labels in tchcv's class order);
//! - the same network and the same initial weights: each seed's weights are drawn once by
//!   tchcv (`tch::manual_seed(seed)`) and loaded by both (`--init`; the parity reference's
//!   modules carry tchcv's variable names);
//! - the same recipe: batch, iterations, optimizer, learning rate, warm-up and decay,
//!   augmentation settings (tchcv's [`AugmentConfig`], passed to the reference as JSON), the
//!   SSD loss with hard negative mining 3:1 divided by the batch's positives (torchcv's), seed;
//! - the same evaluator: both sides' trained weights are loaded into a tchcv model and scored
//!   by [`evaluate_detector`] (decode, NMS and the VOC devkit AP as `tchcv train --test-sets`
//!   does), so the mAP compares the training only;
//! - each side's best split of the cores between data workers and libtorch threads, among a few
//!   candidates, measured by a short probe run of each (the splits used are reported).
//!
//! What differs, on purpose: each side's own random streams (data order, augmentation draws),
//! its loader (tchcv's worker threads, PyTorch's DataLoader processes) and its step. With
//! several `--seeds` the two sides alternate which runs first.
//!
//! With `--snapshot-every K` both sides also keep their weights every K iterations (outside the
//! step times) and every snapshot is scored the same way: the mAP over training time, and the
//! training seconds each side takes to reach a target mAP (`curve.rs`).

mod curve;
pub mod profile;
mod sides;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use serde::Serialize;
use tch::{nn, Device, Tensor};

use super::Comparison;
use crate::bbox::{BoxCoder, DecodeConfig};
use crate::data::{
    AugmentConfig, ClassMap, Loader, LoaderConfig, ReadOptions, SetSpec, VocDataset,
};
use crate::eval::{evaluate_detector, VocEvalConfig};
use crate::spec::ModelSpec;
use crate::train::{OptimizerKind, TrainConfig};
use sides::{RunPlan, Side, SideRun};

/// A split of the cores: data workers and libtorch intra-op threads (`WORKERSxTHREADS`, also in
/// reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Split {
    pub workers: usize,
    pub threads: usize,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.workers, self.threads)
    }
}

impl From<Split> for String {
    fn from(split: Split) -> String {
        split.to_string()
    }
}

impl FromStr for Split {
    type Err = anyhow::Error;

    /// `2x1`: 2 data workers, 1 libtorch thread (each at least 1).
    fn from_str(s: &str) -> Result<Self> {
        let parsed = s
            .split_once('x')
            .and_then(|(w, t)| Some((w.trim().parse().ok()?, t.trim().parse().ok()?)));
        match parsed {
            Some((workers, threads)) if workers >= 1 && threads >= 1 => {
                Ok(Self { workers, threads })
            }
            _ => crate::bail_input!(
                "--workers-split {s:?}: expected WORKERSxTHREADS, both at least 1 (e.g. 1x2)"
            ),
        }
    }
}

/// The candidate splits for `cores` cores: on the CPU (1, c), (c, 1) and (1, 1) for two cores,
/// else (1, c), (c/4, c - c/4), (c/2, c/2) and (c/4, c); on CUDA (the host mostly prepares
/// data) (c - 1, 1), (c/2, 1) and (c/4, 1). Duplicates dropped.
pub fn default_splits(cores: usize, cuda: bool) -> Vec<Split> {
    let c = cores.max(1);
    let quarter = (c / 4).max(1);
    let pairs = if cuda {
        vec![((c - 1).max(1), 1), ((c / 2).max(1), 1), (quarter, 1)]
    } else if c <= 2 {
        vec![(1, c), (c, 1), (1, 1)]
    } else {
        vec![
            (1, c),
            (quarter, c - quarter),
            (c / 2, c - c / 2),
            (quarter, c),
        ]
    };
    let mut splits: Vec<Split> = Vec::new();
    for (workers, threads) in pairs {
        let split = Split { workers, threads };
        if !splits.contains(&split) {
            splits.push(split);
        }
    }
    splits
}

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainBench {
    /// The model spec (an SSD: the reference trains with torchcv's SSD loss).
    #[arg(long, default_value = "models/ssd_small.json")]
    pub model: PathBuf,
    /// The data: a VOC-format folder (or VOCdevkit), e.g. from `tchcv synth`.
    #[arg(long)]
    pub data: PathBuf,
    /// Training sets of --data.
    #[arg(long, default_value = "trainval")]
    pub sets: String,
    /// Sets the mAP is measured on.
    #[arg(long, default_value = "test")]
    pub test_sets: String,
    /// Training iterations, the same on both sides.
    #[arg(long)]
    pub iters: u64,
    /// Images per iteration.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// One run per side per seed (comma separated); the mAP is reported as mean and spread.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Candidate splits of the cores, WORKERSxTHREADS (comma separated; default: from the
    /// cores). With more than one, a probe run of each picks each side's best.
    #[arg(long, value_delimiter = ',')]
    pub workers_split: Vec<Split>,
    /// Iterations of each probe run (0: no probe, the first candidate).
    #[arg(long, default_value_t = 6)]
    pub probe_iters: u64,
    /// Optimizer (the recipe's defaults are `make demo`'s: Adam, lr 0.004, no weight decay,
    /// 100 warm-up iterations, cosine decay, no zoom-out).
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerKind,
    #[arg(long, default_value_t = 0.004)]
    pub lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Linear warm-up iterations (from 0.001 x lr).
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    /// constant, cosine[:MIN_FACTOR] or step:ITER[,ITER...][:GAMMA].
    #[arg(long, default_value = "cosine")]
    pub lr_schedule: String,
    /// Augmentation steps off (comma separated): photometric, zoom-out, crop, flip, all.
    #[arg(long, value_delimiter = ',', default_value = "zoom-out")]
    pub no_augment: Vec<String>,
    /// Weights and images channels-last on both sides (`tchcv train --channels-last`,
    /// `memory_format=torch.channels_last`).
    #[arg(long)]
    pub channels_last: bool,
    /// Both sides log every K iterations.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Instead of the comparison: where one tchcv training iteration's time goes (data wait,
    /// forward and backward by layer type, loss, optimizer, logging), and the network alone.
    #[arg(long)]
    pub profile: bool,
    /// Timed iterations of --profile (each part).
    #[arg(long, default_value_t = 10)]
    pub profile_iters: usize,
    /// Only run tchcv.
    #[arg(long)]
    pub no_reference: bool,
    /// Both sides keep their weights every K iterations; each is scored, giving the mAP over
    /// training time and the time each side takes to reach --target-map.
    #[arg(long, default_value_t = 0)]
    pub snapshot_every: u64,
    /// The mAP whose time to reach is reported (default: 0.9 x the lower of the two sides'
    /// final mean mAP). Needs --snapshot-every.
    #[arg(long)]
    pub target_map: Option<f64>,
    /// Draw both sides' mAP over training time here (PNG). Needs --snapshot-every.
    #[arg(long)]
    pub curve_chart: Option<PathBuf>,
    /// Keep the runs (configurations, logs, weights) in this folder; default: a temporary one,
    /// removed at the end.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// Everything both sides share: the bench's options, the spec, the data list, the scratch
/// folder and the tchcv binary that trains.
pub struct Context<'a> {
    pub bench: &'a TrainBench,
    pub spec: ModelSpec,
    pub device: Device,
    pub classes: ClassMap,
    /// The training set as tchcv reads it.
    pub dataset: Arc<VocDataset>,
    pub augment: AugmentConfig,
    /// Scratch folder: data list, initial weights, runs.
    pub scratch: PathBuf,
    /// The training images for the reference (JSON).
    pub list: PathBuf,
    pub tchcv_bin: PathBuf,
}

impl<'a> Context<'a> {
    /// Check the options, read the training set (tchcv's reader) and write its list.
    pub fn new(bench: &'a TrainBench, device: Device) -> Result<Self> {
        validate(bench)?;
        let spec = ModelSpec::load(&bench.model)?;
        if spec.head != "ssd" || spec.loss != "ssd" {
            crate::bail_input!(
                "{}: bench train compares SSD training (head \"ssd\", loss \"ssd\"); this spec has head {:?}, loss {:?}",
                bench.model.display(),
                spec.head,
                spec.loss
            );
        }
        let mut augment = AugmentConfig::default();
        for step in &bench.no_augment {
            augment.turn_off(step)?;
        }
        let (dataset, _) = VocDataset::open(
            &bench.data,
            &SetSpec::parse_list(&bench.sets)?,
            &ReadOptions::default(),
        )?;
        let scratch = match &bench.keep {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("tchcv-bench-train-{}", std::process::id())),
        };
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let list = scratch.join("images.json");
        let images = super::data::reference_images(&dataset, false);
        let classes = dataset.classes.clone();
        let doc = serde_json::json!({ "classes": classes.names(), "images": images });
        crate::io::write_bytes_atomic(&list, serde_json::to_string(&doc)?.as_bytes())?;
        Ok(Self {
            bench,
            spec,
            device,
            classes,
            dataset: Arc::new(dataset),
            augment,
            scratch,
            list,
            tchcv_bin: tchcv_binary()?,
        })
    }

    /// tchcv's configuration for a run of `plan` into `out` (the seed's initial weights).
    pub fn train_config(&self, plan: &RunPlan, out: &Path) -> Result<TrainConfig> {
        let b = self.bench;
        Ok(TrainConfig {
            data: b.data.clone(),
            sets: b.sets.clone(),
            model: b.model.clone(),
            init: Some(self.init_weights(plan.seed)?),
            iters: Some(plan.iters),
            epochs: None,
            batch: b.batch,
            lr: b.lr,
            optimizer: b.optimizer,
            momentum: b.momentum,
            weight_decay: b.weight_decay,
            warmup: b.warmup,
            lr_schedule: b.lr_schedule.clone(),
            workers: Some(plan.split.workers),
            device: crate::device::device_name(self.device),
            seed: plan.seed,
            out: out.to_path_buf(),
            augment: self.augment.clone(),
            channels_last: b.channels_last,
            snapshot_every: plan.snapshot_every,
            ..TrainConfig::default()
        })
    }

    /// The reference's arguments for a run of `plan` (the same recipe as [`Self::train_config`]).
    pub fn reference_args(&self, plan: &RunPlan) -> Result<Vec<String>> {
        let b = self.bench;
        let config = TrainConfig::default();
        let optimizer = serde_json::to_value(b.optimizer)?;
        let mut args: Vec<String> = [
            ("--spec", b.model.display().to_string()),
            ("--list", self.list.display().to_string()),
            ("--iters", plan.iters.to_string()),
            ("--batch", b.batch.to_string()),
            ("--workers", plan.split.workers.to_string()),
            ("--threads", plan.split.threads.to_string()),
            ("--seed", plan.seed.to_string()),
            (
                "--device",
                if self.device.is_cuda() { "cuda" } else { "cpu" }.to_string(),
            ),
            (
                "--optimizer",
                optimizer.as_str().unwrap_or("sgd").to_string(),
            ),
            ("--lr", b.lr.to_string()),
            ("--momentum", b.momentum.to_string()),
            ("--weight-decay", b.weight_decay.to_string()),
            ("--warmup", b.warmup.to_string()),
            ("--warmup-factor", config.warmup_factor.to_string()),
            ("--lr-schedule", b.lr_schedule.clone()),
            ("--augment", serde_json::to_string(&self.augment)?),
            (
                "--init",
                self.init_weights(plan.seed)?.display().to_string(),
            ),
            ("--log-every", b.log_every.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect();
        if config.nesterov {
            args.push("--nesterov".into());
        }
        if b.channels_last {
            args.push("--channels-last".into());
        }
        if plan.snapshot_every > 0 {
            args.push("--snapshot-every".into());
            args.push(plan.snapshot_every.to_string());
            args.push("--snapshot-dir".into());
            args.push(sides::pytorch_snapshots(plan).display().to_string());
        }
        Ok(args)
    }

    /// Seed `seed`'s initial weights (drawn by tchcv once, then read by both sides).
    pub fn init_weights(&self, seed: u64) -> Result<PathBuf> {
        let path = self.scratch.join(format!("init-seed{seed}.safetensors"));
        if path.is_file() {
            return Ok(path);
        }
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        crate::models::build(vs.root(), &self.spec, self.classes.len() as i64)?;
        let variables = vs.variables();
        let mut named: Vec<(&str, &Tensor)> =
            variables.iter().map(|(k, v)| (k.as_str(), v)).collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        crate::io::write_safetensors(&path, &named)?;
        Ok(path)
    }

    /// The candidate splits: `--workers-split`, else [`default_splits`] for this machine.
    pub fn candidates(&self) -> Vec<Split> {
        if self.bench.workers_split.is_empty() {
            default_splits(
                crate::data::ThreadPlan::available_cores(),
                self.device.is_cuda(),
            )
        } else {
            self.bench.workers_split.clone()
        }
    }
}

/// Bad options, named.
fn validate(b: &TrainBench) -> Result<()> {
    if b.iters == 0 || b.batch == 0 {
        crate::bail_input!("--iters and --batch must be at least 1");
    }
    if b.seeds.is_empty() {
        crate::bail_input!("--seeds: give at least one seed");
    }
    if !(b.lr > 0.0 && b.lr.is_finite()) {
        crate::bail_input!("--lr must be a positive number, got {}", b.lr);
    }
    b.lr_schedule.parse::<crate::train::schedule::Decay>()?;
    if b.snapshot_every == 0 && (b.target_map.is_some() || b.curve_chart.is_some()) {
        crate::bail_input!("--target-map and --curve-chart need --snapshot-every K");
    }
    if let Some(t) = b.target_map {
        if !(0.0..=1.0).contains(&t) {
            crate::bail_input!("--target-map must be an mAP in [0, 1], got {t}");
        }
    }
    Ok(())
}

/// The tchcv binary that trains: `TCHCV_BIN`, else this executable when it is tchcv.
fn tchcv_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TCHCV_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let is_tchcv = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("tchcv"));
    if !is_tchcv {
        crate::bail_input!(
            "bench train runs `tchcv train` as a child process: run it from the tchcv binary, or set TCHCV_BIN"
        );
    }
    Ok(exe)
}

/// Run the comparison (or `--profile`) and leave no scratch behind unless `--keep`.
pub fn run(b: &TrainBench, device: Device) -> Result<Comparison> {
    let ctx = Context::new(b, device)?;
    let result = if b.profile {
        profile::run(&ctx)
    } else {
        compare(&ctx)
    };
    if b.keep.is_none() {
        let _ = std::fs::remove_dir_all(&ctx.scratch);
    }
    result
}

/// One probe run of a side with a split.
#[derive(Debug, Clone, Serialize)]
struct Probe {
    side: Side,
    split: Split,
    images_per_s: f64,
}

/// A side's best split among the candidates, by a short run of each (none with one candidate
/// or `--probe-iters 0`).
fn choose_split(ctx: &Context, side: Side, candidates: &[Split]) -> Result<(Split, Vec<Probe>)> {
    if candidates.len() == 1 || ctx.bench.probe_iters == 0 {
        return Ok((candidates[0], Vec::new()));
    }
    let mut probes = Vec::new();
    for (k, &split) in candidates.iter().enumerate() {
        let plan = RunPlan {
            side,
            split,
            seed: ctx.bench.seeds[0],
            iters: ctx.bench.probe_iters,
            snapshot_every: 0,
            dir: ctx.scratch.join(format!("probe-{}-{k}", side.name())),
        };
        let run = sides::run_side(ctx, &plan)?;
        probes.push(Probe {
            side,
            split,
            images_per_s: run.steady_images_per_s(),
        });
    }
    let best = probes
        .iter()
        .max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s))
        .map_or(candidates[0], |p| p.split);
    Ok((best, probes))
}

/// Both sides' runs of one seed.
struct SeedRuns {
    tchcv: SideRun,
    pytorch: Option<SideRun>,
}

/// Probe, run every seed on both sides (alternating which goes first), score, report.
fn compare(ctx: &Context) -> Result<Comparison> {
    let candidates = ctx.candidates();
    let (tchcv_split, mut probes) = choose_split(ctx, Side::Tchcv, &candidates)?;
    let pytorch_split = if ctx.bench.no_reference {
        None
    } else {
        let (split, more) = choose_split(ctx, Side::PyTorch, &candidates)?;
        probes.extend(more);
        Some(split)
    };
    let mut runs = Vec::new();
    for (k, &seed) in ctx.bench.seeds.iter().enumerate() {
        let plan = |side: Side, split: Split| RunPlan {
            side,
            split,
            seed,
            iters: ctx.bench.iters,
            snapshot_every: ctx.bench.snapshot_every,
            dir: ctx.scratch.join(format!("{}-seed{seed}", side.name())),
        };
        let tchcv_first = k % 2 == 0;
        let mut tchcv = None;
        if tchcv_first {
            tchcv = Some(sides::run_side(ctx, &plan(Side::Tchcv, tchcv_split))?);
        }
        let pytorch = match pytorch_split {
            Some(split) => Some(sides::run_side(ctx, &plan(Side::PyTorch, split))?),
            None => None,
        };
        let tchcv = match tchcv {
            Some(run) => run,
            None => sides::run_side(ctx, &plan(Side::Tchcv, tchcv_split))?,
        };
        if let Some(p) = &pytorch {
            tchcv.same_steps_as(p).with_context(|| {
                format!("seed {seed}: the two sides did not train the same steps (a bench defect)")
            })?;
        }
        runs.push(SeedRuns { tchcv, pytorch });
    }
    let scorer = Scorer::new(ctx)?;
    report(ctx, &scorer, &runs, probes)
}

/// The test split, the coder and the decode settings every run is scored with.
struct Scorer {
    loader: Loader,
    coder: BoxCoder,
    decode: DecodeConfig,
}

impl Scorer {
    fn new(ctx: &Context) -> Result<Self> {
        let sets: Vec<String> = ctx.bench.test_sets.split(',').map(str::to_string).collect();
        let test =
            crate::eval::open_for_eval(&ctx.bench.data, &sets, Some(ctx.classes.clone()), true)?;
        let coder = BoxCoder::from_spec(&ctx.spec)?;
        let [w, h] = ctx.spec.input_size;
        let workers = crate::data::ThreadPlan::available_cores();
        let config = LoaderConfig::eval([w as u32, h as u32], ctx.bench.batch, workers);
        Ok(Self {
            loader: Loader::new(Arc::new(test), Arc::new(coder.clone()), config)?,
            coder,
            decode: DecodeConfig::for_spec(&ctx.spec),
        })
    }

    /// `run`'s VOC07 mAP at each of its weights files ([`SideRun::weights_over_training`]),
    /// after `start` (the initial weights' score, when the curve is asked for).
    fn over_training(
        &self,
        ctx: &Context,
        run: &SideRun,
        start: Option<(u64, f64)>,
    ) -> Result<Vec<(u64, f64)>> {
        let mut scores: Vec<(u64, f64)> = start.into_iter().collect();
        for (iteration, path) in run.weights_over_training() {
            let weights: HashMap<String, Tensor> = match run.side {
                Side::Tchcv => crate::train::checkpoint::load(path)?.model,
                Side::PyTorch => crate::io::read_tensors(path)?,
            };
            let origin = format!("{} weights {}", run.side.name(), path.display());
            scores.push((iteration, self.map_voc07(ctx, &weights, &origin)?));
        }
        Ok(scores)
    }

    /// With `--snapshot-every`, the mAP of seed `seed`'s initial weights (both sides' start).
    fn initial(&self, ctx: &Context, seed: u64) -> Result<Option<(u64, f64)>> {
        if ctx.bench.snapshot_every == 0 {
            return Ok(None);
        }
        let path = ctx.init_weights(seed)?;
        let weights = crate::io::read_tensors(&path)?;
        let origin = format!("initial weights {}", path.display());
        Ok(Some((0, self.map_voc07(ctx, &weights, &origin)?)))
    }

    /// The VOC07 mAP of `weights` (as `tchcv train --test-sets` scores a run).
    fn map_voc07(
        &self,
        ctx: &Context,
        weights: &HashMap<String, Tensor>,
        origin: &str,
    ) -> Result<f64> {
        let vs = nn::VarStore::new(ctx.device);
        let model = crate::models::build(vs.root(), &ctx.spec, ctx.classes.len() as i64)?;
        crate::io::load_into_varstore(&vs, weights, false, origin)?;
        let voc = VocEvalConfig::default();
        let (result, _) = evaluate_detector(
            model.as_ref(),
            &self.coder,
            &self.loader,
            &self.decode,
            &voc,
            ctx.device,
        )?;
        Ok(result.map_voc07)
    }
}

/// One side over every seed: what the report shows.
#[derive(Debug, Clone, Serialize)]
struct SideSummary {
    split: Split,
    iterations: usize,
    images: usize,
    loop_seconds: f64,
    images_per_s: f64,
    /// Mean over the seeds.
    startup_s: f64,
    wall_s: f64,
    data_wait_share: f64,
    peak_rss_mib: Option<f64>,
    peak_total_mib: Option<f64>,
    peak_cuda_allocated_mib: Option<f64>,
    map_voc07: Vec<f64>,
    map_voc07_mean: f64,
    /// Sample standard deviation over the seeds (0 for one seed).
    map_voc07_std: f64,
}

fn summarize(runs: &[&SideRun], maps: Vec<f64>) -> SideSummary {
    let n = runs.len().max(1) as f64;
    let loop_seconds: f64 = runs.iter().map(|r| r.loop_seconds()).sum();
    let images: usize = runs.iter().map(|r| r.images()).sum();
    let wait: f64 = runs.iter().map(|r| r.data_wait_seconds()).sum();
    let max = |f: fn(&SideRun) -> Option<f64>| runs.iter().filter_map(|r| f(r)).reduce(f64::max);
    let (mean, std) = curve::mean_std(&maps);
    SideSummary {
        split: runs[0].split,
        iterations: runs.iter().map(|r| r.steps.len()).sum(),
        images,
        loop_seconds,
        images_per_s: images as f64 / loop_seconds.max(1e-9),
        startup_s: runs.iter().map(|r| r.startup_s).sum::<f64>() / n,
        wall_s: runs.iter().map(|r| r.wall_s).sum::<f64>() / n,
        data_wait_share: wait / loop_seconds.max(1e-9),
        peak_rss_mib: max(|r| r.peak_rss_mib),
        peak_total_mib: max(|r| r.peak_total_mib),
        peak_cuda_allocated_mib: max(|r| r.peak_cuda_allocated_mib),
        map_voc07: maps,
        map_voc07_mean: mean,
        map_voc07_std: std,
    }
}

/// Each run's VOC07 mAP over training (`(iteration, mAP)`: the initial weights and the
/// snapshots with `--snapshot-every`, the trained weights last), tchcv's and PyTorch's.
#[allow(clippy::type_complexity)]
fn score_runs(
    ctx: &Context,
    scorer: &Scorer,
    runs: &[SeedRuns],
) -> Result<(Vec<Vec<(u64, f64)>>, Vec<Vec<(u64, f64)>>)> {
    let (mut tchcv, mut pytorch) = (Vec::new(), Vec::new());
    for r in runs {
        let start = scorer.initial(ctx, r.tchcv.seed)?;
        tchcv.push(scorer.over_training(ctx, &r.tchcv, start)?);
        if let Some(p) = &r.pytorch {
            pytorch.push(scorer.over_training(ctx, p, start)?);
        }
    }
    Ok((tchcv, pytorch))
}

/// The trained weights' mAP of each run.
fn final_maps(scores: &[Vec<(u64, f64)>]) -> Vec<f64> {
    scores
        .iter()
        .map(|s| s.last().map_or(f64::NAN, |l| l.1))
        .collect()
}

/// Score every run and make the report's row.
fn report(
    ctx: &Context,
    scorer: &Scorer,
    runs: &[SeedRuns],
    probes: Vec<Probe>,
) -> Result<Comparison> {
    let tchcv_runs: Vec<&SideRun> = runs.iter().map(|r| &r.tchcv).collect();
    let pytorch_runs: Vec<&SideRun> = runs.iter().filter_map(|r| r.pytorch.as_ref()).collect();
    let (tchcv_scores, pytorch_scores) = score_runs(ctx, scorer, runs)?;
    let tchcv = summarize(&tchcv_runs, final_maps(&tchcv_scores));
    let pytorch =
        (!pytorch_runs.is_empty()).then(|| summarize(&pytorch_runs, final_maps(&pytorch_scores)));
    let time_to_map = (ctx.bench.snapshot_every > 0).then(|| {
        curve::TimeToMap::new(
            ctx.bench.target_map,
            curve::side_curve(&tchcv_runs, &tchcv_scores),
            (!pytorch_runs.is_empty()).then(|| curve::side_curve(&pytorch_runs, &pytorch_scores)),
        )
    });
    let ms_per_iter = |s: &SideSummary| s.loop_seconds * 1e3 / s.iterations.max(1) as f64;
    let [w, h] = ctx.spec.input_size;
    let b = ctx.bench;
    let mut row = Comparison::new(
        &format!("{} train end-to-end", ctx.spec.name),
        &format!(
            "N={} {w}x{h}, {} iters x {} seed(s)",
            b.batch,
            b.iters,
            b.seeds.len()
        ),
        &crate::device::device_name(ctx.device),
        ms_per_iter(&tchcv),
        pytorch.as_ref().map(ms_per_iter),
    );
    let mut lines = detail(&tchcv, pytorch.as_ref(), scorer.loader.dataset().len());
    if let Some(t) = &time_to_map {
        lines += &format!("\n    {}", t.line());
        if let Some(path) = &b.curve_chart {
            let title = format!(
                "{}: VOC07 mAP over training time ({} seed(s), {})",
                ctx.spec.name,
                b.seeds.len(),
                crate::device::device_name(ctx.device)
            );
            // The row is the product of a long run: a chart that cannot be drawn (no font, say)
            // is a warning, not the loss of the row.
            if let Err(e) = t.plot(&title, path) {
                eprintln!("warning: --curve-chart {}: {e:#}", path.display());
            }
        }
    }
    row.detail = Some(lines);
    row.extra = serde_json::json!({
        "time_to_map": time_to_map,
        "tchcv": tchcv,
        "pytorch": pytorch,
        "images_per_s_ratio": pytorch.as_ref().map(|p| tchcv.images_per_s / p.images_per_s),
        "probes": probes,
        "seeds": b.seeds,
        "test_images": scorer.loader.dataset().len(),
        "cores": crate::data::ThreadPlan::available_cores(),
        "recipe": {
            "optimizer": b.optimizer, "lr": b.lr, "momentum": b.momentum,
            "weight_decay": b.weight_decay, "warmup": b.warmup, "lr_schedule": b.lr_schedule,
            "augment": ctx.augment, "batch": b.batch, "iters": b.iters,
            "channels_last": b.channels_last,
        },
        "evaluator": "tchcv evaluate_detector (decode, class-wise NMS, VOC07 11-point AP) on both sides' trained weights",
    });
    Ok(row)
}

/// The report's second lines: throughput, start-up, data wait, memory, splits, mAP.
fn detail(t: &SideSummary, p: Option<&SideSummary>, test_images: usize) -> String {
    let mib = |v: Option<f64>| v.map_or("-".to_string(), |m| format!("{m:.0} MiB"));
    let both = |f: &dyn Fn(&SideSummary) -> String| match p {
        Some(p) => format!("{} vs {}", f(t), f(p)),
        None => f(t),
    };
    let mut lines = [
        format!(
            "images/s {} | start-up {} | data wait {} | splits (workers x threads) {}",
            both(&|s| format!("{:.1}", s.images_per_s)),
            both(&|s| format!("{:.1} s", s.startup_s)),
            both(&|s| format!("{:.0}%", 100.0 * s.data_wait_share)),
            both(&|s| s.split.to_string()),
        ),
        format!(
            "peak RSS {} (PyTorch with its worker processes' private memory: {}) | CUDA allocated {}",
            both(&|s| mib(s.peak_rss_mib)),
            p.map_or("-".to_string(), |p| mib(p.peak_total_mib)),
            both(&|s| mib(s.peak_cuda_allocated_mib)),
        ),
        format!(
            "VOC07 mAP on {test_images} test images, {} seed(s): {}",
            t.map_voc07.len(),
            both(&|s| format!("{:.4} +- {:.4}", s.map_voc07_mean, s.map_voc07_std)),
        ),
    ];
    if p.is_some() {
        lines[0] = format!("tchcv vs PyTorch: {}", lines[0]);
    }
    lines.join("\n    ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_parse_and_default_from_the_cores() {
        assert_eq!(
            "2x1".parse::<Split>().unwrap(),
            Split {
                workers: 2,
                threads: 1
            }
        );
        for bad in ["2", "0x1", "1x0", "ax2", ""] {
            let err = bad.parse::<Split>().unwrap_err();
            assert!(crate::error::is_bad_input(&err), "{bad}: {err}");
        }
        let two: Vec<String> = default_splits(2, false)
            .iter()
            .map(Split::to_string)
            .collect();
        assert_eq!(two, ["1x2", "2x1", "1x1"]);
        assert_eq!(default_splits(1, false).len(), 1);
        let eight: Vec<String> = default_splits(8, false)
            .iter()
            .map(Split::to_string)
            .collect();
        assert_eq!(eight, ["1x8", "2x6", "4x4", "2x8"]);
        assert!(default_splits(16, true).iter().all(|s| s.threads == 1));
    }
}
