//! The training/evaluation loader: worker threads with a bounded prefetch queue turn dataset
//! indices into [`Batch`]es of image tensors and encoded targets.
//!
//! Determinism: the epoch order is a shuffle keyed by `(seed, epoch)`; every random choice of
//! an image's augmentation is keyed by `(seed, epoch, dataset index)`; batch `b` is built whole
//! by worker `b % workers` and batches are handed out in order. So the batches are identical
//! whatever the number of workers.
//!
//! Distributed runs: [`Shard`] `{ rank, world }` takes every `world`-th image of the shuffled
//! order starting at `rank`, after padding the order (by wrapping around) to a multiple of
//! `world`, so every rank sees the same number of images (PyTorch `DistributedSampler`'s rule).
//!
//! Threads: each worker limits libtorch's intra-op parallelism to 1 thread on its own thread
//! (target encoding runs tensor ops there); the workers are the parallelism. The main thread's
//! libtorch thread count is left as it was; [`ThreadPlan`] says how to split the cores.
//!
//! An image that cannot be read during training is skipped (its batch is one image short) and
//! counted in [`LoaderStats`]; it never stops the run.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::check::{problem_of, Problem};
use super::transforms::{self, AugmentConfig, Objects, PixelNorm};
use super::voc::VocDataset;
use crate::rng::Rng;

/// Turns one image's boxes into dense anchor targets (the box module's coder implements it).
pub trait TargetEncoder: Send + Sync {
    /// `A`, the number of anchors.
    fn num_anchors(&self) -> i64;
    /// boxes: `[K, 4]` xyxy in model-input pixels; labels: `[K]` 0-based class ids.
    /// Returns `(loc_targets [A, 4] f32, cls_targets [A] i64)`.
    fn encode(&self, boxes: &[[f32; 4]], labels: &[i64]) -> Result<(Tensor, Tensor)>;

    /// [`Self::encode`] with `crowd` `[K]` flags: a crowd region (COCO `iscrowd`) is never a
    /// positive; the box coders also ignore (cls -1) the background anchors inside one. This
    /// default leaves crowd regions out of the encoding (their anchors stay background).
    fn encode_with_crowd(
        &self,
        boxes: &[[f32; 4]],
        labels: &[i64],
        crowd: &[bool],
    ) -> Result<(Tensor, Tensor)> {
        let keep = |i: &usize| !crowd.get(*i).copied().unwrap_or(false);
        let kept_boxes: Vec<[f32; 4]> = (0..boxes.len()).filter(keep).map(|i| boxes[i]).collect();
        let kept_labels: Vec<i64> = (0..labels.len()).filter(keep).map(|i| labels[i]).collect();
        self.encode(&kept_boxes, &kept_labels)
    }
}

/// This process's share of an epoch in a distributed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { rank: 0, world: 1 }
    }
}

/// Loader options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    /// Shuffle the order every epoch (keyed by `(seed, epoch)`).
    pub shuffle: bool,
    /// Drop the last, incomplete batch.
    pub drop_last: bool,
    pub seed: u64,
    /// Model input `[width, height]`.
    pub input_size: [u32; 2],
    /// Training augmentation; `None`: the test transform (resize + normalise).
    pub augment: Option<AugmentConfig>,
    pub norm: PixelNorm,
    /// Keep difficult objects (excluded from training by default).
    pub use_difficult: bool,
    /// `Some(cuda:i)`: put each batch's tensors in memory pinned (page-locked) for that device,
    /// on the worker threads (as PyTorch's `DataLoader(pin_memory=True, pin_memory_device=..)`
    /// does off the training loop), so the copies to it are faster and need not block the host
    /// ([`crate::device::to_device_async`]). Each rank of a multi-GPU run pins for its own GPU.
    /// Ignored for the CPU and when CUDA is not available. Where this process runs, not a
    /// setting: not serialized.
    #[serde(skip)]
    pub pin_memory: Option<Device>,
    pub shard: Shard,
    /// Hand out a batch whose images were all unreadable (empty) instead of skipping it, so
    /// every rank of a distributed run takes the same number of steps.
    pub keep_empty_batches: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            workers: 1,
            prefetch: 2,
            shuffle: true,
            drop_last: false,
            seed: 0,
            input_size: [300, 300],
            augment: Some(AugmentConfig::default()),
            norm: PixelNorm::default(),
            use_difficult: false,
            pin_memory: None,
            shard: Shard::default(),
            keep_empty_batches: false,
        }
    }
}

impl LoaderConfig {
    /// Evaluation: fixed order, no augmentation, difficult objects kept (flagged), last batch
    /// kept.
    pub fn eval(input_size: [u32; 2], batch_size: usize, workers: usize) -> Self {
        Self {
            batch_size,
            workers,
            shuffle: false,
            augment: None,
            use_difficult: true,
            input_size,
            ..Self::default()
        }
    }
}

/// One batch.
#[derive(Debug)]
pub struct Batch {
    /// `[N, 3, H, W]` f32, normalised.
    pub images: Tensor,
    /// `[N, A, 4]` f32.
    pub loc_targets: Tensor,
    /// `[N, A]` i64 (0: background, as the encoder writes them).
    pub cls_targets: Tensor,
    /// Per image, `[K_i, 4]` xyxy boxes after the transform, in model-input pixels.
    pub boxes: Vec<Vec<[f32; 4]>>,
    /// Per image, `[K_i]` 0-based class ids.
    pub labels: Vec<Vec<i64>>,
    /// Per image, `[K_i]` difficult flags.
    pub difficult: Vec<Vec<bool>>,
    /// Per image, `[K_i]` crowd regions (COCO `iscrowd`; their anchors are ignored, -1).
    pub crowd: Vec<Vec<bool>>,
    /// Image ids.
    pub ids: Vec<String>,
    /// Dataset indices (`dataset.records[i]` has the original annotation).
    pub indices: Vec<usize>,
    /// Upright `[width, height]` of each decoded image before the transform.
    pub original_sizes: Vec<[u32; 2]>,
    /// The batch's position in its epoch (0-based).
    pub index: usize,
}

impl Batch {
    /// Move the images and targets to memory pinned for `device` (each left where it is if
    /// pinning fails: the copies to the device then just take longer).
    fn pin_memory(&mut self, device: Device) {
        for t in [
            &mut self.images,
            &mut self.loc_targets,
            &mut self.cls_targets,
        ] {
            if let Ok(pinned) = t.f_pin_memory(device) {
                *t = pinned;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What the loader skipped so far (over all epochs).
#[derive(Debug, Default)]
pub struct LoaderStats {
    skipped: AtomicUsize,
    loaded: AtomicUsize,
    problems: Mutex<Vec<Problem>>,
}

impl LoaderStats {
    /// Images skipped because they could not be read.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Images loaded.
    pub fn loaded(&self) -> usize {
        self.loaded.load(Ordering::Relaxed)
    }

    /// The problems of the skipped images (the first 1000).
    pub fn problems(&self) -> Vec<Problem> {
        self.problems.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn skip(&self, problem: Problem) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.problems.lock() {
            if p.len() < 1000 {
                p.push(problem);
            }
        }
    }
}

/// The environment variable that sets a training run's libtorch intra-op threads
/// ([`ThreadPlan::with_env_threads`]).
pub const TORCH_THREADS_VAR: &str = "TCHCV_TORCH_THREADS";

/// How many worker threads and libtorch intra-op threads share the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThreadPlan {
    pub workers: usize,
    pub torch_threads: usize,
}

impl ThreadPlan {
    /// The cores this process may use.
    pub fn available_cores() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// The split for training on `device` with `cores` cores. On CUDA the model runs on the
    /// GPU and the host mostly prepares data: all cores but one are workers, libtorch keeps
    /// one. On CPU the model step dominates (data costs a few ms per image against a step of
    /// seconds), so libtorch keeps every core and one worker per 8 cores prepares data; the
    /// workers sleep when the prefetch queue is full, so the overlap stays small.
    pub fn for_device(device: Device, cores: usize) -> Self {
        let cores = cores.max(1);
        if device.is_cuda() {
            Self {
                workers: (cores - 1).max(1),
                torch_threads: 1,
            }
        } else {
            Self {
                workers: cores.div_ceil(8),
                torch_threads: cores,
            }
        }
    }

    /// This plan with libtorch's intra-op threads from `TCHCV_TORCH_THREADS` when it is set
    /// (a whole number >= 1; anything else is bad input, named): how `tchcv bench train` gives
    /// each split of the cores a try, and a way to leave cores to other work.
    pub fn with_env_threads(self) -> Result<Self> {
        let Some(value) = std::env::var_os(TORCH_THREADS_VAR) else {
            return Ok(self);
        };
        match value.to_str().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(threads) if threads >= 1 => Ok(Self {
                torch_threads: threads,
                ..self
            }),
            _ => crate::bail_input!(
                "{TORCH_THREADS_VAR}={value:?}: expected a whole number of threads >= 1"
            ),
        }
    }

    /// Set libtorch's intra-op threads of the calling thread (do it on the training thread).
    pub fn apply(&self) {
        tch::set_num_threads(self.torch_threads as i32);
    }
}

/// Parallel, deterministic batches from a [`VocDataset`].
pub struct Loader {
    dataset: Arc<VocDataset>,
    encoder: Arc<dyn TargetEncoder>,
    config: LoaderConfig,
    stats: Arc<LoaderStats>,
}

impl Loader {
    pub fn new(
        dataset: Arc<VocDataset>,
        encoder: Arc<dyn TargetEncoder>,
        config: LoaderConfig,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            crate::bail_input!("batch size must be at least 1");
        }
        if config.input_size.contains(&0) {
            crate::bail_input!("input size {:?} must be positive", config.input_size);
        }
        if config.shard.world == 0 || config.shard.rank >= config.shard.world {
            crate::bail_input!(
                "shard rank {} of world {} is out of range",
                config.shard.rank,
                config.shard.world
            );
        }
        if dataset.is_empty() {
            crate::bail_input!(
                "the dataset {} ({}) has no usable images",
                dataset.root.display(),
                dataset.sets.join(",")
            );
        }
        Ok(Self {
            dataset,
            encoder,
            config,
            stats: Arc::new(LoaderStats::default()),
        })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    pub fn dataset(&self) -> &Arc<VocDataset> {
        &self.dataset
    }

    pub fn stats(&self) -> &LoaderStats {
        &self.stats
    }

    /// This rank's dataset indices for `epoch`, in order.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        epoch_order(self.dataset.len(), epoch, &self.config)
    }

    /// Batches this rank gets per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.epoch_order(0).len();
        let b = self.config.batch_size;
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The batches of `epoch`, prepared by the worker threads.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first_batch` on (a resumed run continues mid-epoch
    /// with exactly the batches it would have seen).
    pub fn epoch_from(&self, epoch: u64, first_batch: usize) -> EpochIter {
        let order = self.epoch_order(epoch);
        let b = self.config.batch_size;
        let mut chunks: Vec<(usize, Vec<usize>)> =
            order.chunks(b).map(<[usize]>::to_vec).enumerate().collect();
        if self.config.drop_last && chunks.last().is_some_and(|(_, c)| c.len() < b) {
            chunks.pop();
        }
        chunks.drain(..first_batch.min(chunks.len()));
        let chunks = Arc::new(chunks);
        let workers = self.config.workers.max(1).min(chunks.len().max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        let pin = self
            .config
            .pin_memory
            .filter(|d| d.is_cuda() && tch::Cuda::is_available());
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Result<Batch>>(self.config.prefetch.max(1));
            let job = Job {
                dataset: Arc::clone(&self.dataset),
                encoder: Arc::clone(&self.encoder),
                config: self.config.clone(),
                stats: Arc::clone(&self.stats),
                epoch,
            };
            let chunks = Arc::clone(&chunks);
            let stop = Arc::clone(&stop);
            handles.push(std::thread::spawn(move || {
                // Encoding runs libtorch ops on this thread: one intra-op thread each, since
                // the workers themselves are the parallelism.
                tch::set_num_threads(1);
                for (index, chunk) in chunks.iter().skip(w).step_by(workers) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let batch = job.batch(chunk).map(|mut b| {
                        b.index = *index;
                        if let Some(device) = pin {
                            b.pin_memory(device);
                        }
                        b
                    });
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        break;
                    }
                }
            }));
            receivers.push(rx);
        }
        EpochIter {
            receivers,
            handles,
            stop,
            next: 0,
            total: chunks.len(),
            keep_empty: self.config.keep_empty_batches,
            done: false,
        }
    }
}

/// The shuffled (or natural) order of `n` images for `epoch`, padded and sharded.
fn epoch_order(n: usize, epoch: u64, config: &LoaderConfig) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if config.shuffle {
        Rng::keyed(config.seed, &[0x5348_5546, epoch]).shuffle(&mut order);
    }
    let Shard { rank, world } = config.shard;
    if world <= 1 {
        return order;
    }
    let padded = n.div_ceil(world) * world;
    (rank..padded)
        .step_by(world)
        .map(|i| order[i % n])
        .collect()
}

/// Everything a worker needs to build batches.
struct Job {
    dataset: Arc<VocDataset>,
    encoder: Arc<dyn TargetEncoder>,
    config: LoaderConfig,
    stats: Arc<LoaderStats>,
    epoch: u64,
}

/// One image, transformed and encoded.
struct Item {
    pixels: Vec<f32>,
    objects: Objects,
    loc: Tensor,
    cls: Tensor,
    index: usize,
    original_size: [u32; 2],
}

impl Job {
    fn item(&self, index: usize) -> Result<Option<Item>> {
        let sample = match self.dataset.load(index, self.config.use_difficult) {
            Ok(s) => s,
            Err(e) => {
                return match problem_of(&e) {
                    Some(p) => {
                        self.stats.skip(p.clone());
                        Ok(None)
                    }
                    None => Err(e),
                }
            }
        };
        self.stats.loaded.fetch_add(1, Ordering::Relaxed);
        let original_size = [sample.image.width(), sample.image.height()];
        let objects = Objects {
            boxes: sample.boxes,
            labels: sample.labels,
            difficult: sample.difficult,
            crowd: sample.crowd,
        };
        let [w, h] = self.config.input_size;
        let out = match &self.config.augment {
            Some(aug) => {
                let mut rng = Rng::keyed(self.config.seed, &[self.epoch, index as u64]);
                transforms::train_transform(
                    sample.image,
                    objects,
                    aug,
                    (w, h),
                    &self.config.norm,
                    &mut rng,
                )?
            }
            None => transforms::test_transform(&sample.image, objects, (w, h), &self.config.norm)?,
        };
        let (loc, cls) = self
            .encoder
            .encode_with_crowd(&out.objects.boxes, &out.objects.labels, &out.objects.crowd)
            .with_context(|| {
                format!(
                    "encoding the targets of image {}",
                    self.dataset.records[index].id
                )
            })?;
        let a = self.encoder.num_anchors();
        if loc.size() != [a, 4] || cls.size() != [a] {
            bail!(
                "the target encoder returned loc {:?} and cls {:?}, expected [{a}, 4] and [{a}]",
                loc.size(),
                cls.size()
            );
        }
        Ok(Some(Item {
            pixels: out.pixels,
            objects: out.objects,
            loc: loc.to_kind(Kind::Float),
            cls: cls.to_kind(Kind::Int64),
            index,
            original_size,
        }))
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let mut items = Vec::with_capacity(indices.len());
        for &i in indices {
            if let Some(item) = self.item(i)? {
                items.push(item);
            }
        }
        let [w, h] = self.config.input_size;
        let n = items.len() as i64;
        let mut pixels = Vec::with_capacity(items.len() * 3 * (w * h) as usize);
        for it in &items {
            pixels.extend_from_slice(&it.pixels);
        }
        let images = Tensor::from_slice(&pixels).view([n, 3, h as i64, w as i64]);
        let a = self.encoder.num_anchors();
        let (loc_targets, cls_targets) = if items.is_empty() {
            (
                Tensor::zeros([0, a, 4], (Kind::Float, Device::Cpu)),
                Tensor::zeros([0, a], (Kind::Int64, Device::Cpu)),
            )
        } else {
            let locs: Vec<&Tensor> = items.iter().map(|it| &it.loc).collect();
            let clss: Vec<&Tensor> = items.iter().map(|it| &it.cls).collect();
            (Tensor::f_stack(&locs, 0)?, Tensor::f_stack(&clss, 0)?)
        };
        let records = &self.dataset.records;
        Ok(Batch {
            images,
            loc_targets,
            cls_targets,
            ids: items
                .iter()
                .map(|it| records[it.index].id.clone())
                .collect(),
            indices: items.iter().map(|it| it.index).collect(),
            original_sizes: items.iter().map(|it| it.original_size).collect(),
            labels: items.iter().map(|it| it.objects.labels.clone()).collect(),
            difficult: items
                .iter()
                .map(|it| it.objects.difficult.clone())
                .collect(),
            crowd: items.iter().map(|it| it.objects.crowd.clone()).collect(),
            boxes: items.into_iter().map(|it| it.objects.boxes).collect(),
            index: 0,
        })
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    next: usize,
    total: usize,
    keep_empty: bool,
    done: bool,
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        while !self.done && self.next < self.total {
            let w = self.next % self.receivers.len();
            self.next += 1;
            let batch = match self.receivers[w].recv() {
                Ok(b) => b,
                Err(_) => {
                    self.done = true;
                    return Some(Err(anyhow::anyhow!("data worker {w} stopped unexpectedly")));
                }
            };
            match batch {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                // Every image of this batch was unreadable (counted): go on with the next.
                Ok(b) if b.is_empty() && !self.keep_empty => continue,
                Ok(b) => return Some(Ok(b)),
            }
        }
        None
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock workers waiting on a full queue, then wait for them.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
