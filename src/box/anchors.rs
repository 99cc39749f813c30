//! Anchors (SSD default boxes and RetinaNet anchors) from a model spec, in torchcv's exact order.
//!
//! ```text
//! torchcv SSDBoxCoder._get_default_boxes                  ssd_default_boxes
//! for i, fm_size in enumerate(fm_sizes):                  for (map, grid) in feature_maps
//!   for h, w in product(range(fm_size), repeat=2):          for row in 0..h, col in 0..w
//!     cx = (w + 0.5) * steps[i]                               cx = (col + 0.5) * step.x
//!     cy = (h + 0.5) * steps[i]                               cy = (row + 0.5) * step.y
//!     boxes += (cx, cy, s, s)                                 s = box_sizes[map]
//!     boxes += (cx, cy, s', s'),  s' = sqrt(s * s_next)       s' = sqrt(s * box_sizes[map + 1])
//!     for ar in aspect_ratios[i]:                             for r in aspect_ratios[map]
//!       boxes += (cx, cy, s*sqrt(ar), s/sqrt(ar))               wide, then tall
//!       boxes += (cx, cy, s/sqrt(ar), s*sqrt(ar))
//! torch.Tensor(boxes)                                     f64 arithmetic, rounded once to f32
//! ```
//!
//! RetinaNet (torchcv `RetinaBoxCoder`): per map one area; per cell, for each ratio `r = w/h`
//! (outer) and scale `k` (inner): `h = sqrt(area / r) * k`, `w = r * sqrt(area / r) * k`.
//!
//! torchvision (`"style": "torchvision"`, Faster R-CNN's RPN), computed in f32 as torchvision does:
//!
//! ```text
//! torchvision AnchorGenerator                             torchvision_anchors
//! generate_anchors(scales, aspect_ratios):                base_anchors (per map, f32)
//!   h_ratios = sqrt(aspect_ratios); w_ratios = 1/h_ratios   h_r = sqrt(r); w_r = 1 / h_r
//!   ws = (w_ratios[:, None] * scales[None, :]).view(-1)     for r in ratios (outer), s in sizes
//!   hs = (h_ratios[:, None] * scales[None, :]).view(-1)       (w, h) = (w_r * s, h_r * s)
//!   stack([-ws, -hs, ws, hs], 1) / 2 .round()               round_ties_even(-w/2, -h/2, w/2, h/2)
//! strides = image_size // grid_size (int64)               spec strides (default input // map)
//! shifts_x = arange(grid_w) * stride_w                    x0 = col * stride_x (f32)
//! (shifts.view(-1,1,4) + base.view(1,-1,4))               row, col, then the cell's anchors
//! ```
//! These anchors are xyxy by construction (centred on the grid's corners `col * stride`, not on
//! cell centres); their cxcywh is derived exactly (whole and half pixels).
//!
//! Everything is in model-input pixels. With `clip`, `cx, w` are clamped to `[0, width]` and
//! `cy, h` to `[0, height]` (ssd.pytorch's `clamp_(0, 1)` in pixels); torchcv does not clip.

use tch::Tensor;

use super::ops;
use crate::spec::{
    AnchorSpec, ModelSpec, RetinaAnchorSpec, SsdAnchorSpec, Step, TorchvisionAnchorSpec,
};

/// The anchors of one model, on the host (shareable between loader threads).
#[derive(Debug, Clone, PartialEq)]
pub struct Anchors {
    /// `[A]` (cx, cy, w, h), f32 model-input pixels.
    pub cxcywh: Vec<[f32; 4]>,
    /// `[A]` (xmin, ymin, xmax, ymax) = `cx -/+ w/2` in f32 (torchcv's `change_box_order`).
    pub xyxy: Vec<[f32; 4]>,
    /// Anchors per feature map (sums to A).
    pub per_map: Vec<i64>,
}

impl Anchors {
    /// The anchors of `spec` (SSD default boxes, RetinaNet or torchvision anchors).
    pub fn from_spec(spec: &ModelSpec) -> Anchors {
        let size = [spec.input_width() as f64, spec.input_height() as f64];
        match &spec.anchors {
            AnchorSpec::Ssd(s) => ssd_default_boxes(s, size),
            AnchorSpec::Retina(r) => retina_anchors(r, size),
            AnchorSpec::Torchvision(t) => torchvision_anchors(t),
        }
    }

    /// A, the anchor count.
    pub fn len(&self) -> usize {
        self.cxcywh.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cxcywh.is_empty()
    }

    /// `[A, 4]` f32 cxcywh on the CPU.
    pub fn to_tensor(&self) -> Tensor {
        ops::boxes_tensor(&self.cxcywh)
    }

    /// `[A, 4]` f32 xyxy on the CPU.
    pub fn to_xyxy_tensor(&self) -> Tensor {
        ops::boxes_tensor(&self.xyxy)
    }
}

/// Collects boxes cell by cell, in f64, and rounds them to f32 once.
struct Builder {
    size: [f64; 2],
    clip: bool,
    cxcywh: Vec<[f32; 4]>,
    per_map: Vec<i64>,
}

impl Builder {
    fn new(size: [f64; 2], clip: bool) -> Self {
        Self {
            size,
            clip,
            cxcywh: Vec::new(),
            per_map: Vec::new(),
        }
    }

    /// Cell centres of one map, row-major: `((col + 0.5) * step.x, (row + 0.5) * step.y)`.
    fn centres(h: i64, w: i64, step: Step) -> impl Iterator<Item = (f64, f64)> {
        (0..h).flat_map(move |row| {
            (0..w).map(move |col| ((col as f64 + 0.5) * step.x, (row as f64 + 0.5) * step.y))
        })
    }

    fn push(&mut self, cx: f64, cy: f64, w: f64, h: f64) {
        let [width, height] = self.size;
        let [cx, cy, w, h] = if self.clip {
            [
                cx.clamp(0.0, width),
                cy.clamp(0.0, height),
                w.clamp(0.0, width),
                h.clamp(0.0, height),
            ]
        } else {
            [cx, cy, w, h]
        };
        self.cxcywh.push([cx as f32, cy as f32, w as f32, h as f32]);
    }

    /// Add one feature map: every cell gets the boxes `cell_wh` (w, h) in order.
    fn map(&mut self, h: i64, w: i64, step: Step, cell_wh: &[(f64, f64)]) {
        for (cx, cy) in Self::centres(h, w, step) {
            for &(bw, bh) in cell_wh {
                self.push(cx, cy, bw, bh);
            }
        }
        self.per_map.push(h * w * cell_wh.len() as i64);
    }

    fn finish(self) -> Anchors {
        let xyxy = self.cxcywh.iter().map(ops::to_xyxy).collect();
        Anchors {
            cxcywh: self.cxcywh,
            xyxy,
            per_map: self.per_map,
        }
    }
}

/// SSD default boxes (torchcv `SSDBoxCoder._get_default_boxes`), for an input of
/// `size = [width, height]` pixels.
pub fn ssd_default_boxes(spec: &SsdAnchorSpec, size: [f64; 2]) -> Anchors {
    let mut builder = Builder::new(size, spec.clip);
    for (i, grid) in spec.feature_maps.iter().enumerate() {
        let s = spec.box_sizes[i];
        let s_next = (s * spec.box_sizes[i + 1]).sqrt();
        let mut cell = vec![(s, s), (s_next, s_next)];
        for &r in &spec.aspect_ratios[i] {
            cell.push((s * r.sqrt(), s / r.sqrt()));
            cell.push((s / r.sqrt(), s * r.sqrt()));
        }
        builder.map(grid.h, grid.w, spec.steps[i], &cell);
    }
    builder.finish()
}

/// RetinaNet anchors (torchcv `RetinaBoxCoder`), for an input of `size = [width, height]`.
pub fn retina_anchors(spec: &RetinaAnchorSpec, size: [f64; 2]) -> Anchors {
    let mut builder = Builder::new(size, spec.clip);
    for (i, grid) in spec.feature_maps.iter().enumerate() {
        let area = spec.areas[i];
        let mut cell = Vec::with_capacity(spec.aspect_ratios.len() * spec.scales.len());
        for &r in &spec.aspect_ratios {
            let h = (area / r).sqrt();
            let w = r * h;
            for &k in &spec.scales {
                cell.push((w * k, h * k));
            }
        }
        builder.map(grid.h, grid.w, spec.strides[i], &cell);
    }
    builder.finish()
}

/// One map's zero-centred cell anchors `[k]` xyxy (torchvision `generate_anchors`): for each
/// ratio `r = h / w` (outer) and size `s` (inner), `round([-w/2, -h/2, w/2, h/2])` with
/// `h = sqrt(r) * s` and `w = (1 / sqrt(r)) * s`, every step in f32, ties to even (`torch.round`).
pub fn torchvision_base_anchors(sizes: &[f64], aspect_ratios: &[f64]) -> Vec<[f32; 4]> {
    let mut base = Vec::with_capacity(sizes.len() * aspect_ratios.len());
    for &r in aspect_ratios {
        let h_ratio = (r as f32).sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &s in sizes {
            let (w, h) = (w_ratio * s as f32, h_ratio * s as f32);
            base.push([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0].map(f32::round_ties_even));
        }
    }
    base
}

/// torchvision `AnchorGenerator` anchors: per map, row, column, the cell's base anchors shifted
/// by `(col * stride_x, row * stride_y)`.
pub fn torchvision_anchors(spec: &TorchvisionAnchorSpec) -> Anchors {
    let mut xyxy = Vec::new();
    let mut per_map = Vec::with_capacity(spec.feature_maps.len());
    for (i, grid) in spec.feature_maps.iter().enumerate() {
        let base = torchvision_base_anchors(&spec.sizes[i], &spec.aspect_ratios[i]);
        let step = spec.strides[i];
        for row in 0..grid.h {
            let y0 = (row as f64 * step.y) as f32;
            for col in 0..grid.w {
                let x0 = (col as f64 * step.x) as f32;
                xyxy.extend(
                    base.iter()
                        .map(|b| [x0 + b[0], y0 + b[1], x0 + b[2], y0 + b[3]]),
                );
            }
        }
        per_map.push(grid.h * grid.w * base.len() as i64);
    }
    let cxcywh = xyxy.iter().map(ops::to_cxcywh).collect();
    Anchors {
        cxcywh,
        xyxy,
        per_map,
    }
}
