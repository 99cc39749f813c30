//! Faster R-CNN's second stage, box side: proposals matched to the ground truth, sampled
//! (torchvision `RoIHeads.select_training_samples`), OHEM's hard-example selection, and the box
//! head's weighted box coding (`BoxCoder((10, 10, 5, 5))`).
//!
//! ```text
//! torchvision RoIHeads                                  here (one image)
//! add_gt_proposals: cat(proposals, gt_boxes)            label_proposals: proposals then usable GT
//! box_iou(gt_boxes, proposals)                          IouTable (the same f32 operations)
//! Matcher(0.5, 0.5, allow_low_quality=False)            Matcher::MaxIou(fg_iou, bg_iou_hi)
//! labels = gt_labels[matched.clamp(0)]                  labels = gt label + 1 (tchcv's GT labels
//!                                                         are 0-based)
//! BELOW_LOW_THRESHOLD -> 0, BETWEEN -> -1               the same; and max IoU < bg_iou_lo -> -1
//! gt empty: every label 0                               the same
//! fg_bg_sampler(labels): 512 per image, 25% fg          sample_rois: sampler::sample_image, seeded
//! sampled_inds = where(pos | neg)                       RoiSample::index (ascending)
//! box_coder.encode(matched_gt_boxes, proposals)         encode_deltas_weighted (10, 10, 5, 5) at
//!                                                         positives (0 elsewhere)
//! ```
//!
//! Differences, none on an image torchvision accepts: degenerate GT boxes (w or h <= 0) are
//! dropped and reported (torchvision's `GeneralizedRCNN` raises); regression targets of
//! background RoIs are 0 (torchvision encodes them against GT 0; the loss never reads them).
//!
//! Samplers ([`RoiSamplerKind`]): `random` (torchvision's), `all` (every labelled proposal, e.g.
//! with a focal loss), `ohem` (Shrivastava et al. 2016: every labelled proposal is scored by the
//! loss without gradient, near-duplicates are suppressed by NMS at 0.7 on the loss-ranked RoIs,
//! and the top `ohem_per_image` by loss are trained on: [`ohem_select`]).

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use super::matcher::{IouTable, Matcher, BACKGROUND, IGNORED};
use super::nms::nms;
use super::ops;
use super::rpn::{encode_deltas_weighted, usable_boxes, IGNORE, NEGATIVE, POSITIVE};
use super::sampler::{sample_image, SamplerConfig, SamplerKind};
use crate::bail_input;
use crate::rng::Rng;
use crate::spec::IgnoreBand;
pub use crate::spec::{RoiSamplerConfig, RoiSamplerKind};

/// The box head's coding weights `(wx, wy, ww, wh)` (torchvision `RoIHeads`' default).
pub const RCNN_WEIGHTS: [f32; 4] = [10.0, 10.0, 5.0, 5.0];

impl RoiSamplerConfig {
    /// The first stage's sampler settings this config's draw uses.
    pub fn sampler(&self) -> SamplerConfig {
        SamplerConfig {
            kind: match self.kind {
                RoiSamplerKind::Random => SamplerKind::Random,
                RoiSamplerKind::All | RoiSamplerKind::Ohem => SamplerKind::All,
            },
            batch_size_per_image: self.batch_size_per_image,
            positive_fraction: self.positive_fraction,
            seed: self.seed,
        }
    }

    /// The random stream of image `image` under `keys` (e.g. the step).
    pub fn rng(&self, keys: &[u64], image: u64) -> Rng {
        self.sampler().rng(keys, image)
    }
}

/// One image's proposals (with the GT added) labelled, before sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiLabels {
    /// `[P + G']` xyxy: the proposals, then the usable GT boxes (torchvision `add_gt_proposals`).
    pub boxes: Vec<[f32; 4]>,
    /// `[P + G']` i64: GT label + 1 (foreground), 0 (background), -1 (ignored).
    pub labels: Vec<i64>,
    /// `[P + G']` i64: at foreground the matched GT's input index, else -1.
    pub matched_gt: Vec<i64>,
    /// `[P + G']` f32: the best IoU with any usable GT (0 without any).
    pub max_iou: Vec<f32>,
    /// Input indices of GT boxes dropped as degenerate.
    pub dropped: Vec<usize>,
    /// The usable GT boxes, by usable index (what `matched_gt` indexes after mapping).
    gt: Vec<[f32; 4]>,
    /// Per box, the usable GT index of its match (or -1).
    matched_usable: Vec<i64>,
}

/// Label one image's proposals: proposals `[P]` xyxy, gt `[G]` xyxy with 0-based `gt_labels`.
pub fn label_proposals(
    proposals: &[[f32; 4]],
    gt: &[[f32; 4]],
    gt_labels: &[i64],
    config: &RoiSamplerConfig,
) -> Result<RoiLabels> {
    config.validate()?;
    if gt.len() != gt_labels.len() {
        bail_input!(
            "gt_labels: {} labels for {} boxes",
            gt_labels.len(),
            gt.len()
        );
    }
    if let Some(i) = gt_labels.iter().position(|&l| l < 0) {
        bail_input!(
            "gt_labels[{i}]: {} is negative (0-based classes)",
            gt_labels[i]
        );
    }
    if let Some(i) = proposals
        .iter()
        .position(|b| !b.iter().all(|x| x.is_finite()))
    {
        bail_input!(
            "proposals[{i}]: non-finite coordinate in {:?}",
            proposals[i]
        );
    }
    let usable = usable_boxes(gt, &[])?;
    let mut boxes = proposals.to_vec();
    boxes.extend_from_slice(&usable.boxes);
    let n = boxes.len();
    let mut out = RoiLabels {
        labels: vec![NEGATIVE; n],
        matched_gt: vec![-1; n],
        max_iou: vec![0.0; n],
        dropped: usable.dropped.clone(),
        gt: usable.boxes.clone(),
        matched_usable: vec![-1; n],
        boxes,
    };
    if usable.boxes.is_empty() {
        return Ok(out);
    }
    let areas: Vec<f32> = out.boxes.iter().map(ops::area).collect();
    let ious = IouTable::new(&out.boxes, &areas, &usable.boxes);
    out.max_iou = ious.best_gt_per_anchor().0;
    let matcher = Matcher::MaxIou {
        pos_iou: config.fg_iou as f32,
        neg_iou: config.bg_iou_hi as f32,
        band: IgnoreBand::Torchvision,
        allow_low_quality: false,
    };
    let lo = config.bg_iou_lo as f32;
    for (i, &m) in matcher.assign(&ious).iter().enumerate() {
        match m {
            IGNORED => out.labels[i] = IGNORE,
            BACKGROUND if out.max_iou[i] < lo => out.labels[i] = IGNORE,
            BACKGROUND => {}
            g => {
                let input = usable.input_index[g as usize];
                out.labels[i] = gt_labels[input] + 1;
                out.matched_gt[i] = input as i64;
                out.matched_usable[i] = g;
            }
        }
    }
    Ok(out)
}

/// One image's RoIs for the second-stage loss.
#[derive(Debug)]
pub struct RoiSample {
    /// `[R]` i64: the rows of [`RoiLabels::boxes`] taken, ascending (torchvision's order).
    pub index: Tensor,
    /// `[R, 4]` f32 xyxy: the RoIs.
    pub boxes: Tensor,
    /// `[R]` i64: class + 1 (foreground) or 0.
    pub labels: Tensor,
    /// `[R, 4]` f32: at foreground the deltas to the matched GT (weights 10, 10, 5, 5), else 0.
    pub regression_targets: Tensor,
    /// Foreground RoIs.
    pub num_pos: i64,
}

/// Sample one labelled image (CPU tensors out): `random` draws from `rng` with
/// [`sample_image`]'s quotas; `all` and `ohem` take every labelled RoI.
pub fn sample_rois(
    labelled: &RoiLabels,
    config: &RoiSamplerConfig,
    rng: &mut Rng,
) -> Result<RoiSample> {
    config.validate()?;
    let kinds: Vec<i64> = labelled
        .labels
        .iter()
        .map(|&l| match l {
            l if l > 0 => POSITIVE,
            0 => NEGATIVE,
            _ => IGNORE,
        })
        .collect();
    let picked = sample_image(&kinds, None, &config.sampler(), rng)?;
    let (mut index, mut boxes, mut labels, mut targets) = (vec![], vec![], vec![], vec![]);
    let mut num_pos = 0;
    for (i, &p) in picked.iter().enumerate() {
        if p == IGNORE {
            continue;
        }
        index.push(i as i64);
        boxes.extend_from_slice(&labelled.boxes[i]);
        labels.push(labelled.labels[i]);
        let g = labelled.matched_usable[i];
        let d = if p == POSITIVE && g >= 0 {
            num_pos += 1;
            encode_deltas_weighted(&labelled.gt[g as usize], &labelled.boxes[i], RCNN_WEIGHTS)
        } else {
            [0.0; 4]
        };
        targets.extend_from_slice(&d);
    }
    let r = index.len() as i64;
    Ok(RoiSample {
        index: Tensor::from_slice(&index),
        boxes: Tensor::from_slice(&boxes).view([r, 4]),
        labels: Tensor::from_slice(&labels),
        regression_targets: Tensor::from_slice(&targets).view([r, 4]),
        num_pos,
    })
}

/// The ground truth of a batch, per image in model-input pixels.
#[derive(Debug, Clone, Copy)]
pub struct BatchTruth<'a> {
    /// Per image `[K_i]` xyxy boxes.
    pub boxes: &'a [Vec<[f32; 4]>],
    /// Per image `[K_i]` 0-based classes.
    pub labels: &'a [Vec<i64>],
    /// Per image `[K_i]` crowd flags (crowd regions are not matched); empty: no crowd.
    pub crowd: &'a [Vec<bool>],
}

/// Label and sample a batch: per image its proposals `[P_i, 4]` (any device; read to the host)
/// against its non-crowd GT. Image `i` of the batch of rank `rank` of `world` draws from
/// `config.rng(keys, i * world + rank)`: its place in the global batch as the loader shards it,
/// so the ranks of a data-parallel run draw as one process would. CPU tensors out.
pub fn sample_batch_rois(
    proposals: &[Tensor],
    truth: BatchTruth,
    config: &RoiSamplerConfig,
    keys: &[u64],
    [rank, world]: [u64; 2],
) -> Result<Vec<RoiSample>> {
    let n = proposals.len();
    let crowd_ok = truth.crowd.is_empty() || truth.crowd.len() == n;
    if truth.boxes.len() != n || truth.labels.len() != n || !crowd_ok {
        bail_input!(
            "roi sampling: {n} proposal sets, {} GT box sets, {} GT label sets and {} crowd flag \
             sets",
            truth.boxes.len(),
            truth.labels.len(),
            truth.crowd.len()
        );
    }
    let mut out = Vec::with_capacity(n);
    for (i, p) in proposals.iter().enumerate() {
        let sample = (|| {
            ops::check_boxes("proposals", p, Some(2))?;
            let crowd = |k: usize| truth.crowd.get(i).and_then(|c| c.get(k)).copied() == Some(true);
            let (boxes, labels) = (&truth.boxes[i], &truth.labels[i]);
            let keep: Vec<usize> = (0..boxes.len()).filter(|&k| !crowd(k)).collect();
            let gt: Vec<[f32; 4]> = keep.iter().map(|&k| boxes[k]).collect();
            let gt_labels: Vec<i64> = keep
                .iter()
                .filter_map(|&k| labels.get(k).copied())
                .collect();
            let labelled = label_proposals(&ops::host_boxes(p)?, &gt, &gt_labels, config)?;
            sample_rois(
                &labelled,
                config,
                &mut config.rng(keys, i as u64 * world + rank),
            )
        })()
        .with_context(|| format!("image {i}"))?;
        out.push(sample);
    }
    Ok(out)
}

/// OHEM's selection for one image: boxes `[R, 4]` xyxy, losses `[R]` float (each RoI's loss,
/// computed without gradient). NMS at `nms_threshold` visiting RoIs by descending loss, then
/// the first `per_image`. Returns `[k]` i64 row indices in descending loss order.
pub fn ohem_select(
    boxes: &Tensor,
    losses: &Tensor,
    nms_threshold: f64,
    per_image: i64,
) -> Result<Tensor> {
    if per_image < 0 {
        bail_input!("ohem: per_image must be >= 0, got {per_image}");
    }
    if !matches!(losses.kind(), Kind::Float | Kind::Double) {
        bail_input!("ohem losses: expected f32 or f64, got {:?}", losses.kind());
    }
    let kept = nms(&boxes.detach(), &losses.detach(), nms_threshold)?;
    let k = kept.size()[0].min(per_image);
    Ok(kept.narrow(0, 0, k))
}

/// OHEM over a batch: `samples` are the images' candidates (e.g. from the `ohem` kind), their
/// rows concatenated in image order; losses: `[sum R_i]` each row's loss (no gradient). Per
/// image [`ohem_select`] with the config's `ohem_nms` and `ohem_per_image`. Returns the kept
/// rows `[k]` i64 of the concatenation (image by image, each in descending loss order), on the
/// losses' device.
pub fn ohem_select_batch(
    samples: &[RoiSample],
    losses: &Tensor,
    config: &RoiSamplerConfig,
) -> Result<Tensor> {
    config.validate()?;
    let total: i64 = samples.iter().map(|s| s.boxes.size()[0]).sum();
    if losses.size() != [total] {
        bail_input!(
            "ohem losses: expected [{total}] (one per candidate RoI), got {:?}",
            losses.size()
        );
    }
    let device = losses.device();
    let mut kept = Vec::with_capacity(samples.len());
    let mut offset = 0;
    for (i, s) in samples.iter().enumerate() {
        let r = s.boxes.size()[0];
        let image_losses = losses.narrow(0, offset, r);
        let keep = ohem_select(
            &s.boxes.to_device(device),
            &image_losses,
            config.ohem_nms,
            config.ohem_per_image,
        )
        .with_context(|| format!("image {i}"))?;
        kept.push(keep + offset);
        offset += r;
    }
    Ok(Tensor::f_cat(&kept, 0)?)
}
