//! A synthetic VOC-format dataset: drawn shapes on textured backgrounds.
//!
//! Five classes told apart by shape only (colour is random per object): circle, cross, square,
//! star, triangle. Objects vary in size (from about 1/8 to 1/2 of the image side, plus tiny
//! ones), aspect ratio, rotation and colour; they overlap and occlude each other (placements
//! that would hide more than 60% of an earlier object are redrawn) and may be cut by the image
//! border. An object is `difficult` when less than half of it is visible or its box is under
//! 16 px; a few images have no objects.
//!
//! Boxes are exact: each pixel belongs to at most one object (an id map, later objects on top)
//! and is painted from that map, so an object's box is the bounding box of its visible pixels.
//! XML boxes are the 1-based inclusive pixel indices (VOC convention).
//!
//! Every image is a pure function of `(seed, image index)`, so the output does not depend on the
//! number of threads.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::image::RgbImage;
use crate::rng::Rng;

/// The classes, in the (sorted) order the reader discovers them.
pub const SYNTH_CLASSES: [&str; 5] = ["circle", "cross", "square", "star", "triangle"];

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthConfig {
    /// Training images (`train.txt`, `trainval.txt`).
    pub train: usize,
    /// Test images (`test.txt`).
    pub test: usize,
    /// Image `(width, height)`.
    pub size: (u32, u32),
    pub seed: u64,
    /// At most this many objects per image (at least 1, except for empty images; at most 255).
    pub max_objects: usize,
    /// Fraction of images without objects.
    pub empty_fraction: f64,
    pub jpeg_quality: u8,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            train: 400,
            test: 100,
            size: (256, 256),
            seed: 0,
            max_objects: 5,
            empty_fraction: 0.04,
            jpeg_quality: 92,
        }
    }
}

/// One drawn object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthObject {
    pub class_id: usize,
    /// `[x_min, y_min, x_max, y_max]`: 0-based indices of the first and last visible pixel
    /// columns and rows (inclusive).
    pub pixels: [u32; 4],
    /// Visible pixels.
    pub visible: u32,
    /// Pixels the whole object would cover, alone, on an unbounded image.
    pub full: u32,
    pub difficult: bool,
    /// Cut by the image border.
    pub truncated: bool,
}

impl SynthObject {
    /// The box in 0-based continuous pixel coordinates: `[x_min, y_min, x_max + 1, y_max + 1]`.
    pub fn pixel_box(&self) -> [f32; 4] {
        let p = self.pixels;
        [
            p[0] as f32,
            p[1] as f32,
            p[2] as f32 + 1.0,
            p[3] as f32 + 1.0,
        ]
    }
}

/// A rendered image: pixels, objects and the id map (`0`: background, `k + 1`: object `k`).
#[derive(Debug, Clone)]
pub struct SynthImage {
    pub image: RgbImage,
    pub objects: Vec<SynthObject>,
    /// `[H * W]` row-major owner of each pixel.
    pub owner: Vec<u8>,
}

/// A shape in its own frame: inside test for a point in `[-1, 1]^2`.
fn inside(class_id: usize, x: f32, y: f32) -> bool {
    match SYNTH_CLASSES[class_id] {
        "circle" => x * x + y * y <= 1.0,
        "cross" => (x.abs() <= 1.0 && y.abs() <= 0.34) || (y.abs() <= 1.0 && x.abs() <= 0.34),
        "square" => x.abs() <= 1.0 && y.abs() <= 1.0,
        "star" => in_polygon(&STAR, x, y),
        _ => in_polygon(&TRIANGLE, x, y),
    }
}

const TRIANGLE: [(f32, f32); 3] = [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)];

/// A five-pointed star with inner radius 0.42.
static STAR: std::sync::LazyLock<Vec<(f32, f32)>> = std::sync::LazyLock::new(|| {
    (0..10)
        .map(|i| {
            let r = if i % 2 == 0 { 1.0 } else { 0.42 };
            let a = -std::f32::consts::FRAC_PI_2 + i as f32 * std::f32::consts::PI / 5.0;
            (r * a.cos(), r * a.sin())
        })
        .collect()
});

/// Even-odd point in polygon.
fn in_polygon(poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Placement of one shape: centre, half sizes, rotation.
struct Placement {
    class_id: usize,
    cx: f32,
    cy: f32,
    hw: f32,
    hh: f32,
    angle: f32,
    colour: [f32; 3],
}

impl Placement {
    fn random(class_id: usize, (w, h): (u32, u32), rng: &mut Rng) -> Self {
        let side = w.min(h) as f64;
        let tiny = rng.chance(0.06);
        let s = if tiny {
            rng.uniform(8.0, 15.0)
        } else {
            (rng.uniform((0.13 * side).ln(), (0.5 * side).ln())).exp()
        } as f32;
        let aspect = rng.uniform(0.7f64.ln(), 1.45f64.ln()).exp() as f32;
        let (hw, hh) = (0.5 * s * aspect.sqrt(), 0.5 * s / aspect.sqrt());
        let angle = match SYNTH_CLASSES[class_id] {
            "circle" => 0.0,
            "square" | "cross" => rng.uniform(-0.35, 0.35) as f32,
            _ => rng.uniform(-0.6, 0.6) as f32,
        };
        // Centres may sit a little outside the image: objects get cut by the border (and are
        // difficult when less than half remains).
        let cx = rng.uniform(-0.1 * hw as f64, w as f64 + 0.1 * hw as f64) as f32;
        let cy = rng.uniform(-0.1 * hh as f64, h as f64 + 0.1 * hh as f64) as f32;
        Self {
            class_id,
            cx,
            cy,
            hw,
            hh,
            angle,
            colour: random_colour(rng),
        }
    }

    /// Pixels `(x, y)` of the image whose centres fall inside the shape, and the number of
    /// such pixels the whole shape would have on an unbounded image.
    fn pixels(&self, (w, h): (u32, u32)) -> (Vec<(u32, u32)>, u32) {
        let r = self.hw.hypot(self.hh);
        let (x0, x1) = ((self.cx - r).floor() as i64, (self.cx + r).ceil() as i64);
        let (y0, y1) = ((self.cy - r).floor() as i64, (self.cy + r).ceil() as i64);
        let (sin, cos) = self.angle.sin_cos();
        let mut out = Vec::new();
        let mut full = 0;
        for y in y0..y1 {
            for x in x0..x1 {
                let (dx, dy) = (x as f32 + 0.5 - self.cx, y as f32 + 0.5 - self.cy);
                let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
                if inside(self.class_id, u / self.hw, v / self.hh) {
                    full += 1;
                    if x >= 0 && y >= 0 && x < w as i64 && y < h as i64 {
                        out.push((x as u32, y as u32));
                    }
                }
            }
        }
        (out, full)
    }
}

/// A saturated colour of random hue and brightness, as RGB in 0..255.
fn random_colour(rng: &mut Rng) -> [f32; 3] {
    let h = rng.next_f32() * 6.0;
    let s = rng.uniform(0.45, 1.0) as f32;
    let v = rng.uniform(0.35, 1.0) as f32 * 255.0;
    let f = h - h.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    super::transforms::hsv_sector((h as u32).min(5), v, p, q, t)
}

/// A smooth two-colour noise field with grain and, sometimes, stripes.
fn background((w, h): (u32, u32), rng: &mut Rng) -> Vec<[f32; 3]> {
    let c1 = random_colour(rng);
    let c2 = random_colour(rng);
    let muted = |c: [f32; 3], k: f32| c.map(|v| v * k + 128.0 * (1.0 - k));
    let (c1, c2) = (muted(c1, 0.6), muted(c2, 0.6));
    const G: usize = 6;
    let grid: Vec<f32> = (0..G * G).map(|_| rng.next_f32()).collect();
    let stripes = rng.chance(0.35);
    let (sa, sf) = (
        rng.uniform(0.0, std::f64::consts::PI) as f32,
        rng.uniform(0.05, 0.25) as f32,
    );
    let (ssin, scos) = sa.sin_cos();
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let gx = x as f32 / w as f32 * (G - 1) as f32;
            let gy = y as f32 / h as f32 * (G - 1) as f32;
            let (ix, iy) = ((gx as usize).min(G - 2), (gy as usize).min(G - 2));
            let (fx, fy) = (gx - ix as f32, gy - iy as f32);
            let at = |i: usize, j: usize| grid[j * G + i];
            let t = at(ix, iy) * (1.0 - fx) * (1.0 - fy)
                + at(ix + 1, iy) * fx * (1.0 - fy)
                + at(ix, iy + 1) * (1.0 - fx) * fy
                + at(ix + 1, iy + 1) * fx * fy;
            let mut p = [0f32; 3];
            for c in 0..3 {
                p[c] = c1[c] * (1.0 - t) + c2[c] * t;
            }
            if stripes {
                let s = ((x as f32 * scos + y as f32 * ssin) * sf).sin() * 18.0;
                p = p.map(|v| v + s);
            }
            let grain = (rng.next_f32() - 0.5) * 24.0;
            out.push(p.map(|v| v + grain));
        }
    }
    out
}

/// Render image `index` (a pure function of `(config.seed, index)`).
pub fn render(config: &SynthConfig, index: u64) -> SynthImage {
    let (w, h) = config.size;
    let mut rng = Rng::keyed(config.seed, &[0x5359_4E54, index]);
    let bg = background((w, h), &mut rng);
    let mut owner = vec![0u8; (w * h) as usize];
    let mut placed: Vec<(Placement, u32)> = Vec::new(); // (placement, full pixel count)
    let mut visible: Vec<u32> = Vec::new();
    let count = if rng.chance(config.empty_fraction) {
        0
    } else {
        // The id map holds up to 255 objects.
        1 + rng.below(config.max_objects.clamp(1, 255) as u64) as usize
    };
    for _ in 0..count {
        let class_id = rng.below(SYNTH_CLASSES.len() as u64) as usize;
        for _try in 0..20 {
            let p = Placement::random(class_id, (w, h), &mut rng);
            let (pixels, full) = p.pixels((w, h));
            if pixels.is_empty() {
                continue;
            }
            // How much of each earlier object this one would hide.
            let mut hidden = vec![0u32; placed.len()];
            for &(x, y) in &pixels {
                let o = owner[(y * w + x) as usize];
                if o > 0 {
                    hidden[o as usize - 1] += 1;
                }
            }
            let too_much = hidden
                .iter()
                .enumerate()
                .any(|(k, &n)| n > 0 && (visible[k] - n) * 10 < placed[k].1 * 4);
            if too_much {
                continue;
            }
            let id = placed.len() as u8 + 1;
            for (k, n) in hidden.iter().enumerate() {
                visible[k] -= n;
            }
            for &(x, y) in &pixels {
                owner[(y * w + x) as usize] = id;
            }
            visible.push(pixels.len() as u32);
            placed.push((p, full));
            break;
        }
    }
    // Paint from the id map and measure the visible extent of each object.
    let mut image = RgbImage::new(w, h);
    let mut extent = vec![[u32::MAX, u32::MAX, 0, 0]; placed.len()];
    let shade: Vec<(f32, f32)> = placed
        .iter()
        .map(|_| (rng.uniform(-0.4, 0.4) as f32, rng.uniform(-0.4, 0.4) as f32))
        .collect();
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) as usize;
            let grain = (rng.next_f32() - 0.5) * 14.0;
            let rgb = match owner[i] {
                0 => bg[i],
                id => {
                    let k = id as usize - 1;
                    let e = &mut extent[k];
                    *e = [e[0].min(x), e[1].min(y), e[2].max(x), e[3].max(y)];
                    let p = &placed[k].0;
                    let (sx, sy) = shade[k];
                    let g = 1.0
                        + (sx * (x as f32 - p.cx) + sy * (y as f32 - p.cy))
                            / p.hw.max(p.hh).max(1.0)
                            * 0.25;
                    p.colour.map(|v| v * g + grain)
                }
            };
            image.put_pixel(x, y, image::Rgb(rgb.map(|v| v.clamp(0.0, 255.0) as u8)));
        }
    }
    let objects = placed
        .iter()
        .enumerate()
        .filter(|&(k, _)| visible[k] > 0)
        .map(|(k, (p, full))| {
            let e = extent[k];
            let small = (e[2] - e[0] + 1).max(e[3] - e[1] + 1) < 16;
            SynthObject {
                class_id: p.class_id,
                pixels: e,
                visible: visible[k],
                full: *full,
                difficult: small || visible[k] * 2 < *full,
                truncated: e[0] == 0 || e[1] == 0 || e[2] == w - 1 || e[3] == h - 1,
            }
        })
        .collect();
    SynthImage {
        image,
        objects,
        owner,
    }
}

/// The VOC XML of one image.
pub fn annotation_xml(id: &str, (w, h): (u32, u32), objects: &[SynthObject]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<annotation>\n\t<folder>synth</folder>\n\t<filename>{id}.jpg</filename>"
    );
    let _ = writeln!(
        s,
        "\t<source>\n\t\t<database>tchcv synthetic shapes</database>\n\t</source>"
    );
    let _ = writeln!(s, "\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>");
    let _ = writeln!(s, "\t<segmented>0</segmented>");
    for o in objects {
        let p = o.pixels;
        let _ = writeln!(
            s,
            "\t<object>\n\t\t<name>{}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>{}</truncated>\n\t\t<difficult>{}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{}</xmin>\n\t\t\t<ymin>{}</ymin>\n\t\t\t<xmax>{}</xmax>\n\t\t\t<ymax>{}</ymax>\n\t\t</bndbox>\n\t</object>",
            SYNTH_CLASSES[o.class_id],
            o.truncated as u8,
            o.difficult as u8,
            p[0] + 1,
            p[1] + 1,
            p[2] + 1,
            p[3] + 1
        );
    }
    s.push_str("</annotation>\n");
    s
}

/// Counts of a generated dataset.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SynthSummary {
    pub images: usize,
    pub empty_images: usize,
    pub objects: usize,
    pub difficult: usize,
    /// Objects per class, in [`SYNTH_CLASSES`] order.
    pub per_class: [usize; 5],
}

/// The id of image `index` (0-based): `000001`, `000002`, ...
pub fn image_id(index: usize) -> String {
    format!("{:06}", index + 1)
}

/// Write the dataset under `out`: `JPEGImages/`, `Annotations/`,
/// `ImageSets/Main/{train,trainval,test}.txt` and `synth.json` (the configuration).
/// Images `0..train` are the training split, the next `test` the test split.
pub fn write_dataset(out: &Path, config: &SynthConfig) -> Result<SynthSummary> {
    if config.size.0 < 32 || config.size.1 < 32 {
        crate::bail_input!(
            "--size {}x{}: images must be at least 32x32",
            config.size.0,
            config.size.1
        );
    }
    if config.train + config.test == 0 {
        crate::bail_input!("--train and --test are both 0: nothing to write");
    }
    let jpeg_dir = out.join("JPEGImages");
    let xml_dir = out.join("Annotations");
    let sets_dir = out.join("ImageSets").join("Main");
    for d in [&jpeg_dir, &xml_dir, &sets_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let total = config.train + config.test;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(total);
    let results: Vec<Result<Vec<SynthObject>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (jpeg_dir, xml_dir) = (&jpeg_dir, &xml_dir);
                s.spawn(move || {
                    (t..total)
                        .step_by(threads)
                        .map(|i| write_one(jpeg_dir, xml_dir, config, i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut per_thread: Vec<std::vec::IntoIter<Result<Vec<SynthObject>>>> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default().into_iter())
            .collect();
        (0..total)
            .map(|i| {
                per_thread[i % threads]
                    .next()
                    .unwrap_or_else(|| Err(anyhow::anyhow!("synth worker for image {i} failed")))
            })
            .collect()
    });
    let mut summary = SynthSummary::default();
    for objects in results {
        let objects = objects?;
        summary.images += 1;
        summary.empty_images += objects.is_empty() as usize;
        summary.objects += objects.len();
        summary.difficult += objects.iter().filter(|o| o.difficult).count();
        for o in &objects {
            summary.per_class[o.class_id] += 1;
        }
    }
    let list =
        |range: std::ops::Range<usize>| range.map(|i| image_id(i) + "\n").collect::<String>();
    let train = list(0..config.train);
    crate::io::write_bytes_atomic(&sets_dir.join("train.txt"), train.as_bytes())?;
    crate::io::write_bytes_atomic(&sets_dir.join("trainval.txt"), train.as_bytes())?;
    crate::io::write_bytes_atomic(
        &sets_dir.join("test.txt"),
        list(config.train..total).as_bytes(),
    )?;
    let meta = serde_json::json!({ "generator": "tchcv synth", "config": config, "classes": SYNTH_CLASSES, "summary": &summary });
    crate::io::write_bytes_atomic(
        &out.join("synth.json"),
        serde_json::to_string_pretty(&meta)?.as_bytes(),
    )?;
    Ok(summary)
}

fn write_one(
    jpeg_dir: &Path,
    xml_dir: &Path,
    config: &SynthConfig,
    i: usize,
) -> Result<Vec<SynthObject>> {
    let id = image_id(i);
    let rendered = render(config, i as u64);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, config.jpeg_quality)
        .encode_image(&rendered.image)
        .with_context(|| format!("encoding image {id}"))?;
    crate::io::write_bytes_atomic(&jpeg_dir.join(format!("{id}.jpg")), &jpeg)?;
    let xml = annotation_xml(&id, config.size, &rendered.objects);
    crate::io::write_bytes_atomic(&xml_dir.join(format!("{id}.xml")), xml.as_bytes())?;
    Ok(rendered.objects)
}
