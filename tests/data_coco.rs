//! COCO-format data (issue 19, data half): a synthetic VOC dataset converted to COCO with
//! `tchcv convert` reads back as the same records; VOC -> COCO -> VOC is lossless for what both
//! hold (`difficult` <-> COCO `"ignore": 1`); `check-data` reports each problem of hand-made
//! broken instances files (a counted problem, or exit 2 naming the file and the annotation id);
//! crowd regions give ignored anchors (-1), never positives; `tchcv train --metric coco` and
//! `tchcv eval --metric coco` run on the COCO copy; the shared VOC datasets convert and check
//! alike. Converted data lives under `target/test-scratch` only.

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
    let coder = BoxCoder::from_spec(&spec("models/ssd_small.json")).unwrap();
    let object = [10.0, 12.0, 50.0, 60.0];
    let crowd = [90.0, 80.0, 150.0, 140.0];
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
    let crowd_anchors: Vec<usize> = (0..plain_cls.len())
        .filter(|&a| plain_cls[a] == 4)
        .collect();
    assert!(
        !crowd_anchors.is_empty(),
        "the crowd box should own anchors"
    );
    for a in 0..flagged_cls.len() {
        if crowd_anchors.contains(&a) {
            assert_eq!(
                flagged_cls[a], -1,
                "anchor {a}: matched to the crowd region"
            );
        } else {
            assert_eq!(
                flagged_cls[a], alone_cls[a],
                "anchor {a}: the object's targets changed"
            );
        }
    }
    assert!(!flagged_cls.contains(&4), "a crowd region made a positive");
    assert_eq!(flagged.num_pos_per_box[1], 0);
    let zero = flagged.loc_targets.index_select(
        0,
        &tch::Tensor::from_slice(&crowd_anchors.iter().map(|&a| a as i64).collect::<Vec<_>>()),
    );
    assert_eq!(zero.abs().sum(tch::Kind::Float).double_value(&[]), 0.0);
    // Through the loader's target encoder, and for the RPN's labels.
    let encoder: &dyn TargetEncoder = &coder;
    let (_, cls) = encoder.encode_with_crowd(&[crowd], &[3], &[true]).unwrap();
    let cls = host(&cls);
    assert!(cls.iter().all(|&c| c <= 0) && cls.contains(&-1));
    let rpn = RpnCoder::from_spec(&spec("models/rpn_small.json")).unwrap();
    let big = [20.0, 20.0, 140.0, 140.0];
    let labels = rpn.label(&[big]).unwrap().labels;
    let ignored = rpn.label_with_crowd(&[big], &[true]).unwrap();
    assert!(labels.contains(&1));
    assert!(!ignored.labels.contains(&1));
    for (a, (&l, &i)) in labels.iter().zip(&ignored.labels).enumerate() {
        assert_eq!(i, if l == 1 { -1 } else { l }, "RPN anchor {a}");
    }
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
