//! `tchcv anchors` and `tchcv encode`: outputs, and exit status 2 with a clear message on bad
//! input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use tchcv::bbox::BoxCoder;
use tchcv::spec::ModelSpec;

fn tchcv(args: &[&str]) -> Output {
    Command::new(common::tchcv_bin())
        .args(args)
        .current_dir(common::repo())
        .output()
        .expect("run tchcv")
}

/// Run tchcv, expect success, return stdout.
fn tchcv_ok(args: &[&str]) -> String {
    let out = tchcv(args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "tchcv {args:?}: {stderr}");
    stdout
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_bad_input(out: &Output, want: &[&str]) {
    let (stdout, stderr) = text(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout {stdout}\nstderr {stderr}"
    );
    for w in want {
        assert!(stderr.contains(w), "stderr {stderr:?} lacks {w:?}");
    }
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

#[test]
fn anchors_writes_the_file_and_counts_per_map() {
    let dir = common::scratch("cli_anchors");
    let out_path = dir.join("anchors.safetensors");
    let out = out_path.to_str().unwrap();
    let stdout = tchcv_ok(&["anchors", "--model", "models/ssd300.json", "--out", out]);
    assert!(stdout.contains("8732 anchors"), "{stdout}");
    assert!(
        stdout.contains("38x38 cells x 4 per cell =   5776"),
        "{stdout}"
    );
    let t = common::read_safetensors(&out_path);
    let anchors = &t["anchors"];
    assert_eq!(anchors.size(), [8732, 4]);
    assert_eq!(
        Vec::<f32>::try_from(anchors.get(0)).unwrap(),
        [4.0, 4.0, 30.0, 30.0]
    );
    assert_eq!(
        Vec::<i64>::try_from(&t["anchors_per_map"]).unwrap(),
        [5776, 2166, 600, 150, 36, 4]
    );
}

#[test]
fn anchors_bad_spec_exits_2_naming_file_and_field() {
    let dir = common::scratch("cli_anchors_bad");
    let spec = write(
        &dir,
        "bad.json",
        r#"{"name": "x", "input_size": [300, 300], "backbone": "b", "head": "ssd",
            "anchors": {"style": "ssd", "feature_maps": [38, 19], "steps": [8],
                        "box_sizes": [30, 60, 90], "aspect_ratios": [[2], [2]]}}"#,
    );
    let out = tchcv(&["anchors", "--model", &spec]);
    assert_bad_input(
        &out,
        &["bad.json: anchors.steps: expected 2 values (one per feature map), got 1"],
    );
    let out = tchcv(&["anchors", "--model", "models/nope.json"]);
    assert_bad_input(&out, &["models/nope.json", "cannot read"]);
}

#[test]
fn encode_scales_to_the_model_input_and_reports_positives() {
    let dir = common::scratch("cli_encode");
    // A 600x450 image: boxes scale by (300/600, 300/450) to SSD300's input.
    let boxes = write(
        &dir,
        "boxes.json",
        r#"{"boxes": [[60, 45, 300, 315], [0, 0, 0, 10], [420, 300, 600, 450]],
            "labels": [4, 1, 11], "image_size": [600, 450]}"#,
    );
    let out_path = dir.join("targets.safetensors");
    let out = out_path.to_str().unwrap();
    let stdout = tchcv_ok(&[
        "encode",
        "--model",
        "models/ssd300.json",
        "--boxes",
        &boxes,
        "--out",
        out,
    ]);
    assert!(stdout.contains("dropped (w or h <= 0)"), "{stdout}");

    let spec = ModelSpec::load(&common::repo().join("models/ssd300.json")).unwrap();
    let coder = BoxCoder::from_spec(&spec).unwrap();
    let (sx, sy) = (300.0f32 / 600.0, 300.0f32 / 450.0);
    let scaled = [
        [60.0 * sx, 45.0 * sy, 300.0 * sx, 315.0 * sy],
        [0.0, 0.0, 0.0, 10.0 * sy],
        [420.0 * sx, 300.0 * sy, 600.0 * sx, 450.0 * sy],
    ];
    let want = coder.encode(&scaled, &[4, 1, 11]).unwrap();
    let t = common::read_safetensors(&out_path);
    assert!(t["loc_targets"].equal(&want.loc_targets));
    assert!(t["cls_targets"].equal(&want.cls_targets));
    for (i, n) in want.num_pos_per_box.iter().enumerate() {
        if i != 1 {
            assert!(
                stdout.contains(&format!("box {i} "))
                    && stdout.contains(&format!("{n} positive anchors")),
                "box {i}: {stdout}"
            );
        }
    }
}

#[test]
fn encode_bad_input_exits_2_with_a_clear_message() {
    let dir = common::scratch("cli_encode_bad");
    let out_path = dir.join("t.safetensors").display().to_string();
    let run = |boxes: &str| {
        tchcv(&[
            "encode",
            "--model",
            "models/ssd300.json",
            "--boxes",
            boxes,
            "--out",
            &out_path,
        ])
    };
    let cases = [
        (
            r#"{"boxes": [[1, 2, 3, 4]], "labels": [0, 1], "image_size": [10, 10]}"#,
            "1 boxes but 2 labels",
        ),
        (
            r#"{"boxes": [[1, 2, 3]], "labels": [0], "image_size": [10, 10]}"#,
            "expected {\"boxes\"",
        ),
        (
            r#"{"boxes": [[1, 2, 3, 4]], "labels": [-2], "image_size": [10, 10]}"#,
            "label -2 is negative",
        ),
        (
            r#"{"boxes": [[1, 2, 3, 4]], "labels": [0], "image_size": [0, 10]}"#,
            "image_size",
        ),
        (
            r#"{"boxes": [[1, 2, 3, 4]], "labels": [0]}"#,
            "missing field `image_size`",
        ),
        (
            r#"{"boxes": [[1, 2, 3, 4]], "labels": [0], "image_size": [10, 10], "x": 1}"#,
            "unknown field `x`",
        ),
        ("not json", "boxes.json: expected"),
    ];
    for (body, want) in cases {
        let boxes = write(&dir, "boxes.json", body);
        assert_bad_input(&run(&boxes), &[want]);
    }
    assert_bad_input(&run("no/such/boxes.json"), &["no/such/boxes.json"]);
    let boxes = write(
        &dir,
        "boxes.json",
        r#"{"boxes": [], "labels": [], "image_size": [10, 10]}"#,
    );
    let out = tchcv(&[
        "encode",
        "--model",
        "models/none.json",
        "--boxes",
        &boxes,
        "--out",
        &out_path,
    ]);
    assert_bad_input(&out, &["models/none.json"]);
}
