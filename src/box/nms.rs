//! Greedy non-maximum suppression, class-wise or not, on CPU and CUDA tensors.
//!
//! Semantics (torchcv `box_nms`, torchvision `ops.nms`): visit boxes in descending score
//! order (ties: lower index first); keep a box unless an already kept box of the same class
//! overlaps it with IoU > threshold (IoU and threshold in f32, degenerate pairs IoU 0).
//!
//! Two ways to run it, same result:
//! * [`NmsMethod::Host`]: boxes copied to the host once, then the greedy scan computes only the
//!   IoUs it needs (torchvision's CPU kernel). Best on CPU.
//! * [`NmsMethod::Matrix`]: the IoU matrix of the sorted boxes is built on the tensors' device,
//!   in row blocks, thresholded and packed into 64-bit masks there (torchvision's CUDA kernel
//!   idea); only the masks cross to the host, where a scan over the bits picks the survivors.
//!   One device->host copy per block instead of one per box. Best on CUDA.
//!
//! Class-wise NMS compares classes exactly (a same-class mask), instead of torchvision's
//! coordinate-offset trick, which costs float precision and breaks for boxes with negative
//! coordinates.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::ops;
use crate::bail_input;

/// How [`batched_nms_with`] runs (the result is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NmsMethod {
    /// Host for CPU tensors, Matrix otherwise.
    #[default]
    Auto,
    /// Greedy scan on the host with IoUs computed on demand.
    Host,
    /// Blocked IoU matrix and bit masks on the tensors' device, bit scan on the host.
    Matrix,
}

/// At most this many IoU entries per block of the matrix method (64 MiB of f32).
const MATRIX_BLOCK_ELEMENTS: i64 = 1 << 24;

/// NMS over all boxes: boxes `[K, 4]` xyxy, scores `[K]`. Returns the kept indices `[k]` i64,
/// in descending score order, on the boxes' device. Suppresses when IoU > `iou_threshold`.
pub fn nms(boxes: &Tensor, scores: &Tensor, iou_threshold: f64) -> Result<Tensor> {
    batched_nms_with(boxes, scores, None, iou_threshold, NmsMethod::Auto)
}

/// Class-wise NMS: boxes of different `classes` (`[K]` integer) never suppress each other.
pub fn batched_nms(
    boxes: &Tensor,
    scores: &Tensor,
    classes: &Tensor,
    iou_threshold: f64,
) -> Result<Tensor> {
    batched_nms_with(boxes, scores, Some(classes), iou_threshold, NmsMethod::Auto)
}

/// [`batched_nms`] keeping at most the `top` best: `[k]` i64 indices, descending score.
pub fn batched_nms_top(
    boxes: &Tensor,
    scores: &Tensor,
    classes: &Tensor,
    iou_threshold: f64,
    top: i64,
) -> Result<Tensor> {
    let kept = batched_nms(boxes, scores, classes, iou_threshold)?;
    Ok(kept.narrow(0, 0, kept.size()[0].min(top.max(0))))
}

/// [`nms`] / [`batched_nms`] with a chosen method.
pub fn batched_nms_with(
    boxes: &Tensor,
    scores: &Tensor,
    classes: Option<&Tensor>,
    iou_threshold: f64,
    method: NmsMethod,
) -> Result<Tensor> {
    ops::check_boxes("nms boxes", boxes, Some(2))?;
    let k = boxes.size()[0];
    if scores.size() != [k] {
        bail_input!(
            "nms scores: expected shape [{k}] (one per box), got {:?}",
            scores.size()
        );
    }
    if let Some(c) = classes {
        if c.size() != [k]
            || !matches!(
                c.kind(),
                Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
            )
        {
            bail_input!(
                "nms classes: expected [{k}] integers, got {:?} {:?}",
                c.kind(),
                c.size()
            );
        }
    }
    let device = boxes.device();
    if scores.device() != device || classes.is_some_and(|c| c.device() != device) {
        bail_input!("nms: boxes, scores and classes must be on one device");
    }
    if !iou_threshold.is_finite() {
        bail_input!("nms: iou_threshold must be finite, got {iou_threshold}");
    }
    if k == 0 {
        return Ok(Tensor::zeros([0], (Kind::Int64, device)));
    }
    let order = scores.argsort_stable(true, 0, true);
    let sorted_boxes = boxes.to_kind(Kind::Float).index_select(0, &order);
    let sorted_classes = classes.map(|c| c.to_kind(Kind::Int64).index_select(0, &order));
    let method = match method {
        NmsMethod::Auto if device == Device::Cpu => NmsMethod::Host,
        NmsMethod::Auto => NmsMethod::Matrix,
        m => m,
    };
    let threshold = iou_threshold as f32;
    let kept = match method {
        NmsMethod::Matrix => keep_by_matrix(&sorted_boxes, sorted_classes.as_ref(), threshold)?,
        _ => keep_on_host(&sorted_boxes, sorted_classes.as_ref(), threshold)?,
    };
    let kept = Tensor::from_slice(&kept).to_device(device);
    Ok(order.index_select(0, &kept))
}

/// Greedy scan over sorted boxes with IoUs on demand. Returns kept positions.
fn keep_on_host(boxes: &Tensor, classes: Option<&Tensor>, threshold: f32) -> Result<Vec<i64>> {
    let boxes = ops::host_boxes(boxes)?;
    let classes = classes
        .map(|c| Vec::<i64>::try_from(c.to_device(Device::Cpu).contiguous()))
        .transpose()?;
    let areas: Vec<f32> = boxes.iter().map(ops::area).collect();
    let same_class = |i: usize, j: usize| classes.as_ref().is_none_or(|c| c[i] == c[j]);
    let mut suppressed = vec![false; boxes.len()];
    let mut kept = Vec::new();
    for i in 0..boxes.len() {
        if suppressed[i] {
            continue;
        }
        kept.push(i as i64);
        for j in i + 1..boxes.len() {
            if !suppressed[j]
                && same_class(i, j)
                && ops::iou_with_areas(&boxes[i], areas[i], &boxes[j], areas[j]) > threshold
            {
                suppressed[j] = true;
            }
        }
    }
    Ok(kept)
}

/// `[64]` i64: bit `b` set in entry `b` (bit 63 is `i64::MIN`).
fn bit_weights(device: Device) -> Tensor {
    let bits: Vec<i64> = (0..64).map(|b| (1u64 << b) as i64).collect();
    Tensor::from_slice(&bits).to_device(device)
}

/// The overlap bit masks of sorted boxes, row-major `[K, W]` with `W = ceil(K / 64)`: bit `j`
/// of row `i` is set when `j > i`, the classes agree and IoU(i, j) > threshold. Built on the
/// boxes' device in row blocks.
fn overlap_masks(boxes: &Tensor, classes: Option<&Tensor>, threshold: f32) -> Result<Vec<u64>> {
    let k = boxes.size()[0];
    let words = (k + 63) / 64;
    let device = boxes.device();
    let weights = bit_weights(device);
    let columns = Tensor::arange(k, (Kind::Int64, device));
    let rows_per_block = (MATRIX_BLOCK_ELEMENTS / k).max(1);
    let mut masks = Vec::with_capacity((k * words) as usize);
    let mut start = 0;
    while start < k {
        let rows = rows_per_block.min(k - start);
        let block = boxes.narrow(0, start, rows);
        let mut over = ops::box_iou(&block, boxes)?.gt(f64::from(threshold));
        let later = columns
            .unsqueeze(0)
            .gt_tensor(&columns.narrow(0, start, rows).unsqueeze(1));
        over = over.logical_and(&later);
        if let Some(c) = classes {
            let same = c
                .narrow(0, start, rows)
                .unsqueeze(1)
                .eq_tensor(&c.unsqueeze(0));
            over = over.logical_and(&same);
        }
        let padded = over
            .to_kind(Kind::Int64)
            .constant_pad_nd([0, words * 64 - k])
            .view([rows, words, 64]);
        let packed = (padded * &weights).sum_dim_intlist(2, false, Kind::Int64);
        let packed = Vec::<i64>::try_from(packed.to_device(Device::Cpu).contiguous().view(-1))?;
        masks.extend(packed.into_iter().map(|w| w as u64));
        start += rows;
    }
    Ok(masks)
}

/// Greedy scan over the bit masks of [`overlap_masks`]. Returns kept positions.
fn keep_by_matrix(boxes: &Tensor, classes: Option<&Tensor>, threshold: f32) -> Result<Vec<i64>> {
    let k = boxes.size()[0] as usize;
    let words = k.div_ceil(64);
    let masks = overlap_masks(boxes, classes, threshold)?;
    let mut removed = vec![0u64; words];
    let mut kept = Vec::new();
    for i in 0..k {
        if removed[i / 64] >> (i % 64) & 1 == 1 {
            continue;
        }
        kept.push(i as i64);
        let row = &masks[i * words..(i + 1) * words];
        for w in i / 64..words {
            removed[w] |= row[w];
        }
    }
    Ok(kept)
}
