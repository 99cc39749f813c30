//! Faster R-CNN (torchvision `models/detection/faster_rcnn.py` `FasterRCNN`): the region
//! proposal network of the spec ([`super::rpn`]) and `RoIHeads`' box branch
//! ([`super::roi_heads::RoiBoxHead`]) on the same feature maps, built from a spec with
//! `head: "faster_rcnn"` (`models/faster_rcnn_small.json`, `models/faster_rcnn_r50_fpn.json`).
//!
//! ```text
//! torchvision GeneralizedRCNN.forward                 FasterRcnn
//! features = self.backbone(images.tensors)            features_maps_t (the RPN's maps)
//! proposals, proposal_losses = self.rpn(images,       flatten_maps -> deltas [N, A, 4],
//!                                       features)       objectness [N, A, 1]; RpnCoder::propose
//!   (training: the RPN loss on a 256-anchor sample)     (the trainer's SampledRpnLoss)
//! detections, detector_losses = self.roi_heads(       training: [`FasterRcnn::forward_train`]
//!     features, proposals, image_sizes, targets)        (match, sample or OHEM, pool, head);
//!                                                     eval: [`FasterRcnn::detect`]
//!                                                       (RoiBoxHead::detect)
//! ```
//!
//! `forward_t` of the [`Detector`] interface gives the first stage's outputs, as an RPN's: the
//! trainer's data pipeline labels the anchors with the RPN coder and the first-stage loss is the
//! RPN's. Images are at the spec's input size, as after torchvision's transform with
//! `min_size = max_size = ` the input size; detections are in model-input pixels with 0-based
//! classes (torchvision's label minus one).
//!
//! Variables: the RPN's (`extractor.*` / `backbone.*`, `rpn.head.*`), then
//! `roi_heads.box_head.fc6`, `roi_heads.box_head.fc7`, `roi_heads.box_predictor.cls_score`,
//! `roi_heads.box_predictor.bbox_pred`: torchvision's names, so converted weights load whole.

use anyhow::Result;
use tch::{nn, Device, Kind, Tensor};

use super::roi_align::{infer_scale, MultiScaleRoiAlign};
use super::roi_heads::{PostprocessConfig, RoiBoxHead};
use super::{flatten_maps, Detector, SpecDetector};
use crate::bbox::rcnn::RoiSamplerKind;
use crate::bbox::rcnn::{
    ohem_select_batch, sample_batch_rois, BatchTruth, RoiSample, RoiSamplerConfig,
};
use crate::bbox::{Detections, RpnCoder};
use crate::loss::{RcnnLoss, RcnnLossInputs};
use crate::spec::{ModelSpec, RoiHeadsSpec};

/// A Faster R-CNN: an RPN ([`SpecDetector`] of the spec's backbone) and the RoI box head.
#[derive(Debug)]
pub struct FasterRcnn {
    rpn: SpecDetector,
    coder: RpnCoder,
    box_head: RoiBoxHead,
    /// The RPN's feature maps the box head pools from.
    maps: Vec<usize>,
    settings: RoiHeadsSpec,
}

/// One training forward: the first stage's outputs, and the second stage's on its RoIs.
#[derive(Debug)]
pub struct TwoStageOutputs {
    /// `[N, A, 4]`: the RPN's deltas (the first-stage loss's `loc_preds`).
    pub rpn_deltas: Tensor,
    /// `[N, A, 1]`: the RPN's objectness logits (its `cls_preds`).
    pub objectness: Tensor,
    /// `[R, 4]` xyxy: the sampled RoIs (all images, image by image), model-input pixels.
    pub rois: Tensor,
    /// `[R, C + 1]`: their class logits.
    pub class_logits: Tensor,
    /// `[R, (C + 1) * 4]`: their class-specific deltas.
    pub box_regression: Tensor,
    /// `[R]` i64: class + 1, or 0 (background).
    pub labels: Tensor,
    /// `[R, 4]`: deltas to the matched GT (weights 10, 10, 5, 5) at foreground, else 0.
    pub regression_targets: Tensor,
}

impl FasterRcnn {
    /// Wrap the spec's RPN (`rpn`, built at `path`) with a box head under `path / roi_heads`
    /// for `num_classes` foreground classes.
    pub fn new(
        path: &nn::Path,
        rpn: SpecDetector,
        spec: &ModelSpec,
        num_classes: i64,
        origin: &str,
    ) -> Result<Self> {
        let settings = spec.roi_heads_or_default();
        let coder = RpnCoder::from_spec(spec)?;
        let channels = rpn.feature_channels().ok_or_else(|| {
            crate::bad_input(format!(
                "{origin}: the first stage gives no feature maps to pool"
            ))
        })?;
        // The maps' sizes are the spec's: building the RPN checked them.
        let heights: Vec<i64> = spec.feature_map_sizes().iter().map(|[h, _]| *h).collect();
        let maps = pooled_maps(&settings, &channels, origin)?;
        check_levels(&maps, &heights, spec.input_size[1], origin)?;
        let pool = MultiScaleRoiAlign {
            output_size: settings.pool.output_size,
            sampling_ratio: settings.pool.sampling_ratio,
            ..MultiScaleRoiAlign::default()
        };
        let box_head = RoiBoxHead::new(
            &(path / "roi_heads"),
            pool,
            channels[maps[0]],
            settings.representation_size,
            num_classes + 1,
        )?;
        Ok(Self {
            rpn,
            coder,
            box_head,
            maps,
            settings,
        })
    }

    /// The second stage's settings (the spec's `roi_heads`).
    pub fn settings(&self) -> &RoiHeadsSpec {
        &self.settings
    }

    /// The first stage's anchor coder.
    pub fn rpn_coder(&self) -> &RpnCoder {
        &self.coder
    }

    /// Every image `[width, height]`: the model input.
    fn image_sizes(&self, n: usize) -> Vec<[i64; 2]> {
        vec![self.coder.input_size(); n]
    }

    /// The RPN's outputs and the maps the box head pools from.
    fn first_stage(&self, images: &Tensor, train: bool) -> Result<(Vec<Tensor>, Tensor, Tensor)> {
        let (features, maps) = self.rpn.features_maps_t(images, train)?;
        let (deltas, objectness) = flatten_maps(&maps, 1)?;
        let pooled = self.maps.iter().map(|&i| features[i].shallow_clone());
        Ok((pooled.collect(), deltas, objectness))
    }

    /// Proposals per image `[P_i, 4]` (no gradient), with the spec's train or test settings.
    fn proposals(&self, deltas: &Tensor, objectness: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let config = self.coder.proposal_config(train);
        let found = self
            .coder
            .propose(deltas, &objectness.f_squeeze_dim(2)?, &config)?;
        Ok(found.into_iter().map(|p| p.boxes).collect())
    }

    /// torchvision's training forward: RPN, proposals (train settings), the GT added and
    /// matched, the RoIs sampled per `sampler` (image `i` of the batch of rank `rank` of
    /// `world` draws from `sampler.rng(keys, i * world + rank)`, its place in the global batch,
    /// as the loader shards it: the ranks of a data-parallel run draw as one process would),
    /// and the box head on them. With the `ohem` kind every labelled RoI is
    /// scored by `loss.per_roi` without gradient and [`ohem_select`] keeps the hardest.
    pub fn forward_train(
        &self,
        images: &Tensor,
        truth: BatchTruth,
        sampler: &RoiSamplerConfig,
        loss: &RcnnLoss,
        keys: &[u64],
        shard: [u64; 2],
    ) -> Result<TwoStageOutputs> {
        let n = images.size().first().copied().unwrap_or(0) as usize;
        if truth.boxes.len() != n {
            crate::bail_input!(
                "faster r-cnn: {n} images, but ground truth for {}",
                truth.boxes.len()
            );
        }
        let (features, rpn_deltas, objectness) = self.first_stage(images, true)?;
        let proposals = self.proposals(&rpn_deltas, &objectness, true)?;
        let mut samples = sample_batch_rois(&proposals, truth, sampler, keys, shard)?;
        if sampler.kind == RoiSamplerKind::Ohem {
            samples = self.hardest(&features, samples, sampler, loss)?;
        }
        let device = rpn_deltas.device();
        let rois: Vec<Tensor> = samples.iter().map(|s| s.boxes.to_device(device)).collect();
        let sizes = self.image_sizes(rois.len());
        let (class_logits, box_regression) = self.box_head.forward(&features, &rois, &sizes)?;
        Ok(TwoStageOutputs {
            rois: Tensor::f_cat(&rois, 0)?,
            rpn_deltas,
            objectness,
            class_logits,
            box_regression,
            labels: cat_rows(&samples, |s| &s.labels, device)?,
            regression_targets: cat_rows(&samples, |s| &s.regression_targets, device)?,
        })
    }

    /// OHEM (Shrivastava et al.): every candidate's loss without gradient, then per image the
    /// top `ohem_per_image` by loss after NMS at `ohem_nms` ([`ohem_select_batch`], kept in
    /// descending loss order).
    fn hardest(
        &self,
        features: &[Tensor],
        candidates: Vec<RoiSample>,
        sampler: &RoiSamplerConfig,
        loss: &RcnnLoss,
    ) -> Result<Vec<RoiSample>> {
        let _no_grad = tch::no_grad_guard();
        let device = features[0].device();
        let rois: Vec<Tensor> = candidates
            .iter()
            .map(|c| c.boxes.to_device(device))
            .collect();
        let sizes = self.image_sizes(rois.len());
        let (logits, deltas) = self.box_head.forward(features, &rois, &sizes)?;
        let losses = loss.per_roi(&RcnnLossInputs {
            class_logits: &logits,
            box_regression: &deltas,
            labels: &cat_rows(&candidates, |c| &c.labels, device)?,
            regression_targets: &cat_rows(&candidates, |c| &c.regression_targets, device)?,
        })?;
        let kept = ohem_select_batch(&candidates, &losses, sampler)?;
        let kept = Vec::<i64>::try_from(kept.to_device(Device::Cpu))?;
        // The kept rows of the concatenation, image by image: back to each image's rows.
        let mut offset = 0;
        let mut out = Vec::with_capacity(candidates.len());
        for c in &candidates {
            let r = c.boxes.size()[0];
            let rows: Vec<i64> = kept
                .iter()
                .filter(|&&k| (offset..offset + r).contains(&k))
                .map(|&k| k - offset)
                .collect();
            out.push(take_sample(c, &Tensor::from_slice(&rows)));
            offset += r;
        }
        Ok(out)
    }

    /// The eval-mode proposals per image `[P_i, 4]` (the spec's test settings, best first):
    /// what the box head sees in [`Self::detect`].
    pub fn propose(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        let _no_grad = tch::no_grad_guard();
        Ok(self.features_and_proposals(images)?.1)
    }

    fn features_and_proposals(&self, images: &Tensor) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let (features, deltas, objectness) = self.first_stage(images, false)?;
        let proposals = self.proposals(&deltas, &objectness, false)?;
        Ok((features, proposals))
    }

    /// torchvision's eval forward: proposals with the test settings, the box head on them and
    /// `postprocess_detections` with the spec's thresholds. images: `[N, 3, H, W]` at the input
    /// size. Returns per image boxes in model-input pixels, scores, and 0-based classes.
    pub fn detect(&self, images: &Tensor) -> Result<Vec<Detections>> {
        self.detect_with(images, &self.postprocess_config())
    }

    /// The spec's detection settings (`roi_heads.score_threshold`, `nms_threshold`,
    /// `detections_per_image`; torchvision's box size and decode limits).
    pub fn postprocess_config(&self) -> PostprocessConfig {
        PostprocessConfig {
            score_thresh: self.settings.score_threshold,
            nms_thresh: self.settings.nms_threshold,
            detections_per_img: self.settings.detections_per_image,
            ..PostprocessConfig::default()
        }
    }

    /// [`Self::detect`] with other detection settings.
    pub fn detect_with(
        &self,
        images: &Tensor,
        config: &PostprocessConfig,
    ) -> Result<Vec<Detections>> {
        let _no_grad = tch::no_grad_guard();
        let (features, proposals) = self.features_and_proposals(images)?;
        let sizes = self.image_sizes(proposals.len());
        let found = self
            .box_head
            .detect(&features, &proposals, &sizes, config)?;
        Ok(found
            .into_iter()
            .map(|d| Detections {
                boxes: d.boxes,
                scores: d.scores,
                labels: d.labels - 1,
            })
            .collect())
    }
}

impl Detector for FasterRcnn {
    /// The first stage's outputs: deltas `[N, A, 4]` and objectness `[N, A, 1]`.
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.rpn.forward_t(images, train)
    }

    fn two_stage(&self) -> Option<&FasterRcnn> {
        Some(self)
    }
}

/// The rows `keep` (`[k]` i64, CPU) of a sample.
fn take_sample(s: &RoiSample, keep: &Tensor) -> RoiSample {
    let num_pos = s.labels.index_select(0, keep).gt(0).sum(Kind::Int64);
    RoiSample {
        index: s.index.index_select(0, keep),
        boxes: s.boxes.index_select(0, keep),
        labels: s.labels.index_select(0, keep),
        regression_targets: s.regression_targets.index_select(0, keep),
        num_pos: num_pos.int64_value(&[]),
    }
}

/// One field of every sample, concatenated (image by image) on `device`.
fn cat_rows(
    samples: &[RoiSample],
    field: fn(&RoiSample) -> &Tensor,
    device: Device,
) -> Result<Tensor> {
    let parts: Vec<&Tensor> = samples.iter().map(field).collect();
    Ok(Tensor::f_cat(&parts, 0)?.to_device(device))
}

/// `MultiScaleRoIAlign` assigns a box to a level between the first and the last pooled map's
/// (`log2` of each map's scale): the pooled maps must be those levels, one each, finest first.
fn check_levels(maps: &[usize], heights: &[i64], input_height: i64, origin: &str) -> Result<()> {
    let level = |m: usize| -(infer_scale(heights[m], input_height) as f32).log2() as i64;
    let levels: Vec<i64> = maps.iter().map(|&m| level(m)).collect();
    if levels.windows(2).any(|w| w[1] != w[0] + 1) {
        crate::bail_input!(
            "{origin}: roi_heads.pool.maps {maps:?}: their levels (log2 of the stride) are \
             {levels:?}; multi-scale RoIAlign needs consecutive levels, finest first"
        );
    }
    Ok(())
}

/// The spec's `roi_heads.pool.maps` (default: every map), checked: in range, ascending, the
/// same channels.
fn pooled_maps(settings: &RoiHeadsSpec, channels: &[i64], origin: &str) -> Result<Vec<usize>> {
    let maps = settings
        .pool
        .maps
        .clone()
        .unwrap_or_else(|| (0..channels.len()).collect());
    let in_range = !maps.is_empty() && maps.iter().all(|&m| m < channels.len());
    if !in_range || maps.windows(2).any(|w| w[0] >= w[1]) {
        crate::bail_input!(
            "{origin}: roi_heads.pool.maps: expected ascending indices of the {} feature maps, \
             got {maps:?}",
            channels.len()
        );
    }
    let c: Vec<i64> = maps.iter().map(|&m| channels[m]).collect();
    if c.iter().any(|&x| x != c[0]) {
        crate::bail_input!(
            "{origin}: roi_heads.pool.maps {maps:?}: the maps have {c:?} channels; the box head \
             pools from maps of one width"
        );
    }
    Ok(maps)
}
