//! Faster R-CNN's region proposal network, box side: anchor labels and regression targets before
//! sampling, and decoding (torchvision `models/detection/rpn.py` and `_utils.py`).
//!
//! ```text
//! torchvision RegionProposalNetwork                     RpnCoder
//! anchor_generator(images, features)                    Anchors::from_spec (style "torchvision")
//! assign_targets_to_anchors:                            label / label_batch:
//!   gt_boxes.numel() == 0: labels 0, boxes 0              no (usable) GT: labels 0, targets 0
//!   box_iou(gt_boxes, anchors)                            IouTable (the same f32 operations)
//!   Matcher(0.7, 0.3, allow_low_quality_matches=True)     Matcher::MaxIou from the spec
//!   labels: >= 0 -> 1, BELOW_LOW -> 0, BETWEEN -> -1      POSITIVE, NEGATIVE, IGNORE
//!   matched_gt_boxes = gt_boxes[matched.clamp(min=0)]     the positives' GT
//! box_coder.encode(matched_gt_boxes, anchors)           encode_deltas (at positives; 0 elsewhere)
//!   weights (1, 1, 1, 1)                                  no variances (or the spec's)
//! box_coder.decode(pred_bbox_deltas, anchors)           decode (BoxCoder::decode_boxes: exp capped
//!   dw, dh clamped at log(1000 / 16)                      at the spec's decode_clamp, same default)
//! ```
//!
//! Differences from torchvision, none of them on an image torchvision accepts and whose every GT
//! overlaps some anchor: degenerate GT boxes (w or h <= 0) are dropped and reported (torchvision's
//! `GeneralizedRCNN` raises); a GT overlapping no anchor at all takes no low-quality match
//! (torchvision would make every anchor with IoU 0 to it positive, `Matcher`'s `==` on a best IoU
//! of 0); deltas of anchors that are not positive are 0 (torchvision encodes them against GT 0).
//!
//! Labelling is host code over slices, like [`BoxCoder::encode`]: an [`RpnCoder`] is `Send + Sync`,
//! so data-loader threads can share one.

use anyhow::{Context, Result};
use tch::Tensor;

use super::anchors::Anchors;
use super::coder::BoxCoder;
use super::matcher::{IouTable, Matcher, BACKGROUND, IGNORED};
use super::ops;
use super::proposals::{filter_proposals, ProposalConfig, Proposals};
use super::sampler::{SamplerConfig, SamplerKind};
use crate::bail_input;
use crate::spec::{ModelSpec, RpnSpec};

/// Label of an anchor that is positive (an object).
pub const POSITIVE: i64 = 1;
/// Label of an anchor that is negative (background).
pub const NEGATIVE: i64 = 0;
/// Label of an anchor that takes no part in the loss (IoU in the band, or not sampled).
pub const IGNORE: i64 = -1;

/// One image's RPN targets before sampling.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorTargets {
    /// `[A]` i64: [`POSITIVE`], [`NEGATIVE`] (best IoU below `neg_iou`) or [`IGNORE`] (in the band).
    pub labels: Vec<i64>,
    /// `[A]` f32: each anchor's best IoU over the usable GT boxes (0 without any).
    pub max_iou: Vec<f32>,
    /// `[A]` i64: at positives the matched GT's index in the input order, else -1.
    pub matched_gt: Vec<i64>,
    /// `[A * 4]` f32: at positives the deltas `(dx, dy, dw, dh)` to the matched GT, else 0.
    pub regression_targets: Vec<f32>,
    /// Input indices of GT boxes dropped as degenerate (w or h <= 0).
    pub dropped: Vec<usize>,
}

impl AnchorTargets {
    /// Anchors labelled [`POSITIVE`].
    pub fn num_pos(&self) -> usize {
        self.labels.iter().filter(|&&l| l == POSITIVE).count()
    }

    /// `labels` as an `[A]` i64 tensor (CPU).
    pub fn labels_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.labels)
    }

    /// `max_iou` as an `[A]` f32 tensor (CPU).
    pub fn max_iou_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.max_iou)
    }

    /// `regression_targets` as an `[A, 4]` f32 tensor (CPU).
    pub fn regression_targets_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.regression_targets).view([self.labels.len() as i64, 4])
    }
}

/// torchvision `encode_boxes` for one pair, in its f32 operation order: the deltas of `gt` (xyxy)
/// against `anchor` (xyxy), `(wx (gx - ax) / aw, wy (gy - ay) / ah, ww ln(gw / aw), wh ln(gh / ah))`
/// with centres `x1 + 0.5 w`. `variances`: tchcv's `[v_xy, v_wh]` (weights `1 / v`, applied as
/// a division), None for torchvision's weights `(1, 1, 1, 1)`.
pub fn encode_deltas(gt: &[f32; 4], anchor: &[f32; 4], variances: Option<[f32; 2]>) -> [f32; 4] {
    match variances {
        None => encode_deltas_weighted(gt, anchor, [1.0; 4]),
        Some([v_xy, v_wh]) => {
            let d = encode_deltas_weighted(gt, anchor, [1.0; 4]);
            [d[0] / v_xy, d[1] / v_xy, d[2] / v_wh, d[3] / v_wh]
        }
    }
}

/// torchvision `BoxCoder(weights).encode_single` for one pair, in its f32 operation order:
/// `(wx * (gx - ax) / aw, wy * (gy - ay) / ah, ww * ln(gw / aw), wh * ln(gh / ah))`, centres
/// `x1 + 0.5 w`. The RPN uses weights `(1, 1, 1, 1)`, the box head `(10, 10, 5, 5)`.
pub fn encode_deltas_weighted(gt: &[f32; 4], anchor: &[f32; 4], weights: [f32; 4]) -> [f32; 4] {
    let [wx, wy, ww, wh] = weights;
    let (ex_w, ex_h) = (anchor[2] - anchor[0], anchor[3] - anchor[1]);
    let (ex_x, ex_y) = (anchor[0] + 0.5 * ex_w, anchor[1] + 0.5 * ex_h);
    let (gt_w, gt_h) = (gt[2] - gt[0], gt[3] - gt[1]);
    let (gt_x, gt_y) = (gt[0] + 0.5 * gt_w, gt[1] + 0.5 * gt_h);
    [
        wx * (gt_x - ex_x) / ex_w,
        wy * (gt_y - ex_y) / ex_h,
        ww * (gt_w / ex_w).ln(),
        wh * (gt_h / ex_h).ln(),
    ]
}

/// One image's usable ground truth.
pub(crate) struct Usable {
    /// The boxes that are not degenerate, `[G']` xyxy.
    pub(crate) boxes: Vec<[f32; 4]>,
    /// The input index of each kept box.
    pub(crate) input_index: Vec<usize>,
    /// Input indices of the dropped (degenerate) boxes.
    pub(crate) dropped: Vec<usize>,
    /// The crowd regions (not in `boxes`: never matched), see [`ops::ignore_inside_crowd`].
    pub(crate) crowd: Vec<[f32; 4]>,
}

/// The usable GT boxes of one image: finite (else bad input), degenerate ones dropped, crowd
/// regions (`crowd` `[G]` flags, or empty: none) set apart.
pub(crate) fn usable_boxes(boxes: &[[f32; 4]], crowd: &[bool]) -> Result<Usable> {
    let mut out = Usable {
        boxes: Vec::with_capacity(boxes.len()),
        input_index: Vec::with_capacity(boxes.len()),
        dropped: Vec::new(),
        crowd: Vec::new(),
    };
    for (i, b) in boxes.iter().enumerate() {
        if !b.iter().all(|x| x.is_finite()) {
            bail_input!("ground truth box {i}: non-finite coordinate in {b:?}");
        }
        if ops::is_degenerate(b) {
            out.dropped.push(i);
        } else if crowd.get(i).copied().unwrap_or(false) {
            out.crowd.push(*b);
        } else {
            out.boxes.push(*b);
            out.input_index.push(i);
        }
    }
    Ok(out)
}

/// The RPN's anchors, matcher and box coder for one model spec.
#[derive(Debug, Clone)]
pub struct RpnCoder {
    coder: BoxCoder,
    anchor_areas: Vec<f32>,
    variances: Option<[f32; 2]>,
    settings: RpnSpec,
}

impl RpnCoder {
    /// From a spec (any anchor style; torchvision's RPN is `"style": "torchvision"` with the
    /// default matching `max_iou` 0.7 / 0.3 with low-quality matches).
    pub fn from_spec(spec: &ModelSpec) -> Result<RpnCoder> {
        let coder = BoxCoder::from_spec(spec)?;
        let anchor_areas = coder.host_anchors().xyxy.iter().map(ops::area).collect();
        Ok(RpnCoder {
            coder,
            anchor_areas,
            variances: spec.coder.variances.map(|v| v.map(|x| x as f32)),
            settings: spec.rpn_or_default(),
        })
    }

    /// A, the number of anchors.
    pub fn num_anchors(&self) -> i64 {
        self.coder.num_anchors()
    }

    /// Anchors per feature map (torchvision's `num_anchors_per_level`; sums to A).
    pub fn anchors_per_level(&self) -> &[i64] {
        &self.coder.host_anchors().per_map
    }

    /// The anchors on the host (xyxy and cxcywh).
    pub fn host_anchors(&self) -> &Anchors {
        self.coder.host_anchors()
    }

    /// `[A, 4]` f32 xyxy anchors (torchvision's layout; a new CPU tensor).
    pub fn anchors_xyxy(&self) -> Tensor {
        self.coder.host_anchors().to_xyxy_tensor()
    }

    /// The underlying box coder (decoding, the spec's matcher).
    pub fn box_coder(&self) -> &BoxCoder {
        &self.coder
    }

    pub fn matcher(&self) -> Matcher {
        self.coder.matcher()
    }

    /// The spec's `rpn` settings (sampling and proposal defaults).
    pub fn settings(&self) -> &RpnSpec {
        &self.settings
    }

    /// Model-input `[width, height]`.
    pub fn input_size(&self) -> [i64; 2] {
        self.coder.input_size()
    }

    /// Label one image's anchors (torchvision `assign_targets_to_anchors` + `encode`).
    /// boxes: `[G]` xyxy in model-input pixels (class-agnostic).
    pub fn label(&self, boxes: &[[f32; 4]]) -> Result<AnchorTargets> {
        self.label_with_crowd(boxes, &[])
    }

    /// [`Self::label`] with `crowd` `[G]` flags (empty: none): as in Detectron, crowd regions
    /// are left out of the matching (never positives, they take no anchor from an object), and a
    /// negative anchor lying at least [`ops::CROWD_IOA`] of its area inside one is ignored (-1)
    /// rather than a negative the sampler (or `hard`'s OHEM) could pick.
    pub fn label_with_crowd(&self, boxes: &[[f32; 4]], crowd: &[bool]) -> Result<AnchorTargets> {
        if !(crowd.is_empty() || crowd.len() == boxes.len()) {
            crate::bail_input!(
                "ground truth: {} boxes but {} crowd flags",
                boxes.len(),
                crowd.len()
            );
        }
        let a = self.coder.num_anchors() as usize;
        let Usable {
            boxes: gt,
            input_index,
            dropped,
            crowd,
        } = usable_boxes(boxes, crowd)?;
        let mut out = AnchorTargets {
            labels: vec![NEGATIVE; a],
            max_iou: vec![0.0; a],
            matched_gt: vec![-1; a],
            regression_targets: vec![0.0; 4 * a],
            dropped,
        };
        let anchors = &self.coder.host_anchors().xyxy;
        if !gt.is_empty() {
            self.assign(&gt, &input_index, &mut out);
        }
        ops::ignore_inside_crowd(anchors, &self.anchor_areas, &crowd, &mut out.labels);
        Ok(out)
    }

    /// Match the anchors to the (non-crowd, usable) boxes `gt` and write labels, max IoU, the
    /// matched input box and regression targets into `out`.
    fn assign(&self, gt: &[[f32; 4]], input_index: &[usize], out: &mut AnchorTargets) {
        let anchors = &self.coder.host_anchors().xyxy;
        let ious = IouTable::new(anchors, &self.anchor_areas, gt);
        out.max_iou = ious.best_gt_per_anchor().0;
        let matched = self.coder.matcher().assign(&ious);
        for (i, &m) in matched.iter().enumerate() {
            match m {
                IGNORED => out.labels[i] = IGNORE,
                BACKGROUND => {}
                g => {
                    let g = g as usize;
                    out.labels[i] = POSITIVE;
                    out.matched_gt[i] = input_index[g] as i64;
                    let d = encode_deltas(&gt[g], &anchors[i], self.variances);
                    out.regression_targets[4 * i..4 * i + 4].copy_from_slice(&d);
                }
            }
        }
    }

    /// Label a batch: per image `[G_i]` xyxy boxes -> labels `[N, A]` i64 (1, 0, -1 as
    /// [`RpnCoder::label`]) and regression targets `[N, A, 4]` f32 (CPU).
    pub fn label_batch(&self, images: &[Vec<[f32; 4]>]) -> Result<(Tensor, Tensor)> {
        let a = self.coder.num_anchors();
        let n = images.len() as i64;
        let mut labels = Vec::with_capacity(images.len() * a as usize);
        let mut targets = Vec::with_capacity(images.len() * 4 * a as usize);
        for (i, boxes) in images.iter().enumerate() {
            let t = self
                .label(boxes)
                .with_context(|| format!("image {i} of the batch"))?;
            labels.extend_from_slice(&t.labels);
            targets.extend_from_slice(&t.regression_targets);
        }
        Ok((
            Tensor::from_slice(&labels).view([n, a]),
            Tensor::from_slice(&targets).view([n, a, 4]),
        ))
    }

    /// Predicted deltas `[N, A, 4]` (any float kind, any device) -> boxes `[N, A, 4]` xyxy in
    /// model-input pixels (torchvision `BoxCoder.decode`, `dw`, `dh` capped at the spec's
    /// `decode_clamp`, by default torchvision's `log(1000 / 16)`).
    pub fn decode(&self, deltas: &Tensor) -> Result<Tensor> {
        self.coder.decode_boxes(deltas)
    }

    /// The spec's proposal settings for training (`train`) or testing.
    pub fn proposal_config(&self, train: bool) -> ProposalConfig {
        ProposalConfig::from_rpn(&self.settings, train)
    }

    /// The RPN's proposals (torchvision `RegionProposalNetwork.forward` after the head): decode
    /// `deltas [N, A, 4]` on the anchors, then [`filter_proposals`] with `objectness [N, A]`
    /// logits, every image of the model-input size. No gradient flows.
    pub fn propose(
        &self,
        deltas: &Tensor,
        objectness: &Tensor,
        config: &ProposalConfig,
    ) -> Result<Vec<Proposals>> {
        let boxes = tch::no_grad(|| self.decode(&deltas.detach()))?;
        let n = boxes.size()[0] as usize;
        let sizes = vec![self.input_size(); n];
        filter_proposals(&boxes, objectness, self.anchors_per_level(), &sizes, config)
    }

    /// Sampler settings from the spec's `rpn` (sample size, positive fraction).
    pub fn sampler_config(&self, kind: SamplerKind, seed: u64) -> SamplerConfig {
        SamplerConfig::from_rpn(&self.settings, kind, seed)
    }
}
