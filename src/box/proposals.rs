//! Region proposals from the RPN's outputs: torchvision `RegionProposalNetwork.filter_proposals`.
//!
//! ```text
//! torchvision filter_proposals                         filter_proposals
//! objectness.detach().reshape(N, -1)                   objectness [N, A], no gradient
//! _get_top_n_idx: per level ob.topk(min(pre, A_l))     per level topk(min(pre_nms_top_n, A_l))
//! objectness_prob = sigmoid(objectness)                sigmoid
//! per image:                                           per image:
//!   clip_boxes_to_image(boxes, (h, w))                   clamp x to [0, w], y to [0, h]
//!   remove_small_boxes(boxes, 1e-3)                      keep w >= min_size and h >= min_size
//!   where(scores >= score_thresh)                        keep score >= score_threshold
//!   batched_nms(boxes, scores, lvl, 0.7)                 nms::batched_nms by level (IoU > thr)
//!   keep[:post_nms_top_n]                                the post_nms_top_n best
//! ```
//!
//! One difference: torchvision's `batched_nms` separates levels by offsetting coordinates (for
//! up to 1000 boxes on the CPU, always on CUDA), which rounds coordinates and may flip a
//! suppression whose IoU is within about 1e-6 of the threshold; tchcv compares levels exactly,
//! as torchvision does for larger CPU inputs (`_batched_nms_vanilla`).

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::nms::batched_nms_top;
use super::ops;
use crate::bail_input;
use crate::spec::RpnSpec;

/// Proposal settings (torchvision `RegionProposalNetwork`'s inference arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProposalConfig {
    /// Per feature map, the highest objectness logits kept before NMS.
    pub pre_nms_top_n: i64,
    /// Per image, the proposals kept after NMS (best first).
    pub post_nms_top_n: i64,
    /// NMS suppresses IoU > this, within a feature map.
    pub nms_threshold: f64,
    /// Keep objectness probabilities >= this.
    pub score_threshold: f64,
    /// Keep boxes whose sides are both >= this (pixels, after clipping).
    pub min_size: f64,
}

impl Default for ProposalConfig {
    /// torchvision's testing defaults.
    fn default() -> Self {
        Self::from_rpn(&RpnSpec::default(), false)
    }
}

impl ProposalConfig {
    /// The spec's `rpn` settings for training (`train`) or testing.
    pub fn from_rpn(rpn: &RpnSpec, train: bool) -> Self {
        let pick = |tt: crate::spec::TrainTest| if train { tt.train } else { tt.test };
        Self {
            pre_nms_top_n: pick(rpn.pre_nms_top_n),
            post_nms_top_n: pick(rpn.post_nms_top_n),
            nms_threshold: rpn.nms_threshold,
            score_threshold: rpn.score_threshold,
            min_size: rpn.min_size,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.pre_nms_top_n < 1 || self.post_nms_top_n < 0 {
            bail_input!(
                "proposals: pre_nms_top_n must be >= 1 and post_nms_top_n >= 0, got {} and {}",
                self.pre_nms_top_n,
                self.post_nms_top_n
            );
        }
        for (name, v) in [
            ("nms_threshold", self.nms_threshold),
            ("score_threshold", self.score_threshold),
            ("min_size", self.min_size),
        ] {
            if !v.is_finite() {
                bail_input!("proposals: {name} must be finite, got {v}");
            }
        }
        Ok(())
    }
}

/// One image's proposals, best first.
#[derive(Debug)]
pub struct Proposals {
    /// `[P, 4]` f32 xyxy in model-input pixels, inside the image.
    pub boxes: Tensor,
    /// `[P]` f32 objectness probabilities (sigmoid), descending.
    pub scores: Tensor,
    /// `[P]` i64 the feature map each proposal comes from.
    pub levels: Tensor,
}

impl Proposals {
    pub fn len(&self) -> i64 {
        self.scores.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Check the inputs of [`filter_proposals`]; returns `(N, A)`.
fn check_inputs(
    boxes: &Tensor,
    objectness: &Tensor,
    anchors_per_level: &[i64],
    image_sizes: &[[i64; 2]],
) -> Result<(i64, i64)> {
    ops::check_boxes("proposals", boxes, Some(3))?;
    let [n, a, _] = boxes.size()[..] else {
        unreachable!("check_boxes checked three dimensions")
    };
    if objectness.size() != [n, a] {
        bail_input!(
            "objectness: expected [N, A] = [{n}, {a}] like the proposals, got {:?}",
            objectness.size()
        );
    }
    if !crate::device::is_float(objectness.kind()) || objectness.device() != boxes.device() {
        bail_input!(
            "objectness: expected float logits on {:?}, got {:?} on {:?}",
            boxes.device(),
            objectness.kind(),
            objectness.device()
        );
    }
    if anchors_per_level.is_empty()
        || anchors_per_level.iter().any(|&k| k < 0)
        || anchors_per_level.iter().sum::<i64>() != a
    {
        bail_input!("anchors_per_level: {anchors_per_level:?} does not sum to the {a} anchors");
    }
    if image_sizes.len() != n as usize || image_sizes.iter().flatten().any(|&s| s < 1) {
        bail_input!(
            "image_sizes: expected {n} positive [width, height] pairs, got {image_sizes:?}"
        );
    }
    Ok((n, a))
}

/// Per level, the indices `[N, K]` i64 of the `min(pre_nms_top_n, A_l)` highest logits (sorted
/// within each level, levels in order; torchvision `_get_top_n_idx`).
fn top_n_per_level(objectness: &Tensor, anchors_per_level: &[i64], pre_nms_top_n: i64) -> Tensor {
    let mut picked = Vec::with_capacity(anchors_per_level.len());
    let mut offset = 0;
    for &count in anchors_per_level {
        let level = objectness.narrow(1, offset, count);
        let (_, idx) = level.topk(pre_nms_top_n.min(count), 1, true, true);
        picked.push(idx + offset);
        offset += count;
    }
    Tensor::cat(&picked, 1)
}

/// torchvision `filter_proposals`. boxes: `[N, A, 4]` decoded proposals (xyxy, model-input
/// pixels); objectness: `[N, A]` logits; anchors_per_level: anchors per feature map (sums to
/// A); image_sizes: per image `[width, height]` to clip to. Returns per image the kept
/// proposals, best first, on the inputs' device (no gradient).
pub fn filter_proposals(
    boxes: &Tensor,
    objectness: &Tensor,
    anchors_per_level: &[i64],
    image_sizes: &[[i64; 2]],
    config: &ProposalConfig,
) -> Result<Vec<Proposals>> {
    config.validate()?;
    let (n, _) = check_inputs(boxes, objectness, anchors_per_level, image_sizes)?;
    let _no_grad = tch::no_grad_guard();
    let device = boxes.device();
    let logits = objectness.detach().to_kind(Kind::Float);
    let levels = Tensor::cat(
        &anchors_per_level
            .iter()
            .enumerate()
            .map(|(i, &k)| Tensor::full([k], i as i64, (Kind::Int64, device)))
            .collect::<Vec<_>>(),
        0,
    );
    let top = top_n_per_level(&logits, anchors_per_level, config.pre_nms_top_n);
    let scores = logits.gather(1, &top, false).sigmoid();
    let top_boxes = boxes.detach().to_kind(Kind::Float).gather(
        1,
        &top.unsqueeze(2).expand([-1, -1, 4], false),
        false,
    );
    let mut out = Vec::with_capacity(n as usize);
    for (i, &[width, height]) in image_sizes.iter().enumerate() {
        let i = i as i64;
        let lvl = levels.index_select(0, &top.get(i));
        out.push(filter_image(
            &top_boxes.get(i),
            &scores.get(i),
            &lvl,
            [width as f64, height as f64],
            config,
        )?);
    }
    Ok(out)
}

/// One image of [`filter_proposals`]: boxes `[K, 4]`, scores `[K]`, levels `[K]`.
fn filter_image(
    boxes: &Tensor,
    scores: &Tensor,
    levels: &Tensor,
    [width, height]: [f64; 2],
    config: &ProposalConfig,
) -> Result<Proposals> {
    let boxes = ops::clamp_boxes(boxes, width, height)?;
    let keep = ops::large_enough(&boxes, config.min_size)?
        .logical_and(&scores.ge(config.score_threshold))
        .nonzero()
        .view(-1);
    let [boxes, scores, levels] = ops::take_rows([&boxes, scores, levels], &keep);
    let kept = batched_nms_top(
        &boxes,
        &scores,
        &levels,
        config.nms_threshold,
        config.post_nms_top_n,
    )?;
    let [boxes, scores, levels] = ops::take_rows([&boxes, &scores, &levels], &kept);
    Ok(Proposals {
        boxes,
        scores,
        levels,
    })
}
