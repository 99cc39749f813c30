//! VOC AP on hand-checkable cases (every expected number is worked out in the comments), the
//! devkit results files, and the minimal ground-truth reader.

mod common;

use tchcv::eval::detections::{parse_voc_results, read_voc_results, write_voc_results};
use tchcv::eval::voc::{ap_area, ap_voc07, match_detections, Outcome};
use tchcv::eval::{
    evaluate, load_ground_truth, Detection, GroundTruth, Matching, VocEvalConfig, VocEvalResult,
};

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn gt(image_id: &str, objects: &[([f32; 4], usize, bool)]) -> GroundTruth {
    GroundTruth {
        image_id: image_id.into(),
        boxes: objects.iter().map(|o| o.0).collect(),
        labels: objects.iter().map(|o| o.1).collect(),
        difficult: objects.iter().map(|o| o.2).collect(),
    }
}

fn det(image_id: &str, class: usize, score: f32, bbox: [f32; 4]) -> Detection {
    Detection {
        image_id: image_id.into(),
        class,
        score,
        bbox,
    }
}

const A: [f32; 4] = [0.0, 0.0, 9.0, 9.0];
const B: [f32; 4] = [20.0, 20.0, 29.0, 29.0];
const FAR: [f32; 4] = [50.0, 50.0, 59.0, 59.0];

/// Equal up to summation rounding (the 11-point AP sums eleven p/11 terms, so a perfect
/// class scores 1.0000000000000002, in numpy as here).
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn both(got: (f64, f64), want: (f64, f64)) -> bool {
    close(got.0, want.0) && close(got.1, want.1)
}

fn aps(
    classes: &[&str],
    gts: &[GroundTruth],
    dets: &[Detection],
    config: &VocEvalConfig,
) -> Vec<(f64, f64)> {
    let r = evaluate(&names(classes), gts, dets, config).unwrap();
    r.classes.iter().map(|c| (c.ap_voc07, c.ap_area)).collect()
}

#[test]
fn perfect_detections_give_ap_one() {
    let gts = [
        gt("1", &[(A, 0, false), (B, 1, false)]),
        gt("2", &[(B, 0, false), (FAR, 0, false)]),
        gt("3", &[]),
    ];
    let dets = [
        det("2", 0, 0.3, FAR),
        det("1", 0, 0.9, A),
        det("1", 1, 0.5, B),
        det("2", 0, 0.7, B),
    ];
    for plus_one in [true, false] {
        for matching in [Matching::Devkit, Matching::Unmatched] {
            let config = VocEvalConfig {
                legacy_plus_one: plus_one,
                matching,
                ..Default::default()
            };
            let r = evaluate(&names(&["a", "b"]), &gts, &dets, &config).unwrap();
            for c in &r.classes {
                assert!(both((c.ap_voc07, c.ap_area), (1.0, 1.0)), "{c:?}");
                assert_eq!(c.n_tp, c.n_gt);
            }
            assert!(both((r.map_voc07, r.map_area), (1.0, 1.0)));
            assert_eq!(r.n_images, 3);
        }
    }
}

#[test]
fn false_positive_ranked_before_the_only_true_one() {
    // Outcomes FP, TP: precision [0, 1/2], recall [0, 1].
    // VOC07: at every t in 0..=1 the best precision with recall >= t is 1/2, so AP = 1/2.
    // Area: mrec [0, 0, 1, 1], envelope [1/2, 1/2, 1/2, 0]; one recall step 0 -> 1 of height
    // mpre[2] = 1/2, so AP = 1/2.
    let gts = [gt("1", &[(A, 0, false)])];
    let dets = [det("1", 0, 0.9, FAR), det("1", 0, 0.8, A)];
    let got = aps(&["a"], &gts, &dets, &VocEvalConfig::default());
    assert!(close(got[0].0, 0.5) && close(got[0].1, 0.5), "{got:?}");
}

#[test]
fn a_false_positive_between_two_true_ones() {
    // Two objects; outcomes TP, FP, TP: precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
    // VOC07: t = 0 .. 0.5 (six thresholds) reach precision 1, t = 0.6 .. 1 (five) only 2/3:
    // AP = (6 + 5 * 2/3) / 11 = 28/33. Area: steps 0 -> 1/2 at envelope 1 and 1/2 -> 1 at 2/3:
    // AP = 1/2 + 1/3 = 5/6.
    let gts = [gt("1", &[(A, 0, false), (B, 0, false)])];
    let dets = [
        det("1", 0, 0.9, A),
        det("1", 0, 0.8, FAR),
        det("1", 0, 0.7, B),
    ];
    let got = aps(&["a"], &gts, &dets, &VocEvalConfig::default());
    assert!(close(got[0].0, 28.0 / 33.0), "{got:?}");
    assert!(close(got[0].1, 5.0 / 6.0), "{got:?}");
}

#[test]
fn duplicates_are_false_positives() {
    // A detected twice, then B: TP, FP (duplicate), TP, the case above: 28/33 and 5/6.
    let gts = [gt("1", &[(A, 0, false), (B, 0, false)])];
    let dets = [
        det("1", 0, 0.9, A),
        det("1", 0, 0.8, A),
        det("1", 0, 0.7, B),
    ];
    let config = VocEvalConfig::default();
    let m = match_detections(&names(&["a"]), &gts, &dets, &config).unwrap();
    assert_eq!(m[0].outcomes, [Outcome::Tp, Outcome::Fp, Outcome::Tp]);
    let got = aps(&["a"], &gts, &dets, &config);
    assert!(
        close(got[0].0, 28.0 / 33.0) && close(got[0].1, 5.0 / 6.0),
        "{got:?}"
    );
}

#[test]
fn matches_to_difficult_objects_are_ignored_and_difficult_only_classes_are_nan() {
    // Class a: one difficult and one normal object. The detection on the difficult one ranks
    // first: ignored, so the outcomes are (ignored, TP): precision [NaN, 1], recall [0, 1],
    // AP 1 by both rules (were it a FP, AP would be 1/2).
    // Class b: only a difficult object: no ground truth to find, AP NaN, left out of the mAP.
    let gts = [gt("1", &[(A, 0, true), (B, 0, false), (FAR, 1, true)])];
    let dets = [
        det("1", 0, 0.9, A),
        det("1", 0, 0.8, B),
        det("1", 1, 0.9, FAR),
    ];
    let r = evaluate(&names(&["a", "b"]), &gts, &dets, &VocEvalConfig::default()).unwrap();
    let (a, b) = (&r.classes[0], &r.classes[1]);
    assert!(both((a.ap_voc07, a.ap_area), (1.0, 1.0)), "{a:?}");
    assert_eq!((a.n_gt, a.n_difficult, a.n_ignored, a.n_tp), (1, 1, 1, 1));
    assert!(b.ap_voc07.is_nan() && b.ap_area.is_nan(), "{b:?}");
    assert_eq!((b.n_gt, b.n_difficult, b.n_det), (0, 1, 1));
    assert!(both((r.map_voc07, r.map_area), (1.0, 1.0)));
}

#[test]
fn classes_without_detections_score_zero_and_without_objects_nan() {
    let gts = [gt("1", &[(A, 0, false)])];
    let r = evaluate(&names(&["a", "b"]), &gts, &[], &VocEvalConfig::default()).unwrap();
    assert_eq!((r.classes[0].ap_voc07, r.classes[0].ap_area), (0.0, 0.0));
    assert!(r.classes[1].ap_area.is_nan());
    // nanmean over {0}: 0. With no class having objects the mAP itself is NaN.
    assert_eq!(r.map_area, 0.0);
    let empty = evaluate(
        &names(&["a"]),
        &[gt("1", &[])],
        &[],
        &VocEvalConfig::default(),
    )
    .unwrap();
    assert!(empty.map_voc07.is_nan() && empty.map_area.is_nan());
}

#[test]
fn legacy_plus_one_and_threshold_inclusive() {
    // Object [0,0,9,9], detection [0,0,9,4]. With +1: areas 100 and 50, intersection 50,
    // IoU exactly 1/2 >= 0.5: TP. Without: 81 and 36, IoU 36/81 = 0.444: FP.
    let gts = [gt("1", &[(A, 0, false)])];
    let dets = [det("1", 0, 0.9, [0.0, 0.0, 9.0, 4.0])];
    let with = aps(&["a"], &gts, &dets, &VocEvalConfig::default());
    let without = aps(
        &["a"],
        &gts,
        &dets,
        &VocEvalConfig {
            legacy_plus_one: false,
            ..Default::default()
        },
    );
    assert!(both(with[0], (1.0, 1.0)), "{with:?}");
    assert_eq!(without[0], (0.0, 0.0));
}

#[test]
fn devkit_matching_versus_highest_unmatched() {
    // Objects P = [0,0,9,9] and Q = [0,5,9,14] (overlapping). The first detection sits on P.
    // The second, [0,1,9,10], with +1 (10 x 10 boxes): P shares rows 1..=9, 9 x 10 = 90,
    // IoU 90 / 110 = 0.82; Q shares rows 5..=10, 60, IoU 60 / 140 = 0.43. Devkit: the best is
    // P, already taken: a duplicate, FP. Unmatched (threshold 0.4): P is skipped, Q at
    // 0.43 >= 0.4: TP.
    let p = [0.0, 0.0, 9.0, 9.0];
    let q = [0.0, 5.0, 9.0, 14.0];
    let gts = [gt("1", &[(p, 0, false), (q, 0, false)])];
    let dets = [det("1", 0, 0.9, p), det("1", 0, 0.8, [0.0, 1.0, 9.0, 10.0])];
    let run = |matching| {
        let config = VocEvalConfig {
            iou_threshold: 0.4,
            matching,
            ..Default::default()
        };
        match_detections(&names(&["a"]), &gts, &dets, &config).unwrap()[0]
            .outcomes
            .clone()
    };
    assert_eq!(run(Matching::Devkit), [Outcome::Tp, Outcome::Fp]);
    assert_eq!(run(Matching::Unmatched), [Outcome::Tp, Outcome::Tp]);
}

#[test]
fn tied_scores_keep_input_order() {
    // Same score, FP listed first: outcomes FP, TP, AP 1/2 (as in the FP-first case); listed
    // the other way round: TP, FP, AP 1.
    let gts = [gt("1", &[(A, 0, false)])];
    let fp_first = [det("1", 0, 0.5, FAR), det("1", 0, 0.5, A)];
    let tp_first = [det("1", 0, 0.5, A), det("1", 0, 0.5, FAR)];
    let config = VocEvalConfig::default();
    assert!(close(aps(&["a"], &gts, &fp_first, &config)[0].1, 0.5));
    assert!(both(aps(&["a"], &gts, &tp_first, &config)[0], (1.0, 1.0)));
}

#[test]
fn eleven_point_thresholds_follow_numpy_arange() {
    // np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004, above a recall of 3/10: with recall
    // [0.1, 0.2, 0.3] at precision 1, only t = 0, 0.1, 0.2 count: AP = 3/11.
    let precision = [1.0, 1.0, 1.0];
    let recall = [1.0 / 10.0, 2.0 / 10.0, 3.0 / 10.0];
    assert!(close(ap_voc07(&precision, &recall), 3.0 / 11.0));
    // Area: steps of 0.1 at precision 1: 0.3.
    assert!(close(ap_area(&precision, &recall), 0.3));
    // NaN precision reads as 0; no points at all give 0.
    assert_eq!(ap_voc07(&[f64::NAN], &[0.0]), 0.0);
    assert_eq!(ap_area(&[], &[]), 0.0);
}

#[test]
fn pr_curve_corners_keep_the_shape() {
    // TP FP FP TP FP: corners are the first point, the TP points, the point before each TP,
    // and the last: indices 0, 2, 3, 4 (index 1 lies on the straight drop from 0 to 2).
    let gts = [gt("1", &[(A, 0, false), (B, 0, false)])];
    let dets = [
        det("1", 0, 0.9, A),
        det("1", 0, 0.8, FAR),
        det("1", 0, 0.7, FAR),
        det("1", 0, 0.6, B),
        det("1", 0, 0.5, FAR),
    ];
    let r = evaluate(&names(&["a"]), &gts, &dets, &VocEvalConfig::default()).unwrap();
    let curve = &r.classes[0].curve;
    assert_eq!(curve.recall, [0.5, 0.5, 1.0, 1.0]);
    assert_eq!(curve.precision, [1.0, 1.0 / 3.0, 0.5, 0.4]);
}

#[test]
fn bad_input_is_an_error_naming_what() {
    let gts = [gt("1", &[(A, 0, false)])];
    let config = VocEvalConfig::default();
    let classes = names(&["a"]);
    let check = |dets: &[Detection], gts: &[GroundTruth], config: &VocEvalConfig, needle: &str| {
        let err = evaluate(&classes, gts, dets, config).unwrap_err();
        assert!(tchcv::is_bad_input(&err), "{err:#}");
        assert!(
            format!("{err:#}").contains(needle),
            "{err:#} lacks {needle:?}"
        );
    };
    check(
        &[det("9", 0, 0.5, A)],
        &gts,
        &config,
        "\"9\" is not in the ground truth",
    );
    check(
        &[det("1", 3, 0.5, A)],
        &gts,
        &config,
        "class 3 out of range",
    );
    check(&[det("1", 0, f32::NAN, A)], &gts, &config, "not finite");
    check(
        &[det("1", 0, 0.5, [0.0, f32::INFINITY, 1.0, 1.0])],
        &gts,
        &config,
        "non-finite",
    );
    let mut broken = gts[0].clone();
    broken.difficult.clear();
    check(
        &[],
        &[broken],
        &config,
        "1 boxes but 1 labels and 0 difficult",
    );
    check(
        &[],
        &[gts[0].clone(), gts[0].clone()],
        &config,
        "more than once",
    );
    check(
        &[],
        &[gt("1", &[(A, 5, false)])],
        &config,
        "label 5 out of range",
    );
    let zero = VocEvalConfig {
        iou_threshold: 0.0,
        ..Default::default()
    };
    check(&[], &gts, &zero, "iou threshold 0");
}

#[test]
fn result_json_round_trips_with_nan_as_null() {
    let gts = [gt("1", &[(A, 0, false), (B, 1, true)])];
    let dets = [det("1", 0, 0.9, A), det("1", 1, 0.4, B)];
    let r = evaluate(&names(&["a", "b"]), &gts, &dets, &VocEvalConfig::default()).unwrap();
    let text = r.to_json().unwrap();
    assert!(text.contains("\"ap_area\": null"), "{text}");
    let dir = common::scratch("eval_voc_json");
    let path = dir.join("eval.json");
    r.write_json(&path).unwrap();
    let back = VocEvalResult::read_json(&path).unwrap();
    assert!(back.classes[1].ap_area.is_nan());
    assert_eq!(back.classes[0], r.classes[0]);
    assert_eq!((back.map_voc07, back.map_area), (r.map_voc07, r.map_area));
    let table = r.table(&[tchcv::eval::Metric::Voc07, tchcv::eval::Metric::Area]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("b ") && l.contains(" - ")),
        "{table}"
    );
    assert!(table.lines().last().unwrap().starts_with("mAP"), "{table}");
}

#[test]
fn devkit_results_files_round_trip_exactly() {
    let dir = common::scratch("eval_voc_results");
    let classes = names(&["cat", "dog", "bird"]);
    let dets = vec![
        det("000001", 1, 0.123_456_79, [1.5, 2.25, 300.125, 400.0]),
        det("000002", 0, 1e-7, [0.1, 0.2, 0.3, 0.4]),
        det("000001", 1, 0.9, [10.0, 20.0, 30.0, 40.0]),
    ];
    write_voc_results(&dir, "comp4_det_test_", &classes, &dets).unwrap();
    let text = std::fs::read_to_string(dir.join("comp4_det_test_dog.txt")).unwrap();
    assert_eq!(
        text.lines().next().unwrap(),
        "000001 0.12345679 1.5 2.25 300.125 400"
    );
    assert!(
        dir.join("comp4_det_test_bird.txt").exists(),
        "empty classes get a file"
    );
    std::fs::remove_file(dir.join("comp4_det_test_bird.txt")).unwrap();
    let back = read_voc_results(&dir, "comp4_det_test_", &classes).unwrap();
    // Class order, then line order.
    assert_eq!(
        back.detections,
        [dets[1].clone(), dets[0].clone(), dets[2].clone()]
    );
    assert_eq!(back.missing, ["bird"]);
    let err = write_voc_results(&dir, "", &classes, &[det("a b", 0, 0.5, A)]).unwrap_err();
    assert!(format!("{err:#}").contains("whitespace"), "{err:#}");
}

#[test]
fn bad_results_lines_name_file_and_line() {
    let file = std::path::Path::new("res/car.txt");
    let ok = parse_voc_results(
        "\n000001 0.5 1 2 3 4\n\n  000002\t0.25 1 2 3 4  \n",
        2,
        file,
    )
    .unwrap();
    assert_eq!(ok.len(), 2);
    assert_eq!(
        (ok[1].image_id.as_str(), ok[1].class, ok[1].score),
        ("000002", 2, 0.25)
    );
    for (text, needle) in [
        (
            "000001 0.5 1 2 3 4\n000002 0.5 1 2 3\n",
            "res/car.txt:2: expected",
        ),
        (
            "000001 0.5 1 2 3 4\n\n000003 high 1 2 3 4\n",
            "res/car.txt:3: score \"high\"",
        ),
        ("000001 0.5 1 2 nan 4\n", "res/car.txt:1: xmax \"nan\""),
    ] {
        let err = parse_voc_results(text, 0, file).unwrap_err();
        assert!(tchcv::is_bad_input(&err));
        assert!(
            format!("{err:#}").contains(needle),
            "{err:#} lacks {needle:?}"
        );
    }
}

/// A tiny VOC tree: `root/VOC2007/{Annotations,ImageSets/Main}`.
fn write_voc_tree(root: &std::path::Path, images: &[(&str, &str)], set: &str) {
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

fn object(name: &str, b: [i32; 4], difficult: Option<u8>) -> String {
    let d = difficult
        .map(|d| format!("<difficult>{d}</difficult>"))
        .unwrap_or_default();
    format!(
        "<object><name>{name}</name>{d}<bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax>\
         <ymax>{}</ymax></bndbox><part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin>\
         <xmax>2</xmax><ymax>2</ymax></bndbox></part></object>",
        b[0], b[1], b[2], b[3]
    )
}

#[test]
fn ground_truth_reader_reads_names_boxes_and_difficult() {
    let root = common::scratch("eval_voc_gt");
    let one = object("dog", [10, 20, 30, 40], Some(1)) + &object("cat", [1, 2, 3, 4], None);
    write_voc_tree(&root, &[("000001", &one), ("000002", "")], "test");
    let (classes, gts) = load_ground_truth(&root, &["2007:test".into()]).unwrap();
    // Only VOC names: the 20 VOC classes (cat is 7, dog 11).
    assert_eq!(classes.len(), 20);
    assert_eq!(gts.len(), 2);
    assert_eq!(gts[0].labels, [11, 7]);
    assert_eq!(
        gts[0].boxes,
        [[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]]
    );
    assert_eq!(gts[0].difficult, [true, false]);
    assert!(gts[1].boxes.is_empty());

    let other = common::scratch("eval_voc_gt_other");
    let cards = object("queen", [1, 1, 5, 5], Some(0)) + &object("ace", [2, 2, 6, 6], None);
    write_voc_tree(&other, &[("a", &cards)], "val");
    let (classes, gts) = load_ground_truth(&other.join("VOC2007"), &["val".into()]).unwrap();
    assert_eq!(classes, ["ace", "queen"]);
    assert_eq!(gts[0].labels, [1, 0]);

    let err = load_ground_truth(&root, &["2007:train".into()]).unwrap_err();
    assert!(
        tchcv::is_bad_input(&err) && format!("{err:#}").contains("train.txt"),
        "{err:#}"
    );
    // The data reader is the one source of ground truth: an inverted box is dropped with a
    // warning (degenerate-box), as in training, and the image stays with no objects.
    let bad = common::scratch("eval_voc_gt_bad");
    write_voc_tree(
        &bad,
        &[("x", &object("dog", [30, 20, 10, 40], None))],
        "test",
    );
    let (_, gts) = load_ground_truth(&bad, &["2007:test".into()]).unwrap();
    assert_eq!(gts.len(), 1);
    assert!(gts[0].boxes.is_empty(), "{:?}", gts[0]);
}

#[test]
fn eval_cli_prints_the_table_and_writes_json() {
    let root = common::scratch("eval_voc_cli");
    let objects = object("dog", [10, 10, 50, 50], None) + &object("cat", [60, 60, 90, 90], None);
    write_voc_tree(&root, &[("000001", &objects)], "test");
    let results = root.join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("det_dog.txt"), "000001 0.9 10 10 50 50\n").unwrap();
    std::fs::write(results.join("det_cat.txt"), "000001 0.8 0 0 5 5\n").unwrap();
    let json = root.join("out.json");
    let out = std::process::Command::new(common::tchcv_bin())
        .args(["eval", "--data"])
        .arg(&root)
        .args(["--sets", "2007:test", "--prefix", "det_", "--detections"])
        .arg(&results)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // dog AP 1, cat AP 0, the 18 other VOC classes have no objects: mAP 0.5.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("dog") && l.contains("1.0000")),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("mAP") && last.contains("0.5000"),
        "{stdout}"
    );
    let r = VocEvalResult::read_json(&json).unwrap();
    assert_eq!(r.map_area, 0.5);

    std::fs::write(results.join("det_cat.txt"), "000001 0.8 0 0 5\n").unwrap();
    let out = std::process::Command::new(common::tchcv_bin())
        .args(["eval", "--data"])
        .arg(&root)
        .args(["--sets", "2007:test", "--prefix", "det_", "--detections"])
        .arg(&results)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("det_cat.txt:1"));
}

/// `tchcv eval --detections` finds the devkit's own prefix (`comp4_det_test_<class>.txt`)
/// without `--prefix`, and names what it found when the names fit no prefix or several.
#[test]
fn eval_cli_finds_the_results_prefix() {
    let root = common::scratch("eval_voc_prefix");
    let objects = object("dog", [10, 10, 50, 50], None) + &object("cat", [60, 60, 90, 90], None);
    write_voc_tree(&root, &[("000001", &objects)], "test");
    let results = root.join("results");
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(
        results.join("comp4_det_test_dog.txt"),
        "000001 0.9 10 10 50 50\n",
    )
    .unwrap();
    std::fs::write(
        results.join("comp4_det_test_cat.txt"),
        "000001 0.8 0 0 5 5\n",
    )
    .unwrap();
    let eval = |results: &std::path::Path| {
        std::process::Command::new(common::tchcv_bin())
            .args(["eval", "--data"])
            .arg(&root)
            .args(["--sets", "2007:test", "--detections"])
            .arg(results)
            .output()
            .unwrap()
    };
    let out = eval(&results);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("dog") && l.contains("1.0000")),
        "{stdout}"
    );

    // Two prefixes in one folder: refused, listing the files.
    std::fs::write(results.join("det_dog.txt"), "000001 0.9 10 10 50 50\n").unwrap();
    let out = eval(&results);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("det_dog.txt") && stderr.contains("--prefix"),
        "{stderr}"
    );
}

#[test]
fn results_prefix_fits_every_file_or_is_refused() {
    let classes: Vec<String> = ["a", "ba", "dog"].iter().map(|s| s.to_string()).collect();
    let find = |files: &[&str]| {
        let dir = common::scratch("eval_voc_prefix_unit");
        for f in files {
            std::fs::write(dir.join(f), "").unwrap();
        }
        tchcv::eval::detections::find_results_prefix(&dir, &classes)
    };
    assert_eq!(find(&["dog.txt", "a.txt"]).unwrap(), "");
    assert_eq!(find(&["x_dog.txt", "x_a.txt", "notes.md"]).unwrap(), "x_");
    // "x_ba.txt" is x_ + ba, or x_b + a: which one is ambiguous.
    let err = find(&["x_ba.txt"]).unwrap_err().to_string();
    assert!(err.contains("\"x_\"") && err.contains("\"x_b\""), "{err}");
    let err = find(&["x_dog.txt", "y_dog.txt"]).unwrap_err().to_string();
    assert!(err.contains("x_dog.txt, y_dog.txt"), "{err}");
    assert!(find(&[]).is_err());
}
