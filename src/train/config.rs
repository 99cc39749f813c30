//! Everything a training run is configured by: what `tchcv train` flags and `--config FILE.json`
//! set, saved with every checkpoint so a run can be resumed or reproduced.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::optim::OptimizerConfig;
use super::schedule::{Decay, Schedule};
use crate::bail_input;
use crate::bbox::rcnn::{RoiSamplerConfig, RoiSamplerKind};
use crate::bbox::{DecodeConfig, SamplerKind};
use crate::data::{AugmentConfig, DataFormat, DataSource, SetSpec};
use crate::device::{AutocastDtype, MemoryFormat};
use crate::loss::{LossKind, NegativeMining, RcnnClsLoss, RcnnLossConfig};
use crate::spec::ModelSpec;

/// Where the softmax focal loss's class weights come from (`--class-weights`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeightsMode {
    /// No class weights.
    #[default]
    None,
    /// From the training set's object histogram (background weight: the foreground weights'
    /// sum over 3, since objects say nothing of background anchors).
    Dataset,
    /// From each batch's target histogram.
    Batch,
}

/// Faster R-CNN's second-stage classification loss (`--roi-loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RoiLossKind {
    /// torchvision's `fastrcnn_loss`: cross entropy over the sampled RoIs.
    CrossEntropy,
    /// tchcv's softmax focal loss on the RoIs (the spec's focal options, else gamma 2).
    SoftmaxFocal,
}

/// The metric of training-time evaluations (`--metric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EvalMetric {
    /// VOC07 mAP at IoU 0.5 (the devkit's).
    #[default]
    Voc,
    /// COCO AP@[.5:.95] (pycocotools' `COCOeval`, crowd regions as COCO treats them).
    Coco,
}

/// The optimizer by name (`--optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// SGD with momentum (torchcv).
    #[default]
    Sgd,
    /// Adam with L2 weight decay.
    Adam,
    /// Adam with decoupled weight decay.
    Adamw,
}

/// A training run's configuration. JSON keys are the field names; `--config FILE.json` sets any
/// of them and flags override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The data root: a VOCdevkit folder or one VOC-format folder; or COCO: an instances file,
    /// or a folder holding `annotations/instances_<set>.json` (see [`crate::data::open`]).
    pub data: PathBuf,
    /// The data's format; `None`: detected ([`crate::data::detect_format`]).
    pub format: Option<DataFormat>,
    /// COCO: the folder the images' `file_name`s are relative to; `None`: where the layout
    /// keeps them.
    pub images: Option<PathBuf>,
    /// Training sets, e.g. `trainval` or `2007:trainval,2012:trainval` (COCO: `train2017`);
    /// empty: the format's default (VOC `trainval`; COCO: the only instances file).
    pub sets: String,
    /// Sets to evaluate on (mAP); `None`: no evaluation.
    pub test_sets: Option<String>,
    /// The metric of the evaluations during training, which also picks `best`: `voc` (VOC07
    /// mAP@0.5) or `coco` (COCO AP@[.5:.95]; the VOC mAP is reported beside it).
    pub metric: EvalMetric,
    /// A class list file (one name per line, or a `classes.json`); default: discovered.
    pub classes: Option<PathBuf>,
    /// Train on objects marked difficult too.
    pub use_difficult: bool,
    /// The model spec (`models/*.json`).
    pub model: PathBuf,
    /// Backbone weights to start from (`scripts/convert_weights.py` output).
    pub init: Option<PathBuf>,
    /// The loss; default: the spec's.
    pub loss: Option<LossKind>,
    /// More loss options as JSON (the keys of `SsdLossConfig`, `FocalLossConfig`,
    /// `SoftmaxFocalLossConfig`).
    pub loss_options: serde_json::Map<String, serde_json::Value>,
    pub neg_pos_ratio: Option<f64>,
    pub neg_mining: Option<NegativeMining>,
    /// The RPN loss's sampler (`random`, `hard`, `all`); default: the spec's `rpn.sampler`.
    pub rpn_sampler: Option<SamplerKind>,
    /// Faster R-CNN's second stage: which RoIs train the box head (`random`, `all`, `ohem`);
    /// default: the spec's `roi_heads.sampler.kind`.
    pub roi_sampler: Option<RoiSamplerKind>,
    /// Faster R-CNN's second-stage classification loss; default: the spec's
    /// `roi_heads.loss.cls`.
    pub roi_loss: Option<RoiLossKind>,
    pub class_weights: ClassWeightsMode,
    /// Epochs to train (one of `epochs`, `iters`).
    pub epochs: Option<u64>,
    /// Iterations to train.
    pub iters: Option<u64>,
    /// Images per iteration (per process in a distributed run).
    pub batch: usize,
    pub lr: f64,
    pub optimizer: OptimizerKind,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// Linear warm-up iterations, from `warmup_factor * lr`.
    pub warmup: u64,
    pub warmup_factor: f64,
    /// `constant`, `cosine[:MIN_FACTOR]` or `step:ITER[,ITER...][:GAMMA]`.
    pub lr_schedule: String,
    /// Clip the gradient norm to this.
    pub grad_clip: Option<f64>,
    /// Data worker threads; default: from the cores and the device.
    pub workers: Option<usize>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Run the forward pass and the loss under autocast in this dtype (bf16 only: f16 would
    /// need loss scaling).
    pub autocast: Option<AutocastDtype>,
    /// Weights and images channels-last.
    pub channels_last: bool,
    /// On CUDA, cuDNN's autotuner (`torch.backends.cudnn.benchmark`, which torchcv's and
    /// ssd.pytorch's training scripts turn on): default on; off for cuDNN's default algorithms.
    /// A process-wide libtorch flag: a CUDA run sets it and leaves it so.
    pub cudnn_benchmark: bool,
    pub seed: u64,
    /// The run folder.
    pub out: PathBuf,
    /// Evaluate every this many epochs (0: only at the end, when `test_sets` is given).
    pub eval_every: u64,
    /// Also checkpoint every this many iterations (0: at epoch ends only).
    pub checkpoint_every: u64,
    /// Keep the model's weights every this many iterations in `OUT/snapshots/` (0: none):
    /// the run's progress for `tchcv eval`, or for `tchcv bench train`'s time to mAP.
    pub snapshot_every: u64,
    /// Stop the run after this many non-finite losses in a row.
    pub max_nonfinite: u32,
    pub augment: AugmentConfig,
    /// Post-processing for evaluation.
    pub decode: DecodeConfig,
    /// Distributed: `--world-size`, `--rank`, `--master` (or the torchrun variables).
    pub world_size: Option<usize>,
    pub rank: Option<usize>,
    pub master: Option<String>,
    /// `gloo` or `nccl`; default: from the device.
    pub dist_backend: Option<String>,
    /// Seconds a collective may wait for the other ranks.
    pub dist_timeout: f64,
}

impl Default for TrainConfig {
    /// torchcv's SSD recipe: SGD lr 1e-3, momentum 0.9, weight decay 1e-4, batch 32.
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            format: None,
            images: None,
            sets: String::new(),
            test_sets: None,
            metric: EvalMetric::Voc,
            classes: None,
            use_difficult: false,
            model: PathBuf::from("models/ssd300.json"),
            init: None,
            loss: None,
            loss_options: serde_json::Map::new(),
            neg_pos_ratio: None,
            neg_mining: None,
            rpn_sampler: None,
            roi_sampler: None,
            roi_loss: None,
            class_weights: ClassWeightsMode::None,
            epochs: None,
            iters: None,
            batch: 32,
            lr: 1e-3,
            optimizer: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
            warmup: 0,
            warmup_factor: 0.001,
            lr_schedule: "constant".into(),
            grad_clip: None,
            workers: None,
            device: "auto".into(),
            autocast: None,
            channels_last: false,
            cudnn_benchmark: true,
            seed: 0,
            out: PathBuf::from("runs/train"),
            eval_every: 0,
            checkpoint_every: 0,
            snapshot_every: 0,
            max_nonfinite: 5,
            augment: AugmentConfig::default(),
            decode: DecodeConfig::default(),
            world_size: None,
            rank: None,
            master: None,
            dist_backend: None,
            dist_timeout: 300.0,
        }
    }
}

impl TrainConfig {
    /// Check what serde cannot: required fields and ranges. Errors name the option.
    pub fn validate(&self) -> Result<()> {
        if self.data.as_os_str().is_empty() {
            bail_input!("--data: the data root is required");
        }
        match (self.epochs, self.iters) {
            (None, None) => bail_input!("give --epochs E or --iters K"),
            (Some(_), Some(_)) => bail_input!("give --epochs or --iters, not both"),
            (Some(0), _) | (_, Some(0)) => bail_input!("--epochs / --iters must be at least 1"),
            _ => {}
        }
        if self.batch == 0 {
            bail_input!("--batch must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail_input!("--lr must be a positive number, got {}", self.lr);
        }
        if !(self.dist_timeout > 0.0 && self.dist_timeout.is_finite()) {
            bail_input!("--dist-timeout must be a positive number of seconds");
        }
        if self.autocast == Some(AutocastDtype::F16) {
            bail_input!(
                "--autocast f16: float16 training needs loss scaling (a gradient scaler), which \
                 tchcv does not have; --autocast bf16 trains without it"
            );
        }
        self.decay()?;
        Ok(())
    }

    /// Where the data is: `data` with `format` and `images`.
    pub fn data_source(&self) -> DataSource {
        DataSource {
            root: self.data.clone(),
            format: self.format,
            images: self.images.clone(),
        }
    }

    /// The training sets parsed (none when `sets` is empty: the format's default).
    pub fn set_specs(&self) -> Result<Vec<SetSpec>> {
        if self.sets.trim().is_empty() {
            Ok(Vec::new())
        } else {
            SetSpec::parse_list(&self.sets)
        }
    }

    /// The layout of weights and images.
    pub fn memory_format(&self) -> MemoryFormat {
        MemoryFormat::channels_last_if(self.channels_last)
    }

    /// The parsed `lr_schedule`.
    pub fn decay(&self) -> Result<Decay> {
        self.lr_schedule.parse()
    }

    /// The learning-rate schedule over `total_iters` iterations.
    pub fn schedule(&self, total_iters: u64) -> Result<Schedule> {
        Ok(Schedule {
            base_lr: self.lr,
            warmup_iters: self.warmup,
            warmup_factor: self.warmup_factor,
            decay: self.decay()?,
            total_iters,
        })
    }

    /// The optimizer's hyper-parameters.
    pub fn optimizer_config(&self) -> OptimizerConfig {
        match self.optimizer {
            OptimizerKind::Sgd => OptimizerConfig::Sgd {
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                nesterov: self.nesterov,
            },
            OptimizerKind::Adam | OptimizerKind::Adamw => OptimizerConfig::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: self.weight_decay,
                decoupled: self.optimizer == OptimizerKind::Adamw,
            },
        }
    }

    /// The loss's JSON options: `loss_options` plus the dedicated flags, with the run's seed
    /// for random mining (offset by `rank` so ranks draw different negatives).
    pub fn loss_options(&self, kind: LossKind, rank: usize) -> serde_json::Value {
        let mut options = self.loss_options.clone();
        if kind == LossKind::Ssd {
            if let Some(r) = self.neg_pos_ratio {
                options.insert("neg_pos_ratio".into(), r.into());
            }
            if let Some(m) = self.neg_mining {
                options.insert("mining".into(), serde_json::to_value(m).unwrap_or_default());
            }
            options
                .entry("seed")
                .or_insert_with(|| (self.seed.wrapping_add(rank as u64)).into());
        }
        // Training checks the loss value for NaN/inf itself and skips such steps.
        options.entry("check_finite").or_insert(false.into());
        serde_json::Value::Object(options)
    }

    /// Faster R-CNN's second stage: the spec's `roi_heads` sampler and loss with `--roi-sampler`,
    /// `--roi-loss` and the run's seed applied (every rank takes the same seed: the sampler keys
    /// each image by the step and its place in the global batch). Errors for a one-stage spec
    /// given either flag.
    pub fn second_stage(
        &self,
        spec: &ModelSpec,
    ) -> Result<Option<(RoiSamplerConfig, RcnnLossConfig)>> {
        if !spec.is_two_stage() {
            if self.roi_sampler.is_some() || self.roi_loss.is_some() {
                bail_input!(
                    "--roi-sampler and --roi-loss apply to a two-stage spec (head \"faster_rcnn\"), \
                     {} has head {:?}",
                    self.model.display(),
                    spec.head
                );
            }
            return Ok(None);
        }
        let roi = spec.roi_heads_or_default();
        let mut sampler = roi.sampler;
        if let Some(kind) = self.roi_sampler {
            sampler.kind = kind;
        }
        sampler.seed = self.seed;
        let origin = format!("{}: roi_heads.loss", self.model.display());
        let mut loss: RcnnLossConfig = match roi.loss {
            None => RcnnLossConfig::default(),
            Some(v) => {
                serde_json::from_value(v).map_err(|e| crate::bad_input(format!("{origin}: {e}")))?
            }
        };
        match (self.roi_loss, &loss.cls) {
            (Some(RoiLossKind::CrossEntropy), _) => loss.cls = RcnnClsLoss::CrossEntropy,
            (Some(RoiLossKind::SoftmaxFocal), RcnnClsLoss::CrossEntropy) => {
                loss.cls = RcnnClsLoss::SoftmaxFocal(Default::default())
            }
            _ => {}
        }
        // Training checks the loss value for NaN/inf itself and skips such steps.
        loss.check_finite = false;
        crate::loss::RcnnLoss::new(loss.clone()).with_context(|| origin.clone())?;
        Ok(Some((sampler, loss)))
    }

    /// The RPN loss's sampler options: the spec's `rpn` sample size and fraction, the sampler
    /// (`rpn_sampler`, else the spec's) and the run's seed (the sampler keys each image by the
    /// step and its place in the global batch, so every rank takes the same seed). Options
    /// given in `loss_options` win.
    fn rpn_options(&self, spec: &ModelSpec, options: &mut serde_json::Value) -> Result<()> {
        let rpn = spec.rpn_or_default();
        let sampler = match self.rpn_sampler {
            Some(kind) => kind,
            None => rpn.sampler.parse::<SamplerKind>()?,
        };
        if let Some(o) = options.as_object_mut() {
            let mut put = |key: &str, value: serde_json::Value| {
                o.entry(key).or_insert(value);
            };
            put("sampler", serde_json::to_value(sampler)?);
            put("batch_size_per_image", rpn.batch_size_per_image.into());
            put("positive_fraction", rpn.positive_fraction.into());
            put("seed", self.seed.into());
        }
        Ok(())
    }

    /// The loss this run trains with and its JSON options: `--loss`, else the spec's, with
    /// [`Self::loss_options`] and, for the softmax focal loss, the class weights
    /// `--class-weights` asks for (`dataset`: static weights from `class_histogram`, objects
    /// per class with the background first). Errors when the loss does not fit the spec's head
    /// or the class weights the loss.
    pub fn loss_setup(
        &self,
        spec: &ModelSpec,
        rank: usize,
        class_histogram: &[f64],
    ) -> Result<(LossKind, serde_json::Value)> {
        let kind = match self.loss {
            Some(kind) => kind,
            None => spec.loss.parse::<LossKind>()?,
        };
        if (kind == LossKind::Rpn) != spec.has_rpn() {
            bail_input!(
                "--loss {kind:?} does not fit {}: the \"rpn\" loss trains a region proposal \
                 network (heads \"rpn\" and \"faster_rcnn\"; this one: {:?}), and only it",
                self.model.display(),
                spec.head
            );
        }
        if self.rpn_sampler.is_some() && kind != LossKind::Rpn {
            bail_input!("--rpn-sampler applies to the \"rpn\" loss (an RPN spec), not {kind:?}");
        }
        if kind.has_background_column() != spec.has_background_column() {
            bail_input!(
                "--loss {kind:?} does not fit {}: its head has {} background column (spec loss {:?})",
                self.model.display(),
                if spec.has_background_column() { "a" } else { "no" },
                spec.loss
            );
        }
        let mut options = self.loss_options(kind, rank);
        if kind == LossKind::Rpn {
            self.rpn_options(spec, &mut options)?;
        }
        if self.class_weights == ClassWeightsMode::None {
            return Ok((kind, options));
        }
        if kind != LossKind::SoftmaxFocal {
            bail_input!("--class-weights applies to --loss softmax-focal, not {kind:?}");
        }
        if let Some(o) = options.as_object_mut() {
            if self.class_weights == ClassWeightsMode::Dataset {
                o.insert("class_weights".into(), "static".into());
                o.insert("class_counts".into(), serde_json::json!(class_histogram));
                o.insert("background_weight".into(), "fg_sum_over_3".into());
            } else {
                o.insert("class_weights".into(), "batch".into());
            }
        }
        Ok((kind, options))
    }
}
