//! From network outputs to detections: decode deltas, threshold scores per class, keep the
//! top-k per class, class-wise NMS, cap the detections per image.
//!
//! ```text
//! torchcv SSDBoxCoder.decode (one image)             BoxCoder::decode (a batch, on the device)
//! box_preds = deltas -> xyxy (no exp cap)            decode_boxes (exp capped, torchvision)
//! for i in range(num_classes - 1):                   all classes at once:
//!   score = cls_preds[:, i+1]                          scores[.., 1..] (background column skipped)
//!   mask = score > score_thresh                        (anchor, class) pairs with score > thr
//!   (no top-k)                                         at most top_k per class, best first
//!   keep = box_nms(box[mask], score[mask], nms)        class-wise NMS (IoU > nms suppresses)
//!   labels += i                                        label = class index, 0-based
//! torch.cat(...)  (crashes when nothing passes)      empty tensors when nothing passes
//! (no cap)                                           at most max_detections, best first
//! ```
//! Equal scores keep torchcv's order (its classes in turn, each best first with a stable sort):
//! the lower class first, then the lower anchor, at the top-k and max-detections cuts too.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::coder::BoxCoder;
use super::nms::batched_nms_top;
use super::ops;
use crate::bail_input;
use crate::spec::ModelSpec;

/// Post-processing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// Keep (anchor, class) pairs with score > this. torchcv eval: 0.01.
    pub score_threshold: f64,
    /// Class-wise NMS suppresses IoU > this. torchcv, ssd.pytorch, torchvision SSD: 0.45.
    pub nms_threshold: f64,
    /// At most this many candidates per class enter NMS, the highest scores (ssd.pytorch: 200;
    /// torchcv: no cap). None: no cap.
    pub top_k: Option<i64>,
    /// At most this many detections per image, the highest scores (torchvision: 200).
    pub max_detections: i64,
    /// Scores `[N, A, K]` have a background column 0 to skip (softmax: SSD, softmax focal);
    /// false for sigmoid scores without one (focal loss / RetinaNet).
    pub background_column: bool,
    /// Clamp decoded boxes into the model input before NMS (torchvision); torchcv does not.
    pub clip_boxes: bool,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            score_threshold: 0.01,
            nms_threshold: 0.45,
            top_k: Some(200),
            max_detections: 200,
            background_column: true,
            clip_boxes: false,
        }
    }
}

impl DecodeConfig {
    /// The defaults, with `background_column` from the spec's loss.
    pub fn for_spec(spec: &ModelSpec) -> Self {
        Self {
            background_column: spec.has_background_column(),
            ..Self::default()
        }
    }

    /// Check the thresholds and counts (bad input, named); decoding does it on every call.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("score_threshold", self.score_threshold),
            ("nms_threshold", self.nms_threshold),
        ] {
            if !v.is_finite() {
                bail_input!("decode config: {name} must be finite, got {v}");
            }
        }
        if self.top_k.is_some_and(|k| k < 1) || self.max_detections < 0 {
            bail_input!(
                "decode config: top_k must be >= 1 (or null) and max_detections >= 0, got {:?} and {}",
                self.top_k,
                self.max_detections
            );
        }
        Ok(())
    }
}

/// One image's detections, best first, on the predictions' device.
#[derive(Debug)]
pub struct Detections {
    /// `[D, 4]` f32 xyxy in model-input pixels.
    pub boxes: Tensor,
    /// `[D]` f32.
    pub scores: Tensor,
    /// `[D]` i64 0-based class index.
    pub labels: Tensor,
}

impl Detections {
    fn empty(device: Device) -> Self {
        Self {
            boxes: Tensor::zeros([0, 4], (Kind::Float, device)),
            scores: Tensor::zeros([0], (Kind::Float, device)),
            labels: Tensor::zeros([0], (Kind::Int64, device)),
        }
    }

    /// D, the number of detections.
    pub fn len(&self) -> i64 {
        self.scores.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The detections copied to the host.
    pub fn to_host(&self) -> Result<HostDetections> {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu).contiguous();
        Ok(HostDetections {
            boxes: ops::host_boxes(&self.boxes)?,
            scores: Vec::<f32>::try_from(cpu(&self.scores))?,
            labels: Vec::<i64>::try_from(cpu(&self.labels))?,
        })
    }
}

/// One image's detections on the host, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct HostDetections {
    /// xyxy in model-input pixels.
    pub boxes: Vec<[f32; 4]>,
    pub scores: Vec<f32>,
    /// 0-based class indices.
    pub labels: Vec<i64>,
}

/// Candidate indices `[K]` reordered so that each class keeps at most `k` of its best scores.
fn top_k_per_class(scores: &Tensor, classes: &Tensor, num_classes: i64, k: i64) -> Tensor {
    let n = scores.size()[0];
    let by_score = scores.argsort_stable(true, 0, true);
    let (grouped_classes, within) = classes
        .index_select(0, &by_score)
        .sort_stable(true, 0, false);
    let grouped = by_score.index_select(0, &within);
    let counts = grouped_classes.bincount::<Tensor>(None, num_classes);
    let starts = counts.cumsum(0, Kind::Int64) - &counts;
    let rank = Tensor::arange(n, (Kind::Int64, scores.device()))
        - starts.index_select(0, &grouped_classes);
    grouped.masked_select(&rank.lt(k))
}

impl BoxCoder {
    /// Detections per image from loc_preds `[N, A, 4]` (deltas) and scores `[N, A, K]`
    /// (probabilities: softmax with background column 0, or sigmoid without; see
    /// [`DecodeConfig::background_column`]). Works on CPU and CUDA tensors.
    pub fn decode(
        &self,
        loc_preds: &Tensor,
        scores: &Tensor,
        cfg: &DecodeConfig,
    ) -> Result<Vec<Detections>> {
        cfg.validate()?;
        let boxes = self.decode_boxes(loc_preds)?.to_kind(Kind::Float);
        let size = scores.size();
        let first_class = i64::from(cfg.background_column);
        if size.len() != 3 || size[..2] != loc_preds.size()[..2] || size[2] <= first_class {
            bail_input!(
                "scores: expected [N, A, K] with N, A as loc_preds {:?} and K > {first_class}, got {size:?}",
                loc_preds.size()
            );
        }
        if scores.device() != loc_preds.device() {
            bail_input!(
                "scores: on {:?} but loc_preds on {:?}",
                scores.device(),
                loc_preds.device()
            );
        }
        let class_scores =
            scores
                .to_kind(Kind::Float)
                .narrow(2, first_class, size[2] - first_class);
        let boxes = if cfg.clip_boxes {
            let [w, h] = self.input_size();
            ops::clamp_boxes(&boxes, w as f64, h as f64)?
        } else {
            boxes
        };
        (0..size[0])
            .map(|i| detect_one(&boxes.get(i), &class_scores.get(i), cfg))
            .collect()
    }
}

/// One image: boxes `[A, 4]` xyxy, scores `[A, C]` without background.
fn detect_one(boxes: &Tensor, scores: &Tensor, cfg: &DecodeConfig) -> Result<Detections> {
    let num_classes = scores.size()[1];
    // (class, anchor) pairs, class-major: equal scores then come out as torchcv's per-class
    // loop, concatenated and stably sorted, orders them: lower class first, then lower anchor.
    let pairs = scores.tr().gt(cfg.score_threshold).nonzero();
    if pairs.size()[0] == 0 {
        return Ok(Detections::empty(boxes.device()));
    }
    let (mut class, mut anchor) = (pairs.select(1, 0), pairs.select(1, 1));
    let mut score = scores.index(&[Some(&anchor), Some(&class)]);
    if let Some(k) = cfg.top_k.filter(|&k| k < score.size()[0]) {
        let keep = top_k_per_class(&score, &class, num_classes, k);
        anchor = anchor.index_select(0, &keep);
        class = class.index_select(0, &keep);
        score = score.index_select(0, &keep);
    }
    let candidate_boxes = boxes.index_select(0, &anchor);
    let keep = batched_nms_top(
        &candidate_boxes,
        &score,
        &class,
        cfg.nms_threshold,
        cfg.max_detections,
    )?;
    Ok(Detections {
        boxes: candidate_boxes.index_select(0, &keep),
        scores: score.index_select(0, &keep),
        labels: class.index_select(0, &keep),
    })
}
