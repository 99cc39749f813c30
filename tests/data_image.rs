//! Image decoding: JPEG (colour, greyscale, CMYK, EXIF-rotated), PNG, and corrupt or truncated
//! files, against PIL (`tests/reference/image_decode.py`) where a reference applies.

mod common;
mod voc_fixture;

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use tchcv::data::check::problem_of;
use tchcv::data::image::{self as img, Format, SourceColor};
use tchcv::data::{ImageCheck, ProblemKind};
use tchcv::rng::Rng;
use voc_fixture::{
    grey_jpeg_bytes, image_with_rect, jpeg_bytes, obj, png_bytes, with_exif_orientation, VocDir,
};

/// Decode `path` with PIL: upright RGB8.
fn pil_decode(path: &Path) -> RgbImage {
    let out = path.with_extension("pil.rgb");
    let meta = common::run_reference(
        "image_decode.py",
        &[path.to_str().unwrap(), out.to_str().unwrap()],
    );
    let meta: serde_json::Value = serde_json::from_str(meta.trim()).unwrap();
    let (w, h) = (
        meta["width"].as_u64().unwrap() as u32,
        meta["height"].as_u64().unwrap() as u32,
    );
    RgbImage::from_raw(w, h, std::fs::read(&out).unwrap()).unwrap()
}

/// (max, mean) absolute difference of two equal-sized images.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    let d: Vec<u8> = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .collect();
    (
        *d.iter().max().unwrap(),
        d.iter().map(|&v| v as f64).sum::<f64>() / d.len() as f64,
    )
}

/// Assert that `ours` is within `max` levels (and `mean` on average) of PIL's decoding of `path`.
fn assert_like_pil(ours: &RgbImage, path: &Path, max: u8, mean: f64, what: &str) {
    let (worst, average) = diff(ours, &pil_decode(path));
    assert!(
        worst <= max && average < mean,
        "{what} vs PIL: max {worst}, mean {average:.3}"
    );
}

/// A smooth random colour image (JPEG-friendly, so decoders agree closely).
fn smooth_image(seed: u64, (w, h): (u32, u32)) -> RgbImage {
    let mut rng = Rng::new(seed);
    let c: Vec<f32> = (0..9).map(|_| rng.next_f32() * 255.0).collect();
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        Rgb([0, 1, 2].map(|k| {
            (c[k] * (1.0 - u) + c[3 + k] * u * (1.0 - v) + c[6 + k] * u * v).clamp(0.0, 255.0) as u8
        }))
    })
}

#[test]
fn jpeg_png_and_greyscale_decode_like_pil() {
    let seed = common::fresh_seed("jpeg_png_and_greyscale_decode_like_pil");
    let dir = common::scratch("data_image_formats");
    let original = smooth_image(seed, (67, 45));
    // Colour JPEG.
    let path = dir.join("colour.jpg");
    std::fs::write(&path, jpeg_bytes(&original)).unwrap();
    let ours = img::read(&path).unwrap();
    assert_eq!(
        (ours.format, ours.color, ours.orientation),
        (Format::Jpeg, SourceColor::Rgb, 1)
    );
    assert_like_pil(&ours.image, &path, 6, 1.0, "colour JPEG");
    // PNG is lossless: exactly the original.
    let path = dir.join("image.png");
    std::fs::write(&path, png_bytes(&original)).unwrap();
    let ours = img::read(&path).unwrap();
    assert_eq!(ours.format, Format::Png);
    assert_eq!(ours.image, original);
    assert_eq!(ours.image, pil_decode(&path));
    // A PNG saved with a .jpg name is recognised by content.
    let path = dir.join("png_named.jpg");
    std::fs::write(&path, png_bytes(&original)).unwrap();
    assert_eq!(img::read(&path).unwrap().image, original);
    // Greyscale JPEG: three equal channels, like PIL's convert("RGB").
    let grey = GrayImage::from_fn(50, 30, |x, y| Luma([((x * 5 + y * 3) % 256) as u8]));
    let path = dir.join("grey.jpg");
    std::fs::write(&path, grey_jpeg_bytes(&grey)).unwrap();
    let ours = img::read(&path).unwrap();
    assert_eq!(ours.color, SourceColor::Grey);
    assert!(ours.image.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert_like_pil(&ours.image, &path, 6, 1.0, "grey JPEG");
}

#[test]
fn cmyk_jpeg_converts_to_rgb_like_pil() {
    let path = common::repo().join("tests/fixtures/data/cmyk.jpg");
    let ours = img::read(&path).unwrap();
    assert_eq!(ours.color, SourceColor::Cmyk);
    assert_eq!(ours.image.dimensions(), (32, 24));
    // The fixture's quadrants (make_fixtures.py): red, green, blue, white.
    for ((x, y), want) in [
        ((4, 4), [255, 0, 0]),
        ((20, 4), [0, 255, 0]),
        ((4, 16), [0, 0, 255]),
        ((20, 16), [255, 255, 255]),
    ] {
        let got = ours.image.get_pixel(x, y).0;
        let off = got
            .iter()
            .zip(want)
            .map(|(g, w)| g.abs_diff(w))
            .max()
            .unwrap();
        assert!(
            off <= 12,
            "pixel ({x}, {y}) is {got:?}, expected about {want:?}"
        );
    }
    assert_like_pil(&ours.image, &path, 12, 2.0, "CMYK");
}

#[test]
fn exif_orientation_is_applied_to_pixels_for_all_eight_codes() {
    let dir = common::scratch("data_image_exif");
    let stored = image_with_rect((40, 24), [3, 2, 15, 9]);
    for code in 1..=8u16 {
        let path = dir.join(format!("o{code}.jpg"));
        std::fs::write(&path, with_exif_orientation(&jpeg_bytes(&stored), code)).unwrap();
        let ours = img::read(&path).unwrap();
        assert_eq!(ours.orientation, code as u8);
        assert_eq!(ours.stored_size, (40, 24));
        assert_eq!(
            ours.image.dimensions(),
            img::oriented_size((40, 24), code as u8)
        );
        assert_like_pil(&ours.image, &path, 40, 1.5, &format!("orientation {code}"));
        assert_eq!(img::probe(&path).unwrap().size(), ours.image.dimensions());
    }
}

/// The red rectangle's pixel extent in `image`, as a continuous box.
fn red_extent(image: &RgbImage) -> [f32; 4] {
    let mut e = [u32::MAX, u32::MAX, 0, 0];
    for (x, y, p) in image.enumerate_pixels() {
        if p[0] > 150 && p[1] < 100 && p[2] < 100 {
            e = [e[0].min(x), e[1].min(y), e[2].max(x + 1), e[3].max(y + 1)];
        }
    }
    e.map(|v| v as f32)
}

#[test]
fn exif_rotated_images_keep_boxes_on_their_objects() {
    let root = common::scratch("data_image_exif_boxes");
    let mut voc = VocDir::new(&root);
    // The rectangle covers stored columns 3..15 and rows 2..9: VOC box (4, 3, 15, 9).
    let stored = image_with_rect((40, 24), [3, 2, 15, 9]);
    let jpeg = jpeg_bytes(&stored);
    for code in 1..=8u16 {
        let id = format!("o{code}");
        // Annotated on the stored pixels: <size> is the stored size.
        let xml = voc_fixture::xml(&id, Some((40, 24)), &[obj("cat", [4.0, 3.0, 15.0, 9.0])]);
        voc.add_raw(
            &id,
            &xml,
            Some(("jpg", &with_exif_orientation(&jpeg, code))),
        );
    }
    // Annotated upright (the <size> is the rotated one): boxes are taken as they are.
    let upright = image::imageops::rotate90(&stored);
    let xml = voc_fixture::xml(
        "up6",
        Some((24, 40)),
        &[obj("cat", [16.0, 4.0, 22.0, 15.0])],
    );
    let mut stored_bytes = jpeg.clone();
    stored_bytes = with_exif_orientation(&stored_bytes, 6);
    voc.add_raw("up6", &xml, Some(("jpg", &stored_bytes)));
    voc.write_set("trainval");
    let (ds, report) = voc_fixture::open_voc(&root, "trainval", ImageCheck::Decode);
    assert_eq!(ds.len(), 9);
    assert_eq!(
        report.count(ProblemKind::ExifOrientation),
        8,
        "{:?}",
        report.problems
    );
    assert_eq!(report.count(ProblemKind::SizeMismatch), 0);
    for (i, r) in ds.records.iter().enumerate() {
        let sample = ds.load(i, false).unwrap();
        let want = red_extent(&sample.image);
        let got = sample.boxes[0];
        let off = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        assert!(
            off <= 1.0,
            "{}: box {got:?} but the object spans {want:?}",
            r.id
        );
    }
    assert_eq!(red_extent(&upright), [15.0, 3.0, 22.0, 15.0]);
}

#[test]
fn corrupt_and_truncated_files_give_named_errors() {
    let dir = common::scratch("data_image_corrupt");
    let jpeg = jpeg_bytes(&smooth_image(3, (64, 64)));
    let cases: Vec<(&str, Vec<u8>, ProblemKind)> = vec![
        ("empty.jpg", vec![], ProblemKind::CorruptImage),
        (
            "text.jpg",
            b"hello, not an image".to_vec(),
            ProblemKind::CorruptImage,
        ),
        (
            "truncated.jpg",
            jpeg[..jpeg.len() * 6 / 10].to_vec(),
            ProblemKind::TruncatedImage,
        ),
        (
            "header_only.jpg",
            jpeg[..40].to_vec(),
            ProblemKind::TruncatedImage,
        ),
        (
            "garbage_header.jpg",
            {
                let mut b = jpeg.clone();
                for v in &mut b[4..200] {
                    *v = 0x5A;
                }
                b
            },
            ProblemKind::CorruptImage,
        ),
        (
            "truncated.png",
            {
                let png = png_bytes(&smooth_image(4, (64, 64)));
                png[..png.len() / 2].to_vec()
            },
            ProblemKind::TruncatedImage,
        ),
        ("missing.jpg", Vec::new(), ProblemKind::MissingImage),
    ];
    for (name, bytes, want) in cases {
        let path = dir.join(name);
        if want != ProblemKind::MissingImage {
            std::fs::write(&path, &bytes).unwrap();
        }
        let err = img::read(&path).unwrap_err();
        assert!(tchcv::is_bad_input(&err), "{name}: {err:#}");
        let problem = problem_of(&err).unwrap_or_else(|| panic!("{name}: no problem in {err:#}"));
        assert_eq!(problem.kind, want, "{name}: {err:#}");
        assert_eq!(problem.file, path);
    }
}

#[test]
fn check_data_counts_decode_failures_and_conversions() {
    let root = common::scratch("data_image_check");
    let mut voc = VocDir::new(&root);
    let o = [obj("cat", [2.0, 2.0, 20.0, 20.0])];
    let good = jpeg_bytes(&smooth_image(5, (32, 32)));
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("good", "jpg", good.clone()),
        ("truncated", "jpg", good[..good.len() / 2].to_vec()),
        ("corrupt", "jpg", b"GIF89a nonsense".to_vec()),
        ("png", "png", png_bytes(&smooth_image(6, (32, 32)))),
        (
            "grey",
            "jpg",
            grey_jpeg_bytes(&GrayImage::from_pixel(32, 32, Luma([77]))),
        ),
        (
            "cmyk",
            "jpg",
            std::fs::read(common::repo().join("tests/fixtures/data/cmyk.jpg")).unwrap(),
        ),
        ("rotated", "jpg", with_exif_orientation(&good, 3)),
        ("wrongsize", "jpg", jpeg_bytes(&smooth_image(7, (20, 16)))),
    ];
    for (id, ext, bytes) in &cases {
        let size = if *id == "cmyk" { (32, 24) } else { (32, 32) };
        let xml = voc_fixture::xml(id, Some(size), &o)
            .replace(&format!("{id}.jpg"), &format!("{id}.{ext}"));
        voc.add_raw(id, &xml, Some((ext, bytes)));
    }
    voc.write_set("trainval");
    let (ds, report) = voc_fixture::open_voc(&root, "trainval", ImageCheck::Decode);
    let kinds = |id: &str| -> Vec<ProblemKind> {
        report
            .problems
            .iter()
            .filter(|p| p.file.file_stem().is_some_and(|s| s == id))
            .map(|p| p.kind)
            .collect()
    };
    use ProblemKind::*;
    assert_eq!(kinds("good"), []);
    assert_eq!(kinds("truncated"), [TruncatedImage]);
    assert_eq!(kinds("corrupt"), [CorruptImage]);
    assert_eq!(kinds("png"), [NotJpeg]);
    assert_eq!(kinds("grey"), [ConvertedColor]);
    assert_eq!(kinds("cmyk"), [ConvertedColor]);
    assert_eq!(kinds("rotated"), [ExifOrientation]);
    assert_eq!(kinds("wrongsize"), [SizeMismatch]);
    let ids: Vec<&str> = ds.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["good", "png", "grey", "cmyk", "rotated", "wrongsize"]);
    // The box of the wrongly sized image is clipped to the real 20x16 image when loaded.
    let i = ids.iter().position(|&i| i == "wrongsize").unwrap();
    assert_eq!(ds.records[i].width, 20);
    assert_eq!(ds.load(i, false).unwrap().boxes, [[1.0, 1.0, 20.0, 16.0]]);
}

#[test]
fn resize_is_close_to_pil_bilinear() {
    let seed = common::fresh_seed("resize_is_close_to_pil_bilinear");
    let dir = common::scratch("data_image_resize");
    let original = smooth_image(seed, (123, 77));
    let path = dir.join("src.png");
    std::fs::write(&path, png_bytes(&original)).unwrap();
    for (w, h) in [(60, 40), (300, 300), (123, 77)] {
        let ours = img::resize(&original, w, h).unwrap();
        let out = dir.join(format!("pil_{w}x{h}.rgb"));
        common::run_reference(
            "transforms.py",
            &[
                "resize",
                path.to_str().unwrap(),
                out.to_str().unwrap(),
                &format!("{w}x{h}"),
            ],
        );
        let pil = RgbImage::from_raw(w, h, std::fs::read(&out).unwrap()).unwrap();
        let (max, mean) = diff(&ours, &pil);
        assert!(
            max <= 3 && mean < 0.6,
            "resize to {w}x{h} vs PIL bilinear: max {max}, mean {mean:.3}"
        );
    }
}

/// Evaluation compares tchcv's detections, made on the upright image, with ground truth in the
/// same frame: the XML boxes turned with the EXIF orientation exactly as training turns them.
#[test]
fn evaluation_ground_truth_of_exif_rotated_images_is_upright() {
    let root = common::scratch("data_image_exif_eval");
    let mut voc = VocDir::new(&root);
    let stored = image_with_rect((40, 24), [3, 2, 15, 9]);
    let jpeg = jpeg_bytes(&stored);
    for code in 1..=8u16 {
        let id = format!("o{code}");
        let xml = voc_fixture::xml(&id, Some((40, 24)), &[obj("cat", [4.0, 3.0, 15.0, 9.0])]);
        voc.add_raw(
            &id,
            &xml,
            Some(("jpg", &with_exif_orientation(&jpeg, code))),
        );
    }
    voc.write_set("test");
    let ds = tchcv::eval::open_for_eval(&root, &["test".to_string()], None, true).unwrap();
    let upright = tchcv::eval::ground_truth_of(&ds, true);
    let annotated = tchcv::eval::ground_truth_of(&ds, false);
    for (i, r) in ds.records.iter().enumerate() {
        let trained_on = ds.load(i, true).unwrap().boxes[0];
        let gt = tchcv::data::voc::voc_to_pixel_box(upright[i].boxes[0]);
        let off = gt
            .iter()
            .zip(trained_on)
            .map(|(g, t)| (g - t).abs())
            .fold(0f32, f32::max);
        assert!(
            off < 1e-3,
            "{}: evaluation box {gt:?}, training box {trained_on:?}",
            r.id
        );
        assert_eq!(
            annotated[i].boxes[0],
            [4.0, 3.0, 15.0, 9.0],
            "{}: results files keep the XML frame",
            r.id
        );
    }
}
