//! Detections drawn onto images: a box in a colour per class, and a label (`name score`) in the
//! built-in bitmap font on a plate of the class colour, kept inside the image.
//!
//! Layout: the box outline is drawn inside the box's pixel rectangle. The plate sits on top of
//! the box (its bottom row just above the box's top row); when that would leave the image it
//! goes inside the box at its top. It is shifted left when it would pass the right edge.
//! Labels are drawn after all boxes, lowest score first, so the best label is on top.

use image::{Rgb, RgbImage};

use super::detections::LabeledBox;
use super::font;

/// How detections are drawn. `None` sizes follow the image: line width `min(w, h) / 160`,
/// text scale `min(w, h) / 240` (rounded, at least 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrawStyle {
    /// Box outline width in pixels.
    pub line_width: Option<u32>,
    /// Each font pixel is drawn as `text_scale x text_scale` image pixels (glyphs are 5x9).
    pub text_scale: Option<u32>,
    /// Append the score to the class name.
    pub show_score: bool,
}

impl Default for DrawStyle {
    fn default() -> Self {
        Self {
            line_width: None,
            text_scale: None,
            show_score: true,
        }
    }
}

/// A half-open pixel rectangle `[x0, x1) x [y0, y1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl PixelRect {
    pub fn contains(&self, x: u32, y: u32) -> bool {
        (self.x0..self.x1).contains(&x) && (self.y0..self.y1).contains(&y)
    }

    pub fn is_empty(&self) -> bool {
        self.x0 >= self.x1 || self.y0 >= self.y1
    }
}

/// Where a detection was drawn: the only pixels [`draw_detections`] changes lie in these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawnBox {
    /// The box, clipped to the image (the outline lies inside it).
    pub bbox: PixelRect,
    /// The label plate (text included), inside the image.
    pub plate: PixelRect,
}

/// Distinct colours for the first classes; later classes step around the hue circle.
const PALETTE: [[u8; 3]; 20] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 212],
    [0, 128, 128],
    [220, 190, 255],
    [170, 110, 40],
    [255, 250, 200],
    [128, 0, 0],
    [170, 255, 195],
    [128, 128, 0],
    [255, 215, 180],
    [0, 0, 128],
    [128, 128, 128],
];

/// The colour of class `class` (the same in every image and plot).
pub fn class_color(class: usize) -> [u8; 3] {
    if let Some(&c) = PALETTE.get(class) {
        return c;
    }
    // Golden-ratio hue steps: neighbours differ, and the sequence never repeats exactly.
    let hue = (class as f64 * 0.618_033_988_75).fract() * 6.0;
    let x = 1.0 - (hue % 2.0 - 1.0).abs();
    let (r, g, b) = match hue as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [r, g, b].map(|v: f64| (40.0 + 200.0 * v) as u8)
}

/// Black or white, whichever reads better on `background`.
pub fn text_color(background: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = background.map(f64::from);
    if 0.299 * r + 0.587 * g + 0.114 * b > 140.0 {
        [0, 0, 0]
    } else {
        [255, 255, 255]
    }
}

/// `name score` (score with two decimals) or `name`.
pub fn label_text(b: &LabeledBox, show_score: bool) -> String {
    if show_score {
        format!("{} {:.2}", b.name, b.score)
    } else {
        b.name.clone()
    }
}

fn fill(image: &mut RgbImage, r: PixelRect, color: [u8; 3]) {
    let x1 = r.x1.min(image.width());
    let y1 = r.y1.min(image.height());
    for y in r.y0..y1 {
        for x in r.x0..x1 {
            image.put_pixel(x, y, Rgb(color));
        }
    }
}

/// The box's pixel rectangle clipped to the image, or None when it misses the image.
fn box_rect(bbox: [f32; 4], width: u32, height: u32) -> Option<PixelRect> {
    if bbox.iter().any(|v| !v.is_finite()) || width == 0 || height == 0 {
        return None;
    }
    let clip = |v: f32, n: u32| v.round().clamp(0.0, (n - 1) as f32) as u32;
    let [x0, y0, x1, y1] = bbox;
    if x1 < 0.0 || y1 < 0.0 || x0 > (width - 1) as f32 || y0 > (height - 1) as f32 {
        return None;
    }
    let rect = PixelRect {
        x0: clip(x0.min(x1), width),
        y0: clip(y0.min(y1), height),
        x1: clip(x0.max(x1), width) + 1,
        y1: clip(y0.max(y1), height) + 1,
    };
    Some(rect)
}

fn draw_outline(image: &mut RgbImage, r: PixelRect, line: u32, color: [u8; 3]) {
    let t = line.max(1);
    let edge = |a: u32, b: u32| a.saturating_add(t).min(b);
    fill(
        image,
        PixelRect {
            y1: edge(r.y0, r.y1),
            ..r
        },
        color,
    );
    fill(
        image,
        PixelRect {
            y0: r.y1.saturating_sub(t).max(r.y0),
            ..r
        },
        color,
    );
    fill(
        image,
        PixelRect {
            x1: edge(r.x0, r.x1),
            ..r
        },
        color,
    );
    fill(
        image,
        PixelRect {
            x0: r.x1.saturating_sub(t).max(r.x0),
            ..r
        },
        color,
    );
}

/// The plate of a label of `text_w x text_h` pixels for box `b` in a `width x height` image.
fn place_plate(
    b: PixelRect,
    text_w: u32,
    text_h: u32,
    pad: u32,
    width: u32,
    height: u32,
) -> PixelRect {
    let w = (text_w + 2 * pad).min(width);
    let h = (text_h + 2 * pad).min(height);
    let y0 = if b.y0 >= h {
        b.y0 - h
    } else {
        b.y0.min(height - h)
    };
    let x0 = b.x0.min(width - w);
    PixelRect {
        x0,
        y0,
        x1: x0 + w,
        y1: y0 + h,
    }
}

fn draw_text(
    image: &mut RgbImage,
    text: &str,
    x0: u32,
    y0: u32,
    scale: u32,
    clip: PixelRect,
    color: [u8; 3],
) {
    for (i, c) in text.chars().enumerate() {
        let gx = x0 + i as u32 * font::ADVANCE * scale;
        for row in 0..font::GLYPH_H {
            for col in 0..font::GLYPH_W {
                if !font::ink(c, col, row) {
                    continue;
                }
                let px = PixelRect {
                    x0: (gx + col * scale).max(clip.x0),
                    y0: (y0 + row * scale).max(clip.y0),
                    x1: (gx + (col + 1) * scale).min(clip.x1),
                    y1: (y0 + (row + 1) * scale).min(clip.y1),
                };
                if !px.is_empty() {
                    fill(image, px, color);
                }
            }
        }
    }
}

/// Draw `detections` onto `image` in place; returns where each was drawn (boxes outside the
/// image or with non-finite coordinates are skipped and absent from the result).
pub fn draw_detections(
    image: &mut RgbImage,
    detections: &[LabeledBox],
    style: &DrawStyle,
) -> Vec<DrawnBox> {
    let (width, height) = image.dimensions();
    let short = width.min(height) as f64;
    let line = style
        .line_width
        .unwrap_or_else(|| (short / 160.0).round().max(1.0) as u32);
    let scale = style
        .text_scale
        .unwrap_or_else(|| (short / 240.0).round().max(1.0) as u32)
        .max(1);
    let mut drawn: Vec<(usize, DrawnBox)> = Vec::new();
    for (i, det) in detections.iter().enumerate() {
        let Some(bbox) = box_rect(det.bbox, width, height) else {
            continue;
        };
        draw_outline(image, bbox, line, class_color(det.class));
        let text = label_text(det, style.show_score);
        let plate = place_plate(
            bbox,
            font::text_width(&text) * scale,
            font::GLYPH_H * scale,
            scale,
            width,
            height,
        );
        drawn.push((i, DrawnBox { bbox, plate }));
    }
    let mut order: Vec<usize> = (0..drawn.len()).collect();
    order.sort_by(|&a, &b| {
        detections[drawn[a].0]
            .score
            .total_cmp(&detections[drawn[b].0].score)
    });
    for k in order {
        let (i, DrawnBox { plate, .. }) = drawn[k];
        let det = &detections[i];
        let color = class_color(det.class);
        fill(image, plate, color);
        let text = label_text(det, style.show_score);
        draw_text(
            image,
            &text,
            plate.x0 + scale,
            plate.y0 + scale,
            scale,
            plate,
            text_color(color),
        );
    }
    drawn.into_iter().map(|(_, d)| d).collect()
}
