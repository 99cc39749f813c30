//! Builders for small VOC folders in scratch directories (the data pipeline's tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use tchcv::data::{DataReport, ImageCheck, ReadOptions, SetSpec, VocDataset};

/// Open the comma-separated `sets` of `root`, discovering the classes, checking images as
/// `check` says.
pub fn open_voc(root: &Path, sets: &str, check: ImageCheck) -> (VocDataset, DataReport) {
    let options = ReadOptions {
        classes: None,
        check_images: check,
    };
    VocDataset::open(root, &SetSpec::parse_list(sets).unwrap(), &options).unwrap()
}

/// Run the `tchcv` binary with `args`.
pub fn tchcv(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tchcv"))
        .args(args)
        .output()
        .unwrap()
}

/// Assert that a `tchcv` run succeeded, showing its output when it did not.
pub fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One object line of an XML annotation.
pub struct Obj<'a> {
    pub name: &'a str,
    /// `(xmin, ymin, xmax, ymax)` written as given (VOC 1-based).
    pub bbox: [f32; 4],
    /// `None`: no `<difficult>` element.
    pub difficult: Option<u8>,
}

pub fn obj(name: &str, bbox: [f32; 4]) -> Obj<'_> {
    Obj {
        name,
        bbox,
        difficult: Some(0),
    }
}

/// The XML text of an annotation.
pub fn xml(id: &str, size: Option<(u32, u32)>, objects: &[Obj]) -> String {
    let mut s = format!("<annotation>\n<folder>VOC</folder>\n<filename>{id}.jpg</filename>\n");
    if let Some((w, h)) = size {
        s += &format!("<size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n");
    }
    for o in objects {
        s += &format!(
            "<object><name>{}</name><pose>Unspecified</pose><truncated>0</truncated>",
            o.name
        );
        if let Some(d) = o.difficult {
            s += &format!("<difficult>{d}</difficult>");
        }
        let [a, b, c, d] = o.bbox;
        s += &format!("<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>\n");
    }
    s + "</annotation>\n"
}

/// A VOC folder being built.
pub struct VocDir {
    pub root: PathBuf,
    ids: Vec<String>,
}

impl VocDir {
    pub fn new(root: &Path) -> Self {
        for d in ["Annotations", "JPEGImages", "ImageSets/Main"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        Self {
            root: root.to_path_buf(),
            ids: Vec::new(),
        }
    }

    pub fn annotation_path(&self, id: &str) -> PathBuf {
        self.root.join("Annotations").join(format!("{id}.xml"))
    }

    pub fn image_path(&self, id: &str, ext: &str) -> PathBuf {
        self.root.join("JPEGImages").join(format!("{id}.{ext}"))
    }

    /// Add an id with raw XML text and raw image bytes (`None`: no image file).
    pub fn add_raw(&mut self, id: &str, xml_text: &str, image: Option<(&str, &[u8])>) {
        std::fs::write(self.annotation_path(id), xml_text).unwrap();
        if let Some((ext, bytes)) = image {
            std::fs::write(self.image_path(id, ext), bytes).unwrap();
        }
        self.ids.push(id.to_string());
    }

    /// Add an image with a JPEG of `(w, h)` and its annotation.
    pub fn add(&mut self, id: &str, (w, h): (u32, u32), objects: &[Obj]) {
        let jpeg = jpeg_bytes(&RgbImage::from_pixel(w, h, Rgb([90, 120, 150])));
        self.add_raw(id, &xml(id, Some((w, h)), objects), Some(("jpg", &jpeg)));
    }

    /// Write `ImageSets/Main/<name>.txt` with every id added so far.
    pub fn write_set(&self, name: &str) {
        let text: String = self.ids.iter().map(|i| format!("{i}\n")).collect();
        std::fs::write(
            self.root.join("ImageSets/Main").join(format!("{name}.txt")),
            text,
        )
        .unwrap();
    }
}

/// Baseline JPEG bytes (quality 95).
pub fn jpeg_bytes(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(image)
        .unwrap();
    out
}

/// Greyscale JPEG bytes.
pub fn grey_jpeg_bytes(image: &image::GrayImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(image)
        .unwrap();
    out
}

/// PNG bytes.
pub fn png_bytes(image: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Insert an EXIF APP1 segment with orientation `code` right after the JPEG's SOI marker.
pub fn with_exif_orientation(jpeg: &[u8], code: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\x00\x2a\x00\x00\x00\x08"); // big-endian TIFF, IFD at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&code.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut payload = b"Exif\x00\x00".to_vec();
    payload.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A test image: a vertical gradient with a solid red rectangle covering pixel columns
/// `x0..x1` and rows `y0..y1` (exclusive ends).
pub fn image_with_rect((w, h): (u32, u32), [x0, y0, x1, y1]: [u32; 4]) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        if x >= x0 && x < x1 && y >= y0 && y < y1 {
            Rgb([230, 20, 20])
        } else {
            Rgb([20, (y * 200 / h) as u8 + 20, 200])
        }
    })
}
