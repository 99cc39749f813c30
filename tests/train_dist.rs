//! `tchcv train` data-parallel over c10d (Gloo on loopback), as users launch it: two processes
//! with `--world-size/--rank/--master`, and two under `torchrun --no-python`. Each trains with
//! batch B on its shard; the losses logged by rank 0 and the final weights equal one process
//! with batch 2B (within 1e-5), only rank 0 writes the run folder, and `--resume` continues the
//! group. The model has no batch norm: per-rank batch statistics would differ from one batch of
//! 2B (as in PyTorch DDP without SyncBatchNorm), and this test compares everything else.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tchcv::data::synth::{write_dataset, SynthConfig};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Synthetic data and a small-SSD spec without batch norm.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    setup_with(name, "ssd_small.json")
}

/// Synthetic data and the shipped spec `model` without batch norm.
fn setup_with(name: &str, model: &str) -> (PathBuf, PathBuf) {
    let dir = common::scratch(name);
    let data = dir.join("data");
    let config = SynthConfig {
        train: 48,
        test: 8,
        size: (128, 128),
        seed: 9,
        ..SynthConfig::default()
    };
    write_dataset(&data, &config).unwrap();
    let mut spec: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("models").join(model)).unwrap(),
    )
    .unwrap();
    spec["network"] = serde_json::json!({"bn": false});
    let name = format!("{}_nobn", spec["name"].as_str().unwrap());
    spec["name"] = name.as_str().into();
    let spec_path = dir.join(format!("{name}.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    (data, spec_path)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn train_args(data: &Path, spec: &Path, out: &Path, batch: usize) -> Vec<String> {
    [
        "train",
        "--data",
        &s(data),
        "--sets",
        "trainval",
        "--model",
        &s(spec),
        "--device",
        "cpu",
        "--workers",
        "1",
        "--batch",
        &batch.to_string(),
        "--iters",
        "4",
        "--lr",
        "0.01",
        "--seed",
        "4",
        "--out",
        &s(out),
        "--log-every",
        "1",
        "--dist-timeout",
        "60",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect()
}

fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let start = Instant::now();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let done = children.iter_mut().all(|c| {
            c.as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        });
        if done {
            break;
        }
        if start.elapsed() > limit {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
            panic!("distributed run did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    children
        .into_iter()
        .flatten()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (iter, total, loc_per_pos, cls_per_pos, num_pos, num_neg) per step of a run.
fn steps(run: &Path) -> Vec<(u64, f64, f64, f64, i64, i64)> {
    common::metrics(run, "step")
        .iter()
        .map(|v| {
            let f = |k: &str| v[k].as_f64().unwrap();
            let i = |k: &str| v[k].as_i64().unwrap();
            (
                v["iter"].as_u64().unwrap(),
                f("total"),
                f("loc_per_pos"),
                f("cls_per_pos"),
                i("num_pos"),
                i("num_neg"),
            )
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

/// Compare a distributed run folder with the single-process one: logged losses (a two-stage
/// detector's second stage too) and weights.
fn compare(single: &Path, group: &Path) {
    let roi = |run: &Path| -> Vec<[f64; 4]> {
        common::metrics(run, "step")
            .iter()
            .filter(|v| v.get("roi_num_pos").is_some())
            .map(|v| {
                [
                    "roi_loc_per_pos",
                    "roi_cls_per_pos",
                    "roi_num_pos",
                    "roi_num_neg",
                ]
                .map(|k| v[k].as_f64().unwrap())
            })
            .collect()
    };
    let (x, y) = (roi(single), roi(group));
    assert_eq!(x.len(), y.len(), "second-stage steps logged");
    for (x, y) in x.iter().zip(&y) {
        assert!(
            x.iter().zip(y).all(|(a, b)| close(*a, *b)),
            "second stage {x:?} vs {y:?}"
        );
    }
    let (a, b) = (steps(single), steps(group));
    assert_eq!(a.len(), b.len(), "steps logged");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.0, x.4, x.5),
            (y.0, y.4, y.5),
            "iteration, num_pos, num_neg"
        );
        assert!(
            close(x.1, y.1) && close(x.2, y.2) && close(x.3, y.3),
            "losses {x:?} vs {y:?}"
        );
    }
    let one = tchcv::train::checkpoint::load(&single.join("last.safetensors")).unwrap();
    let two = tchcv::train::checkpoint::load(&group.join("last.safetensors")).unwrap();
    for (name, t) in &one.model {
        let d = common::max_abs_diff(t, &two.model[name]);
        assert!(d <= 1e-5, "{name}: max |diff| {d:e}");
    }
}

/// Two ranks (`--world-size 2`, batch 4 each) training `spec` into `out` with `extra` flags;
/// their outputs.
fn launch_two(data: &Path, spec: &Path, out: &Path, extra: &[&str]) -> Vec<Output> {
    let master = format!("127.0.0.1:{}", free_port());
    let children = (0..2)
        .map(|rank| {
            let mut args = with_flags(train_args(data, spec, out, 4), extra);
            let rank = rank.to_string();
            let group = ["--world-size", "2", "--rank", &rank, "--master", &master];
            args.extend(group.map(String::from));
            Command::new(common::tchcv_bin())
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    wait_all(children, Duration::from_secs(180))
}

/// Two ranks of batch 4 training the shipped spec `model` (without batch norm) for `iters`
/// steps log the losses and sample counts of one process of batch 8 and end with its weights.
fn two_ranks_like_one(name: &str, model: &str, iters: &str) {
    let (data, spec) = setup_with(&format!("train-dist-{name}"), model);
    let single = common::scratch(&format!("train-dist-{name}-single"));
    single_process_with(&data, &spec, &single, iters);
    let group = common::scratch(&format!("train-dist-{name}-group"));
    for (rank, out) in launch_two(&data, &spec, &group, &["--iters", iters])
        .iter()
        .enumerate()
    {
        ok(out, &format!("{name} rank {rank}"));
    }
    compare(&single, &group);
}

#[test]
fn an_rpn_on_two_processes_samples_and_normalises_like_one_with_the_global_batch() {
    // The RPN loss divides by the sampled anchors of the global batch, and each image's sample
    // is keyed by its place in the global batch.
    if common::dist_or_skip("rpn training on two processes") {
        two_ranks_like_one("rpn", "rpn_small.json", "4");
    }
}

#[test]
fn a_faster_rcnn_on_two_processes_trains_both_stages_like_one_with_the_global_batch() {
    // Both stages' normalisers are global (the sampled anchors, the sampled RoIs), and both
    // samplers key each image by its place in the global batch. One step: the proposals
    // depend on the weights, so after a step whose gradients differ in the last bits (summed
    // over two halves) a proposal can flip and later steps differ by more than rounding.
    if common::dist_or_skip("faster_rcnn training on two processes") {
        two_ranks_like_one("frcnn", "faster_rcnn_small.json", "1");
    }
}

fn single_process(data: &Path, spec: &Path, out: &Path) {
    single_process_with(data, spec, out, "4");
}

/// `args` with `extra`: a flag `args` has takes the value after it in `extra`; the rest is
/// appended.
fn with_flags(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        let at = args.iter().position(|a| a == extra[i]);
        match (at, extra.get(i + 1)) {
            (Some(at), Some(value)) if !value.starts_with("--") => {
                args[at + 1] = value.to_string();
                i += 2;
            }
            _ => {
                args.push(extra[i].to_string());
                i += 1;
            }
        }
    }
    args
}

/// One process of batch 8 training `iters` steps.
fn single_process_with(data: &Path, spec: &Path, out: &Path, iters: &str) {
    let args = with_flags(train_args(data, spec, out, 8), &["--iters", iters]);
    let out = Command::new(common::tchcv_bin())
        .args(args)
        .output()
        .unwrap();
    ok(&out, "single process");
}

#[test]
fn two_processes_train_like_one_with_the_global_batch_and_resume_together() {
    if !common::dist_or_skip("tchcv train on two processes") {
        return;
    }
    let (data, spec) = setup("train-dist-flags");
    let single = common::scratch("train-dist-flags-single");
    single_process(&data, &spec, &single);

    let group = common::scratch("train-dist-flags-group");
    let launch = |extra: &[&str]| launch_two(&data, &spec, &group, extra);
    // Two steps, stop (as Ctrl-C), then --resume both ranks for the rest.
    let first = launch(&["--stop-after", "2"]);
    for (rank, out) in first.iter().enumerate() {
        assert_eq!(
            out.status.code(),
            Some(130),
            "rank {rank}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rank1 = String::from_utf8_lossy(&first[1].stdout);
    assert!(!rank1.contains("iter "), "only rank 0 logs: {rank1}");
    let second = launch(&["--resume"]);
    for (rank, out) in second.iter().enumerate() {
        ok(out, &format!("resumed rank {rank}"));
    }
    compare(&single, &group);
}

#[test]
fn torchrun_launches_tchcv_train() {
    if !common::dist_or_skip("torchrun --no-python tchcv train") {
        return;
    }
    let torchrun = common::python()
        .parent()
        .map(|b| b.join("torchrun"))
        .filter(|p| p.exists());
    let Some(torchrun) = torchrun else {
        panic!("torchrun is missing beside the reference Python (it comes with torch): run scripts/setup");
    };
    let (data, spec) = setup("train-dist-torchrun");
    let single = common::scratch("train-dist-torchrun-single");
    single_process(&data, &spec, &single);
    let group = common::scratch("train-dist-torchrun-group");
    let port = free_port().to_string();
    let child = Command::new(torchrun)
        .args([
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &port,
            "--no-python",
        ])
        .arg(common::tchcv_bin())
        .args(train_args(&data, &spec, &group, 4))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_all(vec![child], Duration::from_secs(180))
        .pop()
        .unwrap();
    ok(&out, "torchrun");
    compare(&single, &group);
}

/// A rank whose whole batch is unreadable still takes part in the step (with nothing to add),
/// so the ranks stay in step instead of hanging in mismatched collectives.
#[test]
fn an_unreadable_batch_on_one_rank_keeps_the_ranks_in_step() {
    if !common::dist_or_skip("unreadable batch on one rank") {
        return;
    }
    let dir = common::scratch("train-dist-unreadable");
    let data = dir.join("data");
    let config = SynthConfig {
        train: 8,
        test: 2,
        size: (96, 96),
        seed: 2,
        max_objects: 3,
        empty_fraction: 0.0,
        ..SynthConfig::default()
    };
    write_dataset(&data, &config).unwrap();
    let first = std::fs::read_to_string(data.join("ImageSets/Main/trainval.txt")).unwrap();
    let victim = first.lines().next().unwrap().trim().to_string();
    std::fs::write(
        data.join("JPEGImages").join(format!("{victim}.jpg")),
        b"\xff\xd8\xff truncated",
    )
    .unwrap();
    let out = dir.join("run");
    let master = format!("127.0.0.1:{}", free_port());
    let children = (0..2)
        .map(|rank| {
            Command::new(common::tchcv_bin())
                .args([
                    "train",
                    "--data",
                    &s(&data),
                    "--sets",
                    "trainval",
                    "--model",
                    "models/ssd_small.json",
                    "--device",
                    "cpu",
                    "--workers",
                    "1",
                    "--batch",
                    "1",
                    "--iters",
                    "8",
                    "--out",
                    &s(&out),
                    "--dist-timeout",
                    "30",
                    "--world-size",
                    "2",
                    "--rank",
                    &rank.to_string(),
                    "--master",
                    &master,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, out) in wait_all(children, Duration::from_secs(180))
        .iter()
        .enumerate()
    {
        ok(out, &format!("rank {rank}"));
    }
    let state = tchcv::train::checkpoint::load(&out.join("last.safetensors"))
        .unwrap()
        .state;
    assert_eq!(state.iteration, 8);
    assert_eq!(steps(&out).len(), 8, "rank 0 logged every step");
}
