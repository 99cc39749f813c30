//! COCO-format data (issue 19, data half): a synthetic VOC dataset converted to COCO with
//! `tchcv convert` reads back as the same records; VOC -> COCO -> VOC is lossless for what both
//! hold (`difficult` <-> COCO `"ignore": 1`); `check-data` reports each problem of hand-made
//! broken instances files (a counted problem, or exit 2 naming the file and the annotation id);
//! crowd regions give ignored anchors (-1), never positives; `tchcv train --metric coco` and
//! `tchcv eval --metric coco` run on the COCO copy; the shared VOC datasets convert and check
//! alike; boxes under one pixel are dropped (counted) and negative areas dropped (counted), so
//! evaluation and conversion work; sets that repeat image ids keep every record apart; a
//! category id with none above it for a new class exits 2 naming the file. Converted data lives under `target/test-scratch` only.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tchcv::bbox::{BoxCoder, RpnCoder};
use tchcv::data::synth::{write_dataset, SynthConfig};
use tchcv::data::{
    detect_format, open_dataset, DataFormat, DataSource, ImageCheck, Loader, LoaderConfig,
    ReadOptions, SetSpec, TargetEncoder, VocDataset,
};
use tchcv::spec::ModelSpec;

use common::{run_tchcv as tchcv, success as ok};

/// A synthetic VOC folder (`train` + `test` images of 96x96, 5 classes, difficult objects
/// among them) in scratch folder `name`.
fn synth(name: &str, train: usize, test: usize) -> PathBuf {
    let dir = common::scratch(name);
    let config = SynthConfig {
        train,
        test,
        size: (96, 96),
        seed: 11,
        ..SynthConfig::default()
    };
    write_dataset(&dir, &config).expect("synthetic data");
    dir
}

/// `tchcv convert --data SRC --to TO --sets SETS --out OUT` (OUT made fresh under scratch).
fn convert(src: &Path, to: &str, sets: &str, scratch: &str) -> PathBuf {
    let out = common::scratch(scratch);
    let args = ["convert", "--to", to, "--sets", sets, "--link"];
    ok(
        &tchcv(&args, &[("--data", src), ("--out", &out)]),
        "tchcv convert",
    );
    out
}

fn open(root: &Path, sets: &str) -> VocDataset {
    let specs = SetSpec::parse_list(sets).unwrap();
    let options = ReadOptions {
        classes: None,
        check_images: ImageCheck::Header,
    };
    open_dataset(&DataSource::new(root), &specs, &options)
        .unwrap()
        .0
}

/// Each record as `(image file stem, width, height, objects)`, objects as
/// `(class, bbox, difficult, crowd)`: what VOC and COCO both hold.
type Held = (String, u32, u32, Vec<(usize, [f32; 4], bool, bool)>);

fn held(ds: &VocDataset) -> Vec<Held> {
    ds.records
        .iter()
        .map(|r| {
            let stem = r.image_path.file_stem().unwrap().to_string_lossy().into();
            let objects = r
                .objects
                .iter()
                .map(|o| (o.class_id, o.bbox, o.difficult, o.crowd))
                .collect();
            (stem, r.width, r.height, objects)
        })
        .collect()
}

fn instances(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_coco_copy_reads_as_the_voc_records() {
    let voc = synth("data_coco_same_voc", 24, 8);
    let coco = convert(&voc, "coco", "trainval,test", "data_coco_same_coco");
    assert_eq!(detect_format(&voc), DataFormat::Voc);
    assert_eq!(detect_format(&coco), DataFormat::Coco);
    let file = coco.join("annotations/instances_test.json");
    assert_eq!(detect_format(&file), DataFormat::Coco);
    assert!(coco.join("test").is_dir() && coco.join("trainval").is_dir());
    for set in ["trainval", "test"] {
        let (a, b) = (open(&voc, set), open(&coco, set));
        assert_eq!(a.classes.names(), b.classes.names(), "{set}: classes");
        assert_eq!(b.category_ids, (1..=5).collect::<Vec<i64>>());
        assert_eq!(held(&a), held(&b), "{set}: the records differ");
        assert!(b.records.iter().all(|r| r.coco_id.is_some()));
    }
    let both = open(&voc, "trainval");
    let difficult = both.records.iter().flat_map(|r| &r.objects);
    assert!(
        difficult.filter(|o| o.difficult).count() > 0,
        "the synthetic data should hold difficult objects"
    );
    // An instances file with --images reads as the standard layout does.
    let source = DataSource {
        root: file.clone(),
        format: None,
        images: Some(coco.join("test")),
    };
    let (alone, _) = open_dataset(&source, &[], &ReadOptions::default()).unwrap();
    assert_eq!(held(&alone), held(&open(&coco, "test")));
    // Image and annotation ids run on across the sets: unique.
    let (train, test) = (
        instances(&coco.join("annotations/instances_trainval.json")),
        instances(&file),
    );
    let ids = |v: &Value, key: &str| -> Vec<i64> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_i64().unwrap())
            .collect()
    };
    let mut images = ids(&train, "images");
    images.extend(ids(&test, "images"));
    let n = images.len();
    images.sort();
    images.dedup();
    assert_eq!(images.len(), n, "image ids repeat across the sets");
}

#[test]
fn voc_to_coco_to_voc_is_lossless_and_difficult_is_coco_ignore() {
    let voc = synth("data_coco_round_voc", 24, 8);
    let coco = convert(&voc, "coco", "trainval,test", "data_coco_round_coco");
    let back = convert(&coco, "voc", "trainval,test", "data_coco_round_back");
    for set in ["trainval", "test"] {
        let (a, b) = (open(&voc, set), open(&back, set));
        assert_eq!(a.classes.names(), b.classes.names());
        assert_eq!(
            held(&a),
            held(&b),
            "{set}: VOC -> COCO -> VOC changed the records"
        );
        let ids = |d: &VocDataset| d.records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "{set}: image ids");
        // The flag COCO carries for `difficult`: "ignore": 1 (and nothing else).
        let json = instances(&coco.join(format!("annotations/instances_{set}.json")));
        let annotations = json["annotations"].as_array().unwrap();
        let ignored = annotations
            .iter()
            .filter(|x| x["ignore"] == json!(1))
            .count();
        let difficult = a.records.iter().flat_map(|r| &r.objects);
        assert_eq!(ignored, difficult.filter(|o| o.difficult).count(), "{set}");
        assert!(annotations.iter().all(|x| x["iscrowd"] == json!(0)));
        for image in a.records.iter().map(|r| &r.image_path) {
            let copy = back.join("JPEGImages").join(image.file_name().unwrap());
            assert_eq!(std::fs::read(image).unwrap(), std::fs::read(copy).unwrap());
        }
    }
    // Crowd regions survive COCO -> VOC -> COCO (as <iscrowd>1 with <difficult>1 in VOC).
    let crowd_coco = common::scratch("data_coco_round_crowd");
    let mut gt = instances(&coco.join("annotations/instances_test.json"));
    gt["annotations"][0]["iscrowd"] = json!(1);
    gt["annotations"][0]["ignore"] = json!(0);
    std::fs::write(crowd_coco.join("test.json"), gt.to_string()).unwrap();
    let source = |root: &Path| DataSource {
        root: root.to_path_buf(),
        format: None,
        images: Some(coco.join("test")),
    };
    let out = common::scratch("data_coco_round_crowd_voc");
    let args = ["convert", "--to", "voc"];
    let file = crowd_coco.join("test.json");
    ok(
        &tchcv(
            &args,
            &[
                ("--data", &file),
                ("--images", &coco.join("test")),
                ("--out", &out),
            ],
        ),
        "convert with a crowd region",
    );
    let (first, _) = open_dataset(&source(&file), &[], &ReadOptions::default()).unwrap();
    let again = open(&out, "test");
    assert_eq!(held(&first), held(&again));
    let crowd: Vec<_> = again
        .records
        .iter()
        .flat_map(|r| &r.objects)
        .filter(|o| o.crowd)
        .collect();
    assert_eq!(crowd.len(), 1);
}

// ---- check-data on hand-made broken instances files ----

/// A COCO folder `dir` with `n` copies of a synthetic image (`img<i>.jpg`) and the instances
/// file `dir/instances.json` holding `gt`.
fn broken_case(name: &str, gt: &Value) -> (PathBuf, PathBuf) {
    let voc = synth(&format!("{name}_voc"), 4, 0);
    let dir = common::scratch(name);
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(voc.join("JPEGImages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sources.sort();
    for (i, src) in sources.iter().enumerate() {
        std::fs::copy(src, images.join(format!("img{i}.jpg"))).unwrap();
    }
    let file = dir.join("instances.json");
    std::fs::write(&file, gt.to_string()).unwrap();
    (file, images)
}

fn image(id: i64, file: &str) -> Value {
    json!({"id": id, "file_name": file, "width": 96, "height": 96})
}

fn ann(id: i64, image_id: i64, category_id: i64, bbox: [f64; 4]) -> Value {
    json!({"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0})
}

fn categories() -> Value {
    json!([{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}])
}

#[test]
fn check_data_counts_each_problem_of_a_broken_instances_file() {
    let gt = json!({
        "images": [
            image(1, "img0.jpg"),
            image(2, "img1.jpg"),
            image(3, "missing.jpg"),
            image(4, "img2.jpg"),
            image(2, "img3.jpg"),
            image(5, "garbage.jpg"),
            image(6, "img3.jpg"),
        ],
        "annotations": [
            ann(10, 1, 3, [10.0, 10.0, 20.0, 20.0]),
            ann(11, 1, 99, [30.0, 30.0, 10.0, 10.0]),
            ann(12, 2, 7, [80.0, 80.0, 40.0, 40.0]),
            ann(13, 2, 7, [5.0, 5.0, 0.0, 12.0]),
            ann(14, 3, 3, [5.0, 5.0, 10.0, 10.0]),
            ann(15, 5, 3, [5.0, 5.0, 10.0, 10.0]),
            ann(16, 42, 3, [5.0, 5.0, 10.0, 10.0]),
            ann(17, 6, 7, [1.0, 2.0, 30.0, 40.0]),
        ],
        "categories": categories(),
    });
    let (file, images) = broken_case("data_coco_broken", &gt);
    std::fs::write(images.join("garbage.jpg"), b"not a jpeg at all").unwrap();
    let json_out = file.with_file_name("report.json");
    let out = tchcv(
        &["check-data"],
        &[
            ("--data", &file),
            ("--images", &images),
            ("--json", &json_out),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "errors exit 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = instances(&json_out);
    let counts = &report["problem_counts"];
    let count = |kind: &str| counts[kind].as_u64().unwrap_or(0);
    assert_eq!(count("unknown-class"), 1, "{counts}");
    assert_eq!(count("box-clipped"), 1, "{counts}");
    assert_eq!(count("degenerate-box"), 1, "{counts}");
    assert_eq!(count("missing-image"), 1, "{counts}");
    assert_eq!(count("corrupt-image"), 1, "{counts}");
    assert_eq!(count("duplicate-id"), 1, "{counts}");
    assert_eq!(count("bad-object"), 1, "{counts}");
    // Image 4 has no annotation; image 2 keeps only its clipped box.
    assert_eq!(count("no-objects"), 1, "{counts}");
    let problems = report["problems"].as_array().unwrap();
    let detail = |kind: &str| -> String {
        let p = problems.iter().find(|p| p["kind"] == json!(kind)).unwrap();
        format!("{} {}", p["file"], p["detail"])
    };
    assert!(detail("unknown-class").contains("annotation id 11"));
    assert!(detail("box-clipped").contains("annotation id 12"));
    assert!(detail("degenerate-box").contains("annotation id 13"));
    assert!(detail("bad-object").contains("annotation id 16"));
    assert!(detail("duplicate-id").contains("image id 2"));
    assert!(detail("missing-image").contains("missing.jpg"));
    assert!(detail("corrupt-image").contains("garbage.jpg"));
    // Classes: the categories' names in id order, ids kept for output.
    assert_eq!(report["classes"][0]["name"], json!("circle"));
    assert_eq!(report["classes"][1]["name"], json!("square"));
    assert_eq!(
        report["images"],
        json!(4),
        "images 1, 2, 4 and 6 are usable"
    );
}

#[test]
fn bad_instances_files_exit_2_naming_the_file_and_the_annotation_id() {
    let good = || {
        json!({
            "images": [image(1, "img0.jpg")],
            "annotations": [ann(21, 1, 3, [1.0, 1.0, 10.0, 10.0])],
            "categories": categories(),
        })
    };
    let mut cases: Vec<(&str, Value, &[&str])> = Vec::new();
    let mut v = good();
    v["annotations"][0]["bbox"] = json!([1.0, "x", 3.0, 4.0]);
    cases.push((
        "a box that is not numbers",
        v,
        &["annotation id 21", "bbox"],
    ));
    let mut v = good();
    v["annotations"][0]["bbox"] = json!([1.0, 2.0, 3.0]);
    cases.push(("a box of three numbers", v, &["annotation id 21", "bbox"]));
    let mut v = good();
    v["annotations"][0]["image_id"] = json!("one");
    cases.push((
        "an image id that is a string",
        v,
        &["annotation id 21", "image_id"],
    ));
    let mut v = good();
    v["annotations"][0]["iscrowd"] = json!(2);
    cases.push(("an iscrowd of 2", v, &["annotation id 21", "iscrowd"]));
    let mut v = good();
    v["annotations"][0]["id"] = json!(1.5);
    cases.push((
        "an annotation id that is not an integer",
        v,
        &["annotations[0]"],
    ));
    let mut v = good();
    v["categories"][1]["id"] = json!(3);
    cases.push(("a repeated category id", v, &["category id 3"]));
    let mut v = good();
    v.as_object_mut().unwrap().remove("images");
    cases.push(("no images", v, &["images"]));
    for (what, gt, needles) in cases {
        let (file, images) = broken_case("data_coco_bad_input", &gt);
        let out = tchcv(&["check-data"], &[("--data", &file), ("--images", &images)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(stderr.contains("instances.json"), "{what}: {stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{what}: no {needle:?} in {stderr}");
        }
    }
    // Not JSON at all, and the formats forced the wrong way round.
    let (file, images) = broken_case("data_coco_bad_input", &good());
    std::fs::write(&file, "{ not json").unwrap();
    let out = tchcv(&["check-data"], &[("--data", &file), ("--images", &images)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("instances.json"));
    let out = tchcv(&["check-data", "--format", "voc"], &[("--data", &file)]);
    assert_eq!(out.status.code(), Some(2));
    let voc = synth("data_coco_bad_format", 2, 0);
    let out = tchcv(&["check-data", "--format", "coco"], &[("--data", &voc)]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- crowd regions: ignored anchors, never positives ----

fn spec(path: &str) -> ModelSpec {
    ModelSpec::load(&common::repo().join(path)).unwrap()
}

#[test]
fn crowd_regions_give_ignored_anchors_not_positives() {
    // Detectron's rule, recomputed here: crowd regions are not matched (the object's targets
    // are those of the object alone, even where the crowd overlaps it), and a background
    // anchor with at least 0.7 of its area inside a crowd region is ignored (-1).
    let inside = |a: &[f32; 4], c: &[f32; 4]| {
        let w = (a[2].min(c[2]) - a[0].max(c[0])).max(0.0);
        let h = (a[3].min(c[3]) - a[1].max(c[1])).max(0.0);
        let area = (a[2] - a[0]) * (a[3] - a[1]);
        area > 0.0 && w * h / area >= 0.7
    };
    let expected = |alone: &[i64], anchors: &[[f32; 4]], crowd: &[f32; 4]| -> Vec<i64> {
        alone
            .iter()
            .zip(anchors)
            .map(|(&l, a)| if l == 0 && inside(a, crowd) { -1 } else { l })
            .collect()
    };
    let coder = BoxCoder::from_spec(&spec("models/ssd_small.json")).unwrap();
    let anchors = &coder.host_anchors().xyxy;
    let object = [10.0, 12.0, 50.0, 60.0];
    let crowd = [30.0, 40.0, 150.0, 140.0];
    let plain = coder.encode(&[object, crowd], &[0, 3]).unwrap();
    let flagged = coder
        .encode_with_crowd(&[object, crowd], &[0, 3], &[false, true])
        .unwrap();
    let alone = coder.encode(&[object], &[0]).unwrap();
    let host = |t: &tch::Tensor| Vec::<i64>::try_from(t.view([-1])).unwrap();
    let (plain_cls, flagged_cls, alone_cls) = (
        host(&plain.cls_targets),
        host(&flagged.cls_targets),
        host(&alone.cls_targets),
    );
    assert!(
        plain_cls.contains(&4),
        "unflagged, the crowd box owns anchors"
    );
    let want = expected(&alone_cls, anchors, &crowd);
    assert!(want.contains(&-1) && want.contains(&1) && want.contains(&0));
    assert_eq!(flagged_cls, want, "SSD labels with a crowd region");
    assert_eq!(flagged.num_pos_per_box, vec![alone.num_pos_per_box[0], 0]);
    assert_eq!(
        Vec::<f32>::try_from(flagged.loc_targets.view([-1])).unwrap(),
        Vec::<f32>::try_from(alone.loc_targets.view([-1])).unwrap(),
        "the object's box targets, and none for the crowd"
    );
    // Through the loader's target encoder: a crowd region alone gives no positive.
    let encoder: &dyn TargetEncoder = &coder;
    let (_, cls) = encoder.encode_with_crowd(&[crowd], &[3], &[true]).unwrap();
    let no_object = vec![0i64; anchors.len()];
    assert_eq!(host(&cls), expected(&no_object, anchors, &crowd));
    // The RPN's labels.
    let rpn = RpnCoder::from_spec(&spec("models/rpn_small.json")).unwrap();
    let rpn_anchors = &rpn.host_anchors().xyxy;
    let alone = rpn.label(&[object]).unwrap();
    let flagged = rpn
        .label_with_crowd(&[object, crowd], &[false, true])
        .unwrap();
    assert!(rpn.label(&[crowd]).unwrap().labels.contains(&1));
    let want = expected(&alone.labels, rpn_anchors, &crowd);
    assert!(want.contains(&-1) && want.contains(&1));
    assert_eq!(flagged.labels, want, "RPN labels with a crowd region");
    assert_eq!(flagged.matched_gt, alone.matched_gt);
    assert_eq!(flagged.regression_targets, alone.regression_targets);
}

#[test]
fn crowd_annotations_of_coco_data_are_ignored_in_training_batches() {
    let gt = json!({
        "images": [image(1, "img0.jpg")],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4.0, 4.0, 60.0, 60.0], "iscrowd": 1},
        ],
        "categories": categories(),
    });
    let (file, images) = broken_case("data_coco_crowd_batch", &gt);
    let source = DataSource {
        root: file,
        format: Some(DataFormat::Coco),
        images: Some(images),
    };
    let (ds, _) = open_dataset(&source, &[], &ReadOptions::default()).unwrap();
    assert!(ds.records[0].objects[0].crowd);
    let spec = spec("models/ssd_small.json");
    let coder = Arc::new(BoxCoder::from_spec(&spec).unwrap());
    let [w, h] = spec.input_size;
    let mut config = LoaderConfig::eval([w as u32, h as u32], 1, 1);
    config.use_difficult = false;
    let loader = Loader::new(Arc::new(ds), coder, config).unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let cls = Vec::<i64>::try_from(batch.cls_targets.view([-1])).unwrap();
    assert!(
        cls.iter().all(|&c| c <= 0),
        "a crowd region made a positive"
    );
    assert!(
        cls.contains(&-1),
        "the crowd region's anchors should be ignored"
    );
    assert_eq!(batch.crowd, vec![vec![true]]);
}

// ---- training and evaluation on the COCO copy ----

/// A 2-iteration run with `--metric coco` on the COCO copy of synthetic data, checked:
/// returns (VOC original, COCO copy, run folder).
fn train_on_coco() -> (PathBuf, PathBuf, PathBuf) {
    let voc = synth("data_coco_train_voc", 16, 8);
    let coco = convert(&voc, "coco", "trainval,test", "data_coco_train_coco");
    let run = common::scratch("data_coco_train_run");
    let mut train = vec!["train", "--sets", "trainval", "--test-sets", "test"];
    train.extend(["--metric", "coco"]);
    train.extend(common::TINY_TRAINING);
    let stdout = ok(
        &tchcv(&train, &[("--data", &coco), ("--out", &run)]),
        "tchcv train on COCO data",
    );
    assert!(stdout.contains("COCO AP"), "{stdout}");
    assert!(run.join("best.safetensors").is_file());
    let coco_eval = instances(&run.join("eval_coco.json"));
    assert_eq!(coco_eval["stats"].as_array().unwrap().len(), 12);
    let evals = common::metrics(&run, "eval");
    let last = evals.last().expect("an eval record");
    assert!(
        last["coco_ap"].is_number() && last["map_voc07"].is_number(),
        "{last}"
    );
    (voc, coco, run)
}

/// `tchcv eval --checkpoint --metric coco` on `data`'s test set: the JSON result, and the folder
/// with `coco_results.json` and `coco_instances.json`.
fn coco_eval_of(run: &Path, data: &Path, name: &str) -> (Value, PathBuf) {
    let (json_out, dets) = (run.join(format!("{name}.json")), run.join(name));
    let eval = [
        "eval", "--sets", "test", "--device", "cpu", "--metric", "coco",
    ];
    let checkpoint = run.join("last.safetensors");
    let paths = [
        ("--data", data),
        ("--checkpoint", &checkpoint),
        ("--out", &dets),
        ("--json", &json_out),
    ];
    let stdout = ok(&tchcv(&eval, &paths), "tchcv eval --metric coco");
    assert!(
        stdout.lines().take(12).all(|l| l.starts_with(" Average ")),
        "{stdout}"
    );
    (instances(&json_out), dets)
}

#[test]
fn train_with_the_coco_metric_and_eval_on_the_coco_copy() {
    let (voc, coco, run) = train_on_coco();
    // The COCO metric of one checkpoint: the same on the COCO copy and on the VOC original.
    let (on_coco, dets) = coco_eval_of(&run, &coco, "eval_on_coco");
    let (on_voc, _) = coco_eval_of(&run, &voc, "eval_on_voc");
    assert_eq!(on_coco["stats"], on_voc["stats"]);
    // The results and ground truth written use the data's own image and category ids.
    let written = instances(&dets.join("coco_instances.json"));
    let original = instances(&coco.join("annotations/instances_test.json"));
    let ids = |v: &Value| -> Vec<Value> {
        let images = v["images"].as_array().unwrap();
        images.iter().map(|i| i["id"].clone()).collect()
    };
    assert_eq!(ids(&written), ids(&original));
    assert_eq!(written["categories"], original["categories"]);
    // Scored again from the files: against the instances file, and against the data.
    let (results, again) = (dets.join("coco_results.json"), run.join("again.json"));
    let instances_file = dets.join("coco_instances.json");
    let paths = [
        ("--coco-gt", &instances_file),
        ("--detections", &results),
        ("--json", &again),
    ];
    ok(&tchcv(&["eval"], &paths), "eval --coco-gt");
    assert_eq!(instances(&again)["stats"], on_coco["stats"]);
    let paths = [
        ("--data", &coco),
        ("--detections", &results),
        ("--json", &again),
    ];
    let args = ["eval", "--sets", "test", "--metric", "coco"];
    ok(&tchcv(&args, &paths), "eval a results file on COCO data");
    assert_eq!(instances(&again)["stats"], on_coco["stats"]);
}

// ---- the shared datasets ----

#[test]
fn shared_datasets_convert_and_check_identically() {
    for name in [
        "voc2012_subset_rafaelpadilla",
        "playing_cards_edjeelectronics",
        "bccd_shenggan",
    ] {
        let Some(root) = common::shared_dataset(name) else {
            continue;
        };
        let coco = convert(
            &root,
            "coco",
            "trainval,test",
            &format!("data_coco_shared_{name}"),
        );
        for set in ["trainval", "test"] {
            let (a, b) = (open(&root, set), open(&coco, set));
            assert_eq!(a.classes.names(), b.classes.names(), "{name} {set}");
            assert_eq!(held(&a), held(&b), "{name} {set}: records differ");
        }
        let report = |data: &Path, out: &str| -> Value {
            let json_out = coco.join(out);
            let args = ["check-data", "--sets", "trainval,test", "--headers-only"];
            let run = tchcv(&args, &[("--data", data), ("--json", &json_out)]);
            assert!(
                run.status.code().is_some_and(|c| c <= 1),
                "{name}: check-data crashed"
            );
            instances(&json_out)
        };
        let (a, b) = (report(&root, "voc.json"), report(&coco, "coco.json"));
        for key in [
            "images",
            "images_without_objects",
            "objects",
            "difficult",
            "classes",
            "size_range",
        ] {
            assert_eq!(a[key], b[key], "{name}: check-data {key}");
        }
        // What the VOC reader fixed up (dropped or clipped boxes) is fixed in the copy: the
        // copy has no problems beyond images without objects.
        let counts = b["problem_counts"].as_object().unwrap();
        assert!(
            counts.keys().all(|k| k == "no-objects"),
            "{name}: {counts:?}"
        );
    }
}

// ---- boxes under one pixel, negative areas, repeated image ids, category ids ----

/// `tchcv check-data` of `file` (images in `images`; `extra` arguments): its exit code and the
/// JSON report.
fn check_data_json(file: &Path, images: &Path, extra: &[(&str, &Path)]) -> (Option<i32>, Value) {
    let json_out = file.with_file_name("report.json");
    let mut paths = vec![
        ("--data", file),
        ("--images", images),
        ("--json", &json_out),
    ];
    paths.extend_from_slice(extra);
    let out = tchcv(&["check-data"], &paths);
    (out.status.code(), instances(&json_out))
}

/// The details of the problems of kind `kind` in a check-data report (each with its file).
fn details(report: &Value, kind: &str) -> Vec<String> {
    let problems = report["problems"].as_array().unwrap();
    problems
        .iter()
        .filter(|p| p["kind"] == json!(kind))
        .map(|p| format!("{} {}", p["file"], p["detail"]))
        .collect()
}

/// A COCO results file in `dir` holding each annotation box of `gt` as a detection (score 1,
/// the data's own ids).
fn perfect_results(dir: &Path, gt: &Value) -> PathBuf {
    let results: Vec<Value> = gt["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            json!({"image_id": a["image_id"], "category_id": a["category_id"],
                   "bbox": a["bbox"], "score": 1.0})
        })
        .collect();
    let path = dir.join("results.json");
    std::fs::write(&path, Value::from(results).to_string()).unwrap();
    path
}

/// `tchcv eval --metric coco` of the results file `results` on `data` (set `sets`): COCO AP.
fn coco_ap(data: &Path, images: Option<&Path>, sets: &str, results: &Path) -> f64 {
    let json_out = results.with_file_name("coco_eval.json");
    let mut paths = vec![
        ("--data", data),
        ("--detections", results),
        ("--json", &json_out),
    ];
    if let Some(images) = images {
        paths.push(("--images", images));
    }
    let args = ["eval", "--sets", sets, "--metric", "coco"];
    ok(&tchcv(&args, &paths), "tchcv eval --metric coco");
    instances(&json_out)["stats"][0]["value"].as_f64().unwrap()
}

#[test]
fn boxes_under_one_pixel_are_dropped_and_eval_and_convert_work() {
    let gt = json!({
        "images": [image(1, "img0.jpg"), image(2, "img1.jpg")],
        "annotations": [
            ann(30, 1, 3, [10.0, 10.0, 20.0, 20.0]),
            ann(31, 1, 3, [5.0, 5.0, 0.5, 10.0]),
            ann(32, 2, 7, [20.0, 20.0, 10.0, 0.25]),
            ann(33, 2, 7, [30.5, 30.25, 20.0, 20.5]),
            ann(34, 2, 3, [95.5, 10.0, 10.0, 10.0]),
        ],
        "categories": categories(),
    });
    let (file, images) = broken_case("data_coco_sub_pixel", &gt);
    let (code, report) = check_data_json(&file, &images, &[]);
    assert_eq!(code, Some(0), "warnings only: {report}");
    let dropped = details(&report, "degenerate-box");
    assert_eq!(dropped.len(), 3, "{dropped:?}");
    for id in [31, 32, 34] {
        let needle = format!("annotation id {id}");
        assert!(
            dropped
                .iter()
                .any(|d| d.contains(&needle) && d.contains("instances.json")),
            "no {needle} in {dropped:?}"
        );
    }
    assert_eq!(report["objects"], json!(2), "{report}");
    // Every box kept is a valid VOC box, and the kept ones are exactly as given.
    let source = DataSource {
        root: file.clone(),
        format: None,
        images: Some(images.clone()),
    };
    let (ds, _) = open_dataset(&source, &[], &ReadOptions::default()).unwrap();
    let boxes: Vec<[f32; 4]> = ds
        .records
        .iter()
        .flat_map(|r| r.objects.iter().map(|o| o.bbox))
        .collect();
    assert_eq!(
        boxes,
        vec![[11.0, 11.0, 30.0, 30.0], [31.5, 31.25, 50.5, 50.75]]
    );
    // The evaluation (both metrics) runs on it; perfect detections score 1.
    let mut kept = gt.clone();
    kept["annotations"] = json!([gt["annotations"][0], gt["annotations"][3]]);
    let results = perfect_results(file.parent().unwrap(), &kept);
    let paths = [
        ("--data", file.as_path()),
        ("--images", &images),
        ("--detections", &results),
    ];
    let stdout = ok(
        &tchcv(&["eval", "--sets", "instances"], &paths),
        "tchcv eval",
    );
    assert!(stdout.contains("mAP"), "{stdout}");
    let ap = coco_ap(&file, Some(&images), "instances", &results);
    assert!(ap > 0.99, "COCO AP {ap}");
    // Converted to VOC: no inverted box; the VOC copy reads without a problem but the image
    // without objects.
    let out = common::scratch("data_coco_sub_pixel_voc");
    let args = ["convert", "--to", "voc"];
    let paths = [
        ("--data", file.as_path()),
        ("--images", &images),
        ("--out", &out),
    ];
    ok(&tchcv(&args, &paths), "tchcv convert --to voc");
    let back = open(&out, "instances");
    let back_boxes: Vec<[f32; 4]> = back
        .records
        .iter()
        .flat_map(|r| r.objects.iter().map(|o| o.bbox))
        .collect();
    assert_eq!(back_boxes, boxes);
    let json_out = out.join("report.json");
    let args = ["check-data", "--sets", "instances"];
    let run = tchcv(&args, &[("--data", &out), ("--json", &json_out)]);
    assert_eq!(run.status.code(), Some(0));
    let counts = &instances(&json_out)["problem_counts"];
    assert!(counts.get("degenerate-box").is_none(), "{counts}");
}

#[test]
fn a_negative_area_is_a_counted_problem_and_dropped() {
    let mut gt = json!({
        "images": [image(1, "img0.jpg")],
        "annotations": [
            ann(41, 1, 3, [10.0, 10.0, 20.0, 20.0]),
            ann(42, 1, 7, [40.0, 40.0, 30.0, 30.0]),
        ],
        "categories": categories(),
    });
    gt["annotations"][0]["area"] = json!(-5.0);
    gt["annotations"][1]["area"] = json!(700.0);
    let (file, images) = broken_case("data_coco_negative_area", &gt);
    let (code, report) = check_data_json(&file, &images, &[]);
    assert_eq!(code, Some(0), "a warning: {report}");
    let bad = details(&report, "bad-area");
    assert_eq!(bad.len(), 1, "{report}");
    assert!(
        bad[0].contains("instances.json") && bad[0].contains("annotation id 41"),
        "{bad:?}"
    );
    let source = DataSource {
        root: file.clone(),
        format: None,
        images: Some(images.clone()),
    };
    let (ds, _) = open_dataset(&source, &[], &ReadOptions::default()).unwrap();
    let areas: Vec<Option<f64>> = ds.records[0].objects.iter().map(|o| o.area).collect();
    assert_eq!(areas, vec![None, Some(700.0)]);
    // The COCO metric scores it (the box's area stands in for the dropped one).
    let results = perfect_results(file.parent().unwrap(), &gt);
    let ap = coco_ap(&file, Some(&images), "instances", &results);
    assert!(ap > 0.99, "COCO AP {ap}");
}

/// A standard COCO layout in scratch folder `name` with sets `a` and `b`, both numbering their
/// two images from 1 (different image files); returns the root and each set's instances.
fn two_sets_from_one(name: &str) -> (PathBuf, Value, Value) {
    let (_, pool) = broken_case(&format!("{name}_pool"), &json!({}));
    let root = common::scratch(name);
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    let a = json!({
        "images": [image(1, "a0.jpg"), image(2, "a1.jpg")],
        "annotations": [
            ann(1, 1, 3, [10.0, 10.0, 30.0, 30.0]),
            ann(2, 2, 7, [40.0, 40.0, 30.0, 30.0]),
        ],
        "categories": categories(),
    });
    let b = json!({
        "images": [image(1, "b0.jpg"), image(2, "b1.jpg")],
        "annotations": [
            ann(1, 1, 7, [50.0, 10.0, 30.0, 30.0]),
            ann(2, 2, 3, [5.0, 50.0, 20.0, 20.0]),
        ],
        "categories": categories(),
    });
    for (set, gt, offset) in [("a", &a, 0), ("b", &b, 2)] {
        let dir = root.join(set);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..2 {
            let from = pool.join(format!("img{}.jpg", k + offset));
            std::fs::copy(from, dir.join(format!("{set}{k}.jpg"))).unwrap();
        }
        let path = root.join(format!("annotations/instances_{set}.json"));
        std::fs::write(path, gt.to_string()).unwrap();
    }
    (root, a, b)
}

#[test]
fn sets_that_repeat_image_ids_keep_every_record_apart() {
    use tchcv::eval::coco::{self as metric, CocoParams, CocoView};
    use tchcv::eval::voc::{Detection, VocEvalConfig};
    let (root, a, _) = two_sets_from_one("data_coco_repeated_ids");
    let both = open(&root, "a,b");
    let ids: Vec<&str> = both.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a/1", "a/2", "b/1", "b/2"]);
    let coco_ids: Vec<_> = both.records.iter().map(|r| r.coco_id).collect();
    assert_eq!(coco_ids, [Some(1), Some(2), Some(1), Some(2)]);
    let alone = open(&root, "a");
    let ids: Vec<&str> = alone.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["1", "2"], "one set keeps the plain image ids");
    // Perfect detections score 1 by both metrics: no record takes another's ground truth.
    let detections: Vec<Detection> = both
        .records
        .iter()
        .flat_map(|r| {
            r.objects.iter().map(|o| Detection {
                image_id: r.id.clone(),
                class: o.class_id,
                score: 1.0,
                bbox: o.bbox,
            })
        })
        .collect();
    let classes = both.classes.names().to_vec();
    let gt = tchcv::eval::ground_truth_of(&both, false);
    let voc = tchcv::eval::evaluate(&classes, &gt, &detections, &VocEvalConfig::default());
    let map = voc.unwrap().map_voc07;
    assert!((map - 1.0).abs() < 1e-9, "VOC07 mAP {map}");
    let view = CocoView::of(&both, false).unwrap();
    let images: Vec<i64> = view.gt.images.iter().map(|i| i.id).collect();
    assert_eq!(images, [1, 2, 3, 4], "each record its own COCO image");
    let results = view.detections_from_voc(&detections).unwrap();
    let coco = metric::evaluate(&view.gt, &results, &CocoParams::default()).unwrap();
    assert!(
        coco.result().stats[0].value > 0.99,
        "{:?}",
        coco.result().stats
    );
    // The CLI: devkit results files of both sets, and a results file with set a's own ids.
    let dets = common::scratch("data_coco_repeated_ids_dets");
    tchcv::eval::write_voc_results(&dets, "", &classes, &detections).unwrap();
    let paths = [("--data", root.as_path()), ("--detections", &dets)];
    let stdout = ok(&tchcv(&["eval", "--sets", "a,b"], &paths), "eval a,b");
    assert!(stdout.contains("mAP"), "{stdout}");
    let results = perfect_results(&dets, &a);
    let ap = coco_ap(&root, None, "a", &results);
    assert!(ap > 0.99, "COCO AP on set a with its own ids: {ap}");
}

#[test]
fn a_category_id_without_one_above_it_exits_2_naming_the_file() {
    let gt = json!({
        "images": [image(1, "img0.jpg")],
        "annotations": [ann(51, 1, i64::MAX, [10.0, 10.0, 20.0, 20.0])],
        "categories": [{"id": i64::MAX, "name": "circle"}],
    });
    let (file, images) = broken_case("data_coco_category_overflow", &gt);
    // The id itself is fine.
    let (code, report) = check_data_json(&file, &images, &[]);
    assert_eq!(code, Some(0), "{report}");
    // A class that needs a fresh id above it is bad input.
    let classes = file.with_file_name("classes.txt");
    std::fs::write(&classes, "circle\nsquare\n").unwrap();
    let paths = [
        ("--data", file.as_path()),
        ("--images", &images),
        ("--classes", &classes),
    ];
    let out = tchcv(&["check-data"], &paths);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("instances.json"), "{stderr}");
    assert!(stderr.contains(&i64::MAX.to_string()), "{stderr}");
}
