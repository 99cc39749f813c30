//! Faster R-CNN's box head (torchvision `faster_rcnn.py` `TwoMLPHead`, `FastRCNNPredictor`) and
//! its inference (`roi_heads.py` `RoIHeads.postprocess_detections`).
//!
//! ```text
//! torchvision                                           here
//! TwoMLPHead: flatten, relu(fc6), relu(fc7) (1024)       TwoMlpHead::forward
//! FastRCNNPredictor: cls_score [R, C],                   FastRcnnPredictor::forward
//!                    bbox_pred [R, C * 4]
//! postprocess_detections:                                postprocess_detections:
//!   box_coder.decode (10, 10, 5, 5), softmax               decode_weighted, softmax
//!   clip_boxes_to_image                                    clamp x to [0, w], y to [0, h]
//!   drop the background column; flatten                    the same
//!   scores > 0.05; remove_small_boxes(1e-2)                the same
//!   batched_nms(.., labels, 0.5); keep[:100]               nms::batched_nms (classes exactly)
//! ```
//!
//! Variables carry torchvision's `fasterrcnn_resnet50_fpn` names under the given path
//! (`roi_heads`): `box_head.fc6`, `box_head.fc7`, `box_predictor.cls_score`,
//! `box_predictor.bbox_pred`, each `weight` and `bias` (PyTorch's `nn.Linear` initialisation).

use anyhow::{Context, Result};
use tch::{nn, Kind, Tensor};

use crate::bail_input;
use crate::bbox::coder::decode_weighted;
use crate::bbox::nms::batched_nms_top;
use crate::bbox::ops;

/// torchvision `TwoMLPHead`: flatten, then two fully connected layers with ReLU.
#[derive(Debug)]
pub struct TwoMlpHead {
    fc6: nn::Linear,
    fc7: nn::Linear,
    in_features: i64,
}

impl TwoMlpHead {
    /// in_features: `C * PH * PW` of the pooled RoIs; representation: 1024 in torchvision.
    pub fn new(path: &nn::Path, in_features: i64, representation: i64) -> Result<Self> {
        if in_features < 1 || representation < 1 {
            bail_input!(
                "box head: sizes must be positive, got {in_features} in, {representation} out"
            );
        }
        Ok(Self {
            fc6: nn::linear(
                path / "fc6",
                in_features,
                representation,
                Default::default(),
            ),
            fc7: nn::linear(
                path / "fc7",
                representation,
                representation,
                Default::default(),
            ),
            in_features,
        })
    }

    /// pooled: `[R, C, PH, PW]` f32 -> `[R, representation]`.
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        let x = pooled.f_flatten(1, -1).context("pooled RoIs")?;
        if x.size().get(1) != Some(&self.in_features) {
            bail_input!(
                "pooled RoIs: expected {} values per RoI, got shape {:?}",
                self.in_features,
                pooled.size()
            );
        }
        Ok(x.apply(&self.fc6).relu().apply(&self.fc7).relu())
    }
}

/// torchvision `FastRCNNPredictor`: class scores (with the background column) and
/// class-specific box deltas.
#[derive(Debug)]
pub struct FastRcnnPredictor {
    cls_score: nn::Linear,
    bbox_pred: nn::Linear,
}

impl FastRcnnPredictor {
    /// num_classes: with the background (torchvision's count: 91 for COCO).
    pub fn new(path: &nn::Path, in_features: i64, num_classes: i64) -> Result<Self> {
        if in_features < 1 || num_classes < 2 {
            bail_input!(
                "box predictor: expected >= 1 features and >= 2 classes (background included), \
                 got {in_features} and {num_classes}"
            );
        }
        Ok(Self {
            cls_score: nn::linear(
                path / "cls_score",
                in_features,
                num_classes,
                Default::default(),
            ),
            bbox_pred: nn::linear(
                path / "bbox_pred",
                in_features,
                num_classes * 4,
                Default::default(),
            ),
        })
    }

    /// x: `[R, in_features]` -> class logits `[R, C]`, deltas `[R, C * 4]`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = x.f_flatten(1, -1)?;
        Ok((x.apply(&self.cls_score), x.apply(&self.bbox_pred)))
    }
}

/// `postprocess_detections` settings (torchvision's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostprocessConfig {
    /// Keep scores above this (0.05).
    pub score_thresh: f64,
    /// Class-wise NMS suppresses IoU > this (0.5).
    pub nms_thresh: f64,
    /// Detections per image (100).
    pub detections_per_img: i64,
    /// Boxes with a side under this are dropped (1e-2).
    pub min_size: f64,
    /// `dw, dh` capped at this before `exp` (`log(1000 / 16)`).
    pub decode_clamp: f64,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        Self {
            score_thresh: 0.05,
            nms_thresh: 0.5,
            detections_per_img: 100,
            min_size: 1e-2,
            decode_clamp: (1000.0f64 / 16.0).ln(),
        }
    }
}

/// One image's detections, best first.
#[derive(Debug)]
pub struct RoiDetections {
    /// `[D, 4]` xyxy in image pixels.
    pub boxes: Tensor,
    /// `[D]` softmax scores.
    pub scores: Tensor,
    /// `[D]` i64 class columns `1..C` (torchvision's labels; the 0-based class is `label - 1`).
    pub labels: Tensor,
}

/// torchvision `postprocess_detections`: class_logits `[R, C]`, box_regression `[R, C * 4]`
/// for the RoIs of every image, proposals: per image `[K_i, 4]` (sum K_i = R), image_sizes:
/// per image `[width, height]`. No gradient.
pub fn postprocess_detections(
    class_logits: &Tensor,
    box_regression: &Tensor,
    proposals: &[Tensor],
    image_sizes: &[[i64; 2]],
    config: &PostprocessConfig,
) -> Result<Vec<RoiDetections>> {
    let _no_grad = tch::no_grad_guard();
    for (i, p) in proposals.iter().enumerate() {
        ops::check_boxes(&format!("proposals[{i}]"), p, Some(2))?;
    }
    let counts: Vec<i64> = proposals.iter().map(|p| p.size()[0]).collect();
    let rois = Tensor::f_cat(proposals, 0).context("proposals")?;
    let size = class_logits.size();
    let [r, c] = size[..] else {
        bail_input!("class_logits: expected [R, C], got {size:?}");
    };
    if box_regression.size() != [r, c * 4] {
        bail_input!(
            "box_regression: expected [{r}, {}] like class_logits [{r}, {c}], got {:?}",
            c * 4,
            box_regression.size()
        );
    }
    if rois.size()[0] != r || image_sizes.len() != proposals.len() {
        bail_input!(
            "proposals: {} boxes in {} images for {r} rows of class_logits and {} image sizes",
            rois.size()[0],
            proposals.len(),
            image_sizes.len()
        );
    }
    let boxes = decode_weighted(
        box_regression,
        &rois,
        [10.0, 10.0, 5.0, 5.0],
        config.decode_clamp,
    )
    .context("box_regression")?;
    let scores = class_logits.f_softmax(-1, class_logits.kind())?;
    let mut out = Vec::with_capacity(proposals.len());
    let mut start = 0;
    for (&k, &[w, h]) in counts.iter().zip(image_sizes) {
        let image = |t: &Tensor| t.narrow(0, start, k);
        out.push(image_detections(
            &image(&boxes),
            &image(&scores),
            [w, h],
            config,
        )?);
        start += k;
    }
    Ok(out)
}

/// One image of [`postprocess_detections`]: boxes `[K, C, 4]`, scores `[K, C]`.
fn image_detections(
    boxes: &Tensor,
    scores: &Tensor,
    [w, h]: [i64; 2],
    config: &PostprocessConfig,
) -> Result<RoiDetections> {
    let c = scores.size()[1];
    let boxes = ops::clamp_boxes(boxes, w as f64, h as f64)?;
    let labels = Tensor::arange(c, (Kind::Int64, scores.device()))
        .view([1, c])
        .expand_as(scores);
    let fg = |t: &Tensor| t.narrow(1, 1, c - 1);
    let boxes = fg(&boxes).reshape([-1, 4]);
    let (scores, labels) = (fg(scores).reshape([-1]), fg(&labels).reshape([-1]));
    // torchvision filters by score, then by size: one mask keeps the same rows in order.
    let keep = scores
        .gt(config.score_thresh)
        .logical_and(&ops::large_enough(&boxes, config.min_size)?)
        .nonzero()
        .view([-1]);
    let [boxes, scores, labels] = ops::take_rows([&boxes, &scores, &labels], &keep);
    let keep = batched_nms_top(
        &boxes,
        &scores,
        &labels,
        config.nms_thresh,
        config.detections_per_img,
    )?;
    let [boxes, scores, labels] = ops::take_rows([&boxes, &scores, &labels], &keep);
    Ok(RoiDetections {
        boxes,
        scores,
        labels,
    })
}

/// torchvision `RoIHeads`' box branch: `MultiScaleRoIAlign` -> [`TwoMlpHead`] ->
/// [`FastRcnnPredictor`], variables under `path` with torchvision's names (`box_head.*`,
/// `box_predictor.*`; `roi_heads.` before them at a Faster R-CNN's root).
#[derive(Debug)]
pub struct RoiBoxHead {
    pub pool: super::roi_align::MultiScaleRoiAlign,
    pub head: TwoMlpHead,
    pub predictor: FastRcnnPredictor,
}

impl RoiBoxHead {
    /// channels: of the feature maps; num_classes: with the background; representation: the
    /// MLP's width (torchvision: 1024).
    pub fn new(
        path: &nn::Path,
        pool: super::roi_align::MultiScaleRoiAlign,
        channels: i64,
        representation: i64,
        num_classes: i64,
    ) -> Result<Self> {
        let [ph, pw] = pool.output_size;
        let head = TwoMlpHead::new(&(path / "box_head"), channels * ph * pw, representation)?;
        let predictor =
            FastRcnnPredictor::new(&(path / "box_predictor"), representation, num_classes)?;
        Ok(Self {
            pool,
            head,
            predictor,
        })
    }

    /// features: per level `[B, C, H_l, W_l]`; rois: per image `[K_i, 4]` xyxy; image_sizes:
    /// per image `[width, height]`. Returns class logits `[sum K_i, num_classes]` and deltas
    /// `[sum K_i, num_classes * 4]`, differentiable.
    pub fn forward(
        &self,
        features: &[Tensor],
        rois: &[Tensor],
        image_sizes: &[[i64; 2]],
    ) -> Result<(Tensor, Tensor)> {
        let pooled = self.pool.forward(features, rois, image_sizes)?;
        self.predictor.forward(&self.head.forward(&pooled)?)
    }

    /// torchvision `RoIHeads.forward` in eval mode: [`Self::forward`] on the proposals, then
    /// [`postprocess_detections`]. No gradient.
    pub fn detect(
        &self,
        features: &[Tensor],
        proposals: &[Tensor],
        image_sizes: &[[i64; 2]],
        config: &PostprocessConfig,
    ) -> Result<Vec<RoiDetections>> {
        let _no_grad = tch::no_grad_guard();
        let (logits, deltas) = self.forward(features, proposals, image_sizes)?;
        postprocess_detections(&logits, &deltas, proposals, image_sizes, config)
    }
}
