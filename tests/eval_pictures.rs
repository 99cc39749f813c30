//! Pictures: detections drawn onto images, the detections JSON, and the loss and PR plots.

mod common;

use image::{Rgb, RgbImage};
use tchcv::eval::detections::{read_detections_json, write_detections_json};
use tchcv::eval::draw::{class_color, draw_detections, text_color, DrawStyle, PixelRect};
use tchcv::eval::plot::{parse_metrics, plot_loss, plot_pr, plot_run, read_metrics};
use tchcv::eval::{evaluate, Detection, GroundTruth, ImageDetections, LabeledBox, VocEvalConfig};
use tchcv::rng::Rng;

fn labeled(class: usize, name: &str, score: f32, bbox: [f32; 4]) -> LabeledBox {
    LabeledBox {
        class,
        name: name.into(),
        score,
        bbox,
    }
}

fn noise_image(width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    RgbImage::from_fn(width, height, |_, _| {
        Rgb([0, 1, 2].map(|_| rng.below(256) as u8))
    })
}

fn grow(r: PixelRect, by: u32) -> PixelRect {
    PixelRect {
        x0: r.x0.saturating_sub(by),
        y0: r.y0.saturating_sub(by),
        x1: r.x1 + by,
        y1: r.y1 + by,
    }
}

#[test]
fn drawn_image_differs_only_in_boxes_and_their_label_plates() {
    let (w, h) = (320, 240);
    let original = noise_image(w, h, 3);
    let dets = [
        labeled(0, "aeroplane", 0.91, [40.0, 60.0, 150.0, 200.0]),
        // At the top edge: the plate goes inside the box.
        labeled(11, "dog", 0.5, [200.0, 0.0, 300.0, 90.0]),
        // At the right edge with a long name: the plate is shifted left to stay inside.
        labeled(14, "pottedplant", 0.33, [290.0, 150.0, 319.0, 230.0]),
        // Partly outside the image: clipped.
        labeled(25, "x", 0.2, [-20.0, 210.0, 30.0, 260.0]),
        // Entirely outside, and not finite: skipped.
        labeled(1, "bicycle", 0.9, [400.0, 10.0, 420.0, 20.0]),
        labeled(1, "bicycle", 0.9, [f32::NAN, 10.0, 20.0, 20.0]),
    ];
    let mut image = original.clone();
    let style = DrawStyle {
        line_width: Some(2),
        text_scale: Some(2),
        show_score: true,
    };
    let drawn = draw_detections(&mut image, &dets, &style);
    assert_eq!(image.dimensions(), (w, h));
    assert_eq!(drawn.len(), 4, "the two unusable boxes are skipped");

    // Independent of the layout the drawing reports: a box changes nothing outside
    // [x1 - 1, x2 + 1] x [y1 - 1, y2 + 1] (rounding); its plate is at most
    // (9 + 2) * scale = 22 px high and lies directly above the box or inside it.
    for (d, det) in drawn.iter().zip(&dets) {
        let [x1, y1, x2, y2] = det.bbox;
        assert!(d.bbox.x0 as f32 >= x1.max(0.0) - 1.0 && d.bbox.x1 as f32 <= x2 + 2.0);
        assert!(d.bbox.y0 as f32 >= y1.max(0.0) - 1.0 && d.bbox.y1 as f32 <= y2 + 2.0);
        let p = d.plate;
        assert!(
            p.x1 <= w && p.y1 <= h && !p.is_empty(),
            "plate {p:?} inside the image"
        );
        assert_eq!(p.y1 - p.y0, 22, "plate height");
        assert!(
            p.y1 == d.bbox.y0 || p.y0 == d.bbox.y0,
            "plate {p:?} above or at the top of its box {:?}",
            d.bbox
        );
    }
    assert_eq!(drawn[1].plate.y0, 0, "top-edge box: plate inside");
    assert_eq!(drawn[2].plate.x1, w, "right-edge box: plate shifted left");

    let allowed = |x: u32, y: u32| {
        drawn
            .iter()
            .any(|d| d.bbox.contains(x, y) || d.plate.contains(x, y))
    };
    let mut changed = 0;
    for (x, y, p) in image.enumerate_pixels() {
        if p != original.get_pixel(x, y) {
            changed += 1;
            assert!(
                allowed(x, y),
                "pixel ({x}, {y}) changed outside boxes and plates"
            );
        }
    }
    assert!(changed > 1000, "only {changed} pixels drawn");

    // Inside a box, away from its outline and any plate, the image is untouched (the
    // pottedplant plate, shifted left, reaches into the aeroplane box from y = 128).
    for y in 70..125 {
        for x in 50..140 {
            assert_eq!(image.get_pixel(x, y), original.get_pixel(x, y));
        }
    }
    // The outline is in the class colour, and the plate holds text in the contrasting colour
    // on the class colour.
    for (d, det) in drawn.iter().zip(&dets) {
        let color = Rgb(class_color(det.class));
        // (Top-right corners: no plate covers them here.)
        assert_eq!(*image.get_pixel(d.bbox.x1 - 1, d.bbox.y0), color);
        let p = grow(d.plate, 0);
        let mut ink = 0;
        let mut plate = 0;
        for y in p.y0..p.y1 {
            for x in p.x0..p.x1 {
                let px = *image.get_pixel(x, y);
                if px == Rgb(text_color(color.0)) {
                    ink += 1;
                } else if px == color {
                    plate += 1;
                }
            }
        }
        assert!(
            ink > 20 && plate > ink,
            "plate of {}: {ink} text px, {plate} plate px",
            det.name
        );
    }

    let mut untouched = original.clone();
    assert!(draw_detections(&mut untouched, &[], &DrawStyle::default()).is_empty());
    assert_eq!(untouched, original);
    let dir = common::scratch("eval_pictures_draw");
    image.save(dir.join("drawn.png")).unwrap();
}

#[test]
fn draws_ground_truth_on_a_real_image() {
    let Some(root) = common::shared_dataset("voc2012_subset_rafaelpadilla") else {
        return;
    };
    let (classes, gts) = tchcv::eval::load_ground_truth(&root, &["test".into()]).unwrap();
    let dir = common::scratch("eval_pictures_real");
    for g in gts.iter().filter(|g| g.boxes.len() >= 3).take(2) {
        let path = root.join("JPEGImages").join(format!("{}.jpg", g.image_id));
        let original = image::open(&path).unwrap().to_rgb8();
        let mut picture = original.clone();
        let boxes: Vec<LabeledBox> = g
            .boxes
            .iter()
            .zip(&g.labels)
            .enumerate()
            .map(|(i, (b, &l))| labeled(l, &classes[l], 1.0 - 0.1 * i as f32, *b))
            .collect();
        let drawn = draw_detections(&mut picture, &boxes, &DrawStyle::default());
        assert_eq!(drawn.len(), boxes.len());
        assert_eq!(picture.dimensions(), original.dimensions());
        for (x, y, p) in picture.enumerate_pixels() {
            if p != original.get_pixel(x, y) {
                assert!(drawn
                    .iter()
                    .any(|d| d.bbox.contains(x, y) || d.plate.contains(x, y)));
            }
        }
        picture
            .save(dir.join(format!("{}.png", g.image_id)))
            .unwrap();
    }
}

#[test]
fn detections_json_from_tensors_round_trips() {
    let classes: Vec<String> = ["cat", "dog"].iter().map(|s| s.to_string()).collect();
    let boxes =
        tch::Tensor::from_slice(&[1.0f32, 2.0, 30.0, 40.0, 5.0, 6.0, 7.0, 8.0]).view([2, 4]);
    let scores = tch::Tensor::from_slice(&[0.25f32, 0.75]);
    let labels = tch::Tensor::from_slice(&[1i64, 0]);
    let d = ImageDetections::from_tensors("img.jpg", (64, 48), &boxes, &scores, &labels, &classes)
        .unwrap();
    // Sorted by score.
    assert_eq!(
        d.detections[0],
        labeled(0, "cat", 0.75, [5.0, 6.0, 7.0, 8.0])
    );
    assert_eq!(
        d.detections[1],
        labeled(1, "dog", 0.25, [1.0, 2.0, 30.0, 40.0])
    );
    let voc = d.voc_detections("img");
    assert_eq!(
        voc[1],
        Detection {
            image_id: "img".into(),
            class: 1,
            score: 0.25,
            bbox: [1.0, 2.0, 30.0, 40.0]
        }
    );
    let path = common::scratch("eval_pictures_json").join("detections.json");
    write_detections_json(&path, std::slice::from_ref(&d)).unwrap();
    assert_eq!(read_detections_json(&path).unwrap(), [d]);

    let bad = tch::Tensor::from_slice(&[2i64, 0]);
    let err =
        ImageDetections::from_tensors("i", (1, 1), &boxes, &scores, &bad, &classes).unwrap_err();
    assert!(
        tchcv::is_bad_input(&err) && format!("{err:#}").contains("label 2"),
        "{err:#}"
    );
    let err = ImageDetections::from_tensors("i", (1, 1), &scores, &scores, &labels, &classes)
        .unwrap_err();
    assert!(format!("{err:#}").contains("[K, 4]"), "{err:#}");
}

/// A plausible metrics.jsonl: decaying noisy losses, warm-up then a step in the learning rate,
/// epoch lines, an eval every 100 steps.
fn metrics_text(steps: u64) -> String {
    let mut rng = Rng::new(5);
    let mut text = String::new();
    for i in 1..=steps {
        let t = i as f64 / steps as f64;
        let loc = 1.0 + 2.0 * (-4.0 * t).exp() + rng.uniform(-0.2, 0.2);
        let cls = 2.5 + 5.0 * (-5.0 * t).exp() + rng.uniform(-0.4, 0.4);
        let lr = 1e-3 * (i as f64 / 50.0).min(1.0) * if t > 0.7 { 0.1 } else { 1.0 };
        text += &serde_json::json!({"kind": "step", "iter": i, "epoch": i / 50,
            "loc_per_pos": loc, "cls_per_pos": cls, "total": loc + cls, "num_pos": 40,
            "num_neg": 120, "lr": lr, "images_per_s": 30.0})
        .to_string();
        text.push('\n');
        if i % 50 == 0 {
            text += &format!("{{\"kind\":\"epoch\",\"epoch\":{}}}\n", i / 50);
        }
        if i % 100 == 0 {
            text += &format!(
                "{{\"kind\":\"eval\",\"iter\":{i},\"epoch\":{},\"map_voc07\":{},\"map_area\":{}}}\n",
                i / 50,
                0.6 * t,
                0.62 * t
            );
        }
    }
    text
}

fn assert_png(path: &std::path::Path, size: (u32, u32)) {
    let png = image::open(path).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), size, "{}", path.display());
    let mut colors = std::collections::HashSet::new();
    for p in png.pixels() {
        colors.insert(p.0);
    }
    assert!(
        colors.len() > 20,
        "{}: only {} colours",
        path.display(),
        colors.len()
    );
}

#[test]
fn metrics_parse_and_bad_lines_name_file_and_line() {
    let file = std::path::Path::new("runs/x/metrics.jsonl");
    let m = parse_metrics(&metrics_text(300), file).unwrap();
    assert_eq!((m.steps.len(), m.evals.len()), (300, 3));
    assert_eq!(m.evals[2].iter, 300);
    // A write in progress (no newline) is skipped; null numbers read as NaN.
    let text = "{\"kind\":\"step\",\"iter\":1,\"loc_per_pos\":null,\"cls_per_pos\":1,\"total\":2}\n{\"kind\":\"st";
    let m = parse_metrics(text, file).unwrap();
    assert_eq!(m.steps.len(), 1);
    assert!(m.steps[0].loc_per_pos.is_nan() && m.steps[0].lr.is_nan());
    for (text, needle) in [
        ("{\"kind\":\"step\"}\n", "metrics.jsonl:1: \"iter\""),
        (
            "\n{\"kind\":\"step\",\"iter\":3,\"cls_per_pos\":1,\"total\":1}\n",
            "metrics.jsonl:2: no \"loc_per_pos\"",
        ),
        (
            "{\"kind\":\"eval\",\"iter\":3,\"map_voc07\":\"high\",\"map_area\":1}\n",
            "map_voc07",
        ),
        ("not json\n{}\n", "metrics.jsonl:1: not JSON"),
    ] {
        let err = parse_metrics(text, file).unwrap_err();
        assert!(tchcv::is_bad_input(&err));
        assert!(
            format!("{err:#}").contains(needle),
            "{err:#} lacks {needle:?}"
        );
    }
}

fn small_result() -> tchcv::eval::VocEvalResult {
    let mut rng = Rng::new(11);
    let classes: Vec<String> = ["aeroplane", "bicycle", "bird", "unicorn"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut gts = Vec::new();
    let mut dets = Vec::new();
    for i in 0..30 {
        let id = format!("{i}");
        let mut g = GroundTruth {
            image_id: id.clone(),
            boxes: vec![],
            labels: vec![],
            difficult: vec![],
        };
        for _ in 0..4 {
            let x = rng.uniform(0.0, 300.0) as f32;
            let b = [x, x, x + 50.0, x + 40.0];
            let label = rng.below(3) as usize;
            g.boxes.push(b);
            g.labels.push(label);
            g.difficult.push(false);
            let hit = rng.chance(0.8);
            let shift = if hit { 2.0 } else { 40.0 };
            dets.push(Detection {
                image_id: id.clone(),
                class: label,
                score: rng.next_f32() * if hit { 1.0 } else { 0.6 },
                bbox: [b[0] + shift, b[1], b[2] + shift, b[3]],
            });
        }
        gts.push(g);
    }
    evaluate(&classes, &gts, &dets, &VocEvalConfig::default()).unwrap()
}

#[test]
fn loss_and_pr_plots_render() {
    let dir = common::scratch("eval_pictures_plots");
    let metrics = parse_metrics(&metrics_text(1000), std::path::Path::new("m")).unwrap();
    plot_loss(&metrics, &dir.join("loss.png"), "test run: training loss").unwrap();
    assert_png(&dir.join("loss.png"), (1200, 820));
    let no_evals = tchcv::eval::plot::Metrics {
        evals: vec![],
        ..metrics
    };
    plot_loss(&no_evals, &dir.join("loss_only.png"), "no evals").unwrap();
    assert_png(&dir.join("loss_only.png"), (1200, 620));
    let result = small_result();
    assert!(result.classes[3].ap_area.is_nan());
    plot_pr(
        &result,
        &dir.join("pr.png"),
        &tchcv::eval::plot::pr_title(&result),
    )
    .unwrap();
    assert_png(&dir.join("pr.png"), (1180, 760));
    let empty = tchcv::eval::plot::Metrics::default();
    assert!(plot_loss(&empty, &dir.join("x.png"), "x").is_err());
}

#[test]
fn plot_run_and_the_plot_command() {
    let run = common::scratch("eval_pictures_run");
    std::fs::write(run.join("metrics.jsonl"), metrics_text(400)).unwrap();
    let plots = plot_run(&run, None).unwrap();
    assert_eq!(plots.loss, Some(run.join("loss.png")));
    assert_eq!(plots.pr, None, "no eval.json yet");
    small_result().write_json(&run.join("eval.json")).unwrap();
    assert_eq!(
        read_metrics(&run.join("metrics.jsonl"))
            .unwrap()
            .steps
            .len(),
        400
    );

    let out = std::process::Command::new(common::tchcv_bin())
        .arg("plot")
        .arg(&run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pr.png"));
    assert_png(&run.join("pr.png"), (1180, 760));

    // A font that is not there: a clear error, not a panic.
    let out = std::process::Command::new(common::tchcv_bin())
        .arg("plot")
        .arg(&run)
        .env("TCHCV_FONT", "/nonexistent/font.ttf")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TCHCV_FONT=/nonexistent/font.ttf: no such font file"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let empty = common::scratch("eval_pictures_empty_run");
    let out = std::process::Command::new(common::tchcv_bin())
        .arg("plot")
        .arg(&empty)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to plot"));
}
