//! `tchcv train`: train a detector on VOC or COCO data.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;
use serde_json::{json, Map, Value};
use tchcv::data::AugmentConfig;
use tchcv::device::AutocastDtype;
use tchcv::loss::{LossKind, NegativeMining};
use tchcv::train::{train, ClassWeightsMode, OptimizerKind, TrainConfig, TrainOptions};

/// Train a detector (SSD or RetinaNet from a model spec) on VOC or COCO data.
///
/// Every iteration logs the loc and cls loss per positive (as torchcv prints them), num_pos,
/// num_neg, lr and images/s, also as JSON lines in OUT/metrics.jsonl. Checkpoints
/// (OUT/last.safetensors, OUT/best.safetensors) are written atomically; Ctrl-C saves one and
/// exits; --resume continues exactly where a run stopped. A NaN or inf loss skips the step;
/// --max-nonfinite in a row stop the run. Under torchrun (or with --world-size, --rank,
/// --master) each process trains on its shard and gradients are all-reduced with c10d.
#[derive(clap::Args)]
pub struct Args {
    /// Data root: a VOCdevkit folder or a single VOC-format folder; or COCO: an instances file
    /// (images in --images) or a folder with annotations/instances_<set>.json next to <set>/.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The data's format (default: detected: COCO for a JSON file or an annotations/ folder of
    /// instances files, else VOC).
    #[arg(long, value_enum)]
    format: Option<tchcv::data::DataFormat>,
    /// COCO: the folder the images' file_name are relative to (default: <root>/<set>/ for the
    /// standard layout, else the instances file's folder).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Training sets, e.g. trainval or 2007:trainval,2012:trainval; COCO: train2017 (default:
    /// VOC's trainval; COCO's only instances file).
    #[arg(long)]
    sets: Option<String>,
    /// Sets to evaluate on (every --eval-every epochs, and at the end).
    #[arg(long)]
    test_sets: Option<String>,
    /// The metric of those evaluations, which picks best.safetensors: voc (VOC07 mAP@0.5,
    /// default) or coco (COCO AP@[.5:.95], written to OUT/eval_coco.json; the VOC mAP of the
    /// same detections stays in OUT/eval.json).
    #[arg(long, value_enum)]
    metric: Option<tchcv::train::EvalMetric>,
    /// Class list (one name per line, or classes.json); default: discovered from the data.
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Train on objects marked difficult too.
    #[arg(long)]
    use_difficult: bool,
    /// Model spec (default: models/ssd300.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backbone weights (safetensors from scripts/convert_weights.py).
    #[arg(long)]
    init: Option<PathBuf>,
    /// ssd, focal or softmax-focal (default: the spec's).
    #[arg(long)]
    loss: Option<LossKind>,
    /// SSD loss: negatives per positive.
    #[arg(long)]
    neg_pos_ratio: Option<f64>,
    /// SSD loss: hard, random or all.
    #[arg(long)]
    neg_mining: Option<NegativeMining>,
    /// RPN loss: which 256 anchors per image enter it: random (torchvision's sampler), hard
    /// (OHEM negatives) or all (default: the spec's rpn.sampler).
    #[arg(long)]
    rpn_sampler: Option<tchcv::bbox::SamplerKind>,
    /// Faster R-CNN's second stage: which RoIs train the box head: random (torchvision's 512 at
    /// 25% foreground), all (every labelled proposal), ohem (the hardest after NMS 0.7)
    /// (default: the spec's roi_heads.sampler.kind).
    #[arg(long)]
    roi_sampler: Option<tchcv::bbox::rcnn::RoiSamplerKind>,
    /// Faster R-CNN's second-stage classification loss (default: the spec's roi_heads.loss).
    #[arg(long, value_enum)]
    roi_loss: Option<tchcv::train::RoiLossKind>,
    /// Softmax focal loss class weights.
    #[arg(long, value_enum)]
    class_weights: Option<ClassWeightsMode>,
    /// Epochs to train.
    #[arg(long, conflicts_with = "iters")]
    epochs: Option<u64>,
    /// Iterations to train.
    #[arg(long)]
    iters: Option<u64>,
    /// Images per iteration, per process (default: 32).
    #[arg(long)]
    batch: Option<usize>,
    /// Base learning rate (default: 1e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Optimizer (default: sgd).
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// SGD momentum (default: 0.9).
    #[arg(long)]
    momentum: Option<f64>,
    /// Weight decay, on every parameter as torchcv (default: 1e-4).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Linear warm-up iterations from 0.001 x lr (default: 0).
    #[arg(long)]
    warmup: Option<u64>,
    /// constant (default), cosine[:MIN_FACTOR] or step:ITER[,ITER...][:GAMMA] (gamma 0.1).
    #[arg(long)]
    lr_schedule: Option<String>,
    /// Clip the gradient norm.
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Data worker threads (default: from the cores and the device).
    #[arg(long)]
    workers: Option<usize>,
    /// auto (default: CUDA when available), cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Mixed precision: bf16 runs the forward pass and the loss under autocast (weights,
    /// gradients and the update stay f32); off (the default) turns it off, also on --resume.
    #[arg(long)]
    autocast: Option<AutocastFlag>,
    /// Lay out the weights and images channels-last (NHWC strides; faster convolutions on many
    /// GPUs and CPUs). Default: off.
    #[arg(long, conflicts_with = "no_channels_last")]
    channels_last: bool,
    /// Turn --channels-last off (for a --resume of a channels-last run).
    #[arg(long)]
    no_channels_last: bool,
    /// On CUDA, use cuDNN's default convolution algorithms instead of timing them on the first
    /// batch and keeping the fastest (torch.backends.cudnn.benchmark, on by default).
    #[arg(long, conflicts_with = "cudnn_benchmark")]
    no_cudnn_benchmark: bool,
    /// Turn --no-cudnn-benchmark off again (for a --resume).
    #[arg(long)]
    cudnn_benchmark: bool,
    /// Seed of the initialisation, data order, augmentation and random mining (default: 0).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Train once per seed (comma separated), each in OUT/seed-<s>, then compare them: each AP
    /// as mean and spread over the seeds (OUT/compare.md). With --resume, continues them.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// The run folder (default: runs/train).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last checkpoint (its saved configuration; flags given
    /// now override it, e.g. a larger --iters).
    #[arg(long)]
    resume: bool,
    /// Evaluate every K epochs (0: only at the end).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Also checkpoint every K iterations.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Also keep the weights every K iterations, in OUT/snapshots/iter-K.safetensors (model and
    /// run state, no optimizer state: `tchcv eval --checkpoint` reads them, `--resume` does not).
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Stop after this many non-finite losses in a row (default: 5).
    #[arg(long)]
    max_nonfinite: Option<u32>,
    /// Augmentation steps to turn off (comma separated): photometric, zoom-out, crop, flip, all.
    #[arg(long, value_delimiter = ',')]
    no_augment: Vec<String>,
    /// Stop after this many iterations in all (saving a checkpoint, as Ctrl-C does).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Plain log lines every K iterations (when not drawing a progress bar).
    #[arg(long, default_value_t = 1)]
    log_every: u64,
    /// A JSON file of TrainConfig fields; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Distributed: number of processes (with --rank and --master; torchrun sets these itself).
    #[arg(long)]
    world_size: Option<usize>,
    /// Distributed: this process's rank.
    #[arg(long)]
    rank: Option<usize>,
    /// Distributed: ADDR:PORT of rank 0's store.
    #[arg(long)]
    master: Option<String>,
    /// gloo or nccl (default: nccl on CUDA, gloo on CPU).
    #[arg(long)]
    dist_backend: Option<String>,
    /// Seconds a collective waits for the other ranks (default: 300).
    #[arg(long)]
    dist_timeout: Option<f64>,
}

/// `--autocast`: a dtype, or `off`.
#[derive(Debug, Clone, Copy)]
enum AutocastFlag {
    Off,
    On(AutocastDtype),
}

impl std::str::FromStr for AutocastFlag {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "off" | "none" => Ok(AutocastFlag::Off),
            _ => s.parse().map(AutocastFlag::On),
        }
    }
}

impl Args {
    /// The flags given, as TrainConfig JSON fields.
    fn overrides(&self) -> Result<Map<String, Value>> {
        let mut o = Map::new();
        let mut put = |key: &str, value: Value| {
            o.insert(key.to_string(), value);
        };
        macro_rules! opt {
            ($($field:ident),*) => {
                $(if let Some(v) = &self.$field {
                    put(stringify!($field), serde_json::to_value(v)?);
                })*
            };
        }
        opt!(
            data,
            format,
            images,
            sets,
            test_sets,
            metric,
            classes,
            model,
            init,
            loss,
            neg_pos_ratio,
            neg_mining,
            rpn_sampler,
            roi_sampler,
            roi_loss,
            class_weights,
            epochs,
            iters,
            batch,
            lr,
            optimizer,
            momentum,
            weight_decay,
            warmup,
            lr_schedule,
            grad_clip,
            workers,
            device,
            seed,
            out,
            eval_every,
            checkpoint_every,
            snapshot_every,
            max_nonfinite,
            world_size,
            rank,
            master,
            dist_backend,
            dist_timeout
        );
        if self.epochs.is_some() {
            put("iters", Value::Null);
        }
        if self.iters.is_some() {
            put("epochs", Value::Null);
        }
        if self.use_difficult {
            put("use_difficult", json!(true));
        }
        if self.channels_last || self.no_channels_last {
            put("channels_last", json!(self.channels_last));
        }
        if self.cudnn_benchmark || self.no_cudnn_benchmark {
            put("cudnn_benchmark", json!(self.cudnn_benchmark));
        }
        match self.autocast {
            Some(AutocastFlag::Off) => put("autocast", Value::Null),
            Some(AutocastFlag::On(dtype)) => put("autocast", serde_json::to_value(dtype)?),
            None => {}
        }
        Ok(o)
    }

    /// The run folder to resume from: --out, or with --seeds its first seed's that has a
    /// checkpoint.
    fn resume_folder(&self) -> PathBuf {
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| TrainConfig::default().out);
        let Some(seeds) = &self.seeds else {
            return out;
        };
        seeds
            .iter()
            .map(|&s| tchcv::train::seeds::seed_folder(&out, s))
            .find(|dir| tchcv::train::last_checkpoint(dir).is_file())
            .unwrap_or(out)
    }

    fn config(&self) -> Result<TrainConfig> {
        let mut base = if self.resume {
            tchcv::train::saved_config(&self.resume_folder())?
        } else if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| tchcv::bad_input(format!("--config {}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| tchcv::bad_input(format!("--config {}: {e}", path.display())))?
        } else {
            json!({})
        };
        let fields = base
            .as_object_mut()
            .ok_or_else(|| tchcv::bad_input("--config: expected a JSON object"))?;
        fields.extend(self.overrides()?);
        let mut config: TrainConfig = serde_json::from_value(base)
            .map_err(|e| tchcv::bad_input(format!("training configuration: {e}")))?;
        for step in &self.no_augment {
            let a = &mut config.augment;
            match step.as_str() {
                "photometric" => a.photometric = false,
                "zoom-out" | "zoom_out" | "expand" => a.zoom_out = false,
                "crop" => a.crop = false,
                "flip" => a.flip = false,
                "all" => *a = AugmentConfig::none(),
                other => tchcv::bail_input!(
                    "--no-augment {other:?}: expected photometric, zoom-out, crop, flip or all"
                ),
            }
        }
        Ok(config)
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = args.config()?;
    let options = TrainOptions {
        resume: args.resume,
        stop_after: args.stop_after,
        progress_bar: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        log_every: args.log_every,
        ..TrainOptions::default()
    };
    let interrupt = options.interrupt.clone();
    // Ctrl-C: finish the current step, save a checkpoint, exit. A second Ctrl-C kills.
    let _ = ctrlc::set_handler(move || {
        if interrupt.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to kill)");
    });
    if let Some(seeds) = &args.seeds {
        return train_seeds(config, seeds, options);
    }
    let summary = train(config, options)?;
    report(&summary);
    Ok(if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--seeds`: one run per seed, then their comparison.
fn train_seeds(config: TrainConfig, seeds: &[u64], options: TrainOptions) -> Result<ExitCode> {
    // A resumed run's saved configuration names one seed's folder: the parent is the study's.
    let mut config = config;
    if args_resumed_into_seed_folder(&config.out) {
        if let Some(parent) = config.out.parent() {
            config.out = parent.to_path_buf();
        }
    }
    let (summaries, comparison) = tchcv::train::seeds::train_seeds(&config, seeds, &options)?;
    for s in &summaries {
        report(s);
    }
    let Some(comparison) = comparison else {
        return Ok(ExitCode::from(130));
    };
    print!("{}", comparison.markdown());
    eprintln!("wrote {}", config.out.join("compare.md").display());
    Ok(ExitCode::SUCCESS)
}

/// Whether `out` is a `seed-<s>` folder (the configuration saved by one seed's run).
fn args_resumed_into_seed_folder(out: &std::path::Path) -> bool {
    out.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("seed-"))
        .is_some_and(|s| s.parse::<u64>().is_ok())
}

/// The closing line of a run.
fn report(summary: &tchcv::train::TrainSummary) {
    if let Some(s) = &summary.last {
        println!(
            "done: {}/{} iterations | last loc_loss {:.4} | cls_loss {:.4} | total {:.4}{}",
            summary.iterations,
            summary.total_iterations,
            s.loc_per_pos,
            s.cls_per_pos,
            s.total,
            summary.eval.as_ref().map_or(String::new(), |e| format!(
                " | mAP VOC07 {:.4} area {:.4}",
                e.map_voc07, e.map_area
            )) + &summary.coco.as_ref().map_or(String::new(), |c| format!(
                " | COCO AP {:.4}",
                c.stat("AP").unwrap_or(-1.0)
            ))
        );
    }
}
