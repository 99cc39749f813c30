//! RoIAlign (Mask R-CNN, He et al. 2017) and torchvision's `MultiScaleRoIAlign`, written from
//! ATen operations.
//!
//! Why ATen operations and not torchvision's C++ op: torchvision's `roi_align` lives in its own
//! shared library (`torchvision/_C.so`), which libtorch does not ship; calling it would tie
//! every tchcv binary to a torchvision wheel at run time, built for the same libtorch and CUDA.
//! Written from `index_select`, `scatter_add`, `einsum` and elementwise ops, RoIAlign runs on
//! CPU and CUDA (any device libtorch has), and its backward comes from autograd for free. The
//! values are torchvision's (tests/roi_parity.rs, values and gradients, within summation order).
//!
//! ```text
//! torchvision roi_align_forward_kernel (one RoI)     roi_align (all RoIs at once)
//! b = (int) roi[0]                                   batch index [K]
//! off = aligned ? 0.5 : 0                            the same
//! start = roi[1..2] * scale - off                    AxisSamples::new, per axis, f32 like T
//! size = roi[3..4] * scale - off - start
//! !aligned: size = max(size, 1)
//! bin = size / pooled
//! grid = ratio > 0 ? ratio : ceil(size / pooled)     per RoI; the batch uses the largest grid,
//!                                                      samples past a RoI's own grid weigh 0
//! count = max(grid_h * grid_w, 1)
//! y = start + p * bin + (i + .5) * bin / grid        the same f32 operations
//! y < -1 || y > H (or x): sample is 0                weight 0
//! y <= 0: y = 0; low = (int) y                       clamp, floor
//! low >= H - 1: low = high = H - 1, y = low          the same
//! w1..w4 = (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly lx   the product of a y and an x weight
//! out = sum of w * v over the bin's samples / count  separable: see below, / count
//! ```
//!
//! Vectorised over the RoIs, and separable: a bilinear weight is a y weight times an x weight
//! (and a dropped point's is 0 on its axis), so `out[k, c, p, q] = sum_{y, x} A_k[p, y]
//! V[b_k, c, y, x] B_k[q, x]`, where `A_k[p, y]` sums the y weights that bin row `p`'s sample
//! points give pixel row `y` ([`AxisSamples::window`], a `scatter_add`), and `B_k` likewise for
//! columns. Each RoI's window of rows and columns (the span of its counted sample points) is
//! gathered with one `index_select` from the map flattened to `[B*H*W, C]`, and the two sums are
//! two batched `einsum`s. This reads each window pixel once instead of four corners per sample
//! point: on 1024 RoIs of a 2x256x50x50 map (7x7, ratio 2) the forward takes about 2x
//! torchvision's CPU kernel and forward + backward about the same (2-core CPU, indicative).
//!
//! Memory: `K * N_y * N_x * C` gathered values (`N` the batch's widest window, about the largest
//! RoI's size in map pixels plus 2); RoIs are processed in chunks that keep a gather under
//! [`GATHER_BUDGET`] values. No gradient flows to the boxes (as in torchvision).

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::bail_input;

/// Most values one window gather may hold (64 MiB of f32); larger batches of RoIs are split.
pub const GATHER_BUDGET: i64 = 1 << 24;

/// RoIAlign settings (torchvision `roi_align`'s arguments).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoiAlignConfig {
    /// `[height, width]` of each output, e.g. 7x7.
    pub output_size: [i64; 2],
    /// Box coordinates times this are feature-map coordinates (1 / stride).
    pub spatial_scale: f64,
    /// Samples per bin along each axis; <= 0: adaptive, `ceil(roi_size / output_size)`.
    pub sampling_ratio: i64,
    /// Shift boxes by -0.5 pixel (pixel centres, Detectron2's `aligned=True`).
    pub aligned: bool,
}

impl RoiAlignConfig {
    fn validate(&self) -> Result<()> {
        let [ph, pw] = self.output_size;
        if ph < 1 || pw < 1 {
            bail_input!("roi_align: output_size must be positive, got {ph}x{pw}");
        }
        if !(self.spatial_scale.is_finite() && self.spatial_scale > 0.0) {
            bail_input!(
                "roi_align: spatial_scale must be a finite number > 0, got {}",
                self.spatial_scale
            );
        }
        Ok(())
    }
}

/// One axis of every RoI's sample points: `[K, P * G]` (bin-major), `G` the batch's largest grid.
struct AxisSamples {
    /// Lower and upper pixel index, i64.
    low: Tensor,
    high: Tensor,
    /// Weights of `low` and `high` (`1 - l` and `l`), 0 for points outside the map or past
    /// the RoI's own grid.
    w_low: Tensor,
    w_high: Tensor,
    /// Points that count (inside the map's [-1, extent] and the RoI's own grid), bool.
    valid: Tensor,
    /// The RoI's own grid, `[K]` i64.
    grid: Tensor,
    /// `G`.
    max_grid: i64,
}

impl AxisSamples {
    /// start, size: `[K]` in the compute kind (size after torchvision's `max(size, 1)`);
    /// pooled: bins; extent: the map's size along the axis.
    fn new(start: &Tensor, size: &Tensor, pooled: i64, extent: i64, ratio: i64) -> Result<Self> {
        let (kind, device) = (start.kind(), start.device());
        let bin = size / (pooled as f64);
        let grid = if ratio > 0 {
            Tensor::f_full([start.size()[0]], ratio, (Kind::Int64, device))?
        } else {
            (size / (pooled as f64)).ceil().to_kind(Kind::Int64)
        };
        let max_grid = if start.size()[0] == 0 {
            1
        } else {
            grid.max().int64_value(&[]).max(1)
        };
        let p = Tensor::arange(pooled, (kind, device)).view([1, pooled, 1]);
        let i = Tensor::arange(max_grid, (kind, device)).view([1, 1, max_grid]);
        let bin3 = bin.view([-1, 1, 1]);
        let grid3 = grid.view([-1, 1, 1]);
        let divisor = grid3.clamp_min(1).to_kind(kind);
        let pos =
            start.view([-1, 1, 1]) + p * &bin3 + ((i.shallow_clone() + 0.5) * &bin3) / divisor;
        let in_grid = i.lt_tensor(&grid3);
        let inside = pos.ge(-1.0).logical_and(&pos.le(extent as f64));
        let valid = in_grid.logical_and(&inside);
        let keep = valid.to_kind(kind);
        // Past the map's end or before -1 the point is dropped (weight 0); clamping first keeps
        // the indices of such points in range.
        let y = pos.clamp(0.0, extent as f64);
        let low = y.floor().to_kind(Kind::Int64);
        let edge = low.ge(extent - 1);
        let last = Tensor::f_full([], extent - 1, (Kind::Int64, device))?;
        let low = low.where_self(&edge.logical_not(), &last);
        let high = (&low + 1).where_self(&edge.logical_not(), &last);
        let y = y.where_self(&edge.logical_not(), &last.to_kind(kind));
        let l = y - low.to_kind(kind);
        let h = l.ones_like() - &l;
        let flat = |t: Tensor| t.reshape([-1, pooled * max_grid]);
        Ok(Self {
            low: flat(low),
            high: flat(high),
            w_low: flat(h * &keep),
            w_high: flat(l * keep),
            valid: flat(valid),
            grid,
            max_grid,
        })
    }

    /// Each RoI's first counted pixel and the span of its counted points, `[K, 1]` i64 each
    /// (origin 0 and span 1 for a RoI whose points all fall off the map).
    fn extent(&self, extent: i64) -> (Tensor, Tensor) {
        let none = self.valid.logical_not();
        let first = self.low.masked_fill(&none, extent).amin(1, true);
        let last = self.high.masked_fill(&none, -1).amax(1, true);
        let empty = last.lt_tensor(&first);
        let origin = first.masked_fill(&empty, 0);
        let span = (last - &origin + 1).masked_fill(&empty, 1);
        (origin, span)
    }

    /// The RoIs `rows` (`[k]` i64) of every per-RoI field.
    fn select(&self, rows: &Tensor) -> Self {
        let take = |t: &Tensor| t.index_select(0, rows);
        Self {
            low: take(&self.low),
            high: take(&self.high),
            w_low: take(&self.w_low),
            w_high: take(&self.w_high),
            valid: take(&self.valid),
            grid: take(&self.grid),
            max_grid: self.max_grid,
        }
    }

    /// The weights folded onto a window of pixels per RoI: `pixels [K, N]` i64, the RoI's
    /// pixels `origin..origin + N` along the axis (clamped to the map; `N` the batch's widest
    /// span of counted points), and `weights [K, P, N]`, per bin the summed weight its points
    /// give each pixel.
    fn window(&self, pooled: i64, extent: i64) -> Result<(Tensor, Tensor)> {
        let (k, device) = (self.low.size()[0], self.low.device());
        let (origin, span) = self.extent(extent);
        let n = span.max().int64_value(&[]).max(1);
        let steps = Tensor::f_arange(n, (Kind::Int64, device))?.view([1, n]);
        let pixels = (&origin + steps).clamp_max(extent - 1);
        let shape = [k, pooled, self.max_grid];
        let at = |idx: &Tensor| (idx - &origin).clamp(0, n - 1).view(shape);
        let weights = Tensor::f_zeros([k, pooled, n], (self.w_low.kind(), device))?
            .f_scatter_add(2, &at(&self.low), &self.w_low.view(shape))?
            .f_scatter_add(2, &at(&self.high), &self.w_high.view(shape))?;
        Ok((pixels, weights))
    }
}

/// Check `rois` against the features; returns the batch indices `[K]` i64.
fn check_rois(features: &Tensor, rois: &Tensor) -> Result<Tensor> {
    let fs = features.size();
    if fs.len() != 4 || fs.iter().skip(1).any(|&s| s < 1) {
        bail_input!("features: expected [B, C, H, W] with C, H, W >= 1, got {fs:?}");
    }
    let rs = rois.size();
    if rs.len() != 2 || rs[1] != 5 {
        bail_input!("rois: expected [K, 5] (batch index, x1, y1, x2, y2), got {rs:?}");
    }
    for (name, t) in [("features", features), ("rois", rois)] {
        if !crate::device::is_float(t.kind()) {
            bail_input!("{name}: expected a float tensor, got {:?}", t.kind());
        }
    }
    if rois.device() != features.device() {
        bail_input!(
            "rois: on {:?} but the features are on {:?}",
            rois.device(),
            features.device()
        );
    }
    let batch = rois.select(1, 0).to_kind(Kind::Int64);
    if rs[0] > 0 {
        let counts = Tensor::stack(
            &[
                rois.isfinite().logical_not().sum(Kind::Int64),
                batch.lt(0).logical_or(&batch.ge(fs[0])).sum(Kind::Int64),
            ],
            0,
        );
        let counts = Vec::<i64>::try_from(counts.to_device(Device::Cpu))?;
        if counts[0] > 0 {
            bail_input!("rois: {} values are NaN or inf", counts[0]);
        }
        if counts[1] > 0 {
            bail_input!(
                "rois: {} batch indices (column 0) are outside 0..{} (the features' batch)",
                counts[1],
                fs[0]
            );
        }
    }
    Ok(batch)
}

/// torchvision `roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)`.
///
/// features: `[B, C, H, W]` float (f32, f64; f16/bf16 are computed in f32); rois: `[K, 5]`
/// float, rows `(batch index, x1, y1, x2, y2)` in image coordinates. Returns `[K, C, PH, PW]`
/// in the features' kind, differentiable with respect to the features.
pub fn roi_align(features: &Tensor, rois: &Tensor, config: &RoiAlignConfig) -> Result<Tensor> {
    config.validate()?;
    let batch = check_rois(features, rois)?;
    let [_, c, h, w] = features.size()[..] else {
        unreachable!("check_rois checked four dimensions")
    };
    let [ph, pw] = config.output_size;
    let k = rois.size()[0];
    let kind = crate::loss::compute_kind(features);
    // [B*H*W, C]: a row per pixel, so one index_select gathers every channel of a sample.
    let table = features
        .to_kind(kind)
        .permute([0, 2, 3, 1])
        .reshape([-1, c]);
    if k == 0 {
        // Empty, but connected to the features: their gradient is 0, as torchvision's.
        let empty = table
            .narrow(0, 0, 0)
            .view([0, c, 1, 1])
            .expand([0, c, ph, pw], false);
        return Ok(empty.to_kind(features.kind()));
    }
    let (ys, xs, count) = tch::no_grad(|| geometry(rois, config, [h, w], kind))
        .context("roi_align: the sample points")?;
    // Each RoI's gather costs its window (rows x columns) and the row pass; RoIs go in chunks
    // of similar windows, widest first, each chunk under the gather budget with its own window
    // (one long thin RoI must not widen every other RoI's window).
    let (order, spans) = tch::no_grad(|| -> Result<_> {
        let (sy, sx) = (ys.extent(h).1.view([-1]), xs.extent(w).1.view([-1]));
        let order = (&sy * &sx + &sx * ph).argsort(0, true);
        let spans = Tensor::stack(&[sy, sx], 1).index_select(0, &order);
        Ok((
            order,
            Vec::<i64>::try_from(spans.to_device(Device::Cpu).view([-1]))?,
        ))
    })?;
    let base = batch * (h * w);
    let mut outs = Vec::new();
    let mut start = 0;
    while start < k {
        let n = chunk_length(&spans, start as usize, [ph, c]).min((k - start) as usize) as i64;
        let rows = order.narrow(0, start, n);
        let pooled = pool_chunk(&table, &base, &ys, &xs, &rows, [ph, pw, h, w, c])?;
        outs.push(pooled / count.index_select(0, &rows).view([-1, 1, 1, 1]));
        start += n;
    }
    let out = Tensor::f_cat(&outs, 0)?.f_index_select(0, &order.argsort(0, false))?;
    Ok(out.to_kind(features.kind()))
}

/// How many RoIs from `start` on (`spans`: `[sy, sx]` per RoI, flattened, widest first) one
/// gather takes: as many as the budget allows at the first one's cost, halved until the
/// chunk's own window (its largest rows by its largest columns) fits (at least one).
fn chunk_length(spans: &[i64], start: usize, [ph, c]: [i64; 2]) -> usize {
    let cost = |sy: i64, sx: i64| (sy * sx + sx * ph) * c;
    let k = spans.len() / 2;
    let (sy, sx) = (spans[2 * start], spans[2 * start + 1]);
    let mut n = ((GATHER_BUDGET / cost(sy, sx).max(1)).max(1) as usize).min(k - start);
    while n > 1 {
        let rows = &spans[2 * start..2 * (start + n)];
        let my = rows.iter().step_by(2).copied().max().unwrap_or(1);
        let mx = rows.iter().skip(1).step_by(2).copied().max().unwrap_or(1);
        if cost(my, mx) <= GATHER_BUDGET {
            break;
        }
        n /= 2;
    }
    n
}

/// The RoIs `rows` of a [`roi_align`] call pooled over their own window: gather each RoI's
/// window of the `table` (`[B*H*W, C]`) at `base` (its image's first row), then the rows' and
/// the columns' weights. Returns `[n, C, PH, PW]` (not yet divided by the sample count).
fn pool_chunk(
    table: &Tensor,
    base: &Tensor,
    ys: &AxisSamples,
    xs: &AxisSamples,
    rows: &Tensor,
    [ph, pw, h, w, c]: [i64; 5],
) -> Result<Tensor> {
    let n = rows.size()[0];
    let ((y_pix, row_w), (x_pix, col_w)) = tch::no_grad(|| -> Result<_> {
        Ok((
            ys.select(rows).window(ph, h)?,
            xs.select(rows).window(pw, w)?,
        ))
    })?;
    let (wy, wx) = (y_pix.size()[1], x_pix.size()[1]);
    let index = base.index_select(0, rows).view([n, 1, 1])
        + (y_pix * w).view([n, wy, 1])
        + x_pix.view([n, 1, wx]);
    let patch = table
        .f_index_select(0, &index.view([-1]))?
        .view([n, wy, wx, c]);
    // Rows first (bins x window columns), then columns: [n, C, PH, PW].
    let by_rows = Tensor::f_einsum("kpy,kyxc->kpxc", &[row_w, patch], None::<i64>)?;
    Ok(Tensor::f_einsum(
        "kpxc,kqx->kcpq",
        &[by_rows, col_w],
        None::<i64>,
    )?)
}

/// The sample points of every RoI along y and x, and `count = max(grid_h * grid_w, 1)` `[K]`.
fn geometry(
    rois: &Tensor,
    config: &RoiAlignConfig,
    [h, w]: [i64; 2],
    kind: Kind,
) -> Result<(AxisSamples, AxisSamples, Tensor)> {
    let r = rois.detach().to_kind(kind);
    // torchvision passes the scale as T (f32 for f32 maps): round it the same way.
    let scale = Tensor::f_full([], config.spatial_scale, (kind, r.device()))?;
    let offset = if config.aligned { 0.5 } else { 0.0 };
    let coord = |i: i64| r.select(1, i) * &scale - offset;
    let (x1, y1, x2, y2) = (coord(1), coord(2), coord(3), coord(4));
    let (mut height, mut width) = (&y2 - &y1, &x2 - &x1);
    if !config.aligned {
        height = height.clamp_min(1.0);
        width = width.clamp_min(1.0);
    }
    let [ph, pw] = config.output_size;
    let ys = AxisSamples::new(&y1, &height, ph, h, config.sampling_ratio)?;
    let xs = AxisSamples::new(&x1, &width, pw, w, config.sampling_ratio)?;
    let count = (&ys.grid * &xs.grid).clamp_min(1).to_kind(kind);
    Ok((ys, xs, count))
}

/// Boxes per image (`[K_i, 4]` xyxy) -> torchvision's RoI format `[sum K_i, 5]`
/// (`convert_boxes_to_roi_format`: the image index, then the box), in the boxes' kind.
pub fn rois_from_boxes(boxes: &[Tensor]) -> Result<Tensor> {
    if boxes.is_empty() {
        bail_input!("boxes: expected one [K, 4] tensor per image, got none");
    }
    let mut rows = Vec::with_capacity(boxes.len());
    for (i, b) in boxes.iter().enumerate() {
        crate::bbox::ops::check_boxes(&format!("boxes[{i}]"), b, Some(2))?;
        let index = Tensor::f_full([b.size()[0], 1], i as f64, (b.kind(), b.device()))?;
        rows.push(Tensor::f_cat(&[index, b.shallow_clone()], 1)?);
    }
    Ok(Tensor::f_cat(&rows, 0)?)
}

/// torchvision `LevelMapper` (Feature Pyramid Networks, eq. 1): a box of area `a` goes to level
/// `floor(k0 + log2(sqrt(a) / s0) + eps)` clamped to `[k_min, k_max]`, returned as the index
/// `level - k_min` of the feature map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelMapper {
    pub k_min: i64,
    pub k_max: i64,
    /// `s0`, the canonical box size (torchvision: 224).
    pub canonical_scale: f64,
    /// `k0`, the level of a box of size `s0` (torchvision: 4).
    pub canonical_level: f64,
    /// torchvision: 1e-6.
    pub eps: f64,
}

impl LevelMapper {
    /// boxes: `[K, 4]` xyxy float. Returns `[K]` i64 in `0..=k_max - k_min` (no gradient).
    pub fn levels(&self, boxes: &Tensor) -> Result<Tensor> {
        crate::bbox::ops::check_boxes("boxes", boxes, Some(2))?;
        let _no_grad = tch::no_grad_guard();
        let b = boxes.detach();
        let area = (b.select(1, 2) - b.select(1, 0)) * (b.select(1, 3) - b.select(1, 1));
        let level = ((area.sqrt() / self.canonical_scale).log2() + self.canonical_level + self.eps)
            .floor()
            .clamp(self.k_min as f64, self.k_max as f64);
        Ok(level.to_kind(Kind::Int64) - self.k_min)
    }
}

/// torchvision `_infer_scale`: the power of two nearest to `feature / image` along the height
/// (rounded in f32 like torchvision's `torch.tensor(approx).log2().round()`).
pub fn infer_scale(feature_height: i64, image_height: i64) -> f64 {
    let approx = (feature_height as f64 / image_height as f64) as f32;
    2f64.powf(f64::from(approx.log2().round_ties_even()))
}

/// torchvision `MultiScaleRoIAlign`: each box pooled from the feature map its size maps to
/// ([`LevelMapper`]), with `aligned = false` (torchvision's default there).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiScaleRoiAlign {
    /// torchvision's Faster R-CNN: 7x7.
    pub output_size: [i64; 2],
    /// torchvision's Faster R-CNN: 2.
    pub sampling_ratio: i64,
    /// `s0`: 224.
    pub canonical_scale: f64,
    /// `k0`: 4.
    pub canonical_level: f64,
}

impl Default for MultiScaleRoiAlign {
    fn default() -> Self {
        Self {
            output_size: [7, 7],
            sampling_ratio: 2,
            canonical_scale: 224.0,
            canonical_level: 4.0,
        }
    }
}

impl MultiScaleRoiAlign {
    /// torchvision `_setup_scales`: each map's scale ([`infer_scale`] against the largest image
    /// height) and the level mapper from the first and last map's levels. feature_heights: per
    /// map; image_sizes: per image `[width, height]`.
    pub fn setup(
        &self,
        feature_heights: &[i64],
        image_sizes: &[[i64; 2]],
    ) -> Result<(Vec<f64>, LevelMapper)> {
        let max_h = image_sizes.iter().map(|s| s[1]).max().unwrap_or(0);
        if feature_heights.is_empty() || max_h < 1 || feature_heights.iter().any(|&h| h < 1) {
            bail_input!(
                "multi-scale roi_align: expected feature maps and image sizes of positive \
                 height, got maps {feature_heights:?} and images {image_sizes:?}"
            );
        }
        let scales: Vec<f64> = feature_heights
            .iter()
            .map(|&h| infer_scale(h, max_h))
            .collect();
        let level = |s: f64| -(s as f32).log2() as i64;
        let mapper = LevelMapper {
            k_min: level(scales[0]),
            k_max: level(scales[scales.len() - 1]),
            canonical_scale: self.canonical_scale,
            canonical_level: self.canonical_level,
            eps: 1e-6,
        };
        Ok((scales, mapper))
    }

    /// features: per level `[B, C, H_l, W_l]` (finest first); boxes: per image `[K_i, 4]` xyxy
    /// in image pixels; image_sizes: per image `[width, height]`. Returns `[sum K_i, C, PH, PW]`
    /// in the boxes' order, differentiable with respect to the features.
    pub fn forward(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        image_sizes: &[[i64; 2]],
    ) -> Result<Tensor> {
        let heights: Vec<i64> = features
            .iter()
            .map(|f| f.size().get(2).copied().unwrap_or(0))
            .collect();
        let (scales, mapper) = self.setup(&heights, image_sizes)?;
        let rois = rois_from_boxes(boxes)?;
        let config = |scale: f64| RoiAlignConfig {
            output_size: self.output_size,
            spatial_scale: scale,
            sampling_ratio: self.sampling_ratio,
            aligned: false,
        };
        if features.len() == 1 {
            return roi_align(&features[0], &rois, &config(scales[0]));
        }
        let levels = mapper.levels(&rois.narrow(1, 1, 4))?;
        let (mut outs, mut order) = (Vec::new(), Vec::new());
        for (l, (feature, &scale)) in features.iter().zip(&scales).enumerate() {
            let idx = levels.eq(l as i64).nonzero().view([-1]);
            let pooled = roi_align(feature, &rois.index_select(0, &idx), &config(scale))
                .with_context(|| format!("feature map {l}"))?;
            outs.push(pooled);
            order.push(idx);
        }
        let order = Tensor::f_cat(&order, 0)?;
        Ok(Tensor::f_cat(&outs, 0)?.index_select(0, &order.argsort(0, false)))
    }
}
