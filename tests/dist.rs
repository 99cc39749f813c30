//! Data-parallel training over c10d (Gloo on loopback): W processes with batch B must train like
//! one process with batch W*B, and a rank that dies or hangs must fail the others in time,
//! naming it.
//!
//! The workers are this test binary itself, started again with `worker --exact --ignored` and
//! the job in `TCHCV_DIST_TEST_WORKER`: the `worker` test below is not a test of its own (it is
//! ignored in a normal run) but the worker's entry point. Its rank comes from the variables
//! torchrun sets (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), which the
//! tests set by hand or let torchrun set. Every worker prints `rank R step S` before each
//! step, writes its per-step loss statistics and final parameters to the job's folder, and
//! exits 3 with `worker error: ...` on stderr when the library returns an error.
//!
//! The reference is the same training in this process, without a group, on the whole global
//! batch: parameters within 1e-5, per-step loss, loc and cls per positive within rtol 1e-5.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, VarStore};
use tch::{Device, Kind, Tensor};
use tchcv::dist::{self, DistConfig, GradReduction, ProcessGroup};
use tchcv::loss::{DetectionLoss, LossInputs, LossStats, SsdLoss, SsdLossConfig};

const WORKER_ENV: &str = "TCHCV_DIST_TEST_WORKER";
const ANCHORS: i64 = 12;
const CLASSES: i64 = 4; // column 0 is the background
const LR: f64 = 0.05;

/// Multi-process tests share 2 cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- The training both sides run ----------------------------------------------------------

/// What a worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    batch_per_rank: i64,
    steps: usize,
    seed: u64,
    out: PathBuf,
    timeout_ms: u64,
    /// This rank sleeps (alive, heartbeat going) from the start of this step on.
    hang: Option<(usize, usize)>,
}

/// A small SSD-like head: conv, ReLU, linear to `ANCHORS * (4 + CLASSES)`.
fn build_model(vs: &VarStore) -> impl Module {
    let root = vs.root();
    let conv = nn::conv2d(
        &root / "conv",
        3,
        6,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    );
    let head = nn::linear(
        &root / "head",
        6 * 6 * 6,
        ANCHORS * (4 + CLASSES),
        Default::default(),
    );
    nn::seq()
        .add(conv)
        .add_fn(|x| x.relu().flatten(1, -1))
        .add(head)
}

/// Variables initialised from `seed` (each rank uses its own: the broadcast must fix that).
fn model_with_init(seed: i64) -> (VarStore, impl Module) {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let net = build_model(&vs);
    (vs, net)
}

/// The global batch of step `step`: images `[N, 3, 6, 6]`, loc targets `[N, A, 4]`, labels
/// `[N, A]` (about 15% positives, 5% ignored; the second image of each batch has none).
fn global_batch(seed: u64, step: usize, n: i64) -> (Tensor, Tensor, Tensor) {
    tch::manual_seed((seed as i64).wrapping_mul(7919).wrapping_add(step as i64));
    let images = Tensor::randn([n, 3, 6, 6], (Kind::Float, Device::Cpu));
    let loc_targets = Tensor::randn([n, ANCHORS, 4], (Kind::Float, Device::Cpu));
    let u = Tensor::rand([n, ANCHORS], (Kind::Float, Device::Cpu));
    let classes = Tensor::randint_low(1, CLASSES, [n, ANCHORS], (Kind::Int64, Device::Cpu));
    let labels = classes
        .where_self(&u.lt(0.15), &Tensor::zeros_like(&classes))
        .where_self(&u.lt(0.95), &Tensor::full_like(&classes, -1));
    if n > 1 {
        let _ = labels.get(1).fill_(0);
    }
    (images, loc_targets, labels)
}

/// One SGD step; returns the global batch's loss statistics.
fn train_step(
    group: Option<&ProcessGroup>,
    vs: &VarStore,
    net: &impl Module,
    loss: &SsdLoss,
    (images, loc_targets, labels): (&Tensor, &Tensor, &Tensor),
) -> Result<LossStats> {
    let n = images.size()[0];
    let out = net.forward(images).view([n, ANCHORS, 4 + CLASSES]);
    let loc_preds = out.narrow(2, 0, 4);
    let cls_preds = out.narrow(2, 4, CLASSES);
    let sums = loss.sums(&LossInputs {
        loc_preds: &loc_preds,
        loc_targets,
        cls_preds: &cls_preds,
        cls_targets: labels,
    })?;
    let global = dist::global_normalizer(group, &sums, loss.normalization())?;
    let output = global.finish(sums);
    for mut p in vs.trainable_variables() {
        p.zero_grad();
    }
    output.total.backward();
    if let Some(group) = group {
        group.all_reduce_varstore_gradients(vs, GradReduction::Sum)?;
    }
    tch::no_grad(|| {
        for mut p in vs.trainable_variables() {
            let step = p.grad() * LR;
            let _ = p.f_sub_(&step);
        }
    });
    Ok(global.stats())
}

/// Rows `rank*b .. (rank+1)*b` of a global batch: rank r's shard.
fn shard(batch: &(Tensor, Tensor, Tensor), rank: usize, b: i64) -> (Tensor, Tensor, Tensor) {
    let start = rank as i64 * b;
    (
        batch.0.narrow(0, start, b),
        batch.1.narrow(0, start, b),
        batch.2.narrow(0, start, b),
    )
}

/// What a run leaves: per-step statistics and the final parameters.
struct Outcome {
    stats: Vec<LossStats>,
    params: HashMap<String, Tensor>,
}

/// The single-process reference: batch W*B, no group.
fn single_process(job: &Job, world: usize) -> Outcome {
    let (vs, net) = model_with_init(init_seed(job.seed, 0));
    let loss = SsdLoss::new(SsdLossConfig::default()).unwrap();
    let n = job.batch_per_rank * world as i64;
    let stats = (0..job.steps)
        .map(|step| {
            let (x, l, c) = global_batch(job.seed, step, n);
            train_step(None, &vs, &net, &loss, (&x, &l, &c)).unwrap()
        })
        .collect();
    Outcome {
        stats,
        params: vs.variables(),
    }
}

fn init_seed(seed: u64, rank: usize) -> i64 {
    (seed as i64).wrapping_add(1000 * (rank as i64 + 1))
}

fn run_worker(job: &Job) -> Result<()> {
    tch::set_num_threads(1);
    let config = DistConfig::from_env()?
        .context("the worker was started without WORLD_SIZE/RANK")?
        .with_timeout(Duration::from_millis(job.timeout_ms))
        .with_bucket_bytes(1024); // several buckets per step, issued together
    let group = ProcessGroup::new(&config, Device::Cpu)?;
    let rank = group.rank();
    let (vs, net) = model_with_init(init_seed(job.seed, rank));
    group.broadcast_varstore(&vs)?;
    let loss = SsdLoss::new(SsdLossConfig::default())?;
    let n = job.batch_per_rank * group.world_size() as i64;
    let mut stats = Vec::new();
    for step in 0..job.steps {
        println!("rank {rank} step {step}");
        if job.hang == Some((rank, step)) {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let batch = global_batch(job.seed, step, n);
        let (x, l, c) = shard(&batch, rank, job.batch_per_rank);
        stats.push(train_step(Some(&group), &vs, &net, &loss, (&x, &l, &c))?);
    }
    let variables = vs.variables();
    let named: Vec<(&str, &Tensor)> = variables.iter().map(|(k, v)| (k.as_str(), v)).collect();
    tchcv::io::write_safetensors(&job.out.join(format!("rank{rank}.safetensors")), &named)?;
    let json = serde_json::to_string(&stats)?;
    std::fs::write(job.out.join(format!("rank{rank}.json")), json)?;
    group.finish()
}

/// The worker's entry point (see the file's doc); ignored in a normal run.
#[test]
#[ignore = "the entry point of the worker processes that the multi-process tests start"]
fn worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        eprintln!("not started as a worker ({WORKER_ENV} is unset): nothing to do");
        return;
    };
    let job: Job = serde_json::from_str(&spec).expect("worker job JSON");
    if let Err(e) = run_worker(&job) {
        eprintln!("worker error: {e:#}");
        std::process::exit(3);
    }
}

// ---- Starting workers ---------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The arguments that make this binary run the worker.
fn worker_args() -> [&'static str; 6] {
    [
        "worker",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]
}

/// A running worker: its process, its stdout lines as they come, its stderr at the end.
struct Worker {
    rank: usize,
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

fn spawn(mut command: Command, rank: usize) -> Worker {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker");
    let stdout = child.stdout.take().expect("worker stdout");
    let mut stderr = child.stderr.take().expect("worker stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    Worker {
        rank,
        child,
        lines,
        stderr,
    }
}

/// Workers that are killed when the test ends, however it ends.
struct Workers(Vec<Worker>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// Start `ranks` of a `world`-process run with the store at 127.0.0.1:`port`.
fn start(job: &Job, world: usize, ranks: &[usize], port: u16) -> Workers {
    let exe = std::env::current_exe().expect("test binary path");
    let spec = serde_json::to_string(job).unwrap();
    Workers(
        ranks
            .iter()
            .map(|&rank| {
                let mut command = Command::new(&exe);
                command
                    .args(worker_args())
                    .env(WORKER_ENV, &spec)
                    .env("WORLD_SIZE", world.to_string())
                    .env("RANK", rank.to_string())
                    .env("LOCAL_RANK", rank.to_string())
                    .env("MASTER_ADDR", "127.0.0.1")
                    .env("MASTER_PORT", port.to_string());
                spawn(command, rank)
            })
            .collect(),
    )
}

/// How a worker ended: exit code (None: killed by a signal), stderr, seconds since `since`.
struct Ending {
    code: Option<i32>,
    stderr: String,
    after: f64,
}

/// Wait for worker `i` (at most `limit`; then it is killed and the test fails).
fn wait_for(workers: &mut Workers, i: usize, since: Instant, limit: Duration) -> Ending {
    let w = &mut workers.0[i];
    let deadline = since + limit;
    loop {
        if let Some(status) = w.child.try_wait().expect("wait for a worker") {
            let after = since.elapsed().as_secs_f64();
            let stderr = std::mem::replace(&mut w.stderr, std::thread::spawn(String::new));
            return Ending {
                code: status.code(),
                stderr: stderr.join().unwrap_or_default(),
                after,
            };
        }
        if Instant::now() > deadline {
            let _ = w.child.kill();
            panic!(
                "rank {} did not exit within {:.0} s",
                w.rank,
                limit.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until worker `i` prints `rank R step S`.
fn wait_for_step(workers: &Workers, i: usize, step: usize, limit: Duration) {
    let w = &workers.0[i];
    let wanted = format!("rank {} step {step}", w.rank);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match w.lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line == wanted => return,
            _ => {}
        }
    }
    panic!("rank {} never printed {wanted:?}", w.rank);
}

fn read_outcome(dir: &Path, rank: usize) -> Outcome {
    let stats: Vec<LossStats> = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("rank{rank}.json"))).expect("worker stats"),
    )
    .expect("worker stats JSON");
    let params = common::read_safetensors(&dir.join(format!("rank{rank}.safetensors")));
    Outcome { stats, params }
}

fn job(name: &str, seed: u64, timeout_ms: u64) -> Job {
    Job {
        batch_per_rank: 2,
        steps: 3,
        seed,
        out: common::scratch(name),
        timeout_ms,
        hang: None,
    }
}

/// Every rank ends with rank 0's parameters exactly, and they and the per-step statistics
/// match the single-process run on the global batch.
fn check_against_single_process(job: &Job, world: usize) {
    let reference = single_process(job, world);
    let outcomes: Vec<Outcome> = (0..world).map(|r| read_outcome(&job.out, r)).collect();
    for (rank, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome.params.len(), reference.params.len());
        for (name, want) in &reference.params {
            let got = &outcome.params[name];
            assert!(
                got.equal(&outcomes[0].params[name]),
                "rank {rank}: {name} differs from rank 0's"
            );
            common::assert_close(&format!("rank {rank} {name}"), got, want, 0.0, 1e-5);
        }
        assert_eq!(outcome.stats.len(), job.steps);
        for (step, (got, want)) in outcome.stats.iter().zip(&reference.stats).enumerate() {
            assert_eq!(
                got.num_pos, want.num_pos,
                "rank {rank} step {step}: num_pos"
            );
            assert_eq!(
                got.num_neg, want.num_neg,
                "rank {rank} step {step}: num_neg"
            );
            for (what, g, w) in [
                ("loss", got.total, want.total),
                ("loc per positive", got.loc_per_pos, want.loc_per_pos),
                ("cls per positive", got.cls_per_pos, want.cls_per_pos),
            ] {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1e-3),
                    "rank {rank} step {step}: {what} {g} vs single process {w}"
                );
            }
        }
    }
}

fn train_and_compare(name: &str, world: usize) {
    let _serial = serial();
    let job = job(name, common::fresh_seed(name), 30_000);
    let mut workers = start(&job, world, &(0..world).collect::<Vec<_>>(), free_port());
    let since = Instant::now();
    for i in 0..world {
        let end = wait_for(&mut workers, i, since, Duration::from_secs(60));
        assert_eq!(end.code, Some(0), "rank {i} failed:\n{}", end.stderr);
    }
    eprintln!(
        "{name}: {world} ranks trained in {:.1} s",
        since.elapsed().as_secs_f64()
    );
    check_against_single_process(&job, world);
}

// ---- The tests ----------------------------------------------------------------------------

#[test]
fn two_ranks_train_like_one_process_with_the_global_batch() {
    if common::dist_or_skip("two ranks vs one process") {
        train_and_compare("dist_two_ranks", 2);
    }
}

#[test]
fn three_ranks_train_like_one_process_with_the_global_batch() {
    if common::dist_or_skip("three ranks vs one process") {
        train_and_compare("dist_three_ranks", 3);
    }
}

/// A failure: which ranks start, which one hangs or is killed, and what the others must say.
struct Fault {
    name: &'static str,
    world: usize,
    started: &'static [usize],
    /// `(rank, step)`: this rank sleeps from that step on (its heartbeat goes on).
    hang: Option<(usize, usize)>,
    /// `(rank, step)`: this rank is killed (SIGKILL) once it prints that step.
    kill: Option<(usize, usize)>,
    survivors: &'static [usize],
    culprit: &'static str,
    /// Seconds the survivors may take beyond the timeout (the diagnosis, start-up).
    slack: f64,
}

/// Run `fault`: every survivor must exit 3 with `worker error:` naming the culprit, at most
/// `timeout + slack` seconds after the fault.
fn survivors_fail(fault: Fault) {
    if !common::dist_or_skip(fault.name) {
        return;
    }
    let _serial = serial();
    let timeout = 4.0;
    let mut job = job(fault.name, 5, (timeout * 1000.0) as u64);
    job.steps = 1_000_000;
    job.hang = fault.hang;
    let mut workers = start(&job, fault.world, fault.started, free_port());
    let position = |rank: usize| fault.started.iter().position(|&r| r == rank).unwrap();
    if let Some((rank, step)) = fault.hang.or(fault.kill) {
        wait_for_step(&workers, position(rank), step, Duration::from_secs(60));
    }
    if let Some((rank, _)) = fault.kill {
        workers.0[position(rank)]
            .child
            .kill()
            .expect("kill a worker");
    }
    let fault_time = Instant::now();
    for &rank in fault.survivors {
        let end = wait_for(
            &mut workers,
            position(rank),
            fault_time,
            Duration::from_secs(30),
        );
        let stderr = end.stderr.trim();
        eprintln!("rank {rank} failed after {:.1} s: {stderr}", end.after);
        assert_eq!(
            end.code,
            Some(3),
            "rank {rank}: a library error was expected"
        );
        assert!(
            stderr.contains("worker error:") && stderr.contains(fault.culprit),
            "rank {rank}'s error does not say {:?}",
            fault.culprit
        );
        let within = timeout + fault.slack;
        assert!(
            end.after <= within,
            "rank {rank} took over {within} s to fail"
        );
    }
}

#[test]
fn a_killed_rank_fails_the_others_within_the_timeout_naming_it() {
    survivors_fail(Fault {
        name: "dist_killed_rank",
        world: 3,
        started: &[0, 1, 2],
        hang: None,
        kill: Some((1, 2)),
        survivors: &[0, 2],
        culprit: "rank 1 has stopped",
        slack: 0.0,
    });
}

#[test]
fn a_hung_rank_fails_the_others_after_the_timeout_naming_it() {
    survivors_fail(Fault {
        name: "dist_hung_rank",
        world: 3,
        started: &[0, 1, 2],
        hang: Some((2, 3)),
        kill: None,
        survivors: &[0, 1],
        culprit: "rank 2 is alive but has not reached",
        slack: 3.0,
    });
}

#[test]
fn a_killed_store_host_fails_the_others_naming_rank_0() {
    survivors_fail(Fault {
        name: "dist_killed_rank0",
        world: 2,
        started: &[0, 1],
        hang: None,
        kill: Some((0, 2)),
        survivors: &[1],
        culprit: "rank 0 has probably exited",
        slack: 0.0,
    });
}

#[test]
fn a_rank_that_never_starts_is_named_at_start_up() {
    survivors_fail(Fault {
        name: "dist_missing_rank",
        world: 3,
        started: &[0, 1],
        hang: None,
        kill: None,
        survivors: &[0, 1],
        culprit: "rank 2 never joined",
        slack: 4.0,
    });
}

/// Two workers through `torchrun --no-python` with `rendezvous` arguments: both must train
/// like one process with the global batch.
fn torchrun_two_ranks(name: &str, rendezvous: &[&str]) {
    let _serial = serial();
    let torchrun = common::python()
        .parent()
        .map(|bin| bin.join("torchrun"))
        .filter(|p| p.exists())
        .expect("torchrun beside the reference Python (it comes with torch): run scripts/setup");
    let job = job(name, common::fresh_seed(name), 30_000);
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(torchrun);
    command
        .args(["--nnodes", "1", "--nproc-per-node", "2"])
        .args(rendezvous)
        .arg("--no-python")
        .arg(&exe)
        .args(worker_args())
        .env(WORKER_ENV, serde_json::to_string(&job).unwrap());
    let mut workers = Workers(vec![spawn(command, 0)]);
    let end = wait_for(&mut workers, 0, Instant::now(), Duration::from_secs(90));
    assert_eq!(end.code, Some(0), "torchrun failed:\n{}", end.stderr);
    check_against_single_process(&job, 2);
}

/// torchrun's static rendezvous: its agent hosts the store at --master-port.
#[test]
fn torchrun_launches_two_ranks_that_agree() {
    if common::dist_or_skip("torchrun") {
        let port = free_port().to_string();
        let args = ["--master-addr", "127.0.0.1", "--master-port", &port];
        torchrun_two_ranks("dist_torchrun", &args);
    }
}

/// torchrun's c10d rendezvous (what multi-node runs use: --rdzv-endpoint).
#[test]
fn torchrun_with_c10d_rendezvous() {
    if common::dist_or_skip("torchrun c10d rendezvous") {
        let endpoint = format!("127.0.0.1:{}", free_port());
        let args = ["--rdzv-backend", "c10d", "--rdzv-endpoint", &endpoint];
        torchrun_two_ranks("dist_torchrun_c10d", &args);
    }
}

#[test]
fn one_process_group_collectives_are_the_identity() {
    if !common::dist_or_skip("world size 1") {
        return;
    }
    let _serial = serial();
    let config = DistConfig::explicit(1, 0, &format!("127.0.0.1:{}", free_port()))
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .with_bucket_bytes(64);
    let group = ProcessGroup::new(&config, Device::Cpu).unwrap();
    assert_eq!(group.backend(), dist::Backend::Gloo);
    assert!(group.is_main());

    let mut values = [1.5, -2.0, 3.0];
    group.all_reduce_f64(&mut values).unwrap();
    assert_eq!(values, [1.5, -2.0, 3.0]);
    let t = [
        Tensor::from_slice(&[1.0f32, 2.0]),
        Tensor::from_slice(&[7i64]),
    ];
    group.all_reduce_sum(&t).unwrap();
    assert_eq!(Vec::<f32>::try_from(&t[0]).unwrap(), [1.0, 2.0]);
    assert_eq!(Vec::<i64>::try_from(&t[1]).unwrap(), [7]);

    // Gradients: several buckets (64-byte cap), a parameter without a gradient gets zeros.
    let (vs, net) = model_with_init(3);
    let unused = vs.root().var("unused", &[2], nn::Init::Const(1.0));
    let x = Tensor::randn([2, 3, 6, 6], (Kind::Float, Device::Cpu));
    net.forward(&x).sum(Kind::Float).backward();
    let before: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k != "unused")
        .map(|(k, v)| (k, v.grad().copy()))
        .collect();
    group
        .all_reduce_varstore_gradients(&vs, GradReduction::Average)
        .unwrap();
    for (name, grad) in &before {
        assert!(vs.variables()[name].grad().equal(grad), "{name}");
    }
    assert!(unused.grad().defined(), "unused parameter got a gradient");
    assert_eq!(unused.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);

    let copy: Vec<Tensor> = vs.trainable_variables().iter().map(|t| t.copy()).collect();
    group.broadcast_varstore(&vs).unwrap();
    for (a, b) in vs.trainable_variables().iter().zip(&copy) {
        assert!(a.equal(b));
    }
    group.barrier().unwrap();

    // The global normaliser of one rank is the local one, and its stats are the loss's own.
    let loss = SsdLoss::new(SsdLossConfig::default()).unwrap();
    let (x, l, c) = global_batch(4, 0, 3);
    let out = net.forward(&x).view([3, ANCHORS, 4 + CLASSES]);
    let inputs = LossInputs {
        loc_preds: &out.narrow(2, 0, 4),
        loc_targets: &l,
        cls_preds: &out.narrow(2, 4, CLASSES),
        cls_targets: &c,
    };
    let in_group = dist::global_normalizer(
        Some(&group),
        &loss.sums(&inputs).unwrap(),
        loss.normalization(),
    )
    .unwrap();
    let alone =
        dist::global_normalizer(None, &loss.sums(&inputs).unwrap(), loss.normalization()).unwrap();
    assert_eq!(in_group, alone);
    let direct = loss.forward(&inputs).unwrap().stats();
    let via = alone.stats();
    assert_eq!((via.num_pos, via.num_neg), (direct.num_pos, direct.num_neg));
    for (g, w) in [
        (via.total, direct.total),
        (via.loc_per_pos, direct.loc_per_pos),
        (via.cls_per_pos, direct.cls_per_pos),
    ] {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
    }
    group.finish().unwrap();
}

/// Two ranks in two threads of this process, each running `body` in its own group.
fn two_ranks_in_threads(
    timeout: Duration,
    body: fn(usize, &ProcessGroup) -> Result<()>,
) -> Vec<Result<()>> {
    let master = format!("127.0.0.1:{}", free_port());
    let handles: Vec<_> = (0..2)
        .map(|rank| {
            let master = master.clone();
            std::thread::spawn(move || -> Result<()> {
                let config = DistConfig::explicit(2, rank, &master)?.with_timeout(timeout);
                let group = ProcessGroup::new(&config, Device::Cpu)?;
                body(rank, &group)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_different_model_on_one_rank_fails_every_rank() {
    if !common::dist_or_skip("layout check") {
        return;
    }
    let _serial = serial();
    // Rank 1 has an extra variable.
    let results = two_ranks_in_threads(Duration::from_secs(10), |rank, group| {
        let vs = VarStore::new(Device::Cpu);
        let _ = vs.root().var("w", &[3], nn::Init::Const(rank as f64));
        if rank == 1 {
            let _ = vs.root().var("extra", &[1], nn::Init::Const(0.0));
        }
        group.broadcast_varstore(&vs)
    });
    for (rank, result) in results.into_iter().enumerate() {
        let err = result.expect_err("a layout mismatch must fail");
        assert!(
            err.to_string().contains("the model of rank(s) [1]"),
            "rank {rank}: {err:#}"
        );
    }
}

#[test]
fn a_long_barrier_outlasts_the_group_timeout_and_a_plain_one_does_not() {
    if !common::dist_or_skip("long barrier") {
        return;
    }
    let _serial = serial();
    // Rank 0 works 1.5 s alone (say, evaluating) while the group's timeout is 1 s.
    let results = two_ranks_in_threads(Duration::from_secs(1), |rank, group| {
        if rank == 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        group.barrier_within(Duration::from_secs(20))?;
        if rank == 0 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        group.barrier()
    });
    let err = results[1]
        .as_ref()
        .expect_err("rank 1's plain barrier times out");
    assert!(
        err.to_string()
            .contains("rank 0 is alive but has not reached collective #3 (barrier)"),
        "{err:#}"
    );
}

#[test]
fn the_build_says_whether_distributed_support_is_there() {
    let backends = dist::backends();
    let config = DistConfig::explicit(1, 0, "127.0.0.1:1").unwrap();
    if backends.is_empty() {
        eprintln!("no distributed support: {}", dist::build_note());
        assert!(!dist::build_note().is_empty());
        let err = ProcessGroup::new(&config, Device::Cpu).err().unwrap();
        assert!(
            err.to_string().contains("without distributed support"),
            "{err:#}"
        );
    } else {
        assert_eq!(backends[0], dist::Backend::Gloo);
        let nccl = backends.contains(&dist::Backend::Nccl);
        assert_eq!(
            nccl,
            dist::build_note().is_empty(),
            "{}",
            dist::build_note()
        );
        if nccl {
            // NCCL on the CPU is a user error, found before any connection is tried.
            let err = ProcessGroup::new(&config.with_backend(dist::Backend::Nccl), Device::Cpu)
                .err()
                .unwrap();
            assert!(tchcv::is_bad_input(&err), "{err:#}");
        }
    }
}

#[test]
fn tchcv_info_reports_the_distributed_backends() {
    let out = Command::new(common::tchcv_bin())
        .args(["info", "--json"])
        .output()
        .expect("run tchcv info");
    assert!(out.status.success());
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    let names: Vec<&str> = dist::backends().iter().map(|b| b.name()).collect();
    assert_eq!(info["distributed"], serde_json::json!(dist::available()));
    assert_eq!(info["distributed_backends"], serde_json::json!(names));
    assert_eq!(
        info["distributed_note"],
        serde_json::json!(dist::build_note())
    );
    let text = Command::new(common::tchcv_bin())
        .arg("info")
        .output()
        .expect("run tchcv info");
    let text = String::from_utf8_lossy(&text.stdout);
    let line = if names.is_empty() {
        "distributed      not compiled in".to_string()
    } else {
        format!(
            "distributed      c10d compiled in, backends: {}",
            names.join(", ")
        )
    };
    assert!(text.contains(&line), "{text}");
}

#[test]
fn nccl_world_size_one_on_cuda() {
    let Some(device) = common::cuda_or_skip("NCCL world size 1") else {
        return;
    };
    if !common::dist_or_skip("NCCL world size 1") {
        return;
    }
    assert!(
        dist::backends().contains(&dist::Backend::Nccl),
        "CUDA works but NCCL is not compiled in: {}",
        dist::build_note()
    );
    let _serial = serial();
    let config = DistConfig::explicit(1, 0, &format!("127.0.0.1:{}", free_port()))
        .unwrap()
        .with_timeout(Duration::from_secs(60));
    let group = ProcessGroup::new(&config, device).unwrap();
    assert_eq!(group.backend(), dist::Backend::Nccl);
    let t = [Tensor::from_slice(&[1.0f32, 2.0, 3.0]).to_device(device)];
    group.all_reduce_sum(&t).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&t[0].to_device(Device::Cpu)).unwrap(),
        [1.0, 2.0, 3.0]
    );
    let vs = VarStore::new(device);
    let w = vs.root().var("w", &[4], nn::Init::Const(2.0));
    (&w * &w).sum(Kind::Float).backward();
    group
        .all_reduce_varstore_gradients(&vs, GradReduction::Average)
        .unwrap();
    assert_eq!(
        Vec::<f32>::try_from(&w.grad().to_device(Device::Cpu)).unwrap(),
        [4.0; 4]
    );
    group.broadcast_varstore(&vs).unwrap();
    let mut values = [3.0, 4.0];
    group.all_reduce_f64(&mut values).unwrap();
    assert_eq!(values, [3.0, 4.0]);
    group.barrier().unwrap();
    group.finish().unwrap();
    eprintln!("NCCL world size 1 on {device:?}: all-reduce, broadcast, barrier ran");
}

/// A build without the c10d shim fails the distributed tests unless `TCHCV_NO_DIST` says it was
/// left out on purpose: the suites never pass without running.
#[test]
fn a_missing_shim_fails_unless_no_dist_is_set() {
    let note = "Gloo's headers are missing";
    assert_eq!(common::dist_expectation(true, None, note), Ok(true));
    assert_eq!(common::dist_expectation(true, Some("1"), note), Ok(true));
    assert_eq!(common::dist_expectation(false, Some("1"), note), Ok(false));
    assert_eq!(
        common::dist_expectation(false, Some("yes"), note),
        Ok(false)
    );
    for unset in [None, Some(""), Some("0")] {
        let message = common::dist_expectation(false, unset, note).unwrap_err();
        assert!(
            message.contains(note) && message.contains("TCHCV_NO_DIST=1"),
            "{message}"
        );
    }
}
