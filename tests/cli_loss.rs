//! `tchcv loss`: JSON output equal to the reference values of a committed fixture, gradients
//! written to a file, and bad input exits with status 2 and a message naming the tensor.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use tch::{Kind, Tensor};

fn tchcv(args: &[&str]) -> Output {
    Command::new(common::tchcv_bin())
        .args(args)
        .output()
        .expect("run tchcv")
}

fn fixture(name: &str) -> (std::path::PathBuf, serde_json::Value) {
    let dir = common::repo().join("tests/fixtures/losses");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    (dir.join(format!("{name}.safetensors")), json)
}

/// The first committed fixture of a loss kind.
fn first_fixture(kind: &str) -> String {
    let dir = common::repo().join("tests/fixtures/losses");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v["loss"] == kind
        })
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {kind} fixture"))
}

/// Flags for the fixture's options, the way a user would type them.
fn option_flags(loss: &str, options: &serde_json::Value) -> Vec<String> {
    let mut flags = vec!["--loss".to_string(), loss.replace('_', "-")];
    for (key, value) in options.as_object().unwrap() {
        let flag = format!(
            "--{}",
            key.replace('_', "-").replace("mining", "neg-mining")
        );
        match value {
            serde_json::Value::Null => flags.extend([flag, "none".into()]),
            serde_json::Value::String(s) => flags.extend([flag, s.clone()]),
            other => flags.extend([flag, other.to_string()]),
        }
    }
    flags
}

fn check_cli_against_fixture(kind: &str) {
    let name = first_fixture(kind);
    let (input, case) = fixture(&name);
    let grads = common::scratch(&format!("cli-loss-{kind}")).join("grads.safetensors");
    let mut args = vec![
        "loss".to_string(),
        "--input".into(),
        input.display().to_string(),
    ];
    args.extend(option_flags(kind, &case["options"]));
    args.extend(["--grads".into(), grads.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tchcv(&args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in ["total", "loc_sum", "cls_sum", "loc_per_pos", "cls_per_pos"] {
        let (g, w) = (
            got[key].as_f64().unwrap(),
            case["expected"][key].as_f64().unwrap(),
        );
        assert!(
            (g - w).abs() <= 1e-6_f64.max(1e-5 * w.abs()),
            "{name}: {key} {g} vs {w}"
        );
    }
    for key in ["num_pos", "num_neg"] {
        assert_eq!(got[key], case["expected"][key], "{name}: {key}");
    }
    let written = common::read_safetensors(&grads);
    let want = common::read_safetensors(&input);
    for key in ["grad_loc_preds", "grad_cls_preds"] {
        common::assert_close(
            &format!("{name}: {key}"),
            &written[key],
            &want[key],
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn ssd_json_and_grads_match_the_reference() {
    check_cli_against_fixture("ssd");
}

#[test]
fn focal_json_and_grads_match_the_reference() {
    check_cli_against_fixture("focal");
}

#[test]
fn softmax_focal_json_and_grads_match_the_reference() {
    check_cli_against_fixture("softmax_focal");
}

#[test]
fn repeat_reports_a_median_time() {
    let (input, _) = fixture(&first_fixture("ssd"));
    let out = tchcv(&["loss", "--input", input.to_str().unwrap(), "--repeat", "3"]);
    assert!(out.status.success());
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["repeat"], 3);
    assert!(got["median_ms"].as_f64().unwrap() > 0.0);
}

fn write_case(path: &Path, tensors: &[(&str, &Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap();
}

fn expect_bad_input(args: &[&str], needles: &[&str]) {
    let out = tchcv(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
}

#[test]
fn bad_input_exits_2_naming_the_tensor() {
    let dir = common::scratch("cli-loss-bad");
    let opts = (Kind::Float, tch::Device::Cpu);
    let loc = Tensor::zeros([2, 10, 4], opts);
    let cls = Tensor::zeros([2, 10, 3], opts);
    let tgt = Tensor::zeros([2, 10], (Kind::Int64, tch::Device::Cpu));

    let missing = dir.join("missing.safetensors");
    write_case(
        &missing,
        &[
            ("loc_preds", &loc),
            ("loc_targets", &loc),
            ("cls_preds", &cls),
        ],
    );
    expect_bad_input(
        &["loss", "--input", missing.to_str().unwrap()],
        &["cls_targets", "missing"],
    );

    let shape = dir.join("shape.safetensors");
    let cls_bad = Tensor::zeros([2, 11, 3], opts);
    write_case(
        &shape,
        &[
            ("loc_preds", &loc),
            ("loc_targets", &loc),
            ("cls_preds", &cls_bad),
            ("cls_targets", &tgt),
        ],
    );
    expect_bad_input(
        &["loss", "--input", shape.to_str().unwrap()],
        &["cls_preds", "[2, 11, 3]"],
    );

    let dtype = dir.join("dtype.safetensors");
    let tgt_f = tgt.to_kind(Kind::Float);
    write_case(
        &dtype,
        &[
            ("loc_preds", &loc),
            ("loc_targets", &loc),
            ("cls_preds", &cls),
            ("cls_targets", &tgt_f),
        ],
    );
    expect_bad_input(
        &["loss", "--input", dtype.to_str().unwrap()],
        &["cls_targets", "int64"],
    );

    let label = dir.join("label.safetensors");
    let tgt_big = tgt.copy();
    let _ = tgt_big.get(0).get(0).fill_(3);
    write_case(
        &label,
        &[
            ("loc_preds", &loc),
            ("loc_targets", &loc),
            ("cls_preds", &cls),
            ("cls_targets", &tgt_big),
        ],
    );
    expect_bad_input(
        &["loss", "--input", label.to_str().unwrap()],
        &["cls_targets", "label 3"],
    );

    let nan = dir.join("nan.safetensors");
    let loc_nan = loc.copy();
    let _ = loc_nan.get(1).fill_(f64::NAN);
    write_case(
        &nan,
        &[
            ("loc_preds", &loc_nan),
            ("loc_targets", &loc),
            ("cls_preds", &cls),
            ("cls_targets", &tgt),
        ],
    );
    expect_bad_input(
        &["loss", "--input", nan.to_str().unwrap()],
        &["loc_preds", "non-finite"],
    );

    expect_bad_input(
        &["loss", "--input", "/nonexistent/case.safetensors"],
        &["no such file"],
    );
    let strict = ["loss", "--input", shape.to_str().unwrap(), "--strict"];
    expect_bad_input(&strict, &["cls_preds"]);
    let ok_zero = dir.join("zero.safetensors");
    write_case(
        &ok_zero,
        &[
            ("loc_preds", &loc),
            ("loc_targets", &loc),
            ("cls_preds", &cls),
            ("cls_targets", &tgt),
        ],
    );
    expect_bad_input(
        &["loss", "--input", ok_zero.to_str().unwrap(), "--strict"],
        &["no positive anchors"],
    );
    let out = tchcv(&["loss", "--input", ok_zero.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "zero positives without --strict is fine"
    );
    expect_bad_input(
        &[
            "loss",
            "--input",
            ok_zero.to_str().unwrap(),
            "--alpha",
            "0.5",
        ],
        &["unknown field `alpha`"],
    );
}

#[test]
fn npz_input_is_accepted() {
    let name = first_fixture("ssd");
    let (input, case) = fixture(&name);
    let tensors = common::read_safetensors(&input);
    let npz = common::scratch("cli-loss-npz").join("case.npz");
    let names = ["loc_preds", "loc_targets", "cls_preds", "cls_targets"];
    let named: Vec<(&str, &Tensor)> = names.iter().map(|n| (*n, &tensors[*n])).collect();
    Tensor::write_npz(&named, &npz).unwrap();
    let out = tchcv(&["loss", "--input", npz.to_str().unwrap(), "--loss", "ssd"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (g, w) = (
        got["total"].as_f64().unwrap(),
        case["expected"]["total"].as_f64().unwrap(),
    );
    assert!((g - w).abs() <= 1e-6_f64.max(1e-5 * w.abs()), "{g} vs {w}");
}
