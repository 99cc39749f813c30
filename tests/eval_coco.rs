//! COCO box metric, hand-checked (expected values worked out in the comments from the
//! definitions in `tchcv::eval::coco`), the COCO file readers' errors, and `tchcv eval` with
//! `--metric coco` and `--coco-gt`. Parity with pycocotools itself is tests/coco_parity.rs.

mod common;

use std::path::Path;
use std::process::Command;

use tchcv::eval::coco::{
    self, box_iou, CocoAnnotation, CocoCategory, CocoDetection, CocoEvalResult, CocoGroundTruth,
    CocoImage, CocoParams,
};

/// `1 / (1 + eps)`: pycocotools' precision after a single true positive (`tp / (tp + fp + eps)`).
const ONE_TP: f64 = 1.0 / (1.0 + f64::EPSILON);

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-12,
        "{what}: got {got}, want {want}"
    );
}

fn ann(id: i64, image_id: i64, category_id: i64, bbox: [f64; 4]) -> CocoAnnotation {
    CocoAnnotation {
        id,
        image_id,
        category_id,
        bbox,
        area: None,
        iscrowd: false,
        ignore: false,
    }
}

fn det(image_id: i64, category_id: i64, bbox: [f64; 4], score: f64) -> CocoDetection {
    CocoDetection {
        image_id,
        category_id,
        bbox,
        score,
    }
}

fn ground_truth(
    n_images: i64,
    n_categories: i64,
    annotations: Vec<CocoAnnotation>,
) -> CocoGroundTruth {
    CocoGroundTruth {
        images: (1..=n_images)
            .map(|id| CocoImage {
                id,
                file_name: format!("{id}.jpg"),
                width: None,
                height: None,
            })
            .collect(),
        annotations,
        categories: (1..=n_categories)
            .map(|id| CocoCategory {
                id,
                name: format!("cat{id}"),
            })
            .collect(),
    }
}

fn result(gt: &CocoGroundTruth, dets: &[CocoDetection]) -> CocoEvalResult {
    coco::evaluate(gt, dets, &CocoParams::default())
        .unwrap()
        .result()
}

#[test]
fn crowd_iou_divides_by_the_detection_area() {
    let crowd = [100.0, 100.0, 100.0, 100.0];
    let d = [190.0, 190.0, 20.0, 20.0]; // 10 x 10 of its 20 x 20 inside
    close("crowd", box_iou(&d, &crowd, true), 100.0 / 400.0);
    close(
        "not crowd",
        box_iou(&d, &crowd, false),
        100.0 / (400.0 + 10_000.0 - 100.0),
    );
    close(
        "touching",
        box_iou(&[0.0, 0.0, 10.0, 10.0], &[10.0, 0.0, 5.0, 5.0], false),
        0.0,
    );
}

/// Image 1: one object found exactly (score 0.5) and a crowd region with two detections inside
/// it scored higher. The crowd absorbs both (ignored, not false positives), so precision is
/// `1 / (1 + eps)` at every recall threshold. With the region an ordinary object instead, it
/// is a second object to find, and the detections inside it are below every IoU threshold
/// (400 / 10000): two false positives rank first, then the true positive: precision 1/3 at
/// recall 1/2, so the 51 recall thresholds 0, 0.01, ..., 0.5 get 1/3 and the 50 above get 0:
/// AP = 51/101 * 1/3.
#[test]
fn crowd_regions_absorb_detections() {
    let object = ann(1, 1, 1, [10.0, 10.0, 30.0, 30.0]);
    let mut region = ann(2, 1, 1, [100.0, 100.0, 100.0, 100.0]);
    region.iscrowd = true;
    let dets = [
        det(1, 1, [150.0, 150.0, 20.0, 20.0], 0.9),
        det(1, 1, [120.0, 110.0, 20.0, 20.0], 0.8),
        det(1, 1, [10.0, 10.0, 30.0, 30.0], 0.5),
    ];
    let r = result(
        &ground_truth(1, 1, vec![object.clone(), region.clone()]),
        &dets,
    );
    close("AP with crowd", r.stats[0].value, ONE_TP);
    assert_eq!(r.classes[0].n_gt, 1);
    assert_eq!(r.classes[0].n_ignored, 1);
    region.iscrowd = false;
    let r = result(&ground_truth(1, 1, vec![object, region]), &dets);
    close("AP without crowd", r.stats[0].value, 51.0 / 101.0 / 3.0);
}

/// An ignored (VOC difficult) object absorbs only the first detection on it: the second is a
/// false positive. Ranked: ignored (0.9), FP (0.8), TP (0.7): precision 1/2 at recall 1.
#[test]
fn an_ignored_object_absorbs_one_detection() {
    let mut hard = ann(1, 1, 1, [0.0, 0.0, 50.0, 50.0]);
    hard.ignore = true;
    let easy = ann(2, 1, 1, [100.0, 100.0, 50.0, 50.0]);
    let dets = [
        det(1, 1, [0.0, 0.0, 50.0, 50.0], 0.9),
        det(1, 1, [1.0, 1.0, 50.0, 50.0], 0.8),
        det(1, 1, [100.0, 100.0, 50.0, 50.0], 0.7),
    ];
    let r = result(&ground_truth(1, 1, vec![hard, easy]), &dets);
    close("AP", r.stats[0].value, 0.5);
    close("AR100", r.stats[8].value, 1.0);
}

/// maxDets counts per image and category: ten false positives rank above the one true
/// positive, so AR1 = AR10 = 0 and AR100 = 1; AP (maxDets 100) = 1/11 everywhere on the curve.
#[test]
fn max_detections_count_per_image_and_category() {
    let gt = ground_truth(1, 2, vec![ann(1, 1, 1, [0.0, 0.0, 40.0, 40.0])]);
    let mut dets: Vec<CocoDetection> = (0..10)
        .map(|i| det(1, 1, [200.0 + 20.0 * i as f64, 300.0, 10.0, 10.0], 0.9))
        .collect();
    dets.push(det(1, 1, [0.0, 0.0, 40.0, 40.0], 0.1));
    // Another category's detections in the same image do not count against category 1.
    dets.extend((0..50).map(|_| det(1, 2, [0.0, 0.0, 40.0, 40.0], 0.95)));
    let r = result(&gt, &dets);
    close("AR1", r.stat("AR1").unwrap(), 0.0);
    close("AR10", r.stat("AR10").unwrap(), 0.0);
    close("AR100", r.stat("AR100").unwrap(), 1.0);
    close("AP", r.stat("AP").unwrap(), 1.0 / 11.0);
    assert_eq!(r.classes[1].ap, -1.0, "category 2 has no ground truth");
}

/// Areas: object A is 40 x 40 but its `area` says 1000 (small, not medium); object B is 32 x 32
/// without `area` (1024: small *and* medium, the edges are inclusive); an unmatched 200 x 200
/// detection is a false positive where its area is in range (all, large) and ignored elsewhere.
/// - all: FP (0.95), TP (0.9), TP (0.8): precision 0, 1/2, 2/3 -> envelope 2/3: AP 2/3.
/// - small: A and B, both found, the FP ignored: precision 1/(1+eps), 1 -> envelope 1: APs 1.
/// - medium: B only; the detection on A matches an ignored object (ignored): APm 1/(1+eps).
/// - large: no object: APl and ARl are -1.
#[test]
fn area_ranges_use_the_annotation_area_with_inclusive_edges() {
    let mut a = ann(1, 1, 1, [0.0, 0.0, 40.0, 40.0]);
    a.area = Some(1000.0);
    let b = ann(2, 2, 1, [0.0, 0.0, 32.0, 32.0]);
    let dets = [
        det(3, 1, [0.0, 0.0, 200.0, 200.0], 0.95),
        det(1, 1, [0.0, 0.0, 40.0, 40.0], 0.9),
        det(2, 1, [0.0, 0.0, 32.0, 32.0], 0.8),
    ];
    let r = result(&ground_truth(3, 1, vec![a, b]), &dets);
    close("AP", r.stat("AP").unwrap(), 2.0 / 3.0);
    close("APs", r.stat("APs").unwrap(), 1.0);
    close("APm", r.stat("APm").unwrap(), ONE_TP);
    assert_eq!(r.stat("APl"), Some(-1.0));
    assert_eq!(r.stat("ARl"), Some(-1.0));
    close("ARm", r.stat("ARm").unwrap(), 1.0);
    assert_eq!(
        r.stats[0].line,
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.667"
    );
    assert_eq!(
        r.stats[5].line,
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000"
    );
}

/// The IoU thresholds: a detection of IoU 0.72 with its object is a true positive at 0.5 to
/// 0.7 (5 of 10 thresholds) and a false positive above: AP = 5/10 * 1/(1+eps), AP50 1/(1+eps),
/// AP75 0.
#[test]
fn iou_thresholds_sweep_half_to_ninety_five() {
    let gt = ground_truth(1, 1, vec![ann(1, 1, 1, [0.0, 0.0, 100.0, 100.0])]);
    // 100 x 72 inside the 100 x 100 object: IoU 0.72.
    let r = result(&gt, &[det(1, 1, [0.0, 0.0, 100.0, 72.0], 0.9)]);
    close("AP", r.stats[0].value, 0.5 * ONE_TP);
    close("AP50", r.stats[1].value, ONE_TP);
    close("AP75", r.stats[2].value, 0.0);
    close("class AP", r.classes[0].ap, 0.5 * ONE_TP);
}

#[test]
fn bad_input_names_what() {
    let gt = ground_truth(1, 1, vec![ann(7, 1, 1, [0.0, 0.0, 10.0, 10.0])]);
    let cases: Vec<(CocoGroundTruth, Vec<CocoDetection>, &str)> = vec![
        (
            gt.clone(),
            vec![det(2, 1, [0.0; 4], 0.5)],
            "result 0 (image_id 2)",
        ),
        (gt.clone(), vec![det(1, 9, [0.0; 4], 0.5)], "category_id 9"),
        (
            gt.clone(),
            vec![det(1, 1, [0.0, 0.0, -1.0, 1.0], 0.5)],
            "negative width",
        ),
        (gt.clone(), vec![det(1, 1, [0.0; 4], f64::NAN)], "score NaN"),
        (
            ground_truth(1, 1, vec![ann(7, 1, 3, [0.0; 4])]),
            vec![],
            "annotation id 7: category_id 3",
        ),
        (
            ground_truth(1, 1, vec![ann(7, 1, 1, [0.0; 4]), ann(7, 1, 1, [0.0; 4])]),
            vec![],
            "annotation id 7: the id appears more than once",
        ),
        (
            ground_truth(1, 1, vec![ann(7, 1, 1, [0.0, f64::INFINITY, 1.0, 1.0])]),
            vec![],
            "annotation id 7: bbox",
        ),
    ];
    for (gt, dets, needle) in cases {
        let err = coco::evaluate(&gt, &dets, &CocoParams::default()).unwrap_err();
        assert!(tchcv::is_bad_input(&err), "{err:#}");
        assert!(
            format!("{err:#}").contains(needle),
            "{err:#} lacks {needle:?}"
        );
    }
}

fn instances_text(annotation: &str) -> String {
    format!(
        r#"{{"images": [{{"id": 1, "file_name": "a.jpg"}}], "categories": [{{"id": 1, "name": "dog"}}],
            "annotations": [{{"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}}, {annotation}]}}"#
    )
}

#[test]
fn readers_name_the_file_and_the_annotation_id() {
    let dir = common::scratch("eval_coco_readers");
    let file = dir.join("instances.json");
    let cases = [
        (
            r#"{"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]}"#,
            "annotation id 8: bbox [1,2,3] is not [x, y, width, height]",
        ),
        (
            r#"{"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 2, -3, 4]}"#,
            "annotation id 8: bbox [1.0, 2.0, -3.0, 4.0] has a negative width",
        ),
        (
            r#"{"id": 8, "image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4]}"#,
            "annotation id 8: image_id 5 is not in images",
        ),
        (
            r#"{"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 2}"#,
            "annotation id 8: iscrowd",
        ),
        (
            r#"{"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": "big"}"#,
            "annotation id 8: area \"big\"",
        ),
        (
            r#"{"id": "x8", "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}"#,
            "annotations[1]: id \"x8\" is not an integer",
        ),
        (
            r#"{"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}"#,
            "annotation id 3: the id appears more than once",
        ),
        (
            r#"{"id": 8, "category_id": 1, "bbox": [1, 2, 3, 4]}"#,
            "annotation id 8: image_id is missing",
        ),
    ];
    for (annotation, needle) in cases {
        std::fs::write(&file, instances_text(annotation)).unwrap();
        let err = CocoGroundTruth::read_json(&file).unwrap_err();
        let message = format!("{err:#}");
        assert!(tchcv::is_bad_input(&err), "{message}");
        assert!(
            message.contains("instances.json") && message.contains(needle),
            "{message} lacks {needle:?}"
        );
    }
    std::fs::write(&file, "[1, 2]").unwrap();
    let err = CocoGroundTruth::read_json(&file).unwrap_err();
    assert!(
        format!("{err:#}").contains("not a COCO instances file"),
        "{err:#}"
    );
}

/// The results reader names the file and the entry's position (results have no ids).
#[test]
fn results_reader_names_the_file_and_the_position() {
    let dir = common::scratch("eval_coco_results_reader");
    let file = dir.join("instances.json");
    std::fs::write(&file, instances_text(r#"{"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": true, "area": 5.5, "segmentation": [[1, 2, 3]]}"#)).unwrap();
    let gt = CocoGroundTruth::read_json(&file).unwrap();
    assert!(gt.annotations[1].iscrowd && gt.annotations[1].area == Some(5.5));
    let results = dir.join("results.json");
    for (text, needle) in [
        (
            r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}, {"image_id": 4, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]"#,
            "result 1 (image_id 4): the image is not in the ground truth",
        ),
        (
            r#"[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]"#,
            "result 0: score is missing",
        ),
        (r#"{"image_id": 1}"#, "not a COCO results file"),
    ] {
        std::fs::write(&results, text).unwrap();
        let err = coco::read_coco_results(&results, &gt).unwrap_err();
        let message = format!("{err:#}");
        assert!(
            tchcv::is_bad_input(&err) && message.contains("results.json"),
            "{message}"
        );
        assert!(message.contains(needle), "{message} lacks {needle:?}");
    }
}

#[test]
fn files_round_trip() {
    let dir = common::scratch("eval_coco_round_trip");
    let mut crowd = ann(2, 1, 1, [0.5, 1.25, 3.0, 4.0]);
    crowd.iscrowd = true;
    crowd.area = Some(7.0);
    let mut hard = ann(5, 2, 2, [0.1, 0.2, 0.3, 0.4]);
    hard.ignore = true;
    let gt = ground_truth(2, 2, vec![crowd, hard]);
    gt.write_json(&dir.join("gt.json")).unwrap();
    let back = CocoGroundTruth::read_json(&dir.join("gt.json")).unwrap();
    // Written with every area filled in (pycocotools needs it); otherwise the same.
    let mut want = gt.clone();
    want.annotations[1].area = Some(0.3 * 0.4);
    assert_eq!(back, want);
    let dets = vec![
        det(2, 1, [0.1, 1.0 / 3.0, 2.0, 1e-7], 0.123456789),
        det(1, 2, [0.0; 4], -0.0),
    ];
    coco::write_coco_results(&dir.join("r.json"), &dets).unwrap();
    assert_eq!(
        coco::read_coco_results(&dir.join("r.json"), &gt).unwrap(),
        dets
    );
}

// ---- the command line ----

/// A tiny VOC tree: `root/VOC2007/{Annotations,ImageSets/Main}`.
fn write_voc_tree(root: &Path, images: &[(&str, &str)], set: &str) {
    let dir = root.join("VOC2007");
    std::fs::create_dir_all(dir.join("Annotations")).unwrap();
    std::fs::create_dir_all(dir.join("ImageSets/Main")).unwrap();
    let mut list = String::new();
    for (id, objects) in images {
        let xml = format!("<annotation><filename>{id}.jpg</filename>{objects}</annotation>");
        std::fs::write(dir.join("Annotations").join(format!("{id}.xml")), xml).unwrap();
        list += &format!("{id}\n");
    }
    std::fs::write(dir.join("ImageSets/Main").join(format!("{set}.txt")), list).unwrap();
}

fn object(name: &str, b: [i32; 4], difficult: bool) -> String {
    format!(
        "<object><name>{name}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin>\
         <xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
        u8::from(difficult),
        b[0],
        b[1],
        b[2],
        b[3]
    )
}

fn tchcv(args: &[&str], paths: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(common::tchcv_bin());
    cmd.args(args);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    cmd.output().unwrap()
}

/// `tchcv` that must succeed: its stdout.
fn tchcv_ok(args: &[&str], paths: &[(&str, &Path)]) -> String {
    let out = tchcv(args, paths);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tchcv {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two VOC images: a dog, a difficult dog and a cat in the first, nothing in the second; devkit
/// results that find the dog exactly, hit the difficult dog and put the cat in the wrong image.
/// Returns (root, results folder).
fn voc_case_on_disk(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = common::scratch(name);
    let objects = object("dog", [10, 10, 50, 50], false)
        + &object("dog", [100, 100, 150, 150], true)
        + &object("cat", [60, 60, 90, 90], false);
    write_voc_tree(&root, &[("000001", &objects), ("000002", "")], "test");
    let results = root.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let dog = "000001 0.9 10 10 50 50\n000001 0.95 100 100 150 150\n";
    std::fs::write(results.join("det_dog.txt"), dog).unwrap();
    std::fs::write(results.join("det_cat.txt"), "000002 0.8 60 60 90 90\n").unwrap();
    (root, results)
}

const COCO_ON_TEST: [&str; 5] = ["eval", "--sets", "2007:test", "--metric", "coco"];

/// On VOC data: dog found exactly (VOC boxes 10..50 are COCO [9, 9, 41, 41]: the devkit's +1),
/// the detection on the difficult dog ignored, cat missed: dog AP 1/(1+eps), cat 0, the other 18
/// VOC classes -1 (left out): AP = the mean of the two.
#[test]
fn eval_cli_coco_metric_on_voc_data() {
    let (root, results) = voc_case_on_disk("eval_coco_cli_voc");
    let json = root.join("coco.json");
    let paths = [
        ("--data", &*root),
        ("--detections", &results),
        ("--json", &json),
    ];
    let stdout = tchcv_ok(&COCO_ON_TEST, &paths);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500"
    );
    assert_eq!(
        lines[11],
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000"
    );
    let r = CocoEvalResult::read_json(&json).unwrap();
    assert_eq!((r.stats.len(), r.classes.len()), (12, 20));
    let dog = r.classes.iter().find(|c| c.class == "dog").unwrap();
    close("dog", dog.ap, ONE_TP);
    assert_eq!((dog.n_gt, dog.n_ignored, dog.n_det), (1, 1, 2));
    close("AP", r.stats[0].value, ONE_TP / 2.0);

    // VOC-only flags are refused with the COCO metric.
    let out = tchcv(
        &[&COCO_ON_TEST[..], &["--iou", "0.7"]].concat(),
        &[("--data", &root), ("--detections", &results)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--iou"));
}

/// The same detections as a COCO results file (image ids: positions in the set; category ids:
/// VOC class index + 1, dog 12 and cat 8) score the same as the devkit files, with the COCO
/// metric and with the VOC metrics.
#[test]
fn eval_cli_reads_a_coco_results_file_on_voc_data() {
    let (root, results) = voc_case_on_disk("eval_coco_cli_results_file");
    let file = root.join("results.json");
    let dets = vec![
        det(1, 12, [9.0, 9.0, 41.0, 41.0], 0.9),
        det(1, 12, [99.0, 99.0, 51.0, 51.0], 0.95),
        det(2, 8, [59.0, 59.0, 31.0, 31.0], 0.8),
    ];
    coco::write_coco_results(&file, &dets).unwrap();
    let coco_json = |detections: &Path, name: &str| {
        let json = root.join(name);
        tchcv_ok(
            &COCO_ON_TEST,
            &[
                ("--data", &root),
                ("--detections", detections),
                ("--json", &json),
            ],
        );
        CocoEvalResult::read_json(&json).unwrap()
    };
    assert_eq!(coco_json(&file, "a.json"), coco_json(&results, "b.json"));
    let voc = |detections: &Path| {
        tchcv_ok(
            &["eval", "--sets", "2007:test"],
            &[("--data", &root), ("--detections", detections)],
        )
    };
    assert_eq!(voc(&file), voc(&results));
}

/// `--coco-gt` with a COCO results file: the committed fixture gives pycocotools' numbers
/// (tests/fixtures/coco_eval/small_expected.json) through the command line, to the bit.
#[test]
fn eval_cli_coco_gt_gives_pycocotools_numbers() {
    let dir = common::repo().join("tests/fixtures/coco_eval");
    let out_dir = common::scratch("eval_coco_cli_gt");
    let json = out_dir.join("r.json");
    let out = tchcv(
        &["eval"],
        &[
            ("--coco-gt", &dir.join("small_instances.json")),
            ("--detections", &dir.join("small_results.json")),
            ("--json", &json),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("small_expected.json")).unwrap())
            .unwrap();
    let r = CocoEvalResult::read_json(&json).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (i, (s, line)) in r
        .stats
        .iter()
        .zip(expected["lines"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(s.value, expected["stats"][i].as_f64().unwrap(), "stat {i}");
        assert_eq!(stdout.lines().nth(i), line.as_str(), "line {i}");
    }

    // A bad annotation: exit 2, naming the file and the annotation id.
    let bad = out_dir.join("bad.json");
    std::fs::write(
        &bad,
        instances_text(r#"{"id": 8, "image_id": 1, "category_id": 6, "bbox": [1, 2, 3, 4]}"#),
    )
    .unwrap();
    let out = tchcv(
        &["eval"],
        &[
            ("--coco-gt", &bad),
            ("--detections", &dir.join("small_results.json")),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.json") && stderr.contains("annotation id 8"),
        "{stderr}"
    );
    // The VOC metrics need VOC ground truth.
    let out = tchcv(
        &["eval", "--metric", "area"],
        &[("--coco-gt", &bad), ("--detections", &bad)],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// Synthetic VOC data (16 + 8 images, 5 classes) and a 2-iteration training run on it:
/// (data, run folder with `last.safetensors`).
fn tiny_trained_run() -> (std::path::PathBuf, std::path::PathBuf) {
    use tchcv::data::synth::{write_dataset, SynthConfig};
    let data = common::scratch("eval_coco_ckpt_data");
    let config = SynthConfig {
        train: 16,
        test: 8,
        size: (128, 128),
        seed: 5,
        ..SynthConfig::default()
    };
    write_dataset(&data, &config).unwrap();
    let run = common::scratch("eval_coco_ckpt_run");
    let mut train = vec!["train", "--sets", "trainval"];
    train.extend(common::TINY_TRAINING);
    tchcv_ok(&train, &[("--data", &data), ("--out", &run)]);
    (data, run)
}

/// `--checkpoint --metric coco`: the model's detections are written as a COCO results file
/// (with the ground truth as a COCO instances file) beside the devkit files and scored with
/// COCO's metric; scoring the pair again with `--coco-gt` gives the same result.
#[test]
fn eval_cli_coco_metric_with_a_checkpoint() {
    let (data, run) = tiny_trained_run();
    let (json, again, dets) = (
        run.join("coco.json"),
        run.join("again.json"),
        run.join("dets"),
    );
    let eval = [
        "eval", "--sets", "test", "--device", "cpu", "--metric", "coco",
    ];
    let out = tchcv(
        &eval,
        &[
            ("--data", &data),
            ("--checkpoint", &run.join("last.safetensors")),
            ("--out", &dets),
            ("--json", &json),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().take(12).all(|l| l.starts_with(" Average ")),
        "{stdout}"
    );
    let results = dets.join("coco_results.json");
    assert!(results.is_file());
    let devkit_files = dets
        .read_dir()
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "txt")
        })
        .count();
    assert_eq!(
        devkit_files, 5,
        "one devkit file per class beside the COCO file"
    );
    let out = tchcv(
        &["eval"],
        &[
            ("--coco-gt", &dets.join("coco_instances.json")),
            ("--detections", &results),
            ("--json", &again),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = CocoEvalResult::read_json(&json).unwrap();
    assert!(first.n_detections > 0, "{first:?}");
    assert_eq!(first, CocoEvalResult::read_json(&again).unwrap());
}
