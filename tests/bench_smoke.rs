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
}

/// `tchcv bench train-step`: the small SSD and its variants, and a Faster R-CNN step.
#[test]
fn train_step_benchmarks_run_both_sides() {
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
    // A Faster R-CNN step against torchvision's FasterRCNN around the same network (the
    // reference checks it has tchcv's parameter count).
    let mut args = vec!["train-step", "--model", "models/faster_rcnn_small.json"];
    args.extend([
        "--batch",
        "2",
        "--classes",
        "5",
        "--repeat",
        "1",
        "--warmup",
        "0",
    ]);
    let row = bench("step-frcnn", &args);
    assert_eq!(row["work"], "faster_rcnn_small train step");
    assert!(row["pytorch_ms"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["extra"]["parameters"].as_i64().unwrap() > 0, "{row}");
}

/// `tchcv bench coco-eval` at a tiny size: tchcv and pycocotools both run, and agree on the
/// twelve numbers (the benchmark fails when they do not).
#[test]
fn coco_eval_benchmark_runs_both_sides() {
    let row = bench(
        "coco-eval",
        &[
            "coco-eval",
            "--images",
            "30",
            "--detections",
            "20",
            "--repeat",
            "1",
        ],
    );
    assert_eq!(row["extra"]["detections"], 600, "{row}");
    let diff = row["extra"]["pycocotools_stats_max_abs_diff"]
        .as_f64()
        .unwrap();
    assert!(diff <= 1e-9, "{row}");
    let ap = row["extra"]["tchcv_stats"][0].as_f64().unwrap();
    assert!(ap > 0.0 && ap < 1.0, "{row}");
}

/// `tchcv bench loss` at a tiny size with the environment `env` (on top of a PATH without the
/// project venv, and without TCHCV_PYTHON or VIRTUAL_ENV, as after `make build` in a fresh
/// shell).
fn bench_outside_make(bench_dir: &std::path::Path, path: &str) -> std::process::Output {
    Command::new(common::tchcv_bin())
        .args([
            "bench", "loss", "--n", "1", "--a", "50", "--c", "3", "--repeat", "1",
        ])
        .env_remove("TCHCV_PYTHON")
        .env_remove("VIRTUAL_ENV")
        .env("PATH", path)
        .env("TCHCV_BENCH_DIR", bench_dir)
        .current_dir(common::scratch("bench-outside-make-cwd"))
        .output()
        .unwrap()
}

/// Run outside `make`, the benchmarks find the project's venv; with no Python that has torch
/// they say how to get one.
#[test]
fn benchmarks_find_the_project_venv() {
    let venv = common::repo().join(".venv/bin/python");
    if !venv.is_file() {
        common::note_skip("SKIPPED (no project venv): bench outside make: .venv is absent");
        return;
    }
    let out = bench_outside_make(&common::repo().join("bench"), "/usr/bin:/bin");
    assert!(
        out.status.success(),
        "bench loss outside make: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The references beside no venv, and a python3 on PATH without torch.
    let dir = common::scratch("bench-no-torch");
    let bench = dir.join("bench");
    std::fs::create_dir_all(&bench).unwrap();
    for entry in std::fs::read_dir(common::repo().join("bench")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, bench.join(path.file_name().unwrap())).unwrap();
        }
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("python3");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = bench_outside_make(&bench, &format!("{}:/usr/bin:/bin", bin.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no module \"torch\"") && stderr.contains("make setup"),
        "{stderr}"
    );
}

/// `tchcv bench train` end to end at a tiny size: a synthetic VOC folder, both sides trained
/// (after a one-iteration probe of each of two splits per side) and scored, with a snapshot of
/// each side's weights at iteration 2 of 3; every field of the report is there and finite (no
/// speed is asserted), and the mAP-over-time curves start from the same initial weights.
#[test]
fn train_benchmark_runs_both_sides() {
    let data = common::scratch("bench-train-data");
    let synth = Command::new(common::tchcv_bin())
        .args([
            "synth", "--train", "12", "--test", "6", "--size", "128x96", "--out",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        synth.status.success(),
        "{}",
        String::from_utf8_lossy(&synth.stderr)
    );
    let chart = common::scratch("bench-train-chart").join("time-to-map.png");
    let row = bench(
        "train",
        &[
            "train",
            "--model",
            "models/ssd_small.json",
            "--data",
            data.to_str().unwrap(),
            "--iters",
            "3",
            "--snapshot-every",
            "2",
            "--curve-chart",
            chart.to_str().unwrap(),
            "--batch",
            "4",
            "--probe-iters",
            "1",
            "--workers-split",
            "1x1,2x1",
            "--log-every",
            "1",
        ],
    );
    assert_eq!(row["work"], "ssd_small train end-to-end", "{row}");
    let extra = &row["extra"];
    for side in ["tchcv", "pytorch"] {
        let s = &extra[side];
        for key in [
            "images_per_s",
            "startup_s",
            "wall_s",
            "loop_seconds",
            "peak_rss_mib",
        ] {
            let v = s[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{side}.{key} = {v} in {row}");
        }
        let wait = s["data_wait_share"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&wait), "{side}: data wait {wait}");
        let map = s["map_voc07_mean"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&map), "{side}: mAP {map}");
        assert_eq!(s["iterations"], 3, "{side}: {s}");
        assert_eq!(s["images"], 12, "{side}: {s}");
        assert!(s["peak_total_mib"].as_f64().unwrap() > 0.0, "{side}: {s}");
        assert!(s["peak_cuda_allocated_mib"].is_null(), "{side}: {s}");
        assert!(
            ["1x1", "2x1"].contains(&s["split"].as_str().unwrap()),
            "{side}: {s}"
        );
    }
    assert_eq!(extra["probes"].as_array().unwrap().len(), 4, "{row}");
    assert_eq!(extra["test_images"], 6, "{row}");
    check_time_to_map(extra, &chart);
}

/// The curves of `bench train --snapshot-every 2 --iters 3`: points at iterations 0 (the
/// initial weights, the same on both sides), 2 (the snapshot) and 3 (the trained weights), at
/// increasing seconds; the last point is the side's reported mAP; the chart is written.
fn check_time_to_map(extra: &Value, chart: &std::path::Path) {
    let t = &extra["time_to_map"];
    let mut start = Vec::new();
    for side in ["tchcv", "pytorch"] {
        let curve = t[side].as_array().unwrap_or_else(|| panic!("{side}: {t}"));
        let iterations: Vec<u64> = curve
            .iter()
            .map(|p| p["iteration"].as_u64().unwrap())
            .collect();
        assert_eq!(iterations, [0, 2, 3], "{side}: {t}");
        let seconds: Vec<f64> = curve
            .iter()
            .map(|p| p["seconds"].as_f64().unwrap())
            .collect();
        assert!(
            seconds[0] == 0.0 && seconds[1] > 0.0 && seconds[2] > seconds[1],
            "{side}: {seconds:?}"
        );
        for p in curve {
            let m = p["map_mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&m), "{side}: {p}");
        }
        start.push(curve[0]["map_mean"].as_f64().unwrap());
        let last = curve[2]["map_mean"].as_f64().unwrap();
        let reported = extra[side]["map_voc07_mean"].as_f64().unwrap();
        assert!(
            (last - reported).abs() < 1e-12,
            "{side}: {last} vs {reported}"
        );
    }
    assert_eq!(
        start[0], start[1],
        "the initial weights scored differently per side: {t}"
    );
    let target = t["target_map"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&target), "{t}");
    assert!(chart.is_file(), "{} not written", chart.display());
}

/// `bench train`'s curve options are checked before anything trains: each bad combination
/// exits 2 naming the flag.
#[test]
fn train_benchmark_curve_options_are_checked_first() {
    let cases: [(&[&str], &str); 3] = [
        (&["--curve-chart", "c.png"], "--snapshot-every"),
        (&["--target-map", "0.5"], "--snapshot-every"),
        (
            &["--snapshot-every", "1", "--target-map", "1.5"],
            "--target-map",
        ),
    ];
    for (extra, needle) in cases {
        let out = Command::new(common::tchcv_bin())
            .args(["bench", "train", "--data", "no-such-folder", "--iters", "2"])
            .args(extra)
            .current_dir(common::repo())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}
