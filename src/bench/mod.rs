//! Benchmarks that time tchcv and its PyTorch counterpart side by side, in one run.
//!
//! Each benchmark times the Rust side here and runs the matching Python reference
//! (`bench/reference.py <work>`, PyTorch eager, written for this project) in the same process
//! tree, so both figures come from the same machine at the same moment; the report states the
//! ratio. Timing: warm-up first, then the median of repeated runs, with a device synchronize
//! around each timed region.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

pub mod chart;
pub mod coco_eval;
pub mod data;
pub mod encode;
pub mod loss;
pub mod train;
pub mod train_step;
pub mod train_step_rcnn;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// The median wall time in milliseconds of `repeat` runs of `f`, after `warmup` runs.
pub fn median_ms(warmup: usize, repeat: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(repeat.max(1));
    for _ in 0..repeat.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// One line of a benchmark report: the same work timed in tchcv and in PyTorch.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Comparison {
    pub work: String,
    pub size: String,
    pub device: String,
    /// Median milliseconds per unit of work in tchcv.
    pub tchcv_ms: f64,
    /// Median milliseconds per unit of work in the PyTorch reference.
    pub pytorch_ms: Option<f64>,
    /// `pytorch_ms / tchcv_ms` (> 1: tchcv is faster).
    pub speedup: Option<f64>,
    /// Anything else worth reporting (throughput, memory).
    pub extra: serde_json::Value,
    /// A second line for the human-readable report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Comparison {
    pub fn new(
        work: &str,
        size: &str,
        device: &str,
        tchcv_ms: f64,
        pytorch_ms: Option<f64>,
    ) -> Self {
        Self {
            work: work.into(),
            size: size.into(),
            device: device.into(),
            tchcv_ms,
            pytorch_ms,
            speedup: pytorch_ms.map(|p| p / tchcv_ms),
            extra: serde_json::Value::Null,
            detail: None,
        }
    }

    /// A human-readable line.
    pub fn line(&self) -> String {
        let py = self
            .pytorch_ms
            .map(|p| format!("{p:10.3} ms"))
            .unwrap_or_else(|| "         -   ".into());
        let ratio = self
            .speedup
            .map(|s| format!("{s:6.2}x"))
            .unwrap_or_else(|| "     -".into());
        let line = format!(
            "{:<40} {:<34} {:<7} tchcv {:10.3} ms   pytorch {py}   speedup {ratio}",
            self.work, self.size, self.device, self.tchcv_ms
        );
        match &self.detail {
            Some(detail) => format!("{line}\n    {detail}"),
            None => line,
        }
    }
}

/// The Python that runs the references, first found of: `TCHCV_PYTHON`; the active venv
/// (`VIRTUAL_ENV`); the project venv `.venv` beside `bench/` (what `make setup` makes); `python3`
/// on `PATH`.
pub fn reference_python() -> PathBuf {
    if let Some(python) = std::env::var_os("TCHCV_PYTHON") {
        return PathBuf::from(python);
    }
    let venvs = [
        std::env::var_os("VIRTUAL_ENV").map(PathBuf::from),
        reference_dir().parent().map(|repo| repo.join(".venv")),
    ];
    venvs
        .into_iter()
        .flatten()
        .map(|venv| venv.join("bin/python"))
        .find(|python| python.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// What to tell a user whose reference Python lacks a module the references import.
pub(crate) fn missing_module_hint(python: &Path, stderr: &str) -> Option<String> {
    let module = stderr
        .lines()
        .find_map(|l| l.split("No module named ").nth(1))?
        .trim()
        .trim_matches('\'');
    Some(format!(
        "{} has no module {module:?}: the PyTorch references need the project's venv (run \
         `make setup` in the tchcv checkout: it installs torch 2.11.0, torchvision, numpy, \
         safetensors, pillow and pycocotools into .venv), or set TCHCV_PYTHON to a Python that \
         has them",
        python.display()
    ))
}

/// The `bench/` folder with the Python references (beside the binary's source tree, or
/// `TCHCV_BENCH_DIR`).
pub fn reference_dir() -> PathBuf {
    std::env::var_os("TCHCV_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench"))
}

/// Run `bench/reference.py <work> args...` (the PyTorch side of benchmark `work`); its last
/// stdout line must be a JSON object, which is returned.
pub fn run_reference(work: &str, args: &[String]) -> Result<serde_json::Value> {
    let path = reference_dir().join("reference.py");
    if !path.exists() {
        bail!(
            "{}: the Python reference is missing (set TCHCV_BENCH_DIR)",
            path.display()
        );
    }
    let python = reference_python();
    let out = Command::new(&python)
        .arg(&path)
        .arg(work)
        .args(args)
        .output()
        .with_context(|| format!("starting {} {}", python.display(), path.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if let Some(hint) = missing_module_hint(&python, &stderr) {
            bail!("bench {work}: {hint}");
        }
        bail!(
            "{} {work} failed ({}): {stderr}",
            path.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last)
        .with_context(|| format!("{} {work}: last line is not JSON: {last:?}", path.display()))
}

/// Write a report as pretty JSON.
pub fn write_report(path: &Path, rows: &[Comparison]) -> Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    crate::io::write_bytes_atomic(path, text.as_bytes())
}
