//! One side of `tchcv bench train` run and measured: `tchcv train` (this binary, as a child
//! process) or the PyTorch script (`bench/train_reference.py`, as a child process), timed the
//! same way. Start-up is the child's start to the line it prints just before its training loop
//! (`train: ...`), seen by this process; the loop's steps (images, wall seconds, seconds waiting
//! for data) are what each side logged: tchcv's `metrics.jsonl` step records, the script's
//! JSON report.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::{Context, Split};

/// Which side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Tchcv,
    PyTorch,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Tchcv => "tchcv",
            Side::PyTorch => "pytorch",
        }
    }
}

/// One training step as a side logged it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepTime {
    pub images: usize,
    /// Wall seconds since the previous step (the first: since the loop started).
    pub seconds: f64,
    /// Of those, the seconds the loop waited for the next batch.
    pub data_wait: f64,
    /// The step's learning rate.
    pub lr: f64,
}

/// One side's training run, measured.
#[derive(Debug, Clone, Serialize)]
pub struct SideRun {
    pub side: Side,
    pub split: Split,
    pub seed: u64,
    #[serde(skip)]
    pub steps: Vec<StepTime>,
    /// The child's start to its loop's start.
    pub startup_s: f64,
    /// The child's start to its exit.
    pub wall_s: f64,
    /// Peak RSS of the training process.
    pub peak_rss_mib: Option<f64>,
    /// With its data workers: tchcv's are threads (its RSS); PyTorch's are processes (the peak
    /// of the process's RSS plus its workers' private memory).
    pub peak_total_mib: Option<f64>,
    /// CUDA: the caching allocator's peak allocated bytes.
    pub peak_cuda_allocated_mib: Option<f64>,
    /// The trained weights (tchcv's checkpoint, or the script's safetensors).
    pub weights: PathBuf,
    /// The weights kept on the way (`--snapshot-every`): `(iteration, file)`, ascending,
    /// before the last iteration (whose weights are `weights`).
    pub snapshots: Vec<(u64, PathBuf)>,
}

impl SideRun {
    /// The run of `plan` by `child`: its steps, its peak memory `[RSS, with workers, CUDA
    /// allocated]` and its trained weights.
    fn new(
        plan: &RunPlan,
        child: &ChildRun,
        steps: Vec<StepTime>,
        [rss, with_workers, cuda]: [Option<f64>; 3],
        weights: PathBuf,
    ) -> Self {
        Self {
            side: plan.side,
            split: plan.split,
            seed: plan.seed,
            steps,
            startup_s: child.startup_s,
            wall_s: child.wall_s,
            peak_rss_mib: rss,
            peak_total_mib: with_workers,
            peak_cuda_allocated_mib: cuda,
            snapshots: plan
                .snapshot_iterations()
                .map(|k| (k, snapshot_file(plan, k)))
                .collect(),
            weights,
        }
    }

    /// Seconds in the training loop (the sum of the steps).
    pub fn loop_seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.seconds).sum()
    }

    /// Seconds in the training loop up to and including the `iteration`-th step.
    pub fn loop_seconds_through(&self, iteration: u64) -> f64 {
        let n = (iteration as usize).min(self.steps.len());
        // (A fold from +0: an empty f64 sum is -0.)
        self.steps[..n].iter().fold(0.0, |t, s| t + s.seconds)
    }

    /// The weights files of the run with their iteration: the snapshots, then the trained
    /// weights at the last step.
    pub fn weights_over_training(&self) -> Vec<(u64, &Path)> {
        let snapshots = self.snapshots.iter().map(|(k, p)| (*k, p.as_path()));
        snapshots
            .chain(std::iter::once((
                self.steps.len() as u64,
                self.weights.as_path(),
            )))
            .collect()
    }

    pub fn images(&self) -> usize {
        self.steps.iter().map(|s| s.images).sum()
    }

    /// The loop's seconds waiting for data.
    pub fn data_wait_seconds(&self) -> f64 {
        self.steps.iter().map(|s| s.data_wait).sum()
    }

    /// Whether `other` took the same steps: as many, with the same images each and the same
    /// learning rates (1e-9 relative); else what differs.
    pub fn same_steps_as(&self, other: &SideRun) -> Result<()> {
        if self.steps.len() != other.steps.len() {
            bail!("{} steps against {}", self.steps.len(), other.steps.len());
        }
        for (k, (a, b)) in self.steps.iter().zip(&other.steps).enumerate() {
            let lr_close = (a.lr - b.lr).abs() <= 1e-9 * a.lr.abs().max(b.lr.abs()).max(1e-12);
            if a.images != b.images || !lr_close {
                bail!(
                    "step {k}: {} images at lr {} against {} images at lr {}",
                    a.images,
                    a.lr,
                    b.images,
                    b.lr
                );
            }
        }
        Ok(())
    }

    /// Images per second after the first step (which also waits for the workers' first
    /// batches): the probes' measure of a split.
    pub fn steady_images_per_s(&self) -> f64 {
        let rest = if self.steps.len() > 1 {
            &self.steps[1..]
        } else {
            &self.steps[..]
        };
        let images: usize = rest.iter().map(|s| s.images).sum();
        let seconds: f64 = rest.iter().map(|s| s.seconds).sum();
        images as f64 / seconds.max(1e-9)
    }
}

/// What one run is: which side, split, seed and length, in which scratch folder.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub side: Side,
    pub split: Split,
    pub seed: u64,
    pub iters: u64,
    /// Keep the weights every this many iterations (0: none).
    pub snapshot_every: u64,
    pub dir: PathBuf,
}

impl RunPlan {
    /// The iterations the run keeps a snapshot at: every `snapshot_every` before the last.
    pub fn snapshot_iterations(&self) -> impl Iterator<Item = u64> {
        let (every, iters) = (self.snapshot_every, self.iters);
        (1..)
            .map(move |k| k * every)
            .take_while(move |&it| every > 0 && it < iters)
    }
}

/// Where side `plan.side` keeps its snapshot of `iteration`: [`crate::train::snapshot_path`] of
/// tchcv's run folder, or of the run's folder for the script (whose `--snapshot-dir` is
/// [`pytorch_snapshots`], named the same way).
fn snapshot_file(plan: &RunPlan, iteration: u64) -> PathBuf {
    match plan.side {
        Side::Tchcv => crate::train::snapshot_path(&tchcv_out(plan), iteration),
        Side::PyTorch => crate::train::snapshot_path(&plan.dir, iteration),
    }
}

/// tchcv's run folder.
fn tchcv_out(plan: &RunPlan) -> PathBuf {
    plan.dir.join("run")
}

/// The script's `--snapshot-dir`.
pub fn pytorch_snapshots(plan: &RunPlan) -> PathBuf {
    crate::train::snapshot_dir(&plan.dir)
}

/// Train as `plan` says and measure it.
pub fn run_side(ctx: &Context, plan: &RunPlan) -> Result<SideRun> {
    std::fs::create_dir_all(&plan.dir)
        .with_context(|| format!("creating {}", plan.dir.display()))?;
    match plan.side {
        Side::Tchcv => run_tchcv(ctx, plan),
        Side::PyTorch => run_pytorch(ctx, plan),
    }
}

/// `tchcv train --config` (the run's [`crate::train::TrainConfig`]) with the split's workers
/// and libtorch threads ([`crate::data::loader::TORCH_THREADS_VAR`]).
fn run_tchcv(ctx: &Context, plan: &RunPlan) -> Result<SideRun> {
    let out = tchcv_out(plan);
    let config = ctx.train_config(plan, &out)?;
    let config_path = plan.dir.join("config.json");
    crate::io::write_bytes_atomic(
        &config_path,
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let mut cmd = Command::new(&ctx.tchcv_bin);
    cmd.arg("train")
        .arg("--config")
        .arg(&config_path)
        .args(["--log-every", &ctx.bench.log_every.to_string()])
        .env(
            crate::data::loader::TORCH_THREADS_VAR,
            plan.split.threads.to_string(),
        );
    let child = run_child(cmd, plan.side)?;
    let records = read_step_records(&out.join("metrics.jsonl"))?;
    let steps = records.iter().map(step_of_record).collect();
    let peak_cuda = records
        .iter()
        .filter_map(|r| r["peak_cuda_allocated_mib"].as_f64())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let memory = [child.max_rss_mib, child.max_rss_mib, peak_cuda];
    let weights = crate::train::last_checkpoint(&out);
    Ok(SideRun::new(plan, &child, steps, memory, weights))
}

/// The `kind: "step"` records of a run's metrics.jsonl.
fn read_step_records(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (tchcv train's step records)", path.display()))?;
    let mut steps = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not a JSON line: {line:?}", path.display()))?;
        if record["kind"] == "step" {
            steps.push(record);
        }
    }
    Ok(steps)
}

fn step_of_record(r: &serde_json::Value) -> StepTime {
    StepTime {
        images: r["images"].as_u64().unwrap_or(0) as usize,
        seconds: r["seconds"].as_f64().unwrap_or(f64::NAN),
        data_wait: r["data_wait_seconds"].as_f64().unwrap_or(f64::NAN),
        lr: r["lr"].as_f64().unwrap_or(f64::NAN),
    }
}

/// `bench/reference.py train ...` with the same recipe, data list and initial weights.
fn run_pytorch(ctx: &Context, plan: &RunPlan) -> Result<SideRun> {
    let weights = plan.dir.join("weights.safetensors");
    let script = crate::bench::reference_dir().join("reference.py");
    let mut cmd = Command::new(crate::bench::reference_python());
    cmd.arg(&script)
        .arg("train")
        .args(ctx.reference_args(plan)?)
        .arg("--save")
        .arg(&weights);
    let child = run_child(cmd, plan.side)?;
    let last = child.lines.iter().rev().find(|l| !l.trim().is_empty());
    let report: serde_json::Value = last
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("{}: no JSON report at the end", script.display()))?;
    let steps = report["steps"]
        .as_array()
        .context("train_reference.py: no steps in the report")?
        .iter()
        .map(|s| StepTime {
            images: s[0].as_u64().unwrap_or(0) as usize,
            seconds: s[1].as_f64().unwrap_or(f64::NAN),
            data_wait: s[2].as_f64().unwrap_or(f64::NAN),
            lr: s[3].as_f64().unwrap_or(f64::NAN),
        })
        .collect();
    let memory = [
        "peak_rss_mib",
        "peak_with_workers_mib",
        "peak_cuda_allocated_mib",
    ]
    .map(|key| report[key].as_f64());
    Ok(SideRun::new(plan, &child, steps, memory, weights))
}

/// A finished child: its stdout lines, when it printed `train: ` (its loop's start), how long
/// it ran and its peak RSS.
struct ChildRun {
    lines: Vec<String>,
    startup_s: f64,
    wall_s: f64,
    max_rss_mib: Option<f64>,
}

/// Run `cmd`, echoing its lines to stderr (prefixed by the side), timing the line that starts
/// with `train: `; fails with its stderr when it fails or never printed that line.
fn run_child(mut cmd: Command, side: Side) -> Result<ChildRun> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{:?}", cmd.get_program());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().context("child stdout")?;
    let (lines, startup) = read_lines(stdout, start, side, &what)?;
    let (success, status, max_rss_kib) = wait_with_rusage(child.id())?;
    let wall_s = start.elapsed().as_secs_f64();
    let stderr = err_reader.join().unwrap_or_default();
    if !success {
        return Err(child_failure(&what, side, &status, &stderr));
    }
    let Some(startup_s) = startup else {
        bail!(
            "{what} ({}) never started its loop (no `train: ` line)",
            side.name()
        );
    };
    Ok(ChildRun {
        lines,
        startup_s,
        wall_s,
        max_rss_mib: max_rss_kib.map(|k| k / 1024.0),
    })
}

/// The child's stdout lines (echoed to stderr, prefixed by the side, except its JSON lines),
/// and the seconds from `start` to its first line starting with `train: `.
fn read_lines(
    stdout: impl Read,
    start: Instant,
    side: Side,
    what: &str,
) -> Result<(Vec<String>, Option<f64>)> {
    let (mut lines, mut startup) = (Vec::new(), None);
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading the output of {what}"))?;
        if startup.is_none() && line.starts_with("train: ") {
            startup = Some(start.elapsed().as_secs_f64());
        }
        if !line.starts_with('{') {
            eprintln!("[{}] {line}", side.name());
        }
        lines.push(line);
    }
    Ok((lines, startup))
}

/// The error for a child that failed: a missing Python module's hint, or the tail of its stderr.
fn child_failure(what: &str, side: Side, status: &str, stderr: &str) -> anyhow::Error {
    let python = crate::bench::reference_python();
    if let Some(hint) = crate::bench::missing_module_hint(&python, stderr) {
        return anyhow::anyhow!("bench train ({}): {hint}", side.name());
    }
    anyhow::anyhow!(
        "{what} ({}) failed ({status}): {}",
        side.name(),
        tail(stderr, 3000)
    )
}

/// The last `n` bytes of `text` (at a character boundary).
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Wait for child `pid`: whether it exited with status 0, its status in words, and its peak RSS
/// in KiB (`wait4`'s resource usage: this child's alone, not the bench's other children's).
fn wait_with_rusage(pid: u32) -> Result<(bool, String, Option<f64>)> {
    let pid = pid as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to locals; pid is our own child, not yet waited for.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waiting for the training process");
        }
    }
    let (success, words) = if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        (code == 0, format!("exit status {code}"))
    } else if libc::WIFSIGNALED(status) {
        (
            false,
            format!("killed by signal {}", libc::WTERMSIG(status)),
        )
    } else {
        (false, format!("wait status {status}"))
    };
    let rss = (usage.ru_maxrss > 0).then_some(usage.ru_maxrss as f64);
    Ok((success, words, rss))
}
