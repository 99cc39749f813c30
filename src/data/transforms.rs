//! torchcv's SSD training transforms (`transforms/*.py`, `examples/ssd/train.py`), one
//! function per transform, on RGB8 images and boxes in 0-based continuous pixel coordinates.
//!
//! The training recipe ([`train_transform`]): [`photometric_distort`] -> [`zoom_out`]
//! (p = 0.5) -> [`min_iou_crop`] -> [`resize`] -> [`hflip`] (p = 0.5) -> [`normalize`], each
//! switchable in [`AugmentConfig`]. Every random choice comes from one [`Rng`] that the caller
//! keys by `(seed, epoch, image index)`, so the output does not depend on worker count or order.
//!
//! Differences from torchcv, on purpose:
//! - when no box centre falls inside the chosen crop, the image stays uncropped (torchcv returns
//!   a degenerate `[0,0,0,0]` box that breaks the box coder and the loss);
//! - zoom-out is not materialised: the canvas is described by its size and the image's offset
//!   and only the (cropped) window is ever drawn, which gives the same pixels for less work;
//! - resizing is always bilinear (torchcv picks a random PIL filter);
//! - an image without objects can be cropped freely (torchcv cannot take `min()` of no IoUs).
//!
//! The photometric steps follow PIL's `ImageEnhance` / torchvision `adjust_hue` arithmetic
//! (truncating blends, ITU-R 601 luma with PIL's rounding, PIL's 8-bit HSV round trip).

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::image::{self as img, RgbImage};
use crate::rng::Rng;

/// Which steps of the training recipe run, and their parameters (torchcv's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Brightness, contrast, saturation and hue jitter, each with p = 0.5, in one of two orders.
    pub photometric: bool,
    /// Brightness factor in `[1 - b, 1 + b]` (torchcv: 32/255, as a `ColorJitter` factor).
    pub brightness: f32,
    /// Contrast factor in `[1 - c, 1 + c]`.
    pub contrast: f32,
    /// Saturation factor in `[1 - s, 1 + s]`.
    pub saturation: f32,
    /// Hue shift in `[-h, h]` turns.
    pub hue: f32,
    /// Paste the image on a larger canvas of `fill` (SSD's "expand").
    pub zoom_out: bool,
    pub zoom_out_prob: f64,
    /// Canvas side ratio drawn from `U(1, max_zoom_out)`.
    pub max_zoom_out: f64,
    /// Canvas colour (torchcv: the ImageNet mean in 0-255, (123, 116, 103)).
    pub fill: [u8; 3],
    /// SSD's min-IoU random crop.
    pub crop: bool,
    pub crop_min_scale: f64,
    pub crop_max_aspect: f64,
    /// One candidate crop is sampled for each minimum IoU (plus the whole image).
    pub crop_min_ious: Vec<f64>,
    /// Tries per minimum IoU.
    pub crop_trials: u32,
    /// Horizontal flip.
    pub flip: bool,
    pub flip_prob: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            photometric: true,
            brightness: 32.0 / 255.0,
            contrast: 0.5,
            saturation: 0.5,
            hue: 0.1,
            zoom_out: true,
            zoom_out_prob: 0.5,
            max_zoom_out: 4.0,
            fill: [123, 116, 103],
            crop: true,
            crop_min_scale: 0.3,
            crop_max_aspect: 2.0,
            crop_min_ious: vec![0.0, 0.1, 0.3, 0.5, 0.7, 0.9],
            crop_trials: 100,
            flip: true,
            flip_prob: 0.5,
        }
    }
}

impl AugmentConfig {
    /// Turn off one step by its flag name: `photometric`, `zoom-out` (or `expand`), `crop`,
    /// `flip`, or `all` (resize + normalise remain); another name is bad input.
    pub fn turn_off(&mut self, step: &str) -> Result<()> {
        match step {
            "photometric" => self.photometric = false,
            "zoom-out" | "zoom_out" | "expand" => self.zoom_out = false,
            "crop" => self.crop = false,
            "flip" => self.flip = false,
            "all" => *self = Self::none(),
            other => crate::bail_input!(
                "--no-augment {other:?}: expected photometric, zoom-out, crop, flip or all"
            ),
        }
        Ok(())
    }

    /// Every step off: the training transform becomes resize + normalise.
    pub fn none() -> Self {
        Self {
            photometric: false,
            zoom_out: false,
            crop: false,
            flip: false,
            ..Self::default()
        }
    }
}

/// Per-channel mean and standard deviation of `[0, 1]` pixels (ImageNet's, as torchcv).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PixelNorm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for PixelNorm {
    fn default() -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// The boxes of one image and what goes with them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    /// `[K, 4]` xyxy, 0-based continuous pixels.
    pub boxes: Vec<[f32; 4]>,
    /// `[K]` 0-based class ids.
    pub labels: Vec<i64>,
    /// `[K]` difficult flags.
    pub difficult: Vec<bool>,
    /// `[K]` crowd regions (COCO `iscrowd`): never positives (empty: none).
    pub crowd: Vec<bool>,
}

impl Objects {
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    fn retain(&mut self, keep: &[bool]) {
        let mut k = keep.iter();
        self.boxes.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        self.labels.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        self.difficult.retain(|_| *k.next().unwrap_or(&false));
        let mut k = keep.iter();
        self.crowd.retain(|_| *k.next().unwrap_or(&false));
    }
}

// ---------------------------------------------------------------------------------------------
// Photometric distortion (torchcv transforms/random_distort.py).

/// PIL's `Image.blend(a, b, alpha)` for one 8-bit value: `a + alpha * (b - a)`, truncated and
/// clipped to 0..=255.
#[inline]
fn blend(a: f32, b: f32, alpha: f32) -> u8 {
    (a + alpha * (b - a)).clamp(0.0, 255.0) as u8
}

/// PIL's RGB -> L: ITU-R 601-2 luma with 16-bit fixed-point rounding.
#[inline]
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Brightness: blend with black by `factor` (PIL `ImageEnhance.Brightness`).
pub fn adjust_brightness(image: &mut RgbImage, factor: f32) {
    let lut: Vec<u8> = (0..256).map(|v| blend(0.0, v as f32, factor)).collect();
    for v in image.iter_mut() {
        *v = lut[*v as usize];
    }
}

/// Contrast: blend with the image's mean grey level by `factor` (PIL `ImageEnhance.Contrast`).
pub fn adjust_contrast(image: &mut RgbImage, factor: f32) {
    let n = (image.width() as u64 * image.height() as u64).max(1);
    let sum: u64 = image.as_raw().chunks_exact(3).map(|p| luma(p) as u64).sum();
    let mean = (sum as f64 / n as f64 + 0.5) as u32 as f32;
    let lut: Vec<u8> = (0..256).map(|v| blend(mean, v as f32, factor)).collect();
    for v in image.iter_mut() {
        *v = lut[*v as usize];
    }
}

/// Saturation: blend each pixel with its grey level by `factor` (PIL `ImageEnhance.Color`).
pub fn adjust_saturation(image: &mut RgbImage, factor: f32) {
    // blend(grey, v) for every (grey, v) pair: 64 K entries, cheaper than a blend per value.
    let lut: Vec<u8> = (0..256 * 256)
        .map(|i| blend((i >> 8) as f32, (i & 255) as f32, factor))
        .collect();
    for p in image.chunks_exact_mut(3) {
        let row = (luma(p) as usize) << 8;
        for v in p.iter_mut() {
            *v = lut[row | *v as usize];
        }
    }
}

/// `QUOTIENT[n * 256 + d] = n as f32 / d as f32`: the f32 divisions of PIL's RGB -> HSV,
/// looked up instead of computed (the same values, bit for bit).
static QUOTIENT: std::sync::LazyLock<Vec<f32>> = std::sync::LazyLock::new(|| {
    (0..256 * 256)
        .map(|i| (i >> 8) as f32 / (i & 255) as f32)
        .collect()
});

/// PIL's RGB -> HSV for one pixel (all 8-bit), with PIL's float/double arithmetic.
#[inline]
fn rgb_to_hsv(r: u8, g: u8, b: u8, quotient: &[f32]) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as usize;
    let s = quotient[(cr << 8) | maxc as usize];
    let c = |v: u8| quotient[(((maxc - v) as usize) << 8) | cr];
    // As PIL: float intermediates, the constants 2.0 and 4.0 (and the rest) in double.
    let h = if r == maxc {
        c(b) - c(g)
    } else if g == maxc {
        (2.0 + c(r) as f64 - c(b) as f64) as f32
    } else {
        (4.0 + c(g) as f64 - c(r) as f64) as f32
    };
    // fmod(h / 6 + 1, 1) for h in [-1, 5]: the sum lies in [5/6, 11/6], and subtracting 1
    // from a double in [1, 2) is exact.
    let x = h as f64 / 6.0 + 1.0;
    let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
    let uh = ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
    let us = ((s as f64 * 255.0) as i32).clamp(0, 255) as u8;
    (uh, us, maxc)
}

/// C's `round` (half away from zero) for `x >= 0`, without a libm call.
#[inline]
fn round_non_negative(x: f64) -> f64 {
    let t = x as i64 as f64;
    if x - t >= 0.5 {
        t + 1.0
    } else {
        t
    }
}

/// Per hue level `h`: PIL's sector `floor(h * 6 / 255)` and remainder `f` (as f32).
static HUE_SECTOR: std::sync::LazyLock<Vec<(i32, f32)>> = std::sync::LazyLock::new(|| {
    (0..256)
        .map(|h| {
            let hf = h as f32 as f64 * 6.0 / 255.0;
            let i = hf as i32; // floor: hf >= 0
            (i, (hf - i as f64) as f32)
        })
        .collect()
});

/// PIL's HSV -> RGB for one pixel (all 8-bit).
#[inline]
fn hsv_to_rgb(h: u8, s: u8, v: u8, sectors: &[(i32, f32)]) -> [u8; 3] {
    if s == 0 {
        return [v, v, v];
    }
    let (i, f) = sectors[h as usize];
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let level = |x: f64| round_non_negative(x).clamp(0.0, 255.0) as u8;
    let p = level(vf * (1.0 - fs as f64));
    let q = level(vf * (1.0 - (fs * f) as f64));
    let t = level(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    hsv_sector(i as u32, v, p, q, t)
}

/// The RGB of HSV sector `i` (0..6, others as 5) from the value `v` and the sector's `p`, `q`
/// and `t` (the colorsys/PIL formulas).
pub(crate) fn hsv_sector<T: Copy>(i: u32, v: T, p: T, q: T, t: T) -> [T; 3] {
    match i % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Hue: rotate the 8-bit HSV hue by `shift` turns (torchvision `adjust_hue` on PIL images:
/// the shift is `int(shift * 255)` hue levels, wrapping). As there, the image goes through
/// 8-bit HSV and back even when the shift rounds to 0 levels (|shift| < 1/255), which moves
/// some pixels by a level or more.
pub fn adjust_hue(image: &mut RgbImage, shift: f32) {
    let delta = ((shift as f64 * 255.0) as i32) as u8;
    let (quotient, sectors) = (QUOTIENT.as_slice(), HUE_SECTOR.as_slice());
    // Neighbouring pixels often share a colour: reuse the last result.
    let mut last: Option<([u8; 3], [u8; 3])> = None;
    for p in image.chunks_exact_mut(3) {
        let rgb = [p[0], p[1], p[2]];
        let out = match last {
            Some((from, to)) if from == rgb => to,
            _ => {
                let (h, s, v) = rgb_to_hsv(rgb[0], rgb[1], rgb[2], quotient);
                let to = hsv_to_rgb(h.wrapping_add(delta), s, v, sectors);
                last = Some((rgb, to));
                to
            }
        };
        p.copy_from_slice(&out);
    }
}

/// torchcv's `random_distort`: brightness, then either (contrast, saturation, hue) or
/// (saturation, hue, contrast), each step with p = 0.5 and a uniform factor.
pub fn photometric_distort(image: &mut RgbImage, cfg: &AugmentConfig, rng: &mut Rng) {
    let factor = |rng: &mut Rng, delta: f32| {
        rng.uniform((1.0 - delta as f64).max(0.0), 1.0 + delta as f64) as f32
    };
    if rng.chance(0.5) {
        let f = factor(rng, cfg.brightness);
        adjust_brightness(image, f);
    }
    let contrast = |image: &mut RgbImage, rng: &mut Rng| {
        if rng.chance(0.5) {
            let f = factor(rng, cfg.contrast);
            adjust_contrast(image, f);
        }
    };
    let saturation_hue = |image: &mut RgbImage, rng: &mut Rng| {
        if rng.chance(0.5) {
            let f = factor(rng, cfg.saturation);
            adjust_saturation(image, f);
        }
        if rng.chance(0.5) {
            let shift = rng.uniform(-cfg.hue as f64, cfg.hue as f64) as f32;
            // hue 0 turns the step off (torchvision's ColorJitter(hue=0) has no hue step)
            // rather than round-tripping through HSV; the draws stay the same either way.
            if cfg.hue != 0.0 {
                adjust_hue(image, shift);
            }
        }
    };
    if rng.chance(0.5) {
        contrast(image, rng);
        saturation_hue(image, rng);
    } else {
        saturation_hue(image, rng);
        contrast(image, rng);
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry.

/// An image placed on a canvas of `fill`, drawn only when needed: the result of
/// [`zoom_out`] and [`min_iou_crop`] before [`Canvas::into_image`].
#[derive(Debug, Clone)]
pub struct Canvas {
    pub image: RgbImage,
    /// Canvas `(width, height)`.
    pub size: (u32, u32),
    /// Position of the image's top-left corner on the canvas (may be negative after a crop).
    pub at: (i64, i64),
    pub fill: [u8; 3],
}

impl Canvas {
    /// The image alone.
    pub fn new(image: RgbImage) -> Self {
        Self {
            size: image.dimensions(),
            image,
            at: (0, 0),
            fill: [0; 3],
        }
    }

    /// Draw the canvas.
    pub fn into_image(self) -> RgbImage {
        if self.at == (0, 0) && self.size == self.image.dimensions() {
            return self.image;
        }
        let (cw, ch) = self.size;
        let mut out = RgbImage::from_pixel(cw, ch, image::Rgb(self.fill));
        let (iw, ih) = (self.image.width() as i64, self.image.height() as i64);
        // The image's rows and columns that land on the canvas.
        let x0 = self.at.0.max(0);
        let x1 = (self.at.0 + iw).min(cw as i64);
        let y0 = self.at.1.max(0);
        let y1 = (self.at.1 + ih).min(ch as i64);
        if x1 <= x0 || y1 <= y0 {
            return out;
        }
        let row_len = (x1 - x0) as usize * 3;
        let src = self.image.as_raw();
        let dst: &mut [u8] = &mut out;
        for y in y0..y1 {
            let sy = (y - self.at.1) as usize;
            let sx = (x0 - self.at.0) as usize;
            let s = (sy * iw as usize + sx) * 3;
            let d = (y as usize * cw as usize + x0 as usize) * 3;
            dst[d..d + row_len].copy_from_slice(&src[s..s + row_len]);
        }
        out
    }
}

/// torchcv's `random_paste` (SSD "expand"): the canvas grows by a ratio `U(1, max)` per side,
/// filled with `fill`; the image goes to a uniform random position; boxes move with it.
pub fn zoom_out(
    mut canvas: Canvas,
    objects: &mut Objects,
    max_ratio: f64,
    fill: [u8; 3],
    rng: &mut Rng,
) -> Canvas {
    let (w, h) = canvas.size;
    let ratio = rng.uniform(1.0, max_ratio.max(1.0));
    let (ow, oh) = ((w as f64 * ratio) as u32, (h as f64 * ratio) as u32);
    let x = rng.below((ow - w) as u64 + 1) as i64;
    let y = rng.below((oh - h) as u64 + 1) as i64;
    for b in &mut objects.boxes {
        *b = [
            b[0] + x as f32,
            b[1] + y as f32,
            b[2] + x as f32,
            b[3] + y as f32,
        ];
    }
    canvas.size = (ow, oh);
    canvas.at = (canvas.at.0 + x, canvas.at.1 + y);
    canvas.fill = fill;
    canvas
}

/// IoU of two xyxy boxes (areas as `(x1 - x0) * (y1 - y0)`, as torchcv's `box_iou`).
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// torchcv's `random_crop` (SSD's min-IoU crop). Candidates: the whole image, plus for each
/// minimum IoU the first of `trials` random windows (scale `U(min_scale, 1)`, aspect ratio in
/// `[max(1/max_aspect, s^2), min(max_aspect, 1/s^2)]`) whose IoU with every box is at least
/// that minimum. One candidate is chosen uniformly. Boxes whose centre lies inside (inclusive)
/// are kept, shifted and clipped; when none would be kept, the image is left uncropped.
pub fn min_iou_crop(
    canvas: Canvas,
    objects: &mut Objects,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> Canvas {
    let (cw, ch) = canvas.size;
    let mut candidates = vec![[0u32, 0, cw, ch]];
    for &min_iou in &cfg.crop_min_ious {
        for _ in 0..cfg.crop_trials {
            let scale = rng.uniform(cfg.crop_min_scale, 1.0);
            let lo = (1.0 / cfg.crop_max_aspect).max(scale * scale);
            let hi = cfg.crop_max_aspect.min(1.0 / (scale * scale));
            let aspect = rng.uniform(lo, hi);
            let w = ((cw as f64 * scale * aspect.sqrt()) as u32).clamp(1, cw);
            let h = ((ch as f64 * scale / aspect.sqrt()) as u32).clamp(1, ch);
            let x = rng.below((cw - w).max(1) as u64) as u32;
            let y = rng.below((ch - h).max(1) as u64) as u32;
            let roi = [x as f32, y as f32, (x + w) as f32, (y + h) as f32];
            if objects.boxes.iter().all(|&b| iou(b, roi) >= min_iou as f32) {
                candidates.push([x, y, w, h]);
                break;
            }
        }
    }
    let [x, y, w, h] = candidates[rng.below(candidates.len() as u64) as usize];
    let (xf, yf, wf, hf) = (x as f32, y as f32, w as f32, h as f32);
    let keep: Vec<bool> = objects
        .boxes
        .iter()
        .map(|b| {
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            cx >= xf && cx <= xf + wf && cy >= yf && cy <= yf + hf
        })
        .collect();
    if !objects.is_empty() && !keep.contains(&true) {
        return canvas;
    }
    objects.retain(&keep);
    for b in &mut objects.boxes {
        *b = [
            (b[0] - xf).clamp(0.0, wf),
            (b[1] - yf).clamp(0.0, hf),
            (b[2] - xf).clamp(0.0, wf),
            (b[3] - yf).clamp(0.0, hf),
        ];
    }
    Canvas {
        size: (w, h),
        at: (canvas.at.0 - x as i64, canvas.at.1 - y as i64),
        ..canvas
    }
}

/// Mirror left-right: `x0' = w - x1`, `x1' = w - x0`.
pub fn hflip(image: &mut RgbImage, objects: &mut Objects) {
    let w = image.width() as f32;
    image::imageops::flip_horizontal_in_place(image);
    for b in &mut objects.boxes {
        *b = [w - b[2], b[1], w - b[0], b[3]];
    }
}

/// Resize to `(width, height)`; boxes scale by `(width / w, height / h)`.
pub fn resize(
    image: &RgbImage,
    objects: &mut Objects,
    (width, height): (u32, u32),
) -> Result<RgbImage> {
    let (sx, sy) = (
        width as f32 / image.width() as f32,
        height as f32 / image.height() as f32,
    );
    let (wf, hf) = (width as f32, height as f32);
    for b in &mut objects.boxes {
        *b = [
            (b[0] * sx).min(wf),
            (b[1] * sy).min(hf),
            (b[2] * sx).min(wf),
            (b[3] * sy).min(hf),
        ];
    }
    img::resize(image, width, height)
}

/// `ToTensor` + `Normalize`: `[3, H, W]` f32 (channel-major) of `(v / 255 - mean) / std`.
pub fn normalize(image: &RgbImage, norm: &PixelNorm) -> Vec<f32> {
    let plane = image.width() as usize * image.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    let luts: Vec<[f32; 256]> = (0..3)
        .map(|c| std::array::from_fn(|v| (v as f32 / 255.0 - norm.mean[c]) / norm.std[c]))
        .collect();
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, p) in image.as_raw().chunks_exact(3).enumerate() {
        r[i] = luts[0][p[0] as usize];
        g[i] = luts[1][p[1] as usize];
        b[i] = luts[2][p[2] as usize];
    }
    out
}

/// A transformed image: normalised pixels and boxes in model-input pixels.
#[derive(Debug, Clone)]
pub struct Transformed {
    /// `[3, H, W]` f32, normalised.
    pub pixels: Vec<f32>,
    /// Boxes in the `(W, H)` model input.
    pub objects: Objects,
}

/// The training recipe (module docs) to a `size = (W, H)` model input.
pub fn train_transform(
    image: RgbImage,
    mut objects: Objects,
    cfg: &AugmentConfig,
    size: (u32, u32),
    norm: &PixelNorm,
    rng: &mut Rng,
) -> Result<Transformed> {
    let mut image = image;
    if cfg.photometric {
        photometric_distort(&mut image, cfg, rng);
    }
    let mut canvas = Canvas::new(image);
    if cfg.zoom_out && rng.chance(cfg.zoom_out_prob) {
        canvas = zoom_out(canvas, &mut objects, cfg.max_zoom_out, cfg.fill, rng);
    }
    if cfg.crop {
        canvas = min_iou_crop(canvas, &mut objects, cfg, rng);
    }
    let mut resized = resize(&canvas.into_image(), &mut objects, size)?;
    if cfg.flip && rng.chance(cfg.flip_prob) {
        hflip(&mut resized, &mut objects);
    }
    Ok(Transformed {
        pixels: normalize(&resized, norm),
        objects,
    })
}

/// The test-time transform: resize + normalise.
pub fn test_transform(
    image: &RgbImage,
    mut objects: Objects,
    size: (u32, u32),
    norm: &PixelNorm,
) -> Result<Transformed> {
    let resized = resize(image, &mut objects, size)?;
    Ok(Transformed {
        pixels: normalize(&resized, norm),
        objects,
    })
}
