//! tchcv's COCO box metric against pycocotools (tests/reference/coco_eval.py runs pycocotools'
//! own COCOeval at test time): fresh seeded random cases, the committed fixture, and the shared
//! VOC datasets converted to COCO; then the VOC metric against the COCO metric at IoU 0.5.
//!
//! Exactness: every comparison with pycocotools is **exact** (bit for bit), not within a
//! tolerance: the precision table [T,R,K,A,M], the recall table [T,K,A,M], the twelve numbers,
//! their twelve printed lines and per-class AP (AP, AP50, AP75), as well as the IoU and recall
//! thresholds. tchcv does each float operation pycocotools does, in the same order (IoU as
//! `bbIou`, `tp / (tp + fp + eps)`, numpy's pairwise summation for the means). Should a numpy
//! release sum differently, only the means would move, by ~1e-16; the failure message says so.

mod common;

use std::collections::HashSet;

use serde_json::{json, Value};
use tchcv::eval::coco::{
    self, CocoAnnotation, CocoCategory, CocoDetection, CocoEvaluation, CocoGroundTruth, CocoImage,
    CocoParams,
};
use tchcv::eval::voc::match_detections;
use tchcv::eval::{evaluate, load_ground_truth, Detection, GroundTruth, Matching, VocEvalConfig};
use tchcv::rng::Rng;

// ---- comparing with the reference ----

fn number(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what}: the reference gave {v}, not a number"))
}

/// Bit-exact equality, with a hint when only the last bits differ.
fn exact(what: &str, ours: f64, theirs: f64) {
    if ours.to_bits() != theirs.to_bits() && ours != theirs {
        let hint = if (ours - theirs).abs() < 1e-12 {
            " (only the last bits differ: did numpy change its summation?)"
        } else {
            ""
        };
        panic!("{what}: tchcv {ours:?}, pycocotools {theirs:?}{hint}");
    }
}

fn exact_list(what: &str, ours: &[f64], theirs: &Value) {
    let theirs = theirs
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no list"));
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
        exact(&format!("{what}[{i}]"), *o, number(t, what));
    }
}

/// The first differing entry of a row-major table, with its coordinates.
fn exact_table(what: &str, ours: &[f64], theirs: &Value, dims: &[usize]) {
    let theirs = theirs
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no table"));
    assert_eq!(ours.len(), theirs.len(), "{what}: size");
    let differing = ours
        .iter()
        .zip(theirs)
        .filter(|(o, t)| o.to_bits() != number(t, what).to_bits() && **o != number(t, what))
        .count();
    if let Some(i) = (0..ours.len()).find(|&i| ours[i] != number(&theirs[i], what)) {
        let mut rest = i;
        let mut at = vec![0; dims.len()];
        for (slot, &d) in at.iter_mut().zip(dims).rev() {
            *slot = rest % d;
            rest /= d;
        }
        panic!(
            "{what}: {differing} entries differ; first at {at:?} (dims {dims:?}): tchcv {:?}, \
             pycocotools {:?}",
            ours[i],
            number(&theirs[i], what)
        );
    }
}

/// Compare our evaluation with the reference's output (`full`: with the precision table).
fn compare(what: &str, ours: &CocoEvaluation, reference: &Value, full: bool) {
    let p = &ours.params;
    exact_list(
        &format!("{what}: iou thresholds"),
        &p.iou_thresholds,
        &reference["iou_thresholds"],
    );
    exact_list(
        &format!("{what}: recall thresholds"),
        &p.recall_thresholds,
        &reference["recall_thresholds"],
    );
    let ids: Vec<i64> = ours.categories.iter().map(|c| c.id).collect();
    assert_eq!(
        serde_json::to_value(&ids).unwrap(),
        reference["category_ids"],
        "{what}: categories"
    );
    let dims = ours.dims();
    assert_eq!(
        serde_json::to_value(dims).unwrap(),
        reference["shape"],
        "{what}: shape"
    );
    if full {
        exact_table(
            &format!("{what}: precision"),
            &ours.precision,
            &reference["precision"],
            &dims,
        );
    }
    let [t, _, k, a, m] = dims;
    exact_table(
        &format!("{what}: recall"),
        &ours.recall,
        &reference["recall"],
        &[t, k, a, m],
    );
    let result = ours.result();
    let values: Vec<f64> = result.stats.iter().map(|s| s.value).collect();
    exact_list(&format!("{what}: stats"), &values, &reference["stats"]);
    for (s, line) in result
        .stats
        .iter()
        .zip(reference["lines"].as_array().unwrap())
    {
        assert_eq!(s.line, line.as_str().unwrap(), "{what}: printed line");
    }
    let theirs = reference["classes"].as_array().unwrap();
    assert_eq!(result.classes.len(), theirs.len(), "{what}: classes");
    for (c, t) in result.classes.iter().zip(theirs) {
        assert_eq!(t["category_id"].as_i64(), Some(c.category_id));
        for (key, v) in [("ap", c.ap), ("ap50", c.ap50), ("ap75", c.ap75)] {
            exact(
                &format!("{what}: class {} {key}", c.category_id),
                v,
                number(&t[key], key),
            );
        }
    }
}

// ---- random COCO cases ----

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 480.0;

/// On a quarter-pixel grid (exact in f64 and decimal) unless `free`.
fn grid(v: f64, free: bool) -> f64 {
    if free {
        v
    } else {
        (v * 4.0).round() / 4.0
    }
}

/// A box of any size class (small, medium, large), sometimes exactly on an area edge (32x32,
/// 16x64, 96x96: 1024 and 9216 pixels²), rarely of zero width.
fn random_box(rng: &mut Rng, free: bool) -> [f64; 4] {
    let (w, h) = match rng.below(14) {
        0 => (32.0, 32.0),
        1 => (16.0, 64.0),
        2 => (96.0, 96.0),
        3 => (0.0, grid(rng.uniform(1.0, 50.0), free)),
        _ => {
            let side = rng.uniform(1.0f64.ln(), 400.0f64.ln()).exp();
            let aspect = rng.uniform(0.5, 2.0);
            (
                grid((side * aspect).min(WIDTH), free),
                grid((side / aspect).min(HEIGHT), free),
            )
        }
    };
    let x = grid(rng.uniform(0.0, WIDTH - w), free);
    let y = grid(rng.uniform(0.0, HEIGHT - h), free);
    [x, y, w, h]
}

fn jitter(rng: &mut Rng, b: [f64; 4], amount: f64, free: bool) -> [f64; 4] {
    let mut d = |size: f64| grid(rng.uniform(-amount, amount) * size, free);
    let (dx, dy, dw, dh) = (d(b[2]), d(b[3]), d(b[2]), d(b[3]));
    [
        b[0] + dx,
        b[1] + dy,
        (b[2] + dw).max(0.0),
        (b[3] + dh).max(0.0),
    ]
}

/// A box inside a crowd region.
fn inside(rng: &mut Rng, b: [f64; 4], free: bool) -> [f64; 4] {
    let w = grid(b[2] * rng.uniform(0.1, 0.4), free);
    let h = grid(b[3] * rng.uniform(0.1, 0.4), free);
    let x = grid(b[0] + rng.uniform(0.0, b[2] - w), free);
    let y = grid(b[1] + rng.uniform(0.0, b[3] - h), free);
    [x, y, w, h]
}

/// Scores: half on a grid of 20 values (ties), half any f64 in [0, 1).
fn score(rng: &mut Rng) -> f64 {
    if rng.chance(0.5) {
        (1 + rng.below(20)) as f64 / 20.0
    } else {
        rng.next_f64()
    }
}

/// `n` distinct ids in `1..=max`, in random order.
fn distinct_ids(rng: &mut Rng, n: usize, max: u64) -> Vec<i64> {
    let mut seen = HashSet::new();
    while seen.len() < n {
        seen.insert(1 + rng.below(max) as i64);
    }
    let mut ids: Vec<i64> = seen.into_iter().collect();
    ids.sort_unstable();
    rng.shuffle(&mut ids);
    ids
}

/// Category roles in a random case: 0-3 ordinary; 4 only crowd or ignored objects (and
/// detections); 5 objects but no detections; 6 detections but no objects; 7 neither.
struct Roles {
    ids: Vec<i64>,
}

impl Roles {
    fn object_category(&self, rng: &mut Rng) -> usize {
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 5][rng.below(10) as usize]
    }
}

/// One object with its detections (none for role 5; inside the region for a crowd).
fn object(
    rng: &mut Rng,
    roles: &Roles,
    image_id: i64,
    free: bool,
    dets: &mut Vec<CocoDetection>,
) -> CocoAnnotation {
    let role = roles.object_category(rng);
    let bbox = random_box(rng, free);
    let iscrowd = if role == 4 {
        rng.chance(0.5)
    } else {
        rng.chance(0.06)
    };
    let area = match rng.below(10) {
        0..=4 => None,
        5..=7 => Some(bbox[2] * bbox[3]),
        _ => Some(bbox[2] * bbox[3] * rng.uniform(0.3, 1.0)),
    };
    let mut det = |rng: &mut Rng, b: [f64; 4], role: usize| {
        dets.push(CocoDetection {
            image_id,
            category_id: roles.ids[role],
            bbox: b,
            score: score(rng),
        })
    };
    if role != 5 {
        if iscrowd {
            for _ in 0..rng.below(5) {
                let b = inside(rng, bbox, free);
                det(rng, b, role);
            }
        } else {
            for (p, amount) in [(0.8, 0.2), (0.3, 0.08)] {
                if rng.chance(p) {
                    let b = jitter(rng, bbox, amount, free);
                    let cat = if rng.chance(0.05) { 6 } else { role };
                    det(rng, b, cat);
                }
            }
        }
    }
    CocoAnnotation {
        id: 0,
        image_id,
        category_id: roles.ids[role],
        bbox,
        area,
        iscrowd,
        ignore: if role == 4 {
            !iscrowd
        } else {
            rng.chance(0.06)
        },
    }
}

/// A random case of `n_images` images (the last three empty); image 0 has 130 detections of one
/// category, image 1 has 105 with tied scores around the 100th.
fn random_case(seed: u64, case: u64, n_images: usize) -> (CocoGroundTruth, Vec<CocoDetection>) {
    let mut rng = Rng::keyed(seed, &[case]);
    let roles = Roles {
        ids: distinct_ids(&mut rng, 8, 100),
    };
    let mut categories: Vec<CocoCategory> = roles
        .ids
        .iter()
        .map(|&id| CocoCategory {
            id,
            name: format!("c{id}"),
        })
        .collect();
    rng.shuffle(&mut categories);
    let image_ids = distinct_ids(&mut rng, n_images, 1_000_000);
    let (mut annotations, mut dets) = (Vec::new(), Vec::new());
    for (n, &image_id) in image_ids.iter().enumerate() {
        if n + 3 >= n_images {
            continue;
        }
        let free = rng.chance(0.5);
        for _ in 0..rng.below(9) {
            let a = object(&mut rng, &roles, image_id, free, &mut dets);
            if rng.chance(0.05) {
                annotations.push(a.clone()); // an identical object: equal IoUs
            }
            annotations.push(a);
        }
        let extra = match n {
            0 => 130,
            1 => 105,
            _ => rng.below(5),
        };
        for _ in 0..extra {
            let role = if n < 2 {
                0
            } else {
                [0, 1, 2, 3, 4, 6][rng.below(6) as usize]
            };
            let b = random_box(&mut rng, free);
            let s = if n == 1 {
                (1 + rng.below(3)) as f64 / 4.0
            } else {
                score(&mut rng)
            };
            dets.push(CocoDetection {
                image_id,
                category_id: roles.ids[role],
                bbox: b,
                score: s,
            });
        }
    }
    rng.shuffle(&mut annotations);
    let ids = distinct_ids(&mut rng, annotations.len(), 10_000_000);
    for (a, id) in annotations.iter_mut().zip(ids) {
        a.id = id;
    }
    rng.shuffle(&mut dets);
    let mut images: Vec<CocoImage> = image_ids
        .iter()
        .map(|&id| CocoImage {
            id,
            file_name: format!("{id}.jpg"),
            width: Some(WIDTH as u32),
            height: Some(HEIGHT as u32),
        })
        .collect();
    rng.shuffle(&mut images);
    let gt = CocoGroundTruth {
        images,
        annotations,
        categories,
    };
    (gt, dets)
}

fn reference_on_case(
    dir: &std::path::Path,
    name: &str,
    gt: &CocoGroundTruth,
    dets: &[CocoDetection],
) -> Value {
    let path = dir.join(format!("{name}.json"));
    let case = json!({ "ground_truth": gt, "detections": dets });
    std::fs::write(&path, case.to_string()).unwrap();
    serde_json::from_str(&common::run_reference(
        "coco_eval.py",
        &["case", path.to_str().unwrap()],
    ))
    .unwrap()
}

#[test]
fn random_cases_match_pycocotools() {
    let seed = common::fresh_seed("coco_parity random cases");
    let dir = common::scratch("coco_parity_random");
    for (case, n_images) in [(0u64, 40usize), (1, 60), (2, 25), (3, 8)] {
        let (gt, mut dets) = random_case(seed, case, n_images);
        if case == 3 {
            dets.clear(); // no detections at all
        }
        let ours = coco::evaluate(&gt, &dets, &CocoParams::default()).unwrap();
        let reference = reference_on_case(&dir, &format!("case{case}"), &gt, &dets);
        let what = format!("seed {seed} case {case}");
        compare(&what, &ours, &reference, true);
        let r = ours.result();
        eprintln!(
            "{what}: {} images, {} objects, {} detections: AP {:.4} AP50 {:.4} AR100 {:.4}",
            gt.images.len(),
            gt.annotations.len(),
            dets.len(),
            r.stats[0].value,
            r.stats[1].value,
            r.stats[8].value
        );
        if case < 3 {
            // The case covers what it claims: every area range has ground truth, classes
            // without ground truth are -1, and crowds and ignored objects are there.
            assert!(
                r.stats.iter().all(|s| s.value >= 0.0),
                "{what}: {:?}",
                r.stats
            );
            assert!(
                r.classes.iter().filter(|c| c.ap == -1.0).count() >= 2,
                "{what}"
            );
            assert!(
                gt.annotations.iter().any(|a| a.iscrowd) && gt.annotations.iter().any(|a| a.ignore)
            );
        }
    }
}

#[test]
fn committed_fixture_matches_the_stored_reference() {
    let dir = common::repo().join("tests/fixtures/coco_eval");
    let gt = CocoGroundTruth::read_json(&dir.join("small_instances.json")).unwrap();
    let dets = coco::read_coco_results(&dir.join("small_results.json"), &gt).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("small_expected.json")).unwrap())
            .unwrap();
    let ours = coco::evaluate(&gt, &dets, &CocoParams::default()).unwrap();
    compare("fixture small", &ours, &expected, false);
}

// ---- the shared VOC datasets, through COCO files ----

/// Detections from the ground truth: most objects found (jittered), some twice, plus false
/// positives; scores with ties. VOC boxes and class indices.
fn voc_detections_for(seed: u64, gts: &[GroundTruth], n_classes: usize) -> Vec<Detection> {
    let mut rng = Rng::keyed(seed, &[11]);
    let mut dets = Vec::new();
    let mut push = |rng: &mut Rng, image: &str, class: usize, b: [f64; 4]| {
        dets.push(Detection {
            image_id: image.to_string(),
            class,
            score: if rng.chance(0.3) {
                (1 + rng.below(10)) as f32 / 10.0
            } else {
                rng.next_f32()
            },
            bbox: [b[0], b[1], b[0] + b[2], b[1] + b[3]].map(|v| grid(v, false) as f32),
        })
    };
    for g in gts {
        for (b, &label) in g.boxes.iter().zip(&g.labels) {
            let xywh = [b[0], b[1], b[2] - b[0], b[3] - b[1]].map(f64::from);
            for (p, amount) in [(0.85, 0.2), (0.2, 0.05)] {
                if rng.chance(p) {
                    let j = jitter(&mut rng, xywh, amount, false);
                    push(&mut rng, &g.image_id, label, j);
                }
            }
        }
        for _ in 0..rng.below(4) {
            let b = random_box(&mut rng, false);
            let class = rng.below(n_classes as u64) as usize;
            push(&mut rng, &g.image_id, class, b);
        }
    }
    rng.shuffle(&mut dets);
    dets
}

#[test]
fn shared_datasets_match_pycocotools() {
    let seed = common::fresh_seed("coco_parity shared datasets");
    for name in [
        "voc2012_subset_rafaelpadilla",
        "bccd_shenggan",
        "playing_cards_edjeelectronics",
    ] {
        let Some(root) = common::shared_dataset(name) else {
            continue;
        };
        let (classes, gts) = load_ground_truth(&root, &["test".into()]).unwrap();
        let voc_dets = voc_detections_for(seed, &gts, classes.len());
        let gt = coco::coco_from_voc(&classes, &gts).unwrap();
        let dets = coco::coco_detections_from_voc(&gts, &voc_dets).unwrap();
        let dir = common::scratch(&format!("coco_parity_{name}"));
        let (gt_path, res_path) = (dir.join("instances.json"), dir.join("results.json"));
        gt.write_json(&gt_path).unwrap();
        coco::write_coco_results(&res_path, &dets).unwrap();
        let gt_back = CocoGroundTruth::read_json(&gt_path).unwrap();
        let dets_back = coco::read_coco_results(&res_path, &gt_back).unwrap();
        assert_eq!(dets_back, dets, "{name}: results round trip");
        let ours = coco::evaluate(&gt_back, &dets_back, &CocoParams::default()).unwrap();
        let reference: Value = serde_json::from_str(&common::run_reference(
            "coco_eval.py",
            &[
                "files",
                gt_path.to_str().unwrap(),
                res_path.to_str().unwrap(),
            ],
        ))
        .unwrap();
        compare(&format!("{name}, seed {seed}"), &ours, &reference, true);
        let n_difficult = gts
            .iter()
            .flat_map(|g| &g.difficult)
            .filter(|&&d| d)
            .count();
        eprintln!(
            "{name}: {} images, {} objects ({n_difficult} difficult -> ignored), {} detections: AP {:.4}",
            gts.len(),
            gt.annotations.len(),
            dets.len(),
            ours.result().stats[0].value
        );
    }
}

// ---- VOC and COCO at IoU 0.5 ----

/// VOC ground truth whose objects of one class never overlap in an image (at most one per cell
/// of a 5x4 grid of 100-pixel cells, with margins), and detections with distinct scores. Class
/// 3 has no objects. Image 0 holds 130 detections of class 0: its 8 objects, each found once
/// with a negative score (the lowest), and 122 false positives above them.
fn voc_case(seed: u64, case: u64) -> (Vec<String>, Vec<GroundTruth>, Vec<Detection>) {
    let mut rng = Rng::keyed(seed, &[case, 77]);
    let classes: Vec<String> = (0..4).map(|c| format!("class{c}")).collect();
    let (mut gts, mut dets) = (Vec::new(), Vec::new());
    let mut late = 0;
    for image in 0..30 {
        let id = format!("img{image:02}");
        let mut g = GroundTruth {
            image_id: id.clone(),
            boxes: vec![],
            labels: vec![],
            difficult: vec![],
        };
        let mut push = |class: usize, b: [f64; 4], score: Option<f32>| {
            let voc = [b[0] + 1.0, b[1] + 1.0, b[0] + b[2], b[1] + b[3]];
            dets.push((id.clone(), class, voc.map(|v| v as f32), score));
        };
        for cell in 0..20 {
            let skip = if image == 0 {
                cell >= 8
            } else {
                !rng.chance(0.3)
            };
            if skip {
                continue;
            }
            let class = if image == 0 { 0 } else { rng.below(3) as usize };
            let (cx, cy) = (
                (cell % 5) as f64 * 100.0 + 10.0,
                (cell / 5) as f64 * 100.0 + 10.0,
            );
            let w = grid(rng.uniform(15.0, 75.0), false);
            let h = grid(rng.uniform(15.0, 75.0), false);
            let x = grid(cx + rng.uniform(0.0, 75.0 - w), false);
            let y = grid(cy + rng.uniform(0.0, 75.0 - h), false);
            g.boxes
                .push([x + 1.0, y + 1.0, x + w, y + h].map(|v| v as f32));
            g.labels.push(class);
            g.difficult.push(false);
            if image == 0 {
                late += 1;
                push(
                    class,
                    jitter(&mut rng, [x, y, w, h], 0.05, false),
                    Some(-(late as f32)),
                );
                continue;
            }
            for p in [0.8, 0.3] {
                if rng.chance(p) {
                    push(class, jitter(&mut rng, [x, y, w, h], 0.15, false), None);
                }
            }
        }
        let false_positives = if image == 0 { 122 } else { rng.below(5) };
        for _ in 0..false_positives {
            let class = if image == 0 { 0 } else { rng.below(4) as usize };
            push(class, random_box(&mut rng, false), None);
        }
        gts.push(g);
    }
    // Distinct positive scores, except image 0's late finds.
    let mut ranks: Vec<usize> = (0..dets.len()).collect();
    rng.shuffle(&mut ranks);
    let n = dets.len() as f32;
    let mut out: Vec<Detection> = dets
        .into_iter()
        .zip(ranks)
        .map(|((image_id, class, bbox, score), rank)| Detection {
            score: score.unwrap_or((rank + 1) as f32 / (n + 1.0)),
            image_id,
            class,
            bbox,
        })
        .collect();
    rng.shuffle(&mut out);
    (classes, gts, out)
}

/// The best `limit` detections per (image, class), by score with ties in input order: what
/// COCO's maxDets keeps.
fn best_per_image_and_class(dets: &[Detection], limit: usize) -> Vec<Detection> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].score.partial_cmp(&dets[a].score).unwrap());
    let mut count = std::collections::HashMap::new();
    let mut keep = vec![false; dets.len()];
    for i in order {
        let n = count
            .entry((dets[i].image_id.clone(), dets[i].class))
            .or_insert(0);
        keep[i] = *n < limit;
        *n += 1;
    }
    dets.iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(d, _)| d.clone())
        .collect()
}

/// COCO's 101-point interpolation of a precision-recall curve: precision made non-increasing
/// from the right, then at each recall threshold the precision of the first point whose recall
/// reaches it (0 if none), averaged.
fn ap_101(precision: &[f64], recall: &[f64]) -> f64 {
    let mut env = precision.to_vec();
    for i in (1..env.len()).rev() {
        env[i - 1] = env[i - 1].max(env[i]);
    }
    let thresholds = CocoParams::default().recall_thresholds;
    let sum: f64 = thresholds
        .iter()
        .map(|&r| recall.iter().position(|&x| x >= r).map_or(0.0, |i| env[i]))
        .sum();
    sum / thresholds.len() as f64
}

/// Where the definitions agree, the VOC metric (devkit, +1 boxes) and the COCO metric at IoU
/// 0.5 (area all, maxDets 100) find the same true positives and the same PR curve. How they
/// differ, and how this test steps around it:
/// - interpolation: COCO averages the precision envelope at 101 recall points, VOC (area)
///   integrates it; the two differ by at most 1/100 (the envelope is monotone), checked here;
/// - max detections: COCO keeps the best 100 per image *and class*, VOC keeps all; so VOC is
///   run on the detections COCO keeps, and image 0 (130 detections of class 0, its objects
///   found only by the lowest-scored ones) shows COCO's recall lower than VOC's on all;
/// - precision: COCO divides by `tp + fp + 2^-52`, hence 1e-12 and not exact equality;
/// - difficult objects (COCO: ignored objects, each absorbing one detection; devkit: every
///   detection whose best match is difficult is ignored) and equal IoUs (COCO takes the later
///   object, VOC the first) are left out: objects of a class never overlap here;
/// - ties in score (COCO: image order; VOC: input order) are left out: scores are distinct.
#[test]
fn voc_and_coco_at_iou_half_agree_where_their_definitions_agree() {
    let seed = common::fresh_seed("coco_parity voc vs coco");
    for case in 0..3 {
        let (classes, gts, dets) = voc_case(seed, case);
        let what = format!("seed {seed} case {case}");
        let gt = coco::coco_from_voc(&classes, &gts).unwrap();
        let ev = coco::evaluate(
            &gt,
            &coco::coco_detections_from_voc(&gts, &dets).unwrap(),
            &CocoParams::default(),
        )
        .unwrap();
        let coco_classes = ev.class_aps();
        let [_, _, n_k, n_a, n_m] = ev.dims();
        let kept = best_per_image_and_class(&dets, 100);
        assert!(
            kept.len() < dets.len(),
            "{what}: no image has over 100 detections of a class"
        );
        for matching in [Matching::Devkit, Matching::Unmatched] {
            let config = VocEvalConfig {
                iou_threshold: 0.5,
                legacy_plus_one: true,
                matching,
            };
            let voc = evaluate(&classes, &gts, &kept, &config).unwrap();
            let matches = match_detections(&classes, &gts, &kept, &config).unwrap();
            for (c, (v, m)) in voc.classes.iter().zip(&matches).enumerate() {
                let what = format!("{what}, {matching:?}, class {c}");
                let coco = &coco_classes[c];
                let recall = ev.recall[(c * n_a) * n_m + n_m - 1]; // t = 0 (IoU .5), area all
                assert_eq!(coco.n_gt, v.n_gt, "{what}: ground truths");
                if v.n_gt == 0 {
                    assert!(
                        v.ap_area.is_nan() && coco.ap50 == -1.0 && recall == -1.0,
                        "{what}"
                    );
                    continue;
                }
                assert_eq!(recall, v.n_tp as f64 / v.n_gt as f64, "{what}: recall");
                let voc_101 = ap_101(&m.precision(), &m.recall().unwrap());
                assert!(
                    (voc_101 - coco.ap50).abs() <= 1e-12,
                    "{what}: VOC curve 101-point {voc_101} vs COCO AP50 {}",
                    coco.ap50
                );
                assert!(
                    (v.ap_area - coco.ap50).abs() <= 0.01 + 1e-12,
                    "{what}: area AP {} vs AP50 {}",
                    v.ap_area,
                    coco.ap50
                );
            }
            assert_eq!(n_k, classes.len());
        }
        // On all detections VOC counts image 0's late true positives, COCO does not.
        let voc_all = evaluate(&classes, &gts, &dets, &VocEvalConfig::default()).unwrap();
        let coco_tp = (ev.recall[n_m - 1] * voc_all.classes[0].n_gt as f64).round() as usize;
        assert!(
            voc_all.classes[0].n_tp > coco_tp,
            "{what}: maxDets made no difference"
        );
    }
}
