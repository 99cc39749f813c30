//! Helpers shared by the integration tests: the reference Python, scratch directories, the
//! shared datasets and the CUDA device.
#![allow(dead_code)]

pub mod detections;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root: `TCHCV_REPO` (prebuilt test binaries run on another machine, e.g. by
/// scripts/gpu-bench.sh), else where the tests were built.
pub fn repo() -> PathBuf {
    std::env::var_os("TCHCV_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The Python that runs the PyTorch references: `TCHCV_PYTHON` (a path, or a bare name looked
/// up on `PATH`, e.g. `python3` on the GPU machine), else the project venv's. Panics with the
/// fix when it is missing: parity tests never skip silently.
pub fn python() -> PathBuf {
    let python = std::env::var_os("TCHCV_PYTHON")
        .map(PathBuf::from)
        .map(|p| on_path(&p).unwrap_or(p))
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        python.exists(),
        "reference Python {} not found: run scripts/setup (make test does), or set TCHCV_PYTHON",
        python.display()
    );
    python
}

/// A bare program name (no `/`) found in a `PATH` directory.
fn on_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() != 1 || name.is_absolute() {
        return None;
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Run `tests/reference/<script>` with `args`; panics with its stderr when it fails.
/// Returns stdout.
pub fn run_reference(script: &str, args: &[&str]) -> String {
    let path = repo().join("tests/reference").join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed ({}):\n{}",
        path.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh, empty scratch directory under `target/test-scratch/<name>`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = repo().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A seed for fresh random cases: `TCHCV_TEST_SEED` when set, else from the clock. Printed,
/// so a failure can be replayed.
pub fn fresh_seed(what: &str) -> u64 {
    let seed = std::env::var("TCHCV_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64 % 1_000_000_007)
                .unwrap_or(1)
        });
    eprintln!("{what}: seed {seed} (replay with TCHCV_TEST_SEED={seed})");
    seed
}

/// Say why a test is skipping: on stderr (shown with `--nocapture`) and in
/// `target/test-skips.log`, which `make test` prints at the end, so a skip is never silent.
pub fn note_skip(message: &str) {
    eprintln!("{message}");
    let log = repo().join("target/test-skips.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        use std::io::Write;
        let _ = writeln!(f, "{message}");
    }
}

/// `../shared/data/<name>` beside the repository, or None with the reason in the skip log
/// ([`note_skip`]). A test over several datasets goes on to the next one (`continue`).
pub fn shared_dataset(name: &str) -> Option<PathBuf> {
    let dir = repo().join("../shared/data").join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        note_skip(&format!(
            "SKIPPED (no shared data): {} is absent (tests on the shared datasets need ../shared/data)",
            dir.display()
        ));
        None
    }
}

/// CUDA device 0, or None with a printed reason (CUDA tests skip on machines without a GPU).
pub fn cuda_or_skip(what: &str) -> Option<tch::Device> {
    if tch::Cuda::is_available() {
        Some(tch::Device::Cuda(0))
    } else {
        note_skip(&format!(
            "SKIPPED (no GPU): {what}: CUDA is not available on this machine"
        ));
        None
    }
}

/// Read a safetensors file as a name -> tensor map.
pub fn read_safetensors(path: &Path) -> std::collections::HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The path of the built `tchcv` binary (`TCHCV_BIN` for prebuilt binaries moved elsewhere).
pub fn tchcv_bin() -> PathBuf {
    std::env::var_os("TCHCV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tchcv")))
}

/// Max |a - b| over all elements (as f64).
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Assert `|a - b| <= atol + rtol * |b|` elementwise, naming what is compared.
pub fn assert_close(what: &str, a: &tch::Tensor, b: &tch::Tensor, rtol: f64, atol: f64) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let a64 = a.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu);
    let b64 = b.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu);
    let excess = ((&a64 - &b64).abs() - (b64.abs() * rtol + atol))
        .max()
        .double_value(&[]);
    assert!(
        excess <= 0.0 || a64.numel() == 0,
        "{what}: max |a-b| = {:.3e} exceeds atol {atol:e} + rtol {rtol:e} * |b| (by {excess:.3e})",
        max_abs_diff(&a64, &b64)
    );
}

/// True when distributed (c10d) support is compiled in. Without it, the test is skipped (with
/// the reason in the skip log) only where `TCHCV_NO_DIST` says it was left out on purpose;
/// otherwise it fails: the set-up installs what the shim needs, so a build without it is a
/// broken set-up, not a reason to pass.
pub fn dist_or_skip(what: &str) -> bool {
    match dist_expectation(
        tchcv::dist::available(),
        std::env::var("TCHCV_NO_DIST").ok().as_deref(),
        tchcv::dist::build_note(),
    ) {
        Ok(true) => true,
        Ok(false) => {
            note_skip(&format!(
                "SKIPPED (no distributed support, TCHCV_NO_DIST is set: {}): {what}",
                tchcv::dist::build_note()
            ));
            false
        }
        Err(message) => panic!("{what}: {message}"),
    }
}

/// Whether to run a distributed test: `Ok(true)` with the shim, `Ok(false)` (skip) without it
/// when `no_dist` (the `TCHCV_NO_DIST` variable) is set to anything but "" or "0", else the
/// failure message.
pub fn dist_expectation(
    available: bool,
    no_dist: Option<&str>,
    build_note: &str,
) -> Result<bool, String> {
    if available {
        return Ok(true);
    }
    if no_dist.is_some_and(|v| !v.is_empty() && v != "0") {
        return Ok(false);
    }
    Err(format!(
        "distributed support was expected but is not compiled in ({build_note}). Install Gloo's \
         headers (scripts/setup does: apt-get install libgloo-dev) and rebuild, or set \
         TCHCV_NO_DIST=1 to build and test without distributed training"
    ))
}

/// The records of `kind` ("step", "epoch", "eval", "nonfinite") in a run's metrics.jsonl.
pub fn metrics(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// Run the `tchcv` binary from the repository root with `args`, then each `(flag, path)`.
pub fn run_tchcv<P: AsRef<Path>>(args: &[&str], paths: &[(&str, P)]) -> std::process::Output {
    let mut cmd = Command::new(tchcv_bin());
    cmd.current_dir(repo()).args(args);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path.as_ref());
    }
    cmd.output().expect("run tchcv")
}

/// The stdout of a command that must have succeeded (else a panic with its output).
pub fn success(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `tchcv train` flags for a 2-iteration run of the small SSD on the CPU (batch 8, 1 worker).
pub const TINY_TRAINING: [&str; 10] = [
    "--model",
    "models/ssd_small.json",
    "--device",
    "cpu",
    "--workers",
    "1",
    "--batch",
    "8",
    "--iters",
    "2",
];
