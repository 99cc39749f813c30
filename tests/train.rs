//! `tchcv train`, `tchcv eval --checkpoint` and `tchcv detect` end to end on tiny synthetic
//! data (CPU): the loss goes down, a resumed run repeats an uninterrupted one exactly,
//! checkpoints round-trip, a NaN loss is skipped and then stops the run, and bad input gets a
//! clear error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tchcv::data::synth::{write_dataset, SynthConfig};

use common::success as ok;

/// A small synthetic VOC folder (48 train, 16 test images of 128x128), made once per name.
fn synth(name: &str) -> PathBuf {
    let dir = common::scratch(name);
    let config = SynthConfig {
        train: 48,
        test: 16,
        size: (128, 128),
        seed: 3,
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

/// Common flags: the small SSD, CPU, 1 worker, batch 8, no eval.
fn train_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--sets",
        "trainval",
        "--model",
        "models/ssd_small.json",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--batch",
        "8",
        "--out",
        out,
        "--log-every",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

/// `(index, total, loc_per_pos, cls_per_pos)` of the `kind` records of a run, `index` being
/// the record's `key` ("iter" for steps, "epoch" for epoch summaries).
fn losses(run: &Path, kind: &str, key: &str) -> Vec<(u64, f64, f64, f64)> {
    common::metrics(run, kind)
        .iter()
        .map(|v| {
            let f = |k: &str| v[k].as_f64().unwrap();
            (
                v[key].as_u64().unwrap(),
                f("total"),
                f("loc_per_pos"),
                f("cls_per_pos"),
            )
        })
        .collect()
}

/// The step records of a run: (iter, total, loc_per_pos, cls_per_pos).
fn steps(run: &Path) -> Vec<(u64, f64, f64, f64)> {
    losses(run, "step", "iter")
}

/// The epoch summaries of a run: (epoch, total, loc_per_pos, cls_per_pos).
fn epoch_lines(run: &Path) -> Vec<(u64, f64, f64, f64)> {
    losses(run, "epoch", "epoch")
}

/// A run's own evaluation (`eval.json`), and `tchcv eval --checkpoint` of `ckpt` on the test
/// set (its JSON report and stdout).
fn evaluations(data: &Path, run: &Path, ckpt: &Path) -> (Value, Value, String) {
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let json = run.join("eval-again.json");
    let args = [
        "eval",
        "--data",
        s(data),
        "--sets",
        "test",
        "--checkpoint",
        s(ckpt),
        "--device",
        "cpu",
        "--json",
        s(&json),
    ];
    let stdout = ok(&tchcv(&args), "eval --checkpoint");
    (read(&run.join("eval.json")), read(&json), stdout)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Run `args` (a training into `out`) with `--stop-after stop` (it must stop like Ctrl-C, exit
/// 130, after `stop` steps), then `tchcv train --resume` to the end.
fn stop_then_resume(args: Vec<&str>, out: &Path, stop: usize) {
    let stop_text = stop.to_string();
    let mut args = args;
    args.extend(["--stop-after", stop_text.as_str()]);
    let first = tchcv(&args);
    assert_eq!(
        first.status.code(),
        Some(130),
        "stopped like Ctrl-C: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(steps(out).len(), stop);
    let resumed = tchcv(&["train", "--resume", "--out", s(out), "--log-every", "1"]);
    ok(&resumed, "resumed");
}

#[test]
fn training_reduces_the_loss_and_logs_per_positive_losses() {
    let data = synth("train-reduces");
    let out = common::scratch("train-reduces-run");
    let args = train_args(
        s(&data),
        s(&out),
        &[
            "--iters",
            "40",
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            "--no-augment",
            "all",
        ],
    );
    let stdout = ok(&tchcv(&args), "train");
    assert!(
        stdout.contains("loc_loss") && stdout.contains("cls_loss"),
        "{stdout}"
    );
    let steps = steps(&out);
    assert_eq!(steps.len(), 40);
    let mean = |r: &[(u64, f64, f64, f64)]| r.iter().map(|x| x.1).sum::<f64>() / r.len() as f64;
    let (first, last) = (mean(&steps[..5]), mean(&steps[35..]));
    assert!(last < 0.6 * first, "loss {first:.3} -> {last:.3}");
    for file in [
        "last.safetensors",
        "last.json",
        "best.safetensors",
        "classes.json",
        "config.json",
        "loss.png",
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    // Every step line has the logged fields.
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    for key in [
        "iter",
        "epoch",
        "loc_per_pos",
        "cls_per_pos",
        "total",
        "num_pos",
        "num_neg",
        "lr",
        "images_per_s",
    ] {
        assert!(!first[key].is_null(), "{key} in {first}");
    }
}

#[test]
fn resume_repeats_an_uninterrupted_run_exactly() {
    let data = synth("train-resume");
    let whole = common::scratch("train-resume-whole");
    // Random mining and augmentation: the streams must continue exactly too.
    let extra = [
        "--iters",
        "10",
        "--neg-mining",
        "random",
        "--lr-schedule",
        "cosine",
        "--warmup",
        "3",
        "--seed",
        "5",
    ];
    ok(
        &tchcv(&train_args(s(&data), s(&whole), &extra)),
        "uninterrupted",
    );

    let split = common::scratch("train-resume-split");
    stop_then_resume(train_args(s(&data), s(&split), &extra), &split, 5);

    let (a, b) = (steps(&whole), steps(&split));
    assert_eq!(a.len(), 10);
    assert_eq!(
        a, b,
        "10 iterations in one run vs 5 + resume + 5: identical losses"
    );
    // The epoch summaries (epoch 0 was cut by the stop) and the best checkpoint agree too.
    assert_eq!(epoch_lines(&whole), epoch_lines(&split));
    let best = |run: &Path| {
        tchcv::train::checkpoint::load(&run.join("best.safetensors"))
            .unwrap()
            .state
            .best
    };
    assert_eq!(best(&whole), best(&split));
}

/// The snapshot of iteration `at` in run `out`: that iteration's weights and state, no
/// optimizer state, and a detector of its own (the weights moved after it: they differ from
/// `last`'s).
fn check_snapshot(out: &Path, at: u64, last: &std::collections::HashMap<String, tch::Tensor>) {
    let snapshot = tchcv::train::snapshot_path(out, at);
    let kept = tchcv::train::checkpoint::load(&snapshot).unwrap();
    assert_eq!(kept.state.iteration, at);
    assert!(kept.optim.is_empty(), "{:?}", kept.optim.keys());
    let moved = kept.model.iter().any(|(name, t)| !t.equal(&last[name]));
    assert!(moved, "the snapshot holds the final weights");
    tchcv::train::checkpoint::load_detector(&snapshot, tch::Device::Cpu).unwrap();
}

#[test]
fn checkpoint_round_trips_and_evaluates_and_detects() {
    let data = synth("train-ckpt");
    let out = common::scratch("train-ckpt-run");
    let extra = [
        "--iters",
        "6",
        "--test-sets",
        "test",
        "--snapshot-every",
        "4",
    ];
    ok(&tchcv(&train_args(s(&data), s(&out), &extra)), "train");
    let ckpt = out.join("best.safetensors");
    let loaded = tchcv::train::checkpoint::load(&ckpt).unwrap();
    assert_eq!(loaded.state.iteration, 6);
    check_snapshot(&out, 4, &loaded.model);
    assert!(!tchcv::train::snapshot_path(&out, 6).exists());
    assert_eq!(
        loaded.state.classes,
        ["circle", "cross", "square", "star", "triangle"]
    );
    let trained = tchcv::train::checkpoint::load_detector(&ckpt, tch::Device::Cpu).unwrap();
    // The restored weights are the saved ones, bit for bit.
    for (name, t) in trained.vs.variables() {
        assert!(t.equal(&loaded.model[&name]), "{name}");
    }
    // The training-time evaluation equals `tchcv eval --checkpoint` on the same set.
    let (during, after, stdout) = evaluations(&data, &out, &ckpt);
    assert!(stdout.contains("mAP"), "{stdout}");
    assert!(
        out.join("detections").join("circle.txt").is_file(),
        "devkit results written"
    );
    assert_eq!(during["map_voc07"], after["map_voc07"]);
    assert_eq!(during["map_area"], after["map_area"]);

    let pictures = common::scratch("train-ckpt-detect");
    let images = data.join("JPEGImages");
    let out = tchcv(&[
        "detect",
        "--checkpoint",
        s(&ckpt),
        s(&images.join("000001.jpg")),
        s(&images.join("000002.jpg")),
        "--out",
        s(&pictures),
        "--score",
        "0.05",
        "--device",
        "cpu",
    ]);
    ok(&out, "detect");
    assert!(pictures.join("000001.png").is_file() && pictures.join("detections.json").is_file());
    let bad = pictures.join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff not a jpeg").unwrap();
    let out = tchcv(&[
        "detect",
        "--checkpoint",
        s(&ckpt),
        s(&bad),
        s(&images.join("000001.jpg")),
        "--out",
        s(&pictures),
        "--device",
        "cpu",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreadable image is reported and skipped"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.jpg"));
}

#[test]
fn nonfinite_losses_are_skipped_then_stop_the_run_keeping_the_checkpoint() {
    let data = synth("train-nan");
    let out = common::scratch("train-nan-run");
    // A good run leaves a checkpoint (iteration 3 of an epoch of 6).
    ok(
        &tchcv(&train_args(s(&data), s(&out), &["--iters", "3"])),
        "good run",
    );
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    // Resumed with an absurd learning rate, the weights blow up and the loss overflows; three
    // non-finite losses in a row stop the run. The epoch ends inside that streak: its
    // checkpoint must not replace the good one.
    let args = [
        "train",
        "--resume",
        "--out",
        s(&out),
        "--iters",
        "40",
        "--lr",
        "1e30",
        "--max-nonfinite",
        "3",
    ];
    let run = Command::new(common::tchcv_bin())
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("3 non-finite losses in a row"), "{stderr}");
    assert!(stdout.contains("NaN or inf, step skipped"), "{stdout}");
    assert!(stdout.contains("checkpoint not written"), "{stdout}");
    assert_eq!(
        std::fs::read(out.join("last.safetensors")).unwrap(),
        before,
        "last good checkpoint intact"
    );
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert!(text.contains("\"kind\":\"nonfinite\""), "skips are logged");
}

fn expect_error(args: &[&str], needles: &[&str]) {
    let out = tchcv(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in {stderr}");
    }
}

#[test]
fn bad_input_gets_a_clear_error() {
    let out = common::scratch("train-bad");
    expect_error(
        &train_args("/nonexistent/voc", s(&out), &["--iters", "1"]),
        &["/nonexistent/voc", "no such folder"],
    );
    let data = synth("train-bad-data");
    std::fs::write(data.join("ImageSets/Main/empty.txt"), "").unwrap();
    let mut args = train_args(s(&data), s(&out), &["--iters", "1"]);
    args[4] = "empty";
    expect_error(&args, &["empty", "list no images"]);
    expect_error(
        &train_args(s(&data), s(&out), &[]),
        &["--epochs", "--iters"],
    );
    // A checkpoint trained with one spec cannot resume with another.
    ok(
        &tchcv(&train_args(s(&data), s(&out), &["--iters", "1"])),
        "one step",
    );
    expect_error(
        &[
            "train",
            "--resume",
            "--out",
            s(&out),
            "--model",
            "models/ssd300.json",
        ],
        &["models/ssd300.json", "does not match the checkpoint"],
    );
    // The same model with another description resumes.
    let mut spec: Value =
        serde_json::from_str(&std::fs::read_to_string("models/ssd_small.json").unwrap()).unwrap();
    spec["description"] = "the same layout, described anew".into();
    let renamed = out.join("ssd_small_described.json");
    std::fs::write(&renamed, spec.to_string()).unwrap();
    ok(
        &tchcv(&[
            "train",
            "--resume",
            "--out",
            s(&out),
            "--model",
            s(&renamed),
            "--iters",
            "2",
        ]),
        "resume with a re-described spec",
    );
    // `best` is the highest of one metric: resuming with the other one is refused.
    expect_error(
        &[
            "train",
            "--resume",
            "--out",
            s(&out),
            "--iters",
            "3",
            "--metric",
            "coco",
        ],
        &["--metric voc", "--metric coco", "unlike scores"],
    );
    expect_error(
        &["train", "--resume", "--out", "/nonexistent/run"],
        &["no checkpoint to resume from"],
    );
    expect_error(
        &[
            "eval",
            "--data",
            s(&data),
            "--sets",
            "test",
            "--checkpoint",
            "/nonexistent/best.safetensors",
        ],
        &["no such file"],
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_130() {
    let data = synth("train-sigint");
    let out = common::scratch("train-sigint-run");
    let args = train_args(s(&data), s(&out), &["--iters", "10000"]);
    let mut child = Command::new(common::tchcv_bin())
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a few logged steps, then SIGINT as a terminal's Ctrl-C would send.
    let start = std::time::Instant::now();
    while steps_logged(&out) < 3 {
        assert!(start.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted runs exit with 130");
    let state = tchcv::train::checkpoint::load(&out.join("last.safetensors"))
        .unwrap()
        .state;
    assert!(
        state.iteration >= 3 && state.iteration < 10000,
        "checkpoint at iteration {}",
        state.iteration
    );
    assert_eq!(
        steps(&out).len() as u64,
        state.iteration,
        "every finished step is in the checkpoint"
    );
}

fn steps_logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn init_loads_backbone_weights() {
    let data = synth("train-init");
    let first = common::scratch("train-init-first");
    ok(
        &tchcv(&train_args(s(&data), s(&first), &["--iters", "2"])),
        "first run",
    );
    // The first run's backbone, as `scripts/convert_weights.py` would write it.
    let trained = tchcv::train::checkpoint::load(&first.join("last.safetensors")).unwrap();
    let backbone: Vec<(String, tch::Tensor)> = trained
        .model
        .into_iter()
        .filter(|(name, _)| name.starts_with("extractor."))
        .collect();
    assert!(!backbone.is_empty());
    let file = first.join("backbone.safetensors");
    tch::Tensor::write_safetensors(&backbone, &file).unwrap();

    let second = common::scratch("train-init-second");
    let out = tchcv(&train_args(
        s(&data),
        s(&second),
        &["--iters", "1", "--init", s(&file), "--lr", "1e-12"],
    ));
    ok(&out, "run with --init");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("init: {} backbone tensors", backbone.len())),
        "{stderr}"
    );
    // With a negligible step the backbone's weights are still the first run's (heads are new;
    // batch-norm running statistics move with every training-mode forward).
    let loaded = tchcv::train::checkpoint::load(&second.join("last.safetensors")).unwrap();
    for (name, t) in backbone.iter().filter(|(n, _)| !n.contains("running_")) {
        assert!(
            common::max_abs_diff(t, &loaded.model[name]) < 1e-6,
            "{name}"
        );
    }
    // A file that does not fit says what is missing.
    let wrong = first.join("wrong.safetensors");
    tch::Tensor::write_safetensors(&backbone[..1], &wrong).unwrap();
    let bad = common::scratch("train-init-bad");
    expect_error(
        &train_args(s(&data), s(&bad), &["--iters", "1", "--init", s(&wrong)]),
        &["missing", "extractor."],
    );
}

/// A RetinaNet (focal loss, sigmoid scores without a background column) evaluates the same
/// during training as `tchcv eval --checkpoint`; a --loss with a background column is refused.
#[test]
fn focal_heads_train_and_evaluate_without_a_background_column() {
    let data = synth("train-retina");
    let dir = common::scratch("train-retina-run");
    let spec = serde_json::json!({
        "name": "retina_tiny", "input_size": [128, 128], "backbone": "resnet18", "head": "retina",
        "loss": "focal", "network": {"fpn_channels": 32, "head_convs": 1},
        "anchors": {"style": "retina", "feature_maps": [16, 8, 4], "strides": [8, 16, 32],
                    "areas": [1024, 4096, 16384], "aspect_ratios": [0.5, 1, 2], "scales": [1, 1.26]},
        "matching": {"rule": "max_iou", "pos_iou": 0.5, "neg_iou": 0.4}
    });
    let spec_path = dir.join("retina_tiny.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.join("run");
    let mut args = train_args(
        s(&data),
        s(&out),
        &["--iters", "4", "--test-sets", "test", "--lr", "0.01"],
    );
    args[6] = s(&spec_path);
    ok(&tchcv(&args), "train a RetinaNet");
    let (during, after, _) = evaluations(&data, &out, &out.join("best.safetensors"));
    assert_eq!(during["map_voc07"], after["map_voc07"]);
    // The same detections per class (a softmax over a background column the head does not have
    // would drop every class-0 detection and shift the others).
    let per_class = |v: &Value| -> Vec<Value> {
        v["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["n_det"].clone())
            .collect()
    };
    assert_eq!(per_class(&during), per_class(&after));
    assert!(
        per_class(&after)[0].as_u64().unwrap() > 0,
        "class 0 is detected: {after}"
    );
    let mut ssd = args.clone();
    ssd.extend(["--loss", "ssd"]);
    expect_error(&ssd, &["retina_tiny.json", "background column"]);
}

#[test]
fn bf16_autocast_and_channels_last_train_the_same_model() {
    let data = synth("train-precision");
    let extra = ["--iters", "4", "--no-augment", "all", "--seed", "2"];
    let run = |name: &str, flags: &[&str]| {
        let out = common::scratch(name);
        let mut args = train_args(s(&data), s(&out), &extra);
        args.extend_from_slice(flags);
        ok(&tchcv(&args), name);
        out
    };
    let plain = run("train-precision-f32", &[]);
    let cl = run("train-precision-cl", &["--channels-last"]);
    let bf16 = run(
        "train-precision-bf16-cl",
        &["--autocast", "bf16", "--channels-last"],
    );
    let (a, b, c) = (steps(&plain), steps(&cl), steps(&bf16));
    assert_eq!((a.len(), b.len(), c.len()), (4, 4, 4));
    // Channels-last changes the layout only: the first loss (before any update) is the same to
    // float32 rounding (seen 3e-7). The gradients sum in another order, and batch norm's
    // backward magnifies that (PyTorch's own small-SSD gradients differ by 1.3e-2 between
    // layouts; tests/models_parity.rs compares each layout with PyTorch's), so each update
    // widens the gap: seen 6e-4, 6e-3 and 1.5e-2 after one, two and three updates on an
    // AVX-512 EPYC (6e-4 after one on an AVX2 one), where a layout bug is off from the first
    // loss on.
    assert!(
        (a[0].1 - b[0].1).abs() <= 1e-5 * a[0].1.abs(),
        "channels-last, first step: {:?} vs {:?}",
        a[0],
        b[0]
    );
    assert!(
        (a[1].1 - b[1].1).abs() <= 5e-3 * a[1].1.abs(),
        "channels-last, after one update: {:?} vs {:?}",
        a[1],
        b[1]
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(
            (x.1 - y.1).abs() <= 5e-2 * x.1.abs(),
            "channels-last: {x:?} vs {y:?}"
        );
    }
    // bf16 autocast: the same model and batch, computed with 8-bit mantissas: the first loss
    // (before any update) agrees to a few percent, and every loss is finite.
    let (f, h) = (a[0].1, c[0].1);
    assert!((f - h).abs() <= 0.05 * f, "first loss f32 {f} vs bf16 {h}");
    assert!(c.iter().all(|x| x.1.is_finite()), "{c:?}");
    assert!(
        (f - h).abs() > 0.0,
        "bf16 gave the f32 loss bit for bit: autocast did not engage"
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(bf16.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["autocast"], "bf16");
    assert_eq!(config["channels_last"], true);
    assert_eq!(
        config["cudnn_benchmark"], true,
        "on by default (read on CUDA only)"
    );
    // Checkpoints of a bf16 channels-last run: stopped after 2 of the 4 iterations and
    // resumed (its configuration comes from the checkpoint), it repeats the uninterrupted run
    // exactly, so the weights and the optimizer state were written and read back in the right
    // layout (channels-last bytes taken for NCHW would change every later loss).
    let split = common::scratch("train-precision-bf16-cl-split");
    let mut args = train_args(s(&data), s(&split), &extra);
    args.extend(["--autocast", "bf16", "--channels-last", "--stop-after", "2"]);
    assert_eq!(tchcv(&args).status.code(), Some(130), "stopped like Ctrl-C");
    ok(
        &tchcv(&["train", "--resume", "--out", s(&split), "--log-every", "1"]),
        "resume bf16 channels-last",
    );
    assert_eq!(steps(&split), c, "2 + resume + 2 iterations = 4 in one run");
    let loaded = tchcv::train::checkpoint::load(&bf16.join("last.safetensors")).unwrap();
    assert!(loaded.model.values().all(|t| t.kind() == tch::Kind::Float));
    tchcv::train::checkpoint::load_detector(&bf16.join("last.safetensors"), tch::Device::Cpu)
        .unwrap();
    // --resume can turn both off (and cuDNN's autotuner).
    ok(
        &tchcv(&[
            "train",
            "--resume",
            "--out",
            s(&bf16),
            "--iters",
            "5",
            "--autocast",
            "off",
            "--no-channels-last",
            "--no-cudnn-benchmark",
        ]),
        "resume in f32",
    );
    assert_eq!(steps(&bf16).len(), 5);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(bf16.join("config.json")).unwrap()).unwrap();
    assert!(config["autocast"].is_null(), "{config}");
    assert_eq!(config["channels_last"], false);
    assert_eq!(config["cudnn_benchmark"], false);
    // float16 training would need loss scaling: refused with the reason.
    let out = common::scratch("train-precision-f16");
    let mut args = train_args(s(&data), s(&out), &extra);
    args.extend(["--autocast", "f16"]);
    expect_error(&args, &["--autocast f16", "loss scaling", "bf16"]);
    let mut args = train_args(s(&data), s(&out), &extra);
    args.extend(["--autocast", "fp8"]);
    let refused = tchcv(&args);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("fp8"));
    // The autotuner's two flags exclude each other.
    let mut args = train_args(s(&data), s(&out), &extra);
    args.extend(["--cudnn-benchmark", "--no-cudnn-benchmark"]);
    let refused = tchcv(&args);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cudnn-benchmark"));
}

/// `train_args` with another model spec.
fn with_model<'a>(mut args: Vec<&'a str>, model: &'a str) -> Vec<&'a str> {
    let at = args.iter().position(|a| *a == "--model").unwrap();
    args[at + 1] = model;
    args
}

#[test]
fn rpn_trains_resumes_exactly_and_reports_proposal_recall() {
    let data = synth("train-rpn");
    let whole = common::scratch("train-rpn-whole");
    // The sampler draws per step and image: a resumed run must continue its streams exactly.
    let extra = [
        "--iters",
        "6",
        "--rpn-sampler",
        "random",
        "--lr-schedule",
        "cosine",
        "--seed",
        "9",
        "--test-sets",
        "test",
    ];
    let rpn = "models/rpn_small.json";
    ok(
        &tchcv(&with_model(train_args(s(&data), s(&whole), &extra), rpn)),
        "rpn uninterrupted",
    );
    let split = common::scratch("train-rpn-split");
    stop_then_resume(
        with_model(train_args(s(&data), s(&split), &extra), rpn),
        &split,
        3,
    );
    let (a, b) = (steps(&whole), steps(&split));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "6 iterations vs 3 + resume + 3: identical losses");
    // Each step's loss covers at most 256 sampled anchors per image of the batch of 8.
    for v in common::metrics(&whole, "step") {
        let sampled = v["num_pos"].as_i64().unwrap() + v["num_neg"].as_i64().unwrap();
        assert!(sampled > 0 && sampled <= 256 * 8, "{v}");
    }

    // The end-of-run evaluation: proposal recall in eval.json and metrics.jsonl, and `best`
    // by AR@1000; `tchcv eval --checkpoint` gives the same numbers.
    let ckpt = whole.join("best.safetensors");
    let (during, after, stdout) = evaluations(&data, &whole, &ckpt);
    assert!(
        stdout.contains("AR@1000") && stdout.contains("recall@0.5"),
        "{stdout}"
    );
    assert_eq!(during["metric"], "proposal_recall");
    let logged = common::metrics(&whole, "recall");
    assert_eq!(logged.len(), 1, "one evaluation, at the end");
    for key in ["ar_100", "ar_300", "ar_1000", "recall_50", "recall_70"] {
        let x = during[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&x), "{key} {x}");
        assert_eq!(logged[0][key], during[key], "{key} in metrics.jsonl");
        assert_eq!(
            after[key], during[key],
            "{key}: training-time vs tchcv eval"
        );
    }
    let r = |k: &str| during[k].as_f64().unwrap();
    assert!(r("recall_70") <= r("recall_50") && r("ar_100") <= r("ar_1000"));
    let best = tchcv::train::checkpoint::load(&ckpt).unwrap().state.best;
    assert_eq!(best, Some((r("ar_1000"), 6)));
    assert!(
        whole.join("loss.png").is_file(),
        "the loss plot despite a recall eval.json"
    );
}

#[test]
fn rpn_samplers_train_and_the_rpn_loss_goes_with_the_rpn_head_only() {
    let data = synth("train-rpn-samplers");
    let rpn = "models/rpn_small.json";
    // The other samplers train too; `all` takes every labelled anchor.
    for sampler in ["hard", "all"] {
        let out = common::scratch(&format!("train-rpn-{sampler}"));
        let extra = ["--iters", "2", "--rpn-sampler", sampler];
        ok(
            &tchcv(&with_model(train_args(s(&data), s(&out), &extra), rpn)),
            sampler,
        );
        let sampled: Vec<i64> = common::metrics(&out, "step")
            .iter()
            .map(|v| v["num_pos"].as_i64().unwrap() + v["num_neg"].as_i64().unwrap())
            .collect();
        assert_eq!(sampled.len(), 2);
        if sampler == "all" {
            assert!(sampled.iter().all(|&n| n > 256 * 8), "{sampled:?}");
        }
    }
    // The RPN loss goes with the RPN head only.
    let out = common::scratch("train-rpn-bad");
    let bad = with_model(
        train_args(s(&data), s(&out), &["--iters", "1", "--loss", "ssd"]),
        rpn,
    );
    let res = tchcv(&bad);
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("rpn"));
    let bad = train_args(
        s(&data),
        s(&out),
        &["--iters", "1", "--rpn-sampler", "hard"],
    );
    let res = tchcv(&bad);
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("--rpn-sampler"));
}

/// The second stage's logged parts of each step: (roi_loc_per_pos, roi_cls_per_pos,
/// roi_num_pos, roi_num_neg).
fn roi_steps(run: &Path) -> Vec<(f64, f64, i64, i64)> {
    common::metrics(run, "step")
        .iter()
        .map(|v| {
            let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
            let i = |k: &str| v[k].as_i64().unwrap_or_else(|| panic!("{k} in {v}"));
            (
                f("roi_loc_per_pos"),
                f("roi_cls_per_pos"),
                i("roi_num_pos"),
                i("roi_num_neg"),
            )
        })
        .collect()
}

#[test]
fn faster_rcnn_trains_both_stages_resumes_exactly_and_reports_map() {
    let data = synth("train-frcnn");
    let whole = common::scratch("train-frcnn-whole");
    // Both stages draw per step and image: a resumed run must continue their streams exactly.
    let extra = [
        "--iters",
        "4",
        "--lr-schedule",
        "cosine",
        "--seed",
        "5",
        "--test-sets",
        "test",
    ];
    let model = "models/faster_rcnn_small.json";
    let out = ok(
        &tchcv(&with_model(train_args(s(&data), s(&whole), &extra), model)),
        "faster_rcnn uninterrupted",
    );
    assert!(out.contains("| roi loc ") && out.contains(" fg "), "{out}");
    let split = common::scratch("train-frcnn-split");
    stop_then_resume(
        with_model(train_args(s(&data), s(&split), &extra), model),
        &split,
        2,
    );
    let (a, b) = (steps(&whole), steps(&split));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "4 iterations vs 2 + resume + 2: identical losses");
    let (ra, rb) = (roi_steps(&whole), roi_steps(&split));
    assert_eq!(ra, rb, "and identical second-stage parts");
    // Each step's box head loss covers at most 128 RoIs per image of the batch of 8, the
    // foreground at most a quarter; the total is both stages'.
    for ((roi_loc, roi_cls, fg, bg), v) in ra.iter().zip(common::metrics(&whole, "step")) {
        assert!(fg + bg > 0 && fg + bg <= 128 * 8 && *fg <= 32 * 8, "{v}");
        let parts = v["loc_per_pos"].as_f64().unwrap() + v["cls_per_pos"].as_f64().unwrap();
        let total = v["total"].as_f64().unwrap();
        assert!(
            (total - (parts + roi_loc + roi_cls)).abs() <= 1e-5 * total.max(1.0),
            "total = both stages: {v}"
        );
    }
    // The end-of-run evaluation is the detector's VOC mAP; `tchcv eval` agrees.
    let ckpt = whole.join("best.safetensors");
    let (during, after, stdout) = evaluations(&data, &whole, &ckpt);
    assert!(stdout.contains("mAP"), "{stdout}");
    let map = during["map_voc07"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&map), "{during}");
    assert_eq!(
        after["map_voc07"], during["map_voc07"],
        "training-time vs tchcv eval"
    );
}

#[test]
fn faster_rcnn_second_stage_samplers_and_losses_train_and_fit_only_two_stage_specs() {
    let data = synth("train-frcnn-cures");
    let model = "models/faster_rcnn_small.json";
    for (sampler, loss, most) in [
        ("all", "softmax-focal", None),
        ("ohem", "cross-entropy", Some(64 * 8)),
    ] {
        let out = common::scratch(&format!("train-frcnn-{sampler}"));
        let extra = ["--iters", "2", "--roi-sampler", sampler, "--roi-loss", loss];
        ok(
            &tchcv(&with_model(train_args(s(&data), s(&out), &extra), model)),
            sampler,
        );
        let rois = roi_steps(&out);
        assert_eq!(rois.len(), 2);
        for (loc, cls, fg, bg) in rois {
            assert!(loc.is_finite() && cls.is_finite() && fg > 0, "{sampler}");
            match most {
                // OHEM keeps ohem_per_image (64 in the spec) per image.
                Some(most) => assert!(fg + bg <= most, "{sampler}: {}", fg + bg),
                // `all`: every labelled proposal, more than the random sampler's 128 per image.
                None => assert!(fg + bg > 128 * 8, "{sampler}: {}", fg + bg),
            }
        }
        // `tchcv compare` names both stages' cures.
        let report = ok(
            &tchcv(&["compare", s(&out), "--out", s(&out.join("cmp"))]),
            "compare",
        );
        assert!(
            report.contains(&format!("RoIs: {sampler} sample")),
            "{report}"
        );
        let config = tchcv::train::saved_config(&out).unwrap();
        assert_eq!(config["roi_sampler"], sampler);
        assert_eq!(config["roi_loss"], loss.replace('-', "_"));
    }
    // A second-stage loss the spec names wrongly is an error naming the field.
    let out = common::scratch("train-frcnn-bad");
    let mut spec: Value =
        serde_json::from_str(&std::fs::read_to_string(common::repo().join(model)).unwrap())
            .unwrap();
    spec["roi_heads"]["loss"] = serde_json::json!({"cls": {"kind": "hinge"}});
    let bad_spec = out.join("bad.json");
    std::fs::write(&bad_spec, spec.to_string()).unwrap();
    let res = tchcv(&with_model(
        train_args(s(&data), s(&out), &["--iters", "1"]),
        s(&bad_spec),
    ));
    assert_eq!(res.status.code(), Some(2));
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(
        err.contains("roi_heads.loss") && err.contains("hinge"),
        "{err}"
    );
    // The second-stage flags go with a two-stage spec only.
    let res = tchcv(&train_args(
        s(&data),
        s(&out),
        &["--iters", "1", "--roi-sampler", "ohem"],
    ));
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("--roi-sampler"));
}
