//! The box coder: ground truth -> training targets (encode), predicted deltas -> boxes (decode).
//!
//! ```text
//! torchcv SSDBoxCoder.encode                              BoxCoder::encode_into
//! ious, index = matching (see matcher.rs)                 matched = matcher.assign(IouTable)
//! boxes = boxes[index.clamp(min=0)] (xywh)                g = to_cxcywh(gt[matched[a]])
//! default_boxes: xywh -> xyxy -> xywh (f32 round trip)    d = delta_basis[a] (the same round trip)
//! loc_xy = (g_xy - d_xy) / d_wh / 0.1                     (g.cx - d.cx) / d.w / v_xy
//! loc_wh = log(g_wh / d_wh) / 0.2                         ln(g.w / d.w) / v_wh
//! cls_targets = 1 + labels[index]; [index<0] = 0          label + 1; 0 background; -1 ignored
//! ```
//! Three changes, none visible at positive anchors: degenerate GT boxes (w or h <= 0) are
//! dropped instead of giving `-inf` targets; an image without boxes gives all-background targets
//! instead of crashing; targets of non-positive anchors are 0 (torchcv fills them from GT 0).
//!
//! RetinaNet deltas (torchcv `RetinaBoxCoder`) are the same with no variances (`v = 1`), against
//! the anchors as built (no round trip); so are torchvision-style anchors (whose cxcywh is exact),
//! which makes them torchvision's `BoxCoder((1, 1, 1, 1))` deltas (see `rpn.rs` for the RPN's
//! own encoder in torchvision's operation order).
//!
//! Encoding is plain Rust over host slices: a [`BoxCoder`] is `Send + Sync`, so data-loader
//! threads can share one (`Arc<BoxCoder>`) and call [`BoxCoder::encode`] per image.

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use super::anchors::Anchors;
use super::matcher::{IouTable, Matcher, BACKGROUND, IGNORED};
use super::ops;
use crate::bail_input;
use crate::spec::{AnchorSpec, ModelSpec};

/// Encodes ground truth into targets and decodes predictions, for one model spec.
#[derive(Debug, Clone)]
pub struct BoxCoder {
    anchors: Anchors,
    anchor_areas: Vec<f32>,
    /// `[A]` cxcywh the encoded deltas are measured against (see the module docs).
    delta_basis: Vec<[f32; 4]>,
    matcher: Matcher,
    variances: Option<[f32; 2]>,
    decode_clamp: Option<f64>,
    input_size: [i64; 2],
}

/// One image's targets.
#[derive(Debug)]
pub struct Encoded {
    /// `[A, 4]` f32 deltas; 0 at anchors that are not positive.
    pub loc_targets: Tensor,
    /// `[A]` i64: label + 1 at positives, 0 background, -1 ignored.
    pub cls_targets: Tensor,
    /// Per input box (in input order), how many anchors it owns; 0 for dropped boxes.
    pub num_pos_per_box: Vec<i64>,
    /// Indices of input boxes dropped as degenerate (w or h <= 0).
    pub dropped: Vec<usize>,
}

/// What [`BoxCoder::encode_into`] reports about one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeStats {
    /// Per input box, how many anchors it owns; 0 for dropped boxes.
    pub num_pos_per_box: Vec<i64>,
    /// Indices of input boxes dropped as degenerate (w or h <= 0).
    pub dropped: Vec<usize>,
    /// Anchors marked -1 (ignored).
    pub num_ignored: i64,
}

impl EncodeStats {
    /// Positive anchors in the image.
    pub fn num_pos(&self) -> i64 {
        self.num_pos_per_box.iter().sum()
    }
}

/// One image's usable ground truth: the boxes that are not degenerate.
struct GroundTruth {
    boxes: Vec<[f32; 4]>,
    labels: Vec<i64>,
    /// Crowd regions (not in `boxes`: never matched), see [`ops::ignore_inside_crowd`].
    crowd: Vec<[f32; 4]>,
    /// The input index of each kept box.
    input_index: Vec<usize>,
    /// Input indices of dropped (degenerate) boxes.
    dropped: Vec<usize>,
}

impl GroundTruth {
    /// Check one image's boxes, labels and crowd flags (`crowd` empty: none is a crowd
    /// region): [`super::rpn::usable_boxes`] (finite, degenerate ones dropped, crowd regions set
    /// apart), and labels not negative.
    fn new(boxes: &[[f32; 4]], labels: &[i64], crowd: &[bool]) -> Result<Self> {
        if boxes.len() != labels.len() || !(crowd.is_empty() || crowd.len() == boxes.len()) {
            bail_input!(
                "ground truth: {} boxes but {} labels and {} crowd flags",
                boxes.len(),
                labels.len(),
                crowd.len()
            );
        }
        let usable = super::rpn::usable_boxes(boxes, crowd)?;
        if let Some((i, label)) = labels.iter().enumerate().find(|(_, &l)| l < 0) {
            bail_input!(
                "ground truth box {i}: label {label} is negative (labels are 0-based class indices)"
            );
        }
        Ok(GroundTruth {
            labels: usable.input_index.iter().map(|&i| labels[i]).collect(),
            boxes: usable.boxes,
            crowd: usable.crowd,
            input_index: usable.input_index,
            dropped: usable.dropped,
        })
    }
}

impl BoxCoder {
    pub fn from_spec(spec: &ModelSpec) -> Result<BoxCoder> {
        let anchors = Anchors::from_spec(spec);
        if let Some(i) = anchors
            .cxcywh
            .iter()
            .position(|c| !(c[2] > 0.0 && c[3] > 0.0))
        {
            bail_input!(
                "model spec {:?}: anchor {i} has no area (cx, cy, w, h = {:?})",
                spec.name,
                anchors.cxcywh[i]
            );
        }
        let anchor_areas = anchors.xyxy.iter().map(ops::area).collect();
        let delta_basis = match spec.anchors {
            AnchorSpec::Ssd(_) => anchors.xyxy.iter().map(ops::to_cxcywh).collect(),
            AnchorSpec::Retina(_) | AnchorSpec::Torchvision(_) => anchors.cxcywh.clone(),
        };
        Ok(BoxCoder {
            anchors,
            anchor_areas,
            delta_basis,
            matcher: Matcher::from_spec(&spec.matching),
            variances: spec.coder.variances.map(|v| v.map(|x| x as f32)),
            decode_clamp: spec.coder.decode_clamp,
            input_size: spec.input_size,
        })
    }

    /// A, the number of anchors.
    pub fn num_anchors(&self) -> i64 {
        self.anchors.len() as i64
    }

    /// `[A, 4]` f32 cxcywh anchors in model-input pixels (a new CPU tensor).
    pub fn anchors(&self) -> Tensor {
        self.anchors.to_tensor()
    }

    /// The anchors on the host.
    pub fn host_anchors(&self) -> &Anchors {
        &self.anchors
    }

    pub fn matcher(&self) -> Matcher {
        self.matcher
    }

    /// Model-input `[width, height]`.
    pub fn input_size(&self) -> [i64; 2] {
        self.input_size
    }

    /// `[v_xy, v_wh]`, `[1, 1]` without variances.
    fn variance_pair(&self) -> [f32; 2] {
        self.variances.unwrap_or([1.0, 1.0])
    }

    /// Encode one image into caller-provided buffers: `loc_out` `[A * 4]` f32 and `cls_out`
    /// `[A]` i64 (every element is written). boxes: xyxy in model-input pixels; labels: 0-based.
    pub fn encode_into(
        &self,
        boxes: &[[f32; 4]],
        labels: &[i64],
        loc_out: &mut [f32],
        cls_out: &mut [i64],
    ) -> Result<EncodeStats> {
        self.encode_into_with_crowd(boxes, labels, &[], loc_out, cls_out)
    }

    /// [`Self::encode_into`] with crowd regions: `crowd` `[G]` (or empty: none) flags the boxes
    /// that are crowd regions (COCO `iscrowd`). As in Detectron, they are left out of the
    /// matching (they take no anchor from an object and are never positives), and a background
    /// anchor lying at least [`ops::CROWD_IOA`] of its area inside a crowd box is ignored (`cls
    /// -1`, loc targets 0, counted in `num_ignored`) rather than a negative for the mining; a
    /// crowd box owns no anchor in `num_pos_per_box`.
    pub fn encode_into_with_crowd(
        &self,
        boxes: &[[f32; 4]],
        labels: &[i64],
        crowd: &[bool],
        loc_out: &mut [f32],
        cls_out: &mut [i64],
    ) -> Result<EncodeStats> {
        let a_count = self.anchors.len();
        if loc_out.len() != a_count * 4 || cls_out.len() != a_count {
            bail_input!(
                "encode_into: buffers of {} and {} values for {a_count} anchors (want {} and {a_count})",
                loc_out.len(),
                cls_out.len(),
                a_count * 4
            );
        }
        let gt = GroundTruth::new(boxes, labels, crowd)?;
        let mut stats = EncodeStats {
            num_pos_per_box: vec![0; boxes.len()],
            dropped: gt.dropped.clone(),
            num_ignored: 0,
        };
        loc_out.fill(0.0);
        cls_out.fill(0);
        if !gt.boxes.is_empty() {
            self.assign(&gt, loc_out, cls_out, &mut stats);
        }
        let inside_crowd =
            ops::ignore_inside_crowd(&self.anchors.xyxy, &self.anchor_areas, &gt.crowd, cls_out);
        stats.num_ignored += inside_crowd as i64;
        Ok(stats)
    }

    /// Match the anchors to `gt`'s (non-crowd) boxes and write their targets.
    fn assign(
        &self,
        gt: &GroundTruth,
        loc_out: &mut [f32],
        cls_out: &mut [i64],
        stats: &mut EncodeStats,
    ) {
        let ious = IouTable::new(&self.anchors.xyxy, &self.anchor_areas, &gt.boxes);
        let matched = self.matcher.assign(&ious);
        let gt_cxcywh: Vec<[f32; 4]> = gt.boxes.iter().map(ops::to_cxcywh).collect();
        let [v_xy, v_wh] = self.variance_pair();
        for (a, &m) in matched.iter().enumerate() {
            if m == IGNORED {
                cls_out[a] = -1;
                stats.num_ignored += 1;
                continue;
            }
            if m == BACKGROUND {
                continue;
            }
            let g = &gt_cxcywh[m as usize];
            let d = &self.delta_basis[a];
            let loc = &mut loc_out[4 * a..4 * a + 4];
            loc[0] = (g[0] - d[0]) / d[2] / v_xy;
            loc[1] = (g[1] - d[1]) / d[3] / v_xy;
            loc[2] = (g[2] / d[2]).ln() / v_wh;
            loc[3] = (g[3] / d[3]).ln() / v_wh;
            cls_out[a] = gt.labels[m as usize] + 1;
            stats.num_pos_per_box[gt.input_index[m as usize]] += 1;
        }
    }

    /// Encode one image: boxes `[G]` xyxy in model-input pixels, labels `[G]` 0-based.
    pub fn encode(&self, boxes: &[[f32; 4]], labels: &[i64]) -> Result<Encoded> {
        self.encode_with_crowd(boxes, labels, &[])
    }

    /// [`Self::encode`] with `crowd` `[G]` flags (empty: none): crowd regions are not matched,
    /// and background anchors inside one are ignored (-1), see [`Self::encode_into_with_crowd`].
    pub fn encode_with_crowd(
        &self,
        boxes: &[[f32; 4]],
        labels: &[i64],
        crowd: &[bool],
    ) -> Result<Encoded> {
        let a = self.anchors.len();
        let mut loc = vec![0f32; a * 4];
        let mut cls = vec![0i64; a];
        let stats = self.encode_into_with_crowd(boxes, labels, crowd, &mut loc, &mut cls)?;
        Ok(Encoded {
            loc_targets: Tensor::from_slice(&loc).view([a as i64, 4]),
            cls_targets: Tensor::from_slice(&cls),
            num_pos_per_box: stats.num_pos_per_box,
            dropped: stats.dropped,
        })
    }

    /// Encode a batch: returns loc_targets `[N, A, 4]` f32 and cls_targets `[N, A]` i64 (CPU).
    pub fn encode_batch(&self, images: &[(Vec<[f32; 4]>, Vec<i64>)]) -> Result<(Tensor, Tensor)> {
        let a = self.anchors.len();
        let n = images.len();
        let mut loc = vec![0f32; n * a * 4];
        let mut cls = vec![0i64; n * a];
        for (i, ((boxes, labels), (loc_i, cls_i))) in images
            .iter()
            .zip(loc.chunks_mut(a * 4).zip(cls.chunks_mut(a)))
            .enumerate()
        {
            self.encode_into(boxes, labels, loc_i, cls_i)
                .with_context(|| format!("image {i} of the batch"))?;
        }
        Ok((
            Tensor::from_slice(&loc).view([n as i64, a as i64, 4]),
            Tensor::from_slice(&cls).view([n as i64, a as i64]),
        ))
    }

    /// Predicted deltas `[N, A, 4]` (any float kind, any device) -> boxes `[N, A, 4]` xyxy in
    /// model-input pixels (f32, or f64 for f64 input), with `dw, dh` capped at `decode_clamp`
    /// before `exp` (torchvision; torchcv has no cap):
    /// `xy = l_xy * v_xy * a_wh + a_xy`, `wh = exp(min(l_wh * v_wh, clamp)) * a_wh`.
    pub fn decode_boxes(&self, loc_preds: &Tensor) -> Result<Tensor> {
        ops::check_boxes("loc_preds", loc_preds, Some(3))?;
        let a = self.num_anchors();
        if loc_preds.size()[1] != a {
            bail_input!(
                "loc_preds: expected [N, {a}, 4] (the spec has {a} anchors), got {:?}",
                loc_preds.size()
            );
        }
        let kind = if loc_preds.kind() == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        let loc = loc_preds.to_kind(kind);
        let anchors = ops::boxes_tensor(&self.anchors.cxcywh)
            .to_device(loc.device())
            .to_kind(kind);
        let (a_xy, a_wh) = (anchors.narrow(1, 0, 2), anchors.narrow(1, 2, 2));
        let [v_xy, v_wh] = self.variance_pair().map(f64::from);
        let xy = loc.narrow(2, 0, 2) * v_xy * &a_wh + a_xy;
        let mut dwh = loc.narrow(2, 2, 2) * v_wh;
        if let Some(clamp) = self.decode_clamp {
            dwh = dwh.clamp_max(clamp);
        }
        let wh = dwh.exp() * a_wh;
        let half = wh / 2.0;
        Ok(Tensor::cat(&[&xy - &half, &xy + &half], 2))
    }
}

/// torchvision `BoxCoder(weights, bbox_xform_clip).decode_single` with several boxes per
/// reference: deltas `[K, M * 4]` float (e.g. the box head's class-specific deltas, `M`
/// classes), reference boxes `[K, 4]` xyxy (e.g. the RoIs). Returns `[K, M, 4]` xyxy in the
/// deltas' kind, in torchvision's operation order: `d / w`, `dw, dh` capped at `clamp`,
/// `ctr = dx * w_ref + ctr_ref`, `size = exp(dw) * w_ref`, corners `ctr -+ 0.5 * size`.
pub fn decode_weighted(
    deltas: &Tensor,
    boxes: &Tensor,
    weights: [f64; 4],
    clamp: f64,
) -> Result<Tensor> {
    ops::check_boxes("reference boxes", boxes, Some(2))?;
    let size = deltas.size();
    let k = boxes.size()[0];
    if size.len() != 2 || size[0] != k || size[1] % 4 != 0 {
        bail_input!("deltas: expected [{k}, M * 4] for {k} boxes, got {size:?}");
    }
    let boxes = boxes.to_kind(deltas.kind());
    let col = |t: &Tensor, i: i64| t.select(1, i);
    let widths = (col(&boxes, 2) - col(&boxes, 0)).unsqueeze(1);
    let heights = (col(&boxes, 3) - col(&boxes, 1)).unsqueeze(1);
    let ctr_x = col(&boxes, 0).unsqueeze(1) + &widths * 0.5;
    let ctr_y = col(&boxes, 1).unsqueeze(1) + &heights * 0.5;
    let d = deltas.f_view([k, size[1] / 4, 4])?;
    let part = |i: i64, w: f64| d.select(2, i) / w;
    let (dx, dy) = (part(0, weights[0]), part(1, weights[1]));
    let dw = part(2, weights[2]).clamp_max(clamp);
    let dh = part(3, weights[3]).clamp_max(clamp);
    let pred_x = dx * &widths + ctr_x;
    let pred_y = dy * &heights + ctr_y;
    let half_w = dw.exp() * widths * 0.5;
    let half_h = dh.exp() * heights * 0.5;
    Ok(Tensor::stack(
        &[
            &pred_x - &half_w,
            &pred_y - &half_h,
            &pred_x + &half_w,
            &pred_y + &half_h,
        ],
        2,
    ))
}
