//! VOC evaluation against the independent numpy reference (tests/reference/voc_eval.py):
//! fresh seeded random cases, the committed fixture, and detections made on the shared
//! datasets' ground truth. AP agrees to 1e-6 for every class and both metrics; counts exactly;
//! the precision and recall arrays to 1e-12.

mod common;

use serde_json::{json, Value};
use tchcv::eval::voc::match_detections;
use tchcv::eval::{
    evaluate, load_ground_truth, read_voc_results, write_voc_results, Detection, GroundTruth,
    Matching, VocEvalConfig,
};
use tchcv::rng::Rng;

const AP_TOL: f64 = 1e-6;
const CURVE_TOL: f64 = 1e-12;

/// NaN-aware closeness: JSON null stands for NaN.
fn close(what: &str, ours: f64, theirs: &Value, tol: f64) {
    match theirs.as_f64() {
        None => assert!(ours.is_nan(), "{what}: ours {ours}, reference null (NaN)"),
        Some(t) => assert!(
            (ours - t).abs() <= tol,
            "{what}: ours {ours}, reference {t} (|diff| {:e} > {tol:e})",
            (ours - t).abs()
        ),
    }
}

fn config_json(c: &VocEvalConfig) -> Value {
    serde_json::to_value(c).unwrap()
}

/// Compare our evaluation with the reference's result for the same config.
fn compare(
    what: &str,
    classes: &[String],
    gts: &[GroundTruth],
    dets: &[Detection],
    config: &VocEvalConfig,
    reference: &Value,
) {
    let ours = evaluate(classes, gts, dets, config).unwrap();
    let matches = match_detections(classes, gts, dets, config).unwrap();
    let theirs = reference["classes"].as_array().unwrap();
    assert_eq!(theirs.len(), classes.len(), "{what}: class count");
    for (c, (t, (o, m))) in theirs
        .iter()
        .zip(ours.classes.iter().zip(&matches))
        .enumerate()
    {
        let what = format!("{what}, {config:?}, class {c} ({})", o.class);
        assert_eq!(t["class"], o.class.as_str(), "{what}");
        for (key, ours) in [
            ("n_gt", o.n_gt),
            ("n_difficult", o.n_difficult),
            ("n_det", o.n_det),
            ("n_tp", o.n_tp),
        ] {
            assert_eq!(t[key].as_u64(), Some(ours as u64), "{what}: {key}");
        }
        close(
            &format!("{what}: ap_voc07"),
            o.ap_voc07,
            &t["ap_voc07"],
            AP_TOL,
        );
        close(
            &format!("{what}: ap_area"),
            o.ap_area,
            &t["ap_area"],
            AP_TOL,
        );
        let precision = m.precision();
        let t_precision = t["precision"].as_array().unwrap();
        assert_eq!(
            precision.len(),
            t_precision.len(),
            "{what}: precision length"
        );
        for (i, (p, tp)) in precision.iter().zip(t_precision).enumerate() {
            close(&format!("{what}: precision[{i}]"), *p, tp, CURVE_TOL);
        }
        match (m.recall(), t["recall"].as_array()) {
            (None, None) => {}
            (Some(r), Some(tr)) => {
                assert_eq!(r.len(), tr.len(), "{what}: recall length");
                for (i, (r, tr)) in r.iter().zip(tr).enumerate() {
                    close(&format!("{what}: recall[{i}]"), *r, tr, CURVE_TOL);
                }
            }
            (r, tr) => panic!("{what}: recall {r:?} vs reference {tr:?}"),
        }
    }
    close(
        &format!("{what}: map_voc07"),
        ours.map_voc07,
        &reference["map_voc07"],
        AP_TOL,
    );
    close(
        &format!("{what}: map_area"),
        ours.map_area,
        &reference["map_area"],
        AP_TOL,
    );
}

fn configs() -> Vec<VocEvalConfig> {
    vec![
        VocEvalConfig::default(),
        VocEvalConfig {
            legacy_plus_one: false,
            ..Default::default()
        },
        VocEvalConfig {
            iou_threshold: 0.7,
            legacy_plus_one: true,
            matching: Matching::Unmatched,
        },
        VocEvalConfig {
            iou_threshold: 0.3,
            legacy_plus_one: false,
            matching: Matching::Unmatched,
        },
    ]
}

/// A coordinate on a quarter-pixel grid (exact in f32 and in the reference's f64) or, for
/// `free`, any f32.
fn coordinate(rng: &mut Rng, lo: f64, hi: f64, free: bool) -> f32 {
    let v = rng.uniform(lo, hi);
    if free {
        v as f32
    } else {
        ((v * 4.0).round() / 4.0) as f32
    }
}

fn jitter(rng: &mut Rng, b: [f32; 4], amount: f64, free: bool) -> [f32; 4] {
    let w = (b[2] - b[0]) as f64;
    let h = (b[3] - b[1]) as f64;
    let d = |rng: &mut Rng, v: f32, size: f64| {
        coordinate(
            rng,
            v as f64 - amount * size,
            v as f64 + amount * size,
            free,
        )
    };
    let x1 = d(rng, b[0], w);
    let y1 = d(rng, b[1], h);
    let x2 = d(rng, b[2], w).max(x1);
    let y2 = d(rng, b[3], h).max(y1);
    [x1, y1, x2, y2]
}

/// Scores on a coarse grid, so ties are common.
fn tied_score(rng: &mut Rng) -> f32 {
    (1 + rng.below(20)) as f32 / 20.0
}

/// Random ground truth and detections: 7 classes, where class 4 has objects but no
/// detections, class 5 only difficult objects and class 6 no objects (but detections).
fn random_case(seed: u64, case: u64) -> (Vec<String>, Vec<GroundTruth>, Vec<Detection>) {
    let mut rng = Rng::keyed(seed, &[case]);
    let classes: Vec<String> = (0..7).map(|c| format!("class{c}")).collect();
    let mut gts = Vec::new();
    let mut dets = Vec::new();
    for image in 0..40 {
        let free = rng.chance(0.5);
        let image_id = format!("im{case}_{image:03}");
        let mut gt = GroundTruth {
            image_id: image_id.clone(),
            boxes: vec![],
            labels: vec![],
            difficult: vec![],
        };
        for _ in 0..rng.below(8) {
            let x1 = coordinate(&mut rng, 0.0, 400.0, free);
            let y1 = coordinate(&mut rng, 0.0, 300.0, free);
            let b = [
                x1,
                y1,
                x1 + coordinate(&mut rng, 0.0, 120.0, free),
                y1 + coordinate(&mut rng, 0.0, 120.0, free),
            ];
            let label = rng.below(6) as usize;
            gt.boxes.push(b);
            gt.labels.push(label);
            gt.difficult.push(label == 5 || rng.chance(0.2));
            // Found (loosely) with p 0.75, found again (a duplicate, tighter) with p 0.25.
            for (p, amount) in [(0.75, 0.25), (0.25, 0.1)] {
                if label != 4 && rng.chance(p) {
                    dets.push(Detection {
                        image_id: image_id.clone(),
                        class: label,
                        score: tied_score(&mut rng),
                        bbox: jitter(&mut rng, b, amount, free),
                    });
                }
            }
        }
        for _ in 0..rng.below(4) {
            let x1 = coordinate(&mut rng, 0.0, 400.0, free);
            let y1 = coordinate(&mut rng, 0.0, 300.0, free);
            let class = [0, 1, 2, 3, 5, 6][rng.below(6) as usize];
            dets.push(Detection {
                image_id: image_id.clone(),
                class,
                score: tied_score(&mut rng),
                bbox: [x1, y1, x1 + 60.0, y1 + 40.0],
            });
        }
        gts.push(gt);
    }
    rng.shuffle(&mut dets);
    (classes, gts, dets)
}

/// The case as the reference reads it, numbers as exact f64 values of the f32 ones.
fn case_json(
    classes: &[String],
    gts: &[GroundTruth],
    dets: &[Detection],
    configs: &[VocEvalConfig],
) -> Value {
    let f = |b: &[f32; 4]| b.map(f64::from).to_vec();
    json!({
        "classes": classes,
        "ground_truth": gts.iter().map(|g| json!({
            "image_id": g.image_id,
            "boxes": g.boxes.iter().map(f).collect::<Vec<_>>(),
            "labels": g.labels,
            "difficult": g.difficult,
        })).collect::<Vec<_>>(),
        "detections": dets.iter().map(|d| json!({
            "image_id": d.image_id,
            "class": d.class,
            "score": f64::from(d.score),
            "bbox": f(&d.bbox),
        })).collect::<Vec<_>>(),
        "configs": configs.iter().map(config_json).collect::<Vec<_>>(),
    })
}

#[test]
fn random_cases_match_the_reference() {
    let seed = common::fresh_seed("eval_parity random cases");
    let dir = common::scratch("eval_parity_random");
    let configs = configs();
    for case in 0..4 {
        let (classes, gts, dets) = random_case(seed, case);
        let path = dir.join(format!("case{case}.json"));
        std::fs::write(
            &path,
            case_json(&classes, &gts, &dets, &configs).to_string(),
        )
        .unwrap();
        let out: Value = serde_json::from_str(&common::run_reference(
            "voc_eval.py",
            &["case", path.to_str().unwrap()],
        ))
        .unwrap();
        let results = out["results"].as_array().unwrap();
        for (config, reference) in configs.iter().zip(results) {
            compare(
                &format!("seed {seed} case {case}"),
                &classes,
                &gts,
                &dets,
                config,
                reference,
            );
        }
    }
}

#[test]
fn committed_fixture_matches_the_stored_reference() {
    let dir = common::repo().join("tests/fixtures/voc_eval");
    let read = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let case = read("small_case.json");
    let expected = read("small_expected.json");
    let classes: Vec<String> = serde_json::from_value(case["classes"].clone()).unwrap();
    let gts: Vec<GroundTruth> = serde_json::from_value(case["ground_truth"].clone()).unwrap();
    let dets: Vec<Detection> = serde_json::from_value(case["detections"].clone()).unwrap();
    let configs: Vec<VocEvalConfig> = serde_json::from_value(case["configs"].clone()).unwrap();
    let results = expected["results"].as_array().unwrap();
    assert_eq!(results.len(), configs.len());
    for (config, reference) in configs.iter().zip(results) {
        compare(
            "fixture small_case",
            &classes,
            &gts,
            &dets,
            config,
            reference,
        );
    }
}

/// Detections made from a dataset's ground truth: most objects found (jittered on a
/// quarter-pixel grid), some twice, plus false positives; random scores with ties.
fn detections_for(seed: u64, gts: &[GroundTruth], n_classes: usize) -> Vec<Detection> {
    let mut rng = Rng::keyed(seed, &[7]);
    let mut dets = Vec::new();
    for g in gts {
        for (b, &label) in g.boxes.iter().zip(&g.labels) {
            for p in [0.85, 0.15] {
                if rng.chance(p) {
                    dets.push(Detection {
                        image_id: g.image_id.clone(),
                        class: label,
                        score: if rng.chance(0.3) {
                            tied_score(&mut rng)
                        } else {
                            rng.next_f32()
                        },
                        bbox: jitter(&mut rng, *b, 0.2, false),
                    });
                }
            }
        }
        for _ in 0..rng.below(4) {
            let x1 = coordinate(&mut rng, 0.0, 450.0, false);
            let y1 = coordinate(&mut rng, 0.0, 350.0, false);
            dets.push(Detection {
                image_id: g.image_id.clone(),
                class: rng.below(n_classes as u64) as usize,
                score: rng.next_f32(),
                bbox: [
                    x1,
                    y1,
                    x1 + coordinate(&mut rng, 5.0, 150.0, false),
                    y1 + 80.0,
                ],
            });
        }
    }
    rng.shuffle(&mut dets);
    dets
}

#[test]
fn shared_datasets_match_the_reference() {
    let seed = common::fresh_seed("eval_parity shared datasets");
    let configs = configs();
    for name in [
        "voc2012_subset_rafaelpadilla",
        "bccd_shenggan",
        "playing_cards_edjeelectronics",
    ] {
        let Some(root) = common::shared_dataset(name) else {
            continue;
        };
        let (classes, gts) = load_ground_truth(&root, &["test".into()]).unwrap();
        let dets = detections_for(seed, &gts, classes.len());
        let dir = common::scratch(&format!("eval_parity_{name}"));
        write_voc_results(&dir, "comp4_det_test_", &classes, &dets).unwrap();
        let read_back = read_voc_results(&dir, "comp4_det_test_", &classes).unwrap();
        assert!(read_back.missing.is_empty());
        let configs_arg = serde_json::to_string(&configs).unwrap();
        let out: Value = serde_json::from_str(&common::run_reference(
            "voc_eval.py",
            &[
                "voc",
                root.to_str().unwrap(),
                "test",
                dir.to_str().unwrap(),
                "comp4_det_test_",
                &configs_arg,
            ],
        ))
        .unwrap();
        let results = out["results"].as_array().unwrap();
        for (config, reference) in configs.iter().zip(results) {
            assert_eq!(reference["n_images"].as_u64(), Some(gts.len() as u64));
            compare(
                &format!("{name}, seed {seed}"),
                &classes,
                &gts,
                &read_back.detections,
                config,
                reference,
            );
        }
        eprintln!(
            "{name}: {} images, {} classes, {} detections, default mAP {:.4} (area)",
            gts.len(),
            classes.len(),
            dets.len(),
            results[0]["map_area"]
        );
    }
}
