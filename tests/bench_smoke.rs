//! Every `tchcv bench` runs end to end at a tiny size, with its PyTorch side, and reports both
//! timings (no speed is asserted: speed is shown by benchmarks, not tests). The loss bench also
//! checks that both sides computed the same loss.

mod common;

use std::process::Command;

use serde_json::Value;

fn bench(name: &str, args: &[&str]) -> Value {
    let json = common::scratch(&format!("bench-{name}")).join("row.json");
    let out = Command::new(common::tchcv_bin())
        .arg("bench")
        .args(args)
        .args(["--device", "cpu", "--json", json.to_str().unwrap()])
        .env("TCHCV_PYTHON", common::python())
        .env("TCHCV_BENCH_DIR", common::repo().join("bench"))
        .current_dir(common::repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = rows[0].clone();
    for key in ["tchcv_ms", "pytorch_ms", "speedup"] {
        let v = row[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{name}: {key} = {v} in {row}");
    }
    row
}

#[test]
fn every_benchmark_runs_both_sides() {
    for loss in ["ssd", "focal", "softmax-focal"] {
        let row = bench(
            loss,
            &[
                "loss", "--loss", loss, "--n", "2", "--a", "300", "--c", "5", "--repeat", "2",
            ],
        );
        let (a, b) = (
            row["extra"]["tchcv_total"].as_f64().unwrap(),
            row["extra"]["pytorch_total"].as_f64().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{loss}: {a} vs {b}"
        );
    }
    bench("encode", &["encode", "--images", "4", "--max-boxes", "5"]);
    bench(
        "data",
        &[
            "data",
            "--images",
            "8",
            "--workers",
            "1",
            "--batch",
            "4",
            "--repeat",
            "1",
        ],
    );
    let row = bench(
        "step",
        &[
            "train-step",
            "--model",
            "models/ssd_small.json",
            "--batch",
            "2",
            "--repeat",
            "1",
            "--warmup",
            "1",
        ],
    );
    assert!(
        row["extra"]["tchcv_peak_rss_mib"].as_f64().unwrap() > 0.0,
        "{row}"
    );
    assert!(
        row["extra"]["pytorch_peak_rss_mib"].as_f64().unwrap() > 0.0,
        "{row}"
    );
}
