//! Box arithmetic: IoU, order conversions, clamping (torchcv `utils/box.py`).
//!
//! Host functions work on `[f32; 4]` with exactly torchcv's f32 operation order, so IoU values
//! (and therefore matches) agree to the last bit with the PyTorch reference. Tensor functions
//! take `[..., 4]` float tensors on any device.
//!
//! ```text
//! torchcv box_iou                                  tchcv
//! lt = max(box1[:,None,:2], box2[:,:2])            x1.maximum(..), y1.maximum(..)
//! rb = min(box1[:,None,2:], box2[:,2:])            x2.minimum(..), y2.minimum(..)
//! wh = (rb-lt).clamp(min=0)                        (.. - ..).clamp_min(0)
//! inter = wh[:,:,0] * wh[:,:,1]                    inter = w * h
//! iou = inter / (area1[:,None] + area2 - inter)    union = area1 + area2 - inter;
//!                                                  iou = where(union > 0, inter / union, 0)
//! ```
//! The last line is the one change: degenerate boxes give IoU 0, never NaN.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::bail_input;

/// Area of an xyxy box, `(x2 - x1) * (y2 - y1)` (negative for an inverted box).
pub fn area(b: &[f32; 4]) -> f32 {
    (b[2] - b[0]) * (b[3] - b[1])
}

/// Intersection area of two xyxy boxes, `w * h` of the overlap clamped at 0 (torchcv's order).
fn intersection(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    w * h
}

/// IoU of two xyxy boxes given their areas (torchcv's f32 operation order); 0 when the union
/// is not positive.
pub fn iou_with_areas(a: &[f32; 4], area_a: f32, b: &[f32; 4], area_b: f32) -> f32 {
    let inter = intersection(a, b);
    let union = area_a + area_b - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The share of an anchor's area inside a crowd region at which the anchor is ignored instead of
/// being a negative: Detectron's `CROWD_FILTER_THRESH` (0.7, there for its RoIs).
pub const CROWD_IOA: f32 = 0.7;

/// Intersection of xyxy boxes `a` and `b` over `a`'s area `area_a` (COCO's IoU with a crowd
/// region, as seen from `a`); 0 when `a` has no area.
pub fn ioa(a: &[f32; 4], area_a: f32, b: &[f32; 4]) -> f32 {
    if area_a > 0.0 {
        intersection(a, b) / area_a
    } else {
        0.0
    }
}

/// Crowd regions in training, as Detectron treats them: they are not matched to anchors, and a
/// background anchor (label 0) whose area lies at least [`CROWD_IOA`] inside some crowd box is
/// ignored (label set to -1) instead of being a negative. anchors `[A]` xyxy with their
/// `areas` `[A]`, crowd `[K]` xyxy, labels `[A]` (0 background, -1 ignored, > 0 positive).
/// Returns how many anchors it ignored.
pub fn ignore_inside_crowd(
    anchors: &[[f32; 4]],
    areas: &[f32],
    crowd: &[[f32; 4]],
    labels: &mut [i64],
) -> usize {
    if crowd.is_empty() {
        return 0;
    }
    let mut ignored = 0;
    for ((a, &area), label) in anchors.iter().zip(areas).zip(labels.iter_mut()) {
        if *label == 0 && crowd.iter().any(|c| ioa(a, area, c) >= CROWD_IOA) {
            *label = -1;
            ignored += 1;
        }
    }
    ignored
}

/// IoU of two xyxy boxes; 0 for degenerate pairs, never NaN.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    iou_with_areas(a, area(a), b, area(b))
}

/// `(xmin, ymin, xmax, ymax)` to `(cx, cy, w, h)`, as torchcv's `change_box_order` in f32.
pub fn to_cxcywh(b: &[f32; 4]) -> [f32; 4] {
    [
        (b[0] + b[2]) / 2.0,
        (b[1] + b[3]) / 2.0,
        b[2] - b[0],
        b[3] - b[1],
    ]
}

/// `(cx, cy, w, h)` to `(xmin, ymin, xmax, ymax)`, as torchcv's `change_box_order` in f32.
pub fn to_xyxy(c: &[f32; 4]) -> [f32; 4] {
    [
        c[0] - c[2] / 2.0,
        c[1] - c[3] / 2.0,
        c[0] + c[2] / 2.0,
        c[1] + c[3] / 2.0,
    ]
}

/// Whether an xyxy box has no area (`w <= 0` or `h <= 0`, or NaN).
pub fn is_degenerate(b: &[f32; 4]) -> bool {
    !(b[2] - b[0] > 0.0 && b[3] - b[1] > 0.0)
}

/// Scale xyxy boxes from an image of `from = [w, h]` pixels to one of `to = [w, h]` (the
/// fixed-size resize of the training pipeline: x by `to_w / from_w`, y by `to_h / from_h`).
pub fn scale_boxes(boxes: &[[f32; 4]], from: [f64; 2], to: [f64; 2]) -> Result<Vec<[f32; 4]>> {
    if !(from.iter().chain(&to).all(|s| s.is_finite() && *s > 0.0)) {
        bail_input!("image sizes must be positive, got {from:?} -> {to:?}");
    }
    let sx = (to[0] / from[0]) as f32;
    let sy = (to[1] / from[1]) as f32;
    Ok(boxes
        .iter()
        .map(|b| [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
        .collect())
}

/// `[K, 4]` f32 CPU tensor from host boxes.
pub fn boxes_tensor(boxes: &[[f32; 4]]) -> Tensor {
    Tensor::from_slice(boxes.as_flattened()).view([boxes.len() as i64, 4])
}

/// `[..., 4]` boxes (any device, any float kind) copied to the host as f32.
pub fn host_boxes(boxes: &Tensor) -> Result<Vec<[f32; 4]>> {
    check_boxes("boxes", boxes, None)?;
    let flat = Vec::<f32>::try_from(
        boxes
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view(-1),
    )?;
    Ok(flat
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect())
}

/// Check that `t` is a float tensor of shape `[..., 4]` (with `dims` dimensions when given).
pub fn check_boxes(name: &str, t: &Tensor, dims: Option<usize>) -> Result<()> {
    let size = t.size();
    if size.last() != Some(&4) || dims.is_some_and(|d| size.len() != d) {
        let want = match dims {
            Some(2) => "[K, 4]".to_string(),
            Some(3) => "[N, A, 4]".to_string(),
            _ => "[..., 4]".to_string(),
        };
        bail_input!("{name}: expected boxes of shape {want}, got {size:?}");
    }
    if !crate::device::is_float(t.kind()) {
        bail_input!("{name}: expected a float tensor, got {:?}", t.kind());
    }
    Ok(())
}

/// The four coordinate columns of `[..., 4]` boxes, each `[...]`.
fn columns(t: &Tensor) -> [Tensor; 4] {
    [0, 1, 2, 3].map(|i| t.select(-1, i))
}

/// `[..., 4]` xyxy -> `[...]` areas.
pub fn box_area(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("boxes", boxes, None)?;
    let [x1, y1, x2, y2] = columns(boxes);
    Ok((x2 - x1) * (y2 - y1))
}

/// Pairwise IoU: `a [N, 4]` x `b [M, 4]` xyxy -> `[N, M]` (in `a`'s float kind, on its device).
/// Pairs whose union is not positive (degenerate boxes) get 0, never NaN.
pub fn box_iou(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_boxes("box_iou a", a, Some(2))?;
    check_boxes("box_iou b", b, Some(2))?;
    if a.device() != b.device() {
        bail_input!(
            "box_iou: a is on {:?} but b on {:?}",
            a.device(),
            b.device()
        );
    }
    let b = b.to_kind(a.kind());
    let [ax1, ay1, ax2, ay2] = columns(&a.unsqueeze(1));
    let [bx1, by1, bx2, by2] = columns(&b.unsqueeze(0));
    let w = (ax2.minimum(&bx2) - ax1.maximum(&bx1)).clamp_min(0.0);
    let h = (ay2.minimum(&by2) - ay1.maximum(&by1)).clamp_min(0.0);
    let inter = w * h;
    let area_a = (&ax2 - &ax1) * (&ay2 - &ay1);
    let area_b = (&bx2 - &bx1) * (&by2 - &by1);
    let union = area_a + area_b - &inter;
    let positive = union.gt(0.0);
    Ok((inter / union.where_scalarother(&positive, 1.0)).where_scalarother(&positive, 0.0))
}

/// `[..., 4]` xyxy -> cxcywh.
pub fn xyxy_to_cxcywh(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("boxes", boxes, None)?;
    let [x1, y1, x2, y2] = columns(boxes);
    Ok(Tensor::stack(
        &[(&x1 + &x2) / 2.0, (&y1 + &y2) / 2.0, &x2 - &x1, &y2 - &y1],
        -1,
    ))
}

/// `[..., 4]` cxcywh -> xyxy.
pub fn cxcywh_to_xyxy(boxes: &Tensor) -> Result<Tensor> {
    check_boxes("boxes", boxes, None)?;
    let [cx, cy, w, h] = columns(boxes);
    let (half_w, half_h) = (w / 2.0, h / 2.0);
    Ok(Tensor::stack(
        &[&cx - &half_w, &cy - &half_h, &cx + &half_w, &cy + &half_h],
        -1,
    ))
}

/// The same `rows` (`[k]` i64) of several tensors that share their first dimension.
pub fn take_rows<const N: usize>(tensors: [&Tensor; N], rows: &Tensor) -> [Tensor; N] {
    tensors.map(|t| t.index_select(0, rows))
}

/// `[K]` bool: the `[K, 4]` xyxy boxes whose sides are both >= `min_size` (torchvision
/// `remove_small_boxes`).
pub fn large_enough(boxes: &Tensor, min_size: f64) -> Result<Tensor> {
    check_boxes("boxes", boxes, Some(2))?;
    let [x1, y1, x2, y2] = columns(boxes);
    Ok((x2 - x1).ge(min_size).logical_and(&(y2 - y1).ge(min_size)))
}

/// Clamp `[..., 4]` xyxy boxes into the image `[0, width] x [0, height]`.
pub fn clamp_boxes(boxes: &Tensor, width: f64, height: f64) -> Result<Tensor> {
    check_boxes("boxes", boxes, None)?;
    let [x1, y1, x2, y2] = columns(boxes);
    Ok(Tensor::stack(
        &[
            x1.clamp(0.0, width),
            y1.clamp(0.0, height),
            x2.clamp(0.0, width),
            y2.clamp(0.0, height),
        ],
        -1,
    ))
}
