//! Checkpoints: one safetensors file holding the weights, the optimizer state and the run state
//! (JSON, as a u8 tensor), written atomically, plus a readable JSON copy of the state beside it.
//!
//! Because everything needed to resume lives in one file that is replaced by a rename, a crash
//! or Ctrl-C at any moment leaves the previous checkpoint whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::io::{read_tensors, write_bytes_atomic, write_safetensors};

const MODEL: &str = "model.";
const OPTIM: &str = "optim.";
const STATE: &str = "meta.state_json";

/// Where a run stands, and what it needs to resume or to be evaluated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub tchcv_version: String,
    /// Iterations completed.
    pub iteration: u64,
    /// Epoch of the next iteration.
    pub epoch: u64,
    /// The next iteration's batch within that epoch.
    pub next_batch: usize,
    /// Calls made to the loss (the random-mining stream).
    pub loss_calls: u64,
    /// Steps skipped because the loss was NaN or inf.
    pub nonfinite_skips: u64,
    /// Of which in a row, up to now.
    #[serde(default)]
    pub nonfinite_in_row: u32,
    /// The current epoch's sums so far (its summary line and the no-test-set "best").
    #[serde(default)]
    pub epoch_progress: EpochProgress,
    /// Processes in the run (a resumed epoch must be split the same way).
    #[serde(default = "one")]
    pub world_size: usize,
    /// The best evaluation (or loss) so far and its iteration.
    pub best: Option<(f64, u64)>,
    /// Class names, index = 0-based label.
    pub classes: Vec<String>,
    /// The model spec as loaded (so a checkpoint evaluates without the original file).
    pub spec: serde_json::Value,
    /// The training configuration.
    pub config: serde_json::Value,
}

fn one() -> usize {
    1
}

/// Sums over the steps of the current epoch, for its summary line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    pub steps: u64,
    pub loc_per_pos: f64,
    pub cls_per_pos: f64,
    pub total: f64,
    pub images: usize,
    pub seconds: f64,
    /// Of `seconds`, the time the loop waited for the loader's next batch.
    #[serde(default)]
    pub data_wait: f64,
}

impl EpochProgress {
    /// One step: its loss, images, wall seconds and seconds spent waiting for data.
    pub fn add(&mut self, s: &crate::loss::LossStats, images: usize, seconds: f64, data_wait: f64) {
        self.steps += 1;
        self.loc_per_pos += s.loc_per_pos;
        self.cls_per_pos += s.cls_per_pos;
        self.total += s.total;
        self.images += images;
        self.seconds += seconds;
        self.data_wait += data_wait;
    }

    /// The share of the steps' wall time spent waiting for data (0 without steps).
    pub fn data_wait_share(&self) -> f64 {
        if self.seconds > 0.0 {
            self.data_wait / self.seconds
        } else {
            0.0
        }
    }
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub state: RunState,
    /// Model variables by VarStore name.
    pub model: HashMap<String, Tensor>,
    /// Optimizer state by key.
    pub optim: BTreeMap<String, Tensor>,
}

/// The readable copy of a checkpoint's state: `last.safetensors` -> `last.json`.
pub fn state_json_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// Save atomically. model: the VarStore's variables; optim: the optimizer's state tensors.
pub fn save(
    path: &Path,
    model: &HashMap<String, Tensor>,
    optim: &[(String, Tensor)],
    state: &RunState,
) -> Result<()> {
    let state_json = serde_json::to_string_pretty(state)?;
    let state_tensor = Tensor::from_slice(state_json.as_bytes());
    let mut names: Vec<(String, &Tensor)> = Vec::with_capacity(model.len() + optim.len() + 1);
    let mut model_names: Vec<&String> = model.keys().collect();
    model_names.sort();
    for name in model_names {
        names.push((format!("{MODEL}{name}"), &model[name]));
    }
    for (key, t) in optim {
        names.push((format!("{OPTIM}{key}"), t));
    }
    names.push((STATE.to_string(), &state_tensor));
    let named: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    write_safetensors(path, &named)
        .with_context(|| format!("saving checkpoint {}", path.display()))?;
    write_bytes_atomic(&state_json_path(path), state_json.as_bytes())
}

/// Load a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint> {
    let tensors = read_tensors(path)?;
    let mut model = HashMap::new();
    let mut optim = BTreeMap::new();
    let mut state = None;
    for (name, t) in tensors {
        if let Some(n) = name.strip_prefix(MODEL) {
            model.insert(n.to_string(), t);
        } else if let Some(k) = name.strip_prefix(OPTIM) {
            optim.insert(k.to_string(), t);
        } else if name == STATE {
            state = Some(run_state(&t, path)?);
        }
    }
    let state = state.ok_or_else(|| {
        crate::bad_input(format!(
            "{}: not a tchcv checkpoint (no {STATE}); weights alone load with --init",
            path.display()
        ))
    })?;
    crate::data::ClassMap::new(state.classes.clone())
        .with_context(|| format!("{}: run state: classes", path.display()))?;
    Ok(Checkpoint {
        state,
        model,
        optim,
    })
}

/// The run state of a checkpoint: `meta.state_json`, JSON text as a `[bytes]` u8 tensor.
fn run_state(t: &Tensor, path: &Path) -> Result<RunState> {
    if t.kind() != tch::Kind::Uint8 || t.dim() != 1 {
        crate::bail_input!(
            "{}: {STATE}: expected JSON text as a 1-D uint8 tensor, got {:?} with shape {:?}",
            path.display(),
            t.kind(),
            t.size()
        );
    }
    let bytes = Vec::<u8>::try_from(t)
        .map_err(|e| crate::bad_input(format!("{}: {STATE}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| crate::bad_input(format!("{}: run state: {e}", path.display())))
}

/// A trained detector restored from a checkpoint: what `tchcv eval --checkpoint` and
/// `tchcv detect` run.
pub struct TrainedDetector {
    pub spec: crate::spec::ModelSpec,
    pub classes: crate::data::ClassMap,
    pub coder: crate::bbox::BoxCoder,
    pub model: Box<dyn crate::models::Detector>,
    /// Holds the weights (keep it alive with the model).
    pub vs: tch::nn::VarStore,
    pub state: RunState,
}

/// Load a checkpoint's spec, classes and weights onto `device` (the spec travels inside the
/// checkpoint, so the original file is not needed).
pub fn load_detector(path: &Path, device: tch::Device) -> Result<TrainedDetector> {
    let ckpt = load(path)?;
    let origin = path.display().to_string();
    let spec = crate::spec::ModelSpec::from_json_str(
        &ckpt.state.spec.to_string(),
        &format!("{origin} (spec)"),
    )?;
    let classes = crate::data::ClassMap::new(ckpt.state.classes.clone())
        .with_context(|| format!("{origin}: class list"))?;
    let vs = tch::nn::VarStore::new(device);
    let model = crate::models::build(vs.root(), &spec, classes.len() as i64)
        .with_context(|| format!("{origin}: building the model"))?;
    crate::io::load_into_varstore(&vs, &ckpt.model, false, &origin)?;
    let coder = crate::bbox::BoxCoder::from_spec(&spec)?;
    Ok(TrainedDetector {
        spec,
        classes,
        coder,
        model,
        vs,
        state: ckpt.state,
    })
}
