//! Forward parity: tchcv's detectors against the independent PyTorch reference
//! (`tests/reference/ssd_net.py`), given the same weights.
//!
//! The reference builds the network a spec describes, draws random weights from a fresh seed,
//! runs random images through it and exports weights, images and outputs as safetensors
//! (weights under tchcv's VarStore names). tchcv builds the same spec, loads the weights
//! strictly (every variable, nothing extra, same shapes) and must give the same outputs.
//!
//! Tolerance on CPU: `|a - b| <= 1e-4 * (|b| + max|b|)` elementwise (relative 1e-4; the same
//! libtorch runs both, so the differences are reordered float sums). On CUDA the reference still
//! runs on the CPU and tchcv on the GPU, where cuDNN convolutions use TF32 (10-bit mantissa
//! products; tch cannot turn it off): `|a - b| <= 3e-2 * max|b|`.

mod common;

use std::path::{Path, PathBuf};

use tch::{nn, Device, Tensor};
use tchcv::models::build_from_file;

/// Where the outputs of one comparison are.
struct Case {
    dir: PathBuf,
    spec: PathBuf,
}

/// Run the reference for `spec` into a scratch dir named `name`.
fn reference(name: &str, spec: &Path, classes: i64, batch: i64, train: bool, seed: u64) -> Case {
    let dir = common::scratch(&format!("models_parity/{name}"));
    let mut args = vec![
        "gen".to_string(),
        "--spec".into(),
        spec.display().to_string(),
        "--num-classes".into(),
        classes.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--batch".into(),
        batch.to_string(),
        "--out".into(),
        dir.display().to_string(),
    ];
    if train {
        args.push("--train".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let info = common::run_reference("ssd_net.py", &args);
    eprintln!("{name}: reference {}", info.trim());
    Case {
        dir,
        spec: spec.to_path_buf(),
    }
}

/// Build the spec on `device`, load the case's weights, run its images, compare.
fn compare(name: &str, case: &Case, classes: i64, train: bool, device: Device) {
    let vs = nn::VarStore::new(device);
    let (_spec, detector) = build_from_file(vs.root(), &case.spec, classes).unwrap();
    let weights = common::read_safetensors(&case.dir.join("weights.safetensors"));
    tchcv::io::load_into_varstore(&vs, &weights, false, "reference weights").unwrap();
    let mut expected = common::read_safetensors(&case.dir.join("case.safetensors"));
    let images = expected.remove("images").unwrap().to_device(device);
    let (loc, cls) = tch::no_grad(|| detector.forward_t(&images, train)).unwrap();
    // Returns max |tchcv - torch| / max |torch|.
    let check = |what: &str, got: &Tensor, want: &Tensor| -> f64 {
        let scale = want.abs().max().double_value(&[]);
        assert!(
            scale > 1e-3,
            "{name}: {what} is all zeros: the case tests nothing"
        );
        let got = got.to_device(Device::Cpu);
        if device == Device::Cpu {
            common::assert_close(&format!("{name}: {what}"), &got, want, 1e-4, 1e-4 * scale);
        } else {
            common::assert_close(&format!("{name}: {what}"), &got, want, 0.0, 3e-2 * scale);
        }
        common::max_abs_diff(&got, want) / scale
    };
    for (what, got) in [("loc_preds", &loc), ("cls_preds", &cls)] {
        let want = &expected[what];
        let rel = check(what, got, want);
        eprintln!(
            "{name}: {what} {:?}: max |tchcv - torch| / max |torch| = {rel:.3e}",
            want.size()
        );
    }
    if train {
        let variables = vs.variables();
        let mut worst: f64 = 0.0;
        let mut stats = 0;
        for (key, want) in &expected {
            if let Some(var) = key.strip_prefix("after.") {
                worst = worst.max(check(var, &variables[var], want));
                stats += 1;
            }
        }
        assert!(stats > 0, "{name}: no batch-norm statistics to compare");
        eprintln!(
            "{name}: {stats} running statistics after the forward: worst relative {worst:.3e}"
        );
    }
}

fn spec(name: &str) -> PathBuf {
    common::repo().join("models").join(name)
}

/// A copy of a shipped spec with `edit` applied, written to the case's scratch dir.
fn edited_spec(name: &str, from: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(spec(from)).unwrap()).unwrap();
    edit(&mut value);
    let dir = common::scratch(&format!("models_parity_specs/{name}"));
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    path
}

/// retinanet.json at 256x256 (maps 32, 16, 8, 4, 2), so the test stays fast.
fn retinanet_256(name: &str, network: serde_json::Value, backbone: &str) -> PathBuf {
    edited_spec(name, "retinanet.json", |v| {
        v["name"] = serde_json::json!("retinanet256");
        v["input_size"] = serde_json::json!([256, 256]);
        v["anchors"]["feature_maps"] = serde_json::json!([32, 16, 8, 4, 2]);
        v["num_anchors"] = serde_json::json!(9 * (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2));
        v["backbone"] = serde_json::json!(backbone);
        v["network"] = network;
    })
}

#[test]
fn ssd300_matches_the_pytorch_reference_on_cpu() {
    let seed = common::fresh_seed("ssd300 parity");
    let case = reference("ssd300", &spec("ssd300.json"), 20, 1, false, seed);
    compare("ssd300", &case, 20, false, Device::Cpu);
}

#[test]
fn small_ssd_matches_the_reference_in_training_mode() {
    // Batch statistics in the forward, and the running statistics it updates.
    let seed = common::fresh_seed("small ssd parity (train)");
    let case = reference("small_train", &spec("ssd_small.json"), 5, 3, true, seed);
    compare("small_train", &case, 5, true, Device::Cpu);
}

#[test]
fn small_ssd_variants_match_the_reference() {
    let seed = common::fresh_seed("small ssd parity (plain; no batch norm)");
    let path = edited_spec("small_plain", "ssd_small.json", |v| {
        v["network"] = serde_json::json!({"depthwise": false, "width": 0.75});
    });
    let case = reference("small_plain", &path, 20, 2, false, seed);
    compare("small_plain", &case, 20, false, Device::Cpu);
    let path = edited_spec("small_nobn", "ssd_small.json", |v| {
        v["network"] = serde_json::json!({"bn": false, "width": 0.5});
    });
    let case = reference("small_nobn", &path, 3, 2, false, seed);
    compare("small_nobn", &case, 3, false, Device::Cpu);
}

#[test]
fn retinanet_resnet50_matches_the_reference() {
    let seed = common::fresh_seed("retinanet parity");
    let path = retinanet_256("retina_r50", serde_json::Value::Null, "resnet50");
    let case = reference("retina_r50", &path, 20, 1, false, seed);
    compare("retina_r50", &case, 20, false, Device::Cpu);
}

#[test]
fn retinanet_options_match_the_reference() {
    // ResNet-18 (basic blocks), group-norm heads, P6 from P5, bilinear top-down, 64 channels,
    // two head convs; batch norms training.
    let seed = common::fresh_seed("retinanet parity (options)");
    let network = serde_json::json!({
        "depth": 18, "head_norm": "group_norm", "p6_from": "p5", "upsample": "bilinear",
        "fpn_channels": 64, "head_convs": 2
    });
    let path = retinanet_256("retina_r18", network, "resnet");
    let case = reference("retina_r18", &path, 4, 2, true, seed);
    compare("retina_r18", &case, 4, true, Device::Cpu);
}

#[test]
fn committed_tiny_small_ssd_fixture_matches() {
    // tests/fixtures/models/small_tiny: `ssd_net.py gen --spec .../spec.json --num-classes 3
    // --seed 20261128 --batch 2 --train`, committed so this runs without Python.
    let dir = common::repo().join("tests/fixtures/models/small_tiny");
    let case = Case {
        spec: dir.join("spec.json"),
        dir,
    };
    compare("small_tiny fixture", &case, 3, true, Device::Cpu);
}

#[test]
fn ssd300_and_retinanet_match_the_reference_on_cuda() {
    let Some(device) = common::cuda_or_skip("models parity on CUDA") else {
        return;
    };
    let seed = common::fresh_seed("ssd300 parity (cuda)");
    let case = reference("ssd300_cuda", &spec("ssd300.json"), 20, 2, false, seed);
    compare("ssd300 (cuda)", &case, 20, false, device);
    let path = retinanet_256("retina_cuda", serde_json::Value::Null, "resnet50");
    let case = reference("retina_cuda", &path, 20, 2, true, seed);
    compare("retina_r50 (cuda, train)", &case, 20, true, device);
}
