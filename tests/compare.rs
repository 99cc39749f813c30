//! `tchcv compare` and `tchcv train --seeds` on short synthetic runs: the table's values are
//! each run's own eval.json, seeds of one experiment are grouped as mean and spread, classes
//! are ordered by their object count, the pictures are written, and runs on other data are
//! refused unless --force.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tchcv::data::synth::{write_dataset, SynthConfig};

use common::success as ok;
use tchcv::data::{ReadOptions, SetSpec, VocDataset};

fn synth(name: &str, seed: u64) -> PathBuf {
    let dir = common::scratch(name);
    let config = SynthConfig {
        train: 24,
        test: 8,
        size: (128, 128),
        seed,
        ..SynthConfig::default()
    };
    write_dataset(&dir, &config).expect("synthetic data");
    dir
}

fn tchcv(args: &[&str]) -> Output {
    Command::new(common::tchcv_bin())
        .args(args)
        .output()
        .expect("run tchcv")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A few iterations (of the small SSD unless `extra` names a model), evaluated on the test
/// split.
fn train(data: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--data",
        s(data),
        "--sets",
        "trainval",
        "--test-sets",
        "test",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--batch",
        "8",
        "--iters",
        "4",
        "--lr",
        "0.01",
        "--out",
        s(out),
    ];
    if !extra.contains(&"--model") {
        args.extend(["--model", "models/ssd_small.json"]);
    }
    args.extend_from_slice(extra);
    ok(&tchcv(&args), &format!("train {}", out.display()));
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Mean and sample standard deviation.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let ss: f64 = v.iter().map(|x| (x - m).powi(2)).sum();
    (m, (ss / (v.len() - 1).max(1) as f64).sqrt())
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-12 + 1e-9 * b.abs(),
        "{what}: {a} vs {b}"
    );
}

#[test]
fn compare_reports_each_runs_own_evaluation_grouped_by_seed() {
    let data = synth("compare_data", 5);
    let root = common::scratch("compare_runs");
    let hard = root.join("hard");
    let all = root.join("all");
    // Two seeds of one experiment through --seeds, and another cure.
    train(&data, &hard, &["--seeds", "0,1"]);
    train(&data, &all, &["--neg-mining", "all"]);
    assert!(
        hard.join("compare.md").is_file(),
        "--seeds compares its runs"
    );

    let out = root.join("report");
    let runs = [hard.join("seed-0"), hard.join("seed-1"), all.clone()];
    let mut args = vec!["compare", "--out", s(&out)];
    args.extend(runs.iter().map(|p| s(p)));
    let table = ok(&tchcv(&args), "compare");
    assert!(
        table.contains("| hard |") && table.contains("0 (1 seed)"),
        "{table}"
    );

    let report = read(&out.join("compare.json"));
    let experiments = report["experiments"].as_array().unwrap();
    assert_eq!(experiments.len(), 2, "{report}");
    let evals: Vec<Value> = runs.iter().map(|r| read(&r.join("eval.json"))).collect();
    let map07 = |i: usize| evals[i]["map_voc07"].as_f64().unwrap();
    let (m, sd) = mean_sd(&[map07(0), map07(1)]);
    let hard_exp = &experiments[0];
    assert_eq!(hard_exp["seeds"], serde_json::json!([0, 1]));
    close(
        hard_exp["map_voc07"]["mean"].as_f64().unwrap(),
        m,
        "hard mAP mean",
    );
    close(
        hard_exp["map_voc07"]["spread"].as_f64().unwrap(),
        sd,
        "hard mAP spread",
    );
    close(
        experiments[1]["map_voc07"]["mean"].as_f64().unwrap(),
        map07(2),
        "all mAP",
    );
    assert!(experiments[1]["map_voc07"]["spread"].is_null());
    assert_eq!(experiments[1]["cure"]["label"], "SSD loss, all negatives");

    // Per run, per class: the run's own eval.json.
    for (run, eval) in report["runs"].as_array().unwrap().iter().zip(&evals) {
        for class in eval["classes"].as_array().unwrap() {
            let name = class["class"].as_str().unwrap();
            assert_eq!(run["ap_voc07"][name], class["ap_voc07"], "{name}");
        }
    }

    // Classes by their training object count, counted here from the annotations.
    let specs = SetSpec::parse_list("trainval").unwrap();
    let (dataset, _) = VocDataset::open(&data, &specs, &ReadOptions::default()).unwrap();
    let mut counts = vec![0u64; dataset.classes.len()];
    for o in dataset.records.iter().flat_map(|r| &r.objects) {
        if !o.difficult {
            counts[o.class_id] += 1;
        }
    }
    let classes = report["classes"].as_array().unwrap();
    let listed: Vec<u64> = classes
        .iter()
        .map(|c| c["objects"].as_u64().unwrap())
        .collect();
    assert!(
        listed.windows(2).all(|w| w[0] >= w[1]),
        "most frequent first: {listed:?}"
    );
    for c in classes {
        let name = c["name"].as_str().unwrap();
        let id = dataset.classes.id(name).unwrap();
        assert_eq!(c["objects"].as_u64().unwrap(), counts[id], "{name}");
    }

    for picture in ["compare-ap.png", "compare-loss.png", "compare-pr.png"] {
        let bytes = std::fs::read(out.join(picture)).unwrap();
        assert!(
            bytes.len() > 2000 && bytes.starts_with(b"\x89PNG"),
            "{picture}"
        );
        let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let distinct = image
            .pixels()
            .take(200_000)
            .collect::<std::collections::HashSet<_>>();
        assert!(distinct.len() > 3, "{picture} is not blank");
    }
}

#[test]
fn runs_on_other_data_are_refused_unless_forced() {
    let data = synth("compare_refuse_data", 5);
    let other = synth("compare_refuse_other", 6);
    let root = common::scratch("compare_refuse_runs");
    let (a, b) = (root.join("a"), root.join("b"));
    train(&data, &a, &[]);
    train(&other, &b, &[]);
    let out = root.join("report");
    let refused = tchcv(&["compare", "--out", s(&out), s(&a), s(&b)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("data:") && stderr.contains("--force"),
        "{stderr}"
    );
    ok(
        &tchcv(&["compare", "--force", "--out", s(&out), s(&a), s(&b)]),
        "compare --force",
    );
    let report = read(&out.join("compare.json"));
    assert_eq!(report["forced"], true);
    assert!(std::fs::read_to_string(out.join("compare.md"))
        .unwrap()
        .contains("**Forced**"));
    let not_a_run = tchcv(&["compare", "--out", s(&out), s(&data)]);
    assert_eq!(not_a_run.status.code(), Some(2));
}

/// Region proposal networks are compared by their proposal recall (their eval.json), each
/// value the run's own.
#[test]
fn proposal_networks_are_compared_by_recall() {
    let data = synth("compare_rpn_data", 5);
    let root = common::scratch("compare_rpn_runs");
    let (random, hard) = (root.join("random"), root.join("hard"));
    let rpn = ["--model", "models/rpn_small.json", "--loss", "rpn"];
    train(
        &data,
        &random,
        &[&rpn[..], &["--rpn-sampler", "random"]].concat(),
    );
    train(
        &data,
        &hard,
        &[&rpn[..], &["--rpn-sampler", "hard"]].concat(),
    );
    let out = root.join("report");
    let table = ok(
        &tchcv(&["compare", "--out", s(&out), s(&random), s(&hard)]),
        "compare rpn",
    );
    assert!(table.contains("AR@1000"), "{table}");
    let report = read(&out.join("compare.json"));
    for (run, dir) in report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .zip([&random, &hard])
    {
        let own = read(&dir.join("eval.json"));
        assert_eq!(run["ar_1000"], own["ar_1000"]);
        assert_eq!(run["recall_50"], own["recall_50"]);
    }
    assert_eq!(report["experiments"].as_array().unwrap().len(), 2);
}

#[test]
fn the_study_script_trains_every_cure_and_compares_each_kind() {
    // scripts/imbalance-study.sh end to end at a toy size: the six one-stage cures and the three
    // two-stage ones, one seed, two iterations each; then a second call finds them done.
    let data = synth("study-data", 5);
    let out = common::scratch("study-out");
    let cures = "ssd-hard,ssd-random,ssd-all,sigmoid-focal,softmax-focal-dataset,\
                 softmax-focal-batch,frcnn-random,frcnn-ohem,frcnn-all-focal";
    let run = || {
        Command::new("bash")
            .arg(common::repo().join("scripts/imbalance-study.sh"))
            .args([s(&data), "--model", "models/ssd_small.json", "--iters", "2"])
            .args([
                "--seeds",
                "0",
                "--out",
                s(&out),
                "--cures",
                cures,
                "--",
                "--workers",
                "1",
            ])
            .env("TCHCV_BIN", common::tchcv_bin())
            .env("TCHCV_PYTHON", common::python())
            .current_dir(common::repo())
            .output()
            .unwrap()
    };
    ok(&run(), "imbalance-study.sh");
    let one: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    let two: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("two-stage/compare.json")).unwrap())
            .unwrap();
    let count = |v: &Value| v["experiments"].as_array().map_or(0, |a| a.len());
    assert_eq!((count(&one), count(&two)), (6, 3), "{one}\n{two}");
    let table = std::fs::read_to_string(out.join("two-stage/compare.md")).unwrap();
    assert!(table.contains("RoIs: ohem sample"), "{table}");
    let again = ok(&run(), "imbalance-study.sh again");
    assert_eq!(again.matches("done before").count(), 9, "{again}");
}
