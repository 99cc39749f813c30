//! Image files to upright RGB8 pixels.
//!
//! - JPEG: decoded by `zune-jpeg` in strict mode (baseline and progressive; greyscale expanded
//!   to RGB; CMYK/YCCK converted to RGB by the decoder). A file that ends before its image data
//!   is a [`ProblemKind::TruncatedImage`], any other decoder failure a
//!   [`ProblemKind::CorruptImage`].
//! - PNG (and anything else `image` reads: recognised by content, not extension): `image` 0.25.
//! - EXIF orientation (tag 0x0112, values 2-8) is applied to the pixels, so models always see
//!   the image upright; [`orient_box`] maps boxes annotated on the stored pixels the same way.
//!
//! Resizing uses `fast_image_resize` (bilinear convolution, the same filter family as PIL's
//! antialiased `BILINEAR` that torchcv uses; expect +-1-2 levels of difference).
//! Measured choices are in `docs/data.md`.

use std::path::Path;

use anyhow::Result;
use fast_image_resize as fr;
use image::metadata::Orientation;
pub use image::RgbImage;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use super::check::{Problem, ProblemKind};

/// The file format, recognised from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Other,
}

/// The colour model of the stored pixels (everything is converted to RGB8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceColor {
    Rgb,
    Grey,
    Cmyk,
    /// Anything else (YCCK, alpha, 16 bit, palette), converted to RGB8.
    Other,
}

/// A decoded image, upright, and what was done to get there.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Upright RGB8 pixels (HWC, row-major).
    pub image: RgbImage,
    /// `(width, height)` of the stored pixels, before the orientation was applied.
    pub stored_size: (u32, u32),
    /// EXIF orientation, 1..=8 (1: none).
    pub orientation: u8,
    pub format: Format,
    pub color: SourceColor,
}

impl Decoded {
    /// Notes about conversions (PNG, greyscale/CMYK, EXIF orientation) for the report.
    pub fn notes(&self, file: &Path) -> Vec<Problem> {
        let mut notes = Vec::new();
        if self.format != Format::Jpeg {
            notes.push(Problem::new(
                ProblemKind::NotJpeg,
                file,
                format!("{:?} image", self.format),
            ));
        }
        if self.color != SourceColor::Rgb {
            notes.push(Problem::new(
                ProblemKind::ConvertedColor,
                file,
                format!("{:?} pixels converted to RGB", self.color),
            ));
        }
        if self.orientation != 1 {
            notes.push(Problem::new(
                ProblemKind::ExifOrientation,
                file,
                format!("EXIF orientation {} applied", self.orientation),
            ));
        }
        notes
    }
}

/// The format of `bytes`, from its signature.
pub fn sniff(bytes: &[u8]) -> Format {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Format::Jpeg
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Format::Png
    } else {
        Format::Other
    }
}

/// The bytes of the file at `path`; a missing file is a [`ProblemKind::MissingImage`], an
/// unreadable one a [`ProblemKind::CorruptImage`].
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ProblemKind::MissingImage
        } else {
            ProblemKind::CorruptImage
        };
        Problem::new(kind, path, format!("cannot read: {e}")).into_error()
    })
}

/// Read and decode the image at `path` (see the module docs).
pub fn read(path: &Path) -> Result<Decoded> {
    let bytes = read_bytes(path)?;
    decode(&bytes, path)
}

/// Decode `bytes` (the file `path`, named in errors).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Decoded> {
    match sniff(bytes) {
        Format::Jpeg => decode_jpeg(bytes, path),
        format => decode_other(bytes, path, format),
    }
}

fn jpeg_options() -> DecoderOptions {
    DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16)
}

/// True when the JPEG data does not end with an EOI marker (trailing zero padding allowed).
fn lacks_end_marker(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    !bytes[..end].ends_with(&[0xFF, 0xD9])
}

fn jpeg_error(bytes: &[u8], path: &Path, err: impl std::fmt::Display) -> anyhow::Error {
    let (kind, detail) = if lacks_end_marker(bytes) {
        (
            ProblemKind::TruncatedImage,
            format!("JPEG data ends early ({} bytes): {err}", bytes.len()),
        )
    } else {
        (
            ProblemKind::CorruptImage,
            format!("JPEG decode failed: {err}"),
        )
    };
    Problem::new(kind, path, detail).into_error()
}

fn decode_jpeg(bytes: &[u8], path: &Path) -> Result<Decoded> {
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), jpeg_options());
    decoder
        .decode_headers()
        .map_err(|e| jpeg_error(bytes, path, e))?;
    let info = decoder
        .info()
        .ok_or_else(|| jpeg_error(bytes, path, "no image header"))?;
    let (width, height) = (info.width as u32, info.height as u32);
    let input = decoder
        .input_colorspace()
        .ok_or_else(|| jpeg_error(bytes, path, "no colour space"))?;
    let orientation = decoder
        .exif()
        .and_then(|exif| Orientation::from_exif_chunk(exif))
        .map_or(1, orientation_code);
    let (out, color) = match input {
        ColorSpace::RGB | ColorSpace::YCbCr => (ColorSpace::RGB, SourceColor::Rgb),
        ColorSpace::Luma => (ColorSpace::Luma, SourceColor::Grey),
        ColorSpace::CMYK => (ColorSpace::RGB, SourceColor::Cmyk),
        _ => (ColorSpace::RGB, SourceColor::Other),
    };
    decoder.set_options(jpeg_options().jpeg_set_out_colorspace(out));
    let pixels = decoder.decode().map_err(|e| jpeg_error(bytes, path, e))?;
    let channels = out.num_components();
    let expected = width as usize * height as usize * channels;
    if pixels.len() != expected {
        return Err(jpeg_error(
            bytes,
            path,
            format!(
                "decoder returned {} bytes for {width}x{height}x{channels}",
                pixels.len()
            ),
        ));
    }
    let rgb = if channels == 1 {
        pixels.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        pixels
    };
    let stored = RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| jpeg_error(bytes, path, "pixel buffer size"))?;
    Ok(Decoded {
        image: apply_orientation(stored, orientation),
        stored_size: (width, height),
        orientation,
        format: Format::Jpeg,
        color,
    })
}

fn decode_other(bytes: &[u8], path: &Path, format: Format) -> Result<Decoded> {
    use image::ImageDecoder;
    let corrupt = |e: &dyn std::fmt::Display| {
        Problem::new(
            ProblemKind::CorruptImage,
            path,
            format!("cannot decode: {e}"),
        )
        .into_error()
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(&e))?;
    if reader.format().is_none() {
        return Err(corrupt(&"not a JPEG, PNG or other known image format"));
    }
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(&e))?;
    let orientation = decoder.orientation().map_or(1, orientation_code);
    let color = match decoder.color_type() {
        image::ColorType::Rgb8 => SourceColor::Rgb,
        image::ColorType::L8 | image::ColorType::L16 => SourceColor::Grey,
        _ => SourceColor::Other,
    };
    let dynamic = image::DynamicImage::from_decoder(decoder).map_err(|e| {
        let text = e.to_string();
        let kind = if text.contains("end of") || text.contains("EOF") || text.contains("eof") {
            ProblemKind::TruncatedImage
        } else {
            ProblemKind::CorruptImage
        };
        Problem::new(kind, path, format!("cannot decode: {text}")).into_error()
    })?;
    let stored = dynamic.to_rgb8();
    Ok(Decoded {
        stored_size: stored.dimensions(),
        image: apply_orientation(stored, orientation),
        orientation,
        format,
        color,
    })
}

/// The EXIF code (1..=8) of an orientation.
pub fn orientation_code(o: Orientation) -> u8 {
    match o {
        Orientation::NoTransforms => 1,
        Orientation::FlipHorizontal => 2,
        Orientation::Rotate180 => 3,
        Orientation::FlipVertical => 4,
        Orientation::Rotate90FlipH => 5,
        Orientation::Rotate90 => 6,
        Orientation::Rotate270FlipH => 7,
        Orientation::Rotate270 => 8,
    }
}

/// Turn stored pixels upright for EXIF orientation `code` (1..=8; other values: unchanged).
pub fn apply_orientation(image: RgbImage, code: u8) -> RgbImage {
    use image::imageops::{flip_horizontal, flip_vertical, rotate180, rotate270, rotate90};
    match code {
        2 => flip_horizontal(&image),
        3 => rotate180(&image),
        4 => flip_vertical(&image),
        5 => flip_horizontal(&rotate90(&image)),
        6 => rotate90(&image),
        7 => flip_horizontal(&rotate270(&image)),
        8 => rotate270(&image),
        _ => image,
    }
}

/// The upright size of a stored `(w, h)` image under orientation `code`.
pub fn oriented_size((w, h): (u32, u32), code: u8) -> (u32, u32) {
    if (5..=8).contains(&code) {
        (h, w)
    } else {
        (w, h)
    }
}

/// Map a box `[x0, y0, x1, y1]` in 0-based continuous coordinates of the stored `(w, h)` image
/// to the upright image, as [`apply_orientation`] maps the pixels.
pub fn orient_box(b: [f32; 4], (w, h): (u32, u32), code: u8) -> [f32; 4] {
    let (w, h) = (w as f32, h as f32);
    let point = |x: f32, y: f32| -> (f32, f32) {
        match code {
            2 => (w - x, y),
            3 => (w - x, h - y),
            4 => (x, h - y),
            5 => (y, x),
            6 => (h - y, x),
            7 => (h - y, w - x),
            8 => (y, w - x),
            _ => (x, y),
        }
    };
    let (ax, ay) = point(b[0], b[1]);
    let (bx, by) = point(b[2], b[3]);
    [ax.min(bx), ay.min(by), ax.max(bx), ay.max(by)]
}

/// Resize to exactly `width` x `height` (bilinear convolution; antialiased when shrinking).
pub fn resize(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    if width == 0 || height == 0 || image.width() == 0 || image.height() == 0 {
        crate::bail_input!(
            "cannot resize a {}x{} image to {width}x{height}",
            image.width(),
            image.height()
        );
    }
    let src = fr::images::ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        fr::PixelType::U8x3,
    )?;
    let mut dst = fr::images::Image::new(width, height, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new().resize(&src, &mut dst, &options)?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| anyhow::anyhow!("resize produced a buffer of the wrong size"))
}

/// What the file header says, without decoding the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub format: Format,
    /// `(width, height)` of the stored pixels.
    pub stored_size: (u32, u32),
    /// EXIF orientation, 1..=8.
    pub orientation: u8,
}

impl Probe {
    /// The upright size.
    pub fn size(&self) -> (u32, u32) {
        oriented_size(self.stored_size, self.orientation)
    }
}

/// Read the header of the image at `path`: format, size and orientation.
pub fn probe(path: &Path) -> Result<Probe> {
    use image::ImageDecoder;
    let bytes = read_bytes(path)?;
    let format = sniff(&bytes);
    if format == Format::Jpeg {
        let mut decoder =
            zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(&bytes), jpeg_options());
        decoder
            .decode_headers()
            .map_err(|e| jpeg_error(&bytes, path, e))?;
        let info = decoder
            .info()
            .ok_or_else(|| jpeg_error(&bytes, path, "no image header"))?;
        let orientation = decoder
            .exif()
            .and_then(|exif| Orientation::from_exif_chunk(exif))
            .map_or(1, orientation_code);
        return Ok(Probe {
            format,
            stored_size: (info.width as u32, info.height as u32),
            orientation,
        });
    }
    let corrupt = |e: &dyn std::fmt::Display| {
        Problem::new(
            ProblemKind::CorruptImage,
            path,
            format!("cannot read the header: {e}"),
        )
        .into_error()
    };
    let mut decoder = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| corrupt(&e))?
        .into_decoder()
        .map_err(|e| corrupt(&e))?;
    let orientation = decoder.orientation().map_or(1, orientation_code);
    Ok(Probe {
        format,
        stored_size: decoder.dimensions(),
        orientation,
    })
}
