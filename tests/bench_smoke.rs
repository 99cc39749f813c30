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
    let step = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "train-step",
            "--model",
            "models/ssd_small.json",
            "--batch",
            "2",
            "--repeat",
            "1",
        ];
        args.extend_from_slice(extra);
        bench(name, &args)
    };
    let row = step("step", &["--warmup", "1"]);
    assert!(
        row["extra"]["tchcv_peak_rss_mib"].as_f64().unwrap() > 0.0,
        "{row}"
    );
    assert!(
        row["extra"]["pytorch_peak_rss_mib"].as_f64().unwrap() > 0.0,
        "{row}"
    );
    assert_eq!(row["extra"]["memory_format"], "contiguous");
    assert!(row["extra"]["autocast"].is_null(), "{row}");
    assert_eq!(row["extra"]["cudnn_benchmark"], false);
    // The variants of the H200 table, both sides: bf16 autocast with channels-last, and cuDNN's
    // autotuner (a flag the CPU does not read, passed to both sides all the same).
    let row = step(
        "step-bf16-cl",
        &[
            "--warmup",
            "0",
            "--autocast",
            "bf16",
            "--channels-last",
            "--cudnn-benchmark",
        ],
    );
    assert_eq!(
        row["work"],
        "ssd_small train step bf16 channels-last cudnn-benchmark"
    );
    assert_eq!(row["extra"]["autocast"], "bf16");
    assert_eq!(row["extra"]["memory_format"], "channels-last");
    assert_eq!(row["extra"]["cudnn_benchmark"], true);
    // On the CPU there is no CUDA allocator peak on either side.
    assert!(
        row["extra"]["tchcv_peak_cuda_allocated_mib"].is_null(),
        "{row}"
    );
    assert!(
        row["extra"]["pytorch_peak_cuda_allocated_mib"].is_null(),
        "{row}"
    );
}
