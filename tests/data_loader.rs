//! The loader: batch shapes the losses take, determinism whatever the worker count, epoch
//! shuffling, sharding, drop-last, skipping unreadable images, and thread use.

mod common;
mod voc_fixture;

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use tch::{Device, Kind, Tensor};
use tchcv::data::synth::{write_dataset, SynthConfig};
use tchcv::data::{
    Batch, ImageCheck, Loader, LoaderConfig, ReadOptions, SetSpec, Shard, TargetEncoder, VocDataset,
};
use tchcv::loss::{DetectionLoss, LossInputs, SsdLoss, SsdLossConfig};

/// A small stand-in for the box coder: a grid of square anchors; an anchor takes the label
/// (+1) of the box it overlaps most when IoU >= 0.4, and the offset `box - anchor`.
struct GridEncoder {
    anchors: Vec<[f32; 4]>,
}

impl GridEncoder {
    fn new((w, h): (u32, u32)) -> Self {
        let mut anchors = Vec::new();
        for size in [16.0f32, 32.0] {
            let mut y = 0.0;
            while y < h as f32 {
                let mut x = 0.0;
                while x < w as f32 {
                    anchors.push([x, y, x + size, y + size]);
                    x += size / 2.0;
                }
                y += size / 2.0;
            }
        }
        Self { anchors }
    }
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

impl TargetEncoder for GridEncoder {
    fn num_anchors(&self) -> i64 {
        self.anchors.len() as i64
    }

    fn encode(&self, boxes: &[[f32; 4]], labels: &[i64]) -> Result<(Tensor, Tensor)> {
        let mut loc = Vec::with_capacity(self.anchors.len() * 4);
        let mut cls = Vec::with_capacity(self.anchors.len());
        for a in &self.anchors {
            let best = boxes
                .iter()
                .enumerate()
                .map(|(i, b)| (i, iou(*a, *b)))
                .max_by(|x, y| x.1.total_cmp(&y.1));
            match best {
                Some((i, v)) if v >= 0.4 => {
                    let b = boxes[i];
                    loc.extend([b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3]]);
                    cls.push(labels[i] + 1);
                }
                _ => {
                    loc.extend([0.0; 4]);
                    cls.push(0);
                }
            }
        }
        // A tensor op, as the real coder does, so encoding runs libtorch on the worker.
        let loc = Tensor::from_slice(&loc).view([-1, 4]).f_mul_scalar(1.0)?;
        Ok((loc, Tensor::from_slice(&cls)))
    }
}

fn synth(name: &str, train: usize) -> std::path::PathBuf {
    let dir = common::scratch(name);
    let config = SynthConfig {
        train,
        test: 4,
        size: (96, 80),
        seed: 5,
        ..SynthConfig::default()
    };
    write_dataset(&dir, &config).unwrap();
    dir
}

fn dataset(root: &Path) -> Arc<VocDataset> {
    let (ds, _) = VocDataset::open(
        root,
        &SetSpec::parse_list("trainval").unwrap(),
        &ReadOptions::default(),
    )
    .unwrap();
    Arc::new(ds)
}

const INPUT: [u32; 2] = [64, 48];

fn loader(ds: &Arc<VocDataset>, config: LoaderConfig) -> Loader {
    let encoder = Arc::new(GridEncoder::new((INPUT[0], INPUT[1])));
    Loader::new(Arc::clone(ds), encoder, config).unwrap()
}

fn config(workers: usize, seed: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size: 5,
        workers,
        seed,
        input_size: INPUT,
        ..LoaderConfig::default()
    }
}

fn collect(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader.epoch(epoch).collect::<Result<Vec<_>>>().unwrap()
}

#[test]
fn loader_yields_the_shapes_the_losses_expect() {
    let root = synth("data_loader_shapes", 23);
    let ds = dataset(&root);
    let l = loader(&ds, config(2, 1));
    let a = GridEncoder::new((64, 48)).num_anchors();
    let batches = collect(&l, 0);
    assert_eq!(batches.len(), 5, "23 images in batches of 5, last one kept");
    assert_eq!(l.batches_per_epoch(), 5);
    let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
    assert_eq!(sizes, [5, 5, 5, 5, 3]);
    let classes = ds.classes.len() as i64 + 1;
    let loss = SsdLoss::new(SsdLossConfig::default()).unwrap();
    for b in &batches {
        let n = b.len() as i64;
        assert_eq!(b.images.size(), [n, 3, 48, 64]);
        assert_eq!(b.images.kind(), Kind::Float);
        assert_eq!(b.loc_targets.size(), [n, a, 4]);
        assert_eq!(b.loc_targets.kind(), Kind::Float);
        assert_eq!(b.cls_targets.size(), [n, a]);
        assert_eq!(b.cls_targets.kind(), Kind::Int64);
        assert_eq!(
            (
                b.boxes.len(),
                b.labels.len(),
                b.difficult.len(),
                b.indices.len(),
                b.original_sizes.len()
            ),
            (b.len(), b.len(), b.len(), b.len(), b.len())
        );
        for (boxes, labels) in b.boxes.iter().zip(&b.labels) {
            assert_eq!(boxes.len(), labels.len());
            for bx in boxes {
                assert!(
                    bx[0] >= 0.0
                        && bx[1] >= 0.0
                        && bx[2] <= 64.0
                        && bx[3] <= 48.0
                        && bx[2] > bx[0]
                        && bx[3] > bx[1],
                    "{bx:?}"
                );
            }
            assert!(labels.iter().all(|&l| l >= 0 && l < classes - 1));
        }
        assert!(
            b.difficult.iter().flatten().all(|d| !d),
            "difficult objects are left out of training"
        );
        assert!(b.original_sizes.iter().all(|s| *s == [96, 80]));
        // The loss takes the batch as it is.
        let loc_preds = Tensor::randn([n, a, 4], (Kind::Float, Device::Cpu));
        let cls_preds = Tensor::randn([n, a, classes], (Kind::Float, Device::Cpu));
        let out = loss
            .forward(&LossInputs {
                loc_preds: &loc_preds,
                loc_targets: &b.loc_targets,
                cls_preds: &cls_preds,
                cls_targets: &b.cls_targets,
            })
            .unwrap();
        assert!(out.total.double_value(&[]).is_finite());
    }
    let normalised_mean = batches[0].images.mean(Kind::Float).double_value(&[]);
    assert!(
        normalised_mean.abs() < 1.5,
        "images are mean/std normalised ({normalised_mean})"
    );
}

fn assert_same_batches(a: &[Batch], b: &[Batch], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: batch count");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.ids, y.ids, "{what}");
        assert_eq!(x.boxes, y.boxes, "{what}");
        assert_eq!(x.labels, y.labels, "{what}");
        assert!(
            x.images.equal(&y.images),
            "{what}: images differ in batch {:?}",
            x.ids
        );
        assert!(
            x.loc_targets.equal(&y.loc_targets),
            "{what}: loc targets differ"
        );
        assert!(
            x.cls_targets.equal(&y.cls_targets),
            "{what}: cls targets differ"
        );
    }
}

#[test]
fn batches_are_identical_whatever_the_worker_count() {
    let seed = common::fresh_seed("batches_are_identical_whatever_the_worker_count");
    let root = synth("data_loader_determinism", 17);
    let ds = dataset(&root);
    for epoch in [0, 3] {
        let one = collect(&loader(&ds, config(1, seed)), epoch);
        for workers in [2, 3, 8] {
            let many = collect(&loader(&ds, config(workers, seed)), epoch);
            assert_same_batches(&one, &many, &format!("epoch {epoch}, {workers} workers"));
        }
    }
    let e0: Vec<String> = collect(&loader(&ds, config(2, seed)), 0)
        .into_iter()
        .flat_map(|b| b.ids)
        .collect();
    let e1: Vec<String> = collect(&loader(&ds, config(2, seed)), 1)
        .into_iter()
        .flat_map(|b| b.ids)
        .collect();
    assert_ne!(e0, e1, "each epoch has its own order");
    let (mut s0, mut s1) = (e0.clone(), e1.clone());
    s0.sort();
    s1.sort();
    assert_eq!(s0, s1, "and every image once");
    assert_eq!(s0.len(), 17);
}

#[test]
fn shards_split_an_epoch_evenly_and_deterministically() {
    let root = synth("data_loader_shards", 11);
    let ds = dataset(&root);
    let world = 3;
    let orders: Vec<Vec<usize>> = (0..world)
        .map(|rank| {
            let c = LoaderConfig {
                shard: Shard { rank, world },
                ..config(1, 9)
            };
            loader(&ds, c).epoch_order(2)
        })
        .collect();
    assert!(
        orders.iter().all(|o| o.len() == 4),
        "11 images over 3 ranks: 4 each (padded)"
    );
    let mut all: Vec<usize> = orders.concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 11, "the ranks cover every image");
    let full = loader(&ds, config(1, 9)).epoch_order(2);
    assert_eq!(orders[1], vec![full[1], full[4], full[7], full[10]]);
    assert_eq!(orders[2][3], full[0], "padding wraps around");
    let bad = Loader::new(
        Arc::clone(&ds),
        Arc::new(GridEncoder::new((64, 48))),
        LoaderConfig {
            shard: Shard { rank: 3, world: 3 },
            ..config(1, 9)
        },
    );
    assert!(bad.is_err());
}

#[test]
fn drop_last_and_no_shuffle() {
    let root = synth("data_loader_drop_last", 12);
    let ds = dataset(&root);
    let c = LoaderConfig {
        drop_last: true,
        shuffle: false,
        ..config(2, 0)
    };
    let l = loader(&ds, c);
    assert_eq!(l.batches_per_epoch(), 2);
    let batches = collect(&l, 4);
    assert_eq!(batches.len(), 2);
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..10).collect::<Vec<_>>());
}

#[test]
fn unreadable_images_are_skipped_and_counted() {
    let root = synth("data_loader_unreadable", 10);
    let ds = dataset(&root);
    // Break two images after the dataset was opened (as a disk error during training would).
    for r in &ds.records[3..5] {
        let bytes = std::fs::read(&r.image_path).unwrap();
        std::fs::write(&r.image_path, &bytes[..bytes.len() / 3]).unwrap();
    }
    let l = loader(&ds, config(2, 0));
    let batches = collect(&l, 0);
    let total: usize = batches.iter().map(Batch::len).sum();
    assert_eq!(total, 8);
    assert_eq!(l.stats().skipped(), 2);
    assert_eq!(l.stats().loaded(), 8);
    let problems = l.stats().problems();
    assert!(
        problems
            .iter()
            .all(|p| p.kind == tchcv::data::ProblemKind::TruncatedImage),
        "{problems:?}"
    );
    std::fs::remove_file(&ds.records[0].image_path).unwrap();
    let _ = collect(&l, 1);
    assert_eq!(l.stats().skipped(), 5, "two more truncated and one missing");
}

#[test]
fn eval_config_keeps_order_difficult_and_original_geometry() {
    let root = synth("data_loader_eval", 9);
    let (ds, _) = voc_fixture::open_voc(&root, "trainval", ImageCheck::Header);
    let ds = Arc::new(ds);
    let l = loader(&ds, LoaderConfig::eval(INPUT, 4, 2));
    let batches = collect(&l, 0);
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..9).collect::<Vec<_>>());
    for b in &batches {
        for (k, &i) in b.indices.iter().enumerate() {
            let record = &ds.records[i];
            assert_eq!(
                b.boxes[k].len(),
                record.objects.len(),
                "difficult objects kept for evaluation"
            );
            for (got, o) in b.boxes[k].iter().zip(&record.objects) {
                let p = o.pixel_box();
                let want = [
                    p[0] * 64.0 / 96.0,
                    p[1] * 48.0 / 80.0,
                    p[2] * 64.0 / 96.0,
                    p[3] * 48.0 / 80.0,
                ];
                assert!(
                    got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-4),
                    "{got:?} vs {want:?}"
                );
            }
            assert_eq!(
                b.difficult[k],
                record
                    .objects
                    .iter()
                    .map(|o| o.difficult)
                    .collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn workers_leave_the_main_threads_libtorch_threads_alone() {
    let root = synth("data_loader_threads", 6);
    let ds = dataset(&root);
    let before = tch::get_num_threads();
    let _ = collect(&loader(&ds, config(3, 0)), 0);
    assert_eq!(tch::get_num_threads(), before);
    let plan = tchcv::data::ThreadPlan::for_device(Device::Cpu, 2);
    assert_eq!((plan.workers, plan.torch_threads), (1, 2));
    let plan = tchcv::data::ThreadPlan::for_device(Device::Cuda(0), 16);
    assert_eq!((plan.workers, plan.torch_threads), (15, 1));
}

#[test]
fn dropping_an_epoch_early_stops_the_workers() {
    let root = synth("data_loader_drop", 20);
    let ds = dataset(&root);
    let l = loader(
        &ds,
        LoaderConfig {
            batch_size: 2,
            prefetch: 1,
            ..config(2, 0)
        },
    );
    let mut epoch = l.epoch(0);
    let first = epoch.next().unwrap().unwrap();
    assert_eq!(first.len(), 2);
    drop(epoch); // must return: the workers see the closed queue and stop
    assert_eq!(collect(&l, 0).len(), 10);
}

#[test]
fn pinned_memory_batches_on_cuda() {
    let Some(device) = common::cuda_or_skip("pinned-memory batches") else {
        return;
    };
    let root = synth("data_loader_pinned", 6);
    let ds = dataset(&root);
    let l = loader(
        &ds,
        LoaderConfig {
            pin_memory: Some(device),
            ..config(2, 0)
        },
    );
    for b in collect(&l, 0) {
        for (name, t) in [
            ("images", &b.images),
            ("loc_targets", &b.loc_targets),
            ("cls_targets", &b.cls_targets),
        ] {
            assert!(t.is_pinned(device), "{name} are in pinned memory");
            // The asynchronous copy the training step makes gives the same tensor.
            let queued = tchcv::device::to_device_async(t, device);
            assert_eq!(queued.device(), device);
            assert!(
                queued.to_device(Device::Cpu).equal(t),
                "{name}: copied as they are"
            );
        }
    }
    let unpinned = collect(&loader(&ds, config(2, 0)), 0);
    assert!(!unpinned[0].images.is_pinned(device));
}

#[test]
fn the_rpn_coder_encodes_class_agnostic_labels_before_sampling() {
    // With RpnCoder as the target encoder each image's targets are RpnCoder::label of its
    // transformed boxes: labels 1 / 0 / -1 whatever the classes, regression targets at the
    // positives only.
    let root = synth("loader-rpn", 12);
    let ds = dataset(&root);
    let spec = tchcv::spec::ModelSpec::load(&common::repo().join("models/rpn_small.json")).unwrap();
    let rpn = Arc::new(tchcv::bbox::RpnCoder::from_spec(&spec).unwrap());
    let config = LoaderConfig {
        input_size: [160, 160],
        ..config(2, 4)
    };
    let loader = Loader::new(Arc::clone(&ds), rpn.clone(), config).unwrap();
    let mut positives = 0;
    for batch in collect(&loader, 0) {
        let a = rpn.num_anchors();
        assert_eq!(batch.cls_targets.size(), [batch.len() as i64, a]);
        for (i, boxes) in batch.boxes.iter().enumerate() {
            let want = rpn.label(boxes).unwrap();
            let labels = batch.cls_targets.get(i as i64);
            assert!(
                labels.equal(&want.labels_tensor()),
                "image {}",
                batch.ids[i]
            );
            let targets = batch.loc_targets.get(i as i64);
            assert!(targets.equal(&want.regression_targets_tensor()));
            positives += want.num_pos();
        }
        let (lo, hi) = (batch.cls_targets.min(), batch.cls_targets.max());
        assert!(lo.int64_value(&[]) >= -1 && hi.int64_value(&[]) <= 1);
    }
    assert!(positives > 0, "the images have objects");
}
