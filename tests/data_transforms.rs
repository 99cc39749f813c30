//! SSD augmentation: photometric steps against PIL/torchvision (`tests/reference/transforms.py`),
//! determinism, and boxes that stay on their pixels through every geometric step.

mod common;
mod voc_fixture;

use image::{Rgb, RgbImage};
use tchcv::data::transforms::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, hflip, min_iou_crop,
    normalize, train_transform, zoom_out, AugmentConfig, Canvas, Objects, PixelNorm,
};
use tchcv::rng::Rng;

fn random_image(seed: u64, (w, h): (u32, u32)) -> RgbImage {
    let mut rng = Rng::new(seed);
    RgbImage::from_fn(
        w,
        h,
        |_, _| Rgb([0, 0, 0].map(|_: u8| rng.below(256) as u8)),
    )
}

fn reference(op: &str, image: &RgbImage, arg: &str, dir: &std::path::Path) -> Vec<u8> {
    let src = dir.join(format!("{op}_in.png"));
    image.save(&src).unwrap();
    let out = dir.join(format!("{op}_out.bin"));
    common::run_reference(
        "transforms.py",
        &[op, src.to_str().unwrap(), out.to_str().unwrap(), arg],
    );
    std::fs::read(out).unwrap()
}

#[test]
fn photometric_steps_match_pil_and_torchvision() {
    let seed = common::fresh_seed("photometric_steps_match_pil_and_torchvision");
    let dir = common::scratch("data_transforms_photometric");
    let image = random_image(seed, (41, 29));
    let mut rng = Rng::keyed(seed, &[1]);
    type Step = fn(&mut RgbImage, f32);
    let steps: [(&str, Step, f64, f64); 4] = [
        ("brightness", adjust_brightness, 0.87, 1.13),
        ("contrast", adjust_contrast, 0.5, 1.5),
        ("saturation", adjust_saturation, 0.5, 1.5),
        ("hue", adjust_hue, -0.1, 0.1),
    ];
    for (op, step, lo, hi) in steps {
        let mut factors = vec![lo as f32, hi as f32, rng.uniform(lo, hi) as f32];
        if op == "hue" {
            // Shifts under one level still round-trip through 8-bit HSV in torchvision.
            factors.extend([0.0, 0.003, -0.003]);
        }
        for factor in factors {
            let mut ours = image.clone();
            step(&mut ours, factor);
            let want = reference(op, &image, &factor.to_string(), &dir);
            let worst = ours
                .as_raw()
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            let off = ours
                .as_raw()
                .iter()
                .zip(&want)
                .filter(|(a, b)| a != b)
                .count();
            // Float rounding of the blend can land one level apart.
            assert!(
                worst <= 1,
                "{op}({factor}): max difference {worst} levels ({off} values differ)"
            );
            assert!(
                off * 100 <= want.len(),
                "{op}({factor}): {off} of {} values differ",
                want.len()
            );
        }
    }
}

#[test]
fn normalize_matches_torch_to_tensor_and_normalize() {
    let seed = common::fresh_seed("normalize_matches_torch");
    let dir = common::scratch("data_transforms_normalize");
    let image = random_image(seed, (13, 7));
    let ours = normalize(&image, &PixelNorm::default());
    let want: Vec<f32> = reference("normalize", &image, "-", &dir)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(ours.len(), want.len());
    let worst = ours
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "max |diff| {worst}");
}

/// An image of non-overlapping solid rectangles in distinct pure colours on black, with their
/// exact boxes.
fn rectangles(seed: u64) -> (RgbImage, Objects, Vec<[u8; 3]>) {
    let mut rng = Rng::new(seed);
    let (w, h) = (120 + rng.below(120) as u32, 90 + rng.below(120) as u32);
    let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
    let mut image = RgbImage::new(w, h);
    let mut objects = Objects::default();
    let mut used = Vec::new();
    // One rectangle per quadrant, so they never overlap.
    for (k, colour) in colours.iter().enumerate() {
        let (qx, qy) = ((k as u32 % 2) * w / 2, (k as u32 / 2) * h / 2);
        let rw = 8 + rng.below((w / 2 - 12) as u64) as u32;
        let rh = 8 + rng.below((h / 2 - 12) as u64) as u32;
        let x0 = qx + rng.below((w / 2 - rw) as u64) as u32;
        let y0 = qy + rng.below((h / 2 - rh) as u64) as u32;
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                image.put_pixel(x, y, Rgb(*colour));
            }
        }
        objects
            .boxes
            .push([x0 as f32, y0 as f32, (x0 + rw) as f32, (y0 + rh) as f32]);
        objects.labels.push(k as i64);
        objects.difficult.push(false);
        used.push(*colour);
    }
    (image, objects, used)
}

/// Check that each box frames the pixels of its colour: everything clearly of that colour lies
/// inside the box grown by `slack`, and the box shrunk by `slack` holds only that colour.
///
/// With `areas` (the original box areas, at full resolution), also check that no object more
/// than half visible was dropped: a rectangle more than half inside a window has its centre
/// inside, so the crop keeps it.
fn assert_boxes_frame_pixels(
    image: &RgbImage,
    objects: &Objects,
    colours: &[[u8; 3]],
    slack: f32,
    areas: Option<&[f32]>,
    what: &str,
) {
    let close = |p: &Rgb<u8>, c: [u8; 3]| p.0.iter().zip(c).all(|(a, b)| a.abs_diff(b) < 60);
    for (b, &label) in objects.boxes.iter().zip(&objects.labels) {
        let c = colours[label as usize];
        assert!(b[2] > b[0] && b[3] > b[1], "{what}: degenerate box {b:?}");
        assert!(
            b[0] >= 0.0
                && b[1] >= 0.0
                && b[2] <= image.width() as f32
                && b[3] <= image.height() as f32,
            "{what}: box {b:?} outside the image"
        );
        for (x, y, p) in image.enumerate_pixels() {
            let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
            let inside_grown = cx >= b[0] - slack
                && cx <= b[2] + slack
                && cy >= b[1] - slack
                && cy <= b[3] + slack;
            let inside_shrunk = cx >= b[0] + slack
                && cx <= b[2] - slack
                && cy >= b[1] + slack
                && cy <= b[3] - slack;
            if close(p, c) {
                assert!(
                    inside_grown,
                    "{what}: pixel ({x},{y}) of colour {c:?} outside box {b:?}"
                );
            }
            if inside_shrunk {
                assert!(
                    close(p, c),
                    "{what}: pixel ({x},{y}) inside box {b:?} is {:?}, not {c:?}",
                    p.0
                );
            }
        }
    }
    for (label, area) in areas.unwrap_or_default().iter().enumerate() {
        let count = image.pixels().filter(|p| close(p, colours[label])).count() as f32;
        if count > 0.5 * area {
            assert!(
                objects.labels.contains(&(label as i64)),
                "{what}: object {label} is {count} of {area} px visible but its box was dropped"
            );
        }
    }
}

#[test]
fn boxes_stay_on_their_pixels_through_zoom_out_crop_flip_and_resize() {
    let seed = common::fresh_seed("boxes_stay_on_their_pixels");
    let cfg = AugmentConfig {
        photometric: false,
        zoom_out_prob: 0.7,
        fill: [0, 0, 0],
        ..AugmentConfig::default()
    };
    for case in 0..24u64 {
        let (image, objects, colours) = rectangles(seed + case);
        let mut rng = Rng::keyed(seed, &[case]);
        // Step by step at full resolution: exact to the pixel.
        let mut o = objects.clone();
        let mut canvas = Canvas::new(image.clone());
        if rng.chance(0.7) {
            canvas = zoom_out(canvas, &mut o, cfg.max_zoom_out, cfg.fill, &mut rng);
        }
        canvas = min_iou_crop(canvas, &mut o, &cfg, &mut rng);
        let mut drawn = canvas.into_image();
        assert!(
            !o.is_empty(),
            "case {case}: every object lost (the crop must keep the image then)"
        );
        hflip(&mut drawn, &mut o);
        let areas: Vec<f32> = objects
            .boxes
            .iter()
            .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
            .collect();
        assert_boxes_frame_pixels(
            &drawn,
            &o,
            &colours,
            0.0,
            Some(&areas),
            &format!("case {case} (full size)"),
        );
        // The whole recipe, resized to 96x64: bilinear blur of about one source pixel.
        let mut rng = Rng::keyed(seed, &[case, 1]);
        let t = train_transform(
            image.clone(),
            objects.clone(),
            &cfg,
            (96, 64),
            &PixelNorm {
                mean: [0.0; 3],
                std: [1.0; 3],
            },
            &mut rng,
        )
        .unwrap();
        let plane = 96 * 64;
        let resized = RgbImage::from_fn(96, 64, |x, y| {
            let i = (y * 96 + x) as usize;
            Rgb([0, 1, 2].map(|c| (t.pixels[c * plane + i] * 255.0).round() as u8))
        });
        // Slack: one output pixel plus the shrink factor of the resize.
        let (cw, ch) = (image.width() as f32 * 4.0, image.height() as f32 * 4.0);
        let slack = 1.0 + (cw / 96.0).max(ch / 64.0).min(8.0) / 2.0;
        assert_boxes_frame_pixels(
            &resized,
            &t.objects,
            &colours,
            slack,
            None,
            &format!("case {case} (96x64)"),
        );
    }
}

#[test]
fn crop_keeps_the_image_when_no_box_centre_would_survive() {
    // One tiny box in a corner and a crop that can only miss it: min IoU candidates are
    // unsatisfiable, so only random windows with IoU >= 0 (any window) exist.
    let image = RgbImage::new(200, 200);
    let cfg = AugmentConfig::default();
    let mut kept_whole = 0;
    for seed in 0..200 {
        let mut objects = Objects {
            boxes: vec![[0.0, 0.0, 2.0, 2.0]],
            labels: vec![3],
            difficult: vec![false],
            crowd: vec![false],
        };
        let canvas = min_iou_crop(
            Canvas::new(image.clone()),
            &mut objects,
            &cfg,
            &mut Rng::new(seed),
        );
        assert_eq!(objects.len(), 1, "seed {seed}: the box was dropped");
        let b = objects.boxes[0];
        assert!(b[2] > b[0] && b[3] > b[1], "seed {seed}: degenerate {b:?}");
        if canvas.size == (200, 200) && canvas.at == (0, 0) {
            kept_whole += 1;
        }
    }
    assert!(
        kept_whole > 100,
        "most crops miss the corner box, so the image stays whole ({kept_whole})"
    );
}

#[test]
fn same_seed_epoch_and_index_give_identical_output() {
    let seed = common::fresh_seed("same_seed_epoch_and_index_give_identical_output");
    let (image, objects, _) = rectangles(seed);
    let cfg = AugmentConfig::default();
    let run = |keys: &[u64]| {
        train_transform(
            image.clone(),
            objects.clone(),
            &cfg,
            (64, 48),
            &PixelNorm::default(),
            &mut Rng::keyed(seed, keys),
        )
        .unwrap()
    };
    let a = run(&[3, 17]);
    let b = run(&[3, 17]);
    assert_eq!(a.pixels, b.pixels);
    assert_eq!(a.objects, b.objects);
    let others: Vec<bool> = (0..8)
        .map(|e| run(&[4 + e, 17]).pixels != a.pixels)
        .collect();
    assert!(
        others.iter().filter(|&&d| d).count() >= 7,
        "other epochs should differ: {others:?}"
    );
}

#[test]
fn each_step_can_be_turned_off() {
    let (image, objects, _) = rectangles(11);
    let none = AugmentConfig::none();
    let t = train_transform(
        image.clone(),
        objects.clone(),
        &none,
        (image.width(), image.height()),
        &PixelNorm {
            mean: [0.0; 3],
            std: [1.0; 3],
        },
        &mut Rng::new(1),
    )
    .unwrap();
    assert_eq!(t.objects, objects, "no step: boxes unchanged");
    let first = t.pixels[0..10].to_vec();
    let want: Vec<f32> = image
        .as_raw()
        .chunks_exact(3)
        .take(10)
        .map(|p| p[0] as f32 / 255.0)
        .collect();
    assert_eq!(first, want);
    let json = serde_json::to_string(&AugmentConfig::default()).unwrap();
    let back: AugmentConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, AugmentConfig::default());
    let partial: AugmentConfig = serde_json::from_str(r#"{"flip": false}"#).unwrap();
    assert!(!partial.flip && partial.crop);
    assert!(serde_json::from_str::<AugmentConfig>(r#"{"flipp": false}"#).is_err());
}
