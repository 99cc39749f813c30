//! `tchcv compare`: training runs side by side, so "focal loss or hard negative mining, on my
//! data?" has an answer in one command.
//!
//! A run folder (what `tchcv train` writes) holds `config.json`, `classes.json`, `data.json`
//! (objects per class), `metrics.jsonl`, `last.json` and, once evaluated, `eval.json`. Runs are
//! compared only when they share the data, the splits, the classes and the network (input size,
//! backbone, head, anchors); the cure may differ: the loss and its options, and the matching
//! rule that goes with it. Runs whose configurations differ only in the seed (and in where and
//! how they ran: output folder, device, workers) form one group, reported as mean and spread.
//!
//! Significance: with `s` the sample standard deviation over a group's seeds, two groups differ
//! significantly in a column only when `|mean_a - mean_b| > s_a + s_b` (their one-sigma bands do
//! not overlap). A group of one seed has no spread, so its differences are not tested and it
//! is labelled as such.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use super::config::{ClassWeightsMode, TrainConfig};
use crate::eval::plot::{read_metrics, Metrics};
use crate::eval::recall::{is_recall_file, RecallResult};
use crate::eval::VocEvalResult;
use crate::loss::LossKind;
use crate::spec::ModelSpec;

/// One run folder, read.
#[derive(Debug, Clone)]
pub struct RunFolder {
    /// The name in tables and legends (`--names`, else the folder's).
    pub name: String,
    pub dir: PathBuf,
    pub config: TrainConfig,
    /// The model spec it trained (the checkpoint's, else the spec file's), as JSON.
    pub spec: Value,
    pub classes: Vec<String>,
    /// Training objects per class (from `data.json`), in class order.
    pub objects: Option<Vec<u64>>,
    pub cure: Cure,
    /// Iterations logged, the training wall time over them (evaluation excluded) and the images.
    pub iterations: u64,
    pub seconds: f64,
    pub images: f64,
    pub eval: Option<VocEvalResult>,
    /// A region proposal network's evaluation (its `eval.json` is a proposal recall).
    pub recall: Option<RecallResult>,
    pub metrics: Metrics,
}

/// The imbalance cure a run trained with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cure {
    pub loss: LossKind,
    /// The loss options in effect (defaults filled; bookkeeping keys dropped), plus
    /// `class_weights_from` and the spec's `matching`.
    pub options: Value,
    /// One line for people: "SSD loss, hard negatives 3:1".
    pub label: String,
}

/// Loss options that say nothing about the cure.
const BOOKKEEPING_OPTIONS: [&str; 4] = ["check_finite", "seed", "class_counts", "strict"];

impl Cure {
    /// The cure of `config` on `spec`, as the trainer sets it up.
    pub fn of(config: &TrainConfig, spec: &ModelSpec) -> Result<Self> {
        let (loss, options) = config.loss_setup(spec, 0, &[])?;
        let mut options = loss.options_with_defaults(options)?;
        if let Some(o) = options.as_object_mut() {
            for key in BOOKKEEPING_OPTIONS {
                o.remove(key);
            }
            if loss == LossKind::SoftmaxFocal {
                o.insert("class_weights_from".into(), json!(config.class_weights));
            }
            o.insert("matching".into(), serde_json::to_value(&spec.matching)?);
        }
        let mut label = cure_label(loss, &options, config.class_weights);
        if let Some((sampler, roi_loss)) = config.second_stage(spec)? {
            let kind = serde_json::to_value(sampler.kind)?;
            let kind = kind.as_str().unwrap_or("?").to_string();
            let cls = match &roi_loss.cls {
                crate::loss::RcnnClsLoss::CrossEntropy => "cross entropy".to_string(),
                crate::loss::RcnnClsLoss::SoftmaxFocal(f) => {
                    format!("softmax focal, gamma {}", f.gamma)
                }
            };
            label = format!("{label}; RoIs: {kind} sample, {cls}");
            let mut sampler = serde_json::to_value(&sampler)?;
            if let Some(o) = sampler.as_object_mut() {
                o.remove("seed"); // the run's seed: runs of one cure differ in it
            }
            if let Some(o) = options.as_object_mut() {
                o.insert("roi_sampler".into(), sampler);
                o.insert("roi_loss".into(), serde_json::to_value(&roi_loss)?);
            }
        }
        Ok(Self {
            loss,
            options,
            label,
        })
    }
}

/// "SSD loss, hard negatives 3:1", "sigmoid focal, alpha 0.25, gamma 2", ...
fn cure_label(loss: LossKind, o: &Value, weights: ClassWeightsMode) -> String {
    let num = |key: &str| o[key].as_f64().map_or("?".into(), |v| format!("{v}"));
    match loss {
        LossKind::Ssd => match o["mining"].as_str().unwrap_or("hard") {
            "all" => "SSD loss, all negatives".into(),
            mining => format!("SSD loss, {mining} negatives {}:1", num("neg_pos_ratio")),
        },
        LossKind::Focal => {
            let alpha = match o["alpha"].as_f64() {
                Some(a) => format!("alpha {a}"),
                None => "no alpha".into(),
            };
            format!("sigmoid focal, {alpha}, gamma {}", num("gamma"))
        }
        LossKind::SoftmaxFocal => {
            let weights = match weights {
                ClassWeightsMode::None => "no class weights",
                ClassWeightsMode::Dataset => "dataset class weights (bg = fg sum / 3)",
                ClassWeightsMode::Batch => "per-batch class weights",
            };
            format!("softmax focal, gamma {}, {weights}", num("gamma"))
        }
        LossKind::Rpn => match o["sampler"].as_str() {
            Some(sampler) => format!("RPN loss, {sampler} sample"),
            None => "RPN loss".into(),
        },
    }
}

/// The name of a run folder: its own, or `parent/seed-N` for a seed's sub-folder.
fn default_name(dir: &Path) -> String {
    let own = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = own(dir).unwrap_or_else(|| dir.display().to_string());
    match (name.starts_with("seed"), dir.parent().and_then(own)) {
        (true, Some(parent)) => format!("{parent}/{name}"),
        _ => name,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::bad_input(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| crate::bad_input(format!("{}: not JSON: {e}", path.display())))
}

/// Iterations, training seconds and images from the step records of `metrics.jsonl`. Records
/// written before steps carried `seconds` and `images` give `batch / images_per_s`.
fn step_totals(path: &Path, batch: usize) -> Result<(u64, f64, f64)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::bad_input(format!("{}: {e}", path.display())))?;
    let (mut iterations, mut seconds, mut images) = (0u64, 0.0, 0.0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue; // a line cut short by a running writer
        };
        if v["kind"] != "step" {
            continue;
        }
        iterations = iterations.max(v["iter"].as_u64().map_or(0, |i| i + 1));
        let n = v["images"].as_f64().unwrap_or(batch as f64);
        let s = v["seconds"]
            .as_f64()
            .or_else(|| v["images_per_s"].as_f64().map(|r| n / r.max(1e-9)))
            .unwrap_or(0.0);
        seconds += s;
        images += n;
    }
    Ok((iterations, seconds, images))
}

/// `sets` as written in the table: empty is the data format's default (VOC `trainval`, COCO
/// the only instances file).
fn training_sets(sets: &str) -> &str {
    if sets.trim().is_empty() {
        "(the format's default)"
    } else {
        sets
    }
}

/// Objects per class from `data.json`, in `classes` order.
fn read_objects(dir: &Path, classes: &[String]) -> Result<Option<Vec<u64>>> {
    let path = dir.join("data.json");
    if !path.is_file() {
        return Ok(None);
    }
    let v = read_json(&path)?;
    let per_class = &v["objects_per_class"];
    Ok(Some(
        classes
            .iter()
            .map(|c| per_class[c].as_u64().unwrap_or(0))
            .collect(),
    ))
}

impl RunFolder {
    /// Read the run folder `dir`; `name` for tables (default: the folder's).
    pub fn read(dir: &Path, name: Option<String>) -> Result<Self> {
        if !dir.join("config.json").is_file() {
            crate::bail_input!(
                "{}: not a run folder (no config.json; tchcv train writes one)",
                dir.display()
            );
        }
        let config: TrainConfig = serde_json::from_value(read_json(&dir.join("config.json"))?)
            .map_err(|e| crate::bad_input(format!("{}/config.json: {e}", dir.display())))?;
        let spec = run_spec(dir, &config)?;
        let spec_text = serde_json::to_string(&spec)?;
        let model = ModelSpec::from_json_str(&spec_text, &format!("{}'s spec", dir.display()))?;
        let classes = crate::data::ClassMap::load(&dir.join("classes.json"))?
            .names()
            .to_vec();
        let metrics_path = dir.join("metrics.jsonl");
        let (iterations, seconds, images) = step_totals(&metrics_path, config.batch)?;
        let (eval, recall) = read_evaluation(&dir.join("eval.json"))?;
        Ok(Self {
            name: name.unwrap_or_else(|| default_name(dir)),
            dir: dir.to_path_buf(),
            cure: Cure::of(&config, &model).with_context(|| format!("{}", dir.display()))?,
            objects: read_objects(dir, &classes)?,
            metrics: read_metrics(&metrics_path)?,
            config,
            spec,
            classes,
            iterations,
            seconds,
            images,
            eval,
            recall,
        })
    }

    /// What must be equal for two runs to be compared: `(what, value)`.
    fn identity(&self) -> Vec<(&'static str, Value)> {
        let data = self
            .config
            .data
            .canonicalize()
            .unwrap_or_else(|_| self.config.data.clone());
        let mut network = self.spec.clone();
        if let Some(o) = network.as_object_mut() {
            // The cure's part of the spec (loss, matching, the class prior) and free text.
            for key in ["name", "description", "loss", "matching", "num_anchors"] {
                o.remove(key);
            }
            if let Some(n) = o.get_mut("network").and_then(Value::as_object_mut) {
                n.remove("prior_prob");
            }
        }
        vec![
            ("data", json!(data)),
            ("training sets", json!(training_sets(&self.config.sets))),
            ("test sets", json!(self.config.test_sets)),
            ("classes", json!(self.classes)),
            ("network", network),
        ]
    }

    /// The configuration without what only says where and how the run ran (and the seed):
    /// runs equal in it are seeds of one experiment.
    fn experiment_key(&self) -> Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for key in [
                "seed",
                "out",
                "workers",
                "device",
                "checkpoint_every",
                "snapshot_every",
                "world_size",
                "rank",
                "master",
                "dist_backend",
                "dist_timeout",
                "cudnn_benchmark",
                "max_nonfinite",
            ] {
                o.remove(key);
            }
        }
        json!({"config": v, "cure": self.cure.options})
    }

    /// Images per second over the logged steps.
    pub fn images_per_s(&self) -> f64 {
        self.images / self.seconds.max(1e-9)
    }
}

/// A run's `eval.json`: a detector's VOC result, or a region proposal network's recall (none
/// before the first evaluation).
fn read_evaluation(path: &Path) -> Result<(Option<VocEvalResult>, Option<RecallResult>)> {
    if !path.is_file() {
        return Ok((None, None));
    }
    if is_recall_file(path) {
        let recall = serde_json::from_value(read_json(path)?).map_err(|e| {
            crate::bad_input(format!("{}: not a recall result: {e}", path.display()))
        })?;
        return Ok((None, Some(recall)));
    }
    Ok((Some(VocEvalResult::read_json(path)?), None))
}

/// The spec a run trained: the checkpoint's copy in `last.json`, else the spec file's.
fn run_spec(dir: &Path, config: &TrainConfig) -> Result<Value> {
    let state = dir.join("last.json");
    if state.is_file() {
        let v = read_json(&state)?;
        if v["spec"].is_object() {
            return Ok(v["spec"].clone());
        }
    }
    Ok(ModelSpec::load(&config.model)
        .with_context(|| format!("{}: no last.json; the spec file", dir.display()))?
        .to_json())
}

/// Mean and spread of one column over a group's runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    /// Sample standard deviation over the runs; None with fewer than two.
    pub spread: Option<f64>,
    /// Runs with a value.
    pub n: usize,
}

impl Stat {
    /// Over the finite `values`; NaN mean when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        let n = v.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / n as f64
        };
        let spread = (n >= 2).then(|| {
            let ss: f64 = v.iter().map(|x| (x - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Self { mean, spread, n }
    }

    /// Whether this and `other` differ beyond their spreads (None: a spread is missing).
    pub fn differs_from(&self, other: &Stat) -> Option<bool> {
        let (a, b) = (self.spread?, other.spread?);
        Some((self.mean - other.mean).abs() > a + b)
    }
}

/// Runs of one experiment (equal but for the seed).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: String,
    pub cure: Cure,
    /// Indices into [`Comparison::runs`].
    pub runs: Vec<usize>,
    pub seeds: Vec<u64>,
    pub iterations: Stat,
    pub seconds: Stat,
    pub images_per_s: Stat,
    pub map_voc07: Stat,
    pub map_area: Stat,
    /// Region proposal networks: AR@1000 and recall at IoU 0.5 with 1000 proposals.
    pub ar_1000: Stat,
    pub recall_50: Stat,
    /// VOC07 AP per class, in [`Comparison::classes`] order.
    pub class_ap: Vec<Stat>,
}

/// A class and how often it occurs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassCount {
    pub name: String,
    /// Index in the runs' class list.
    pub index: usize,
    pub objects: u64,
}

/// Runs side by side.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub runs: Vec<RunFolder>,
    pub groups: Vec<Group>,
    /// Most frequent first.
    pub classes: Vec<ClassCount>,
    /// "training" (data.json) or "test" (eval.json's ground truth): where the counts are from.
    pub counts_from: &'static str,
    /// Largest class count over the smallest non-zero one.
    pub imbalance: Option<f64>,
    /// What differs between runs that should not (compared anyway with `force`).
    pub differences: Vec<String>,
}

/// Where the runs' identities differ: one line per field, naming the runs.
fn differences(runs: &[RunFolder]) -> Vec<String> {
    let first = runs[0].identity();
    let mut out = Vec::new();
    for run in &runs[1..] {
        for ((what, a), (_, b)) in first.iter().zip(run.identity()) {
            if *a != b {
                out.push(format!(
                    "{what}: {} has {}, {} has {}",
                    runs[0].name,
                    short(a),
                    run.name,
                    short(&b)
                ));
            }
        }
    }
    out
}

/// A JSON value cut to a line.
fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 120 {
        format!("{}...", text.chars().take(117).collect::<String>())
    } else {
        text
    }
}

/// The classes ordered by object count (training counts when every run has them, else the
/// test ground truth of the first evaluated run).
fn class_counts(runs: &[RunFolder]) -> (Vec<ClassCount>, &'static str) {
    let names = &runs[0].classes;
    let (counts, from) = match &runs[0].objects {
        Some(o) => (o.clone(), "training"),
        None => {
            let test = runs.iter().find_map(|r| r.eval.as_ref());
            let counts = names
                .iter()
                .map(|n| {
                    test.and_then(|e| e.classes.iter().find(|c| &c.class == n))
                        .map_or(0, |c| c.n_gt as u64)
                })
                .collect();
            (counts, "test")
        }
    };
    let mut classes: Vec<ClassCount> = names
        .iter()
        .enumerate()
        .map(|(index, name)| ClassCount {
            name: name.clone(),
            index,
            objects: counts.get(index).copied().unwrap_or(0),
        })
        .collect();
    classes.sort_by(|a, b| b.objects.cmp(&a.objects).then(a.index.cmp(&b.index)));
    (classes, from)
}

/// The name of a group: its run's, or for several seeds what their names share (a study's
/// `ssd-hard/seed-0` and `ssd-hard/seed-1` give `ssd-hard`).
fn group_name(runs: &[&RunFolder]) -> String {
    if let [one] = runs {
        return one.name.clone();
    }
    let first = &runs[0].name;
    let common = runs[1..].iter().fold(first.len(), |len, r| {
        first
            .chars()
            .zip(r.name.chars())
            .take_while(|(a, b)| a == b)
            .count()
            .min(len)
    });
    let prefix: String = first.chars().take(common).collect();
    let separators = ['-', '_', '/', ' ', '.'];
    let trimmed = prefix
        .trim_end_matches(|c: char| c.is_ascii_digit() || separators.contains(&c))
        .trim_end_matches("seed")
        .trim_end_matches(separators);
    if trimmed.is_empty() {
        runs.iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(" + ")
    } else {
        trimmed.to_string()
    }
}

/// Group `runs` by experiment, in the order they were given, with each group's statistics.
fn group(runs: &[RunFolder], classes: &[ClassCount]) -> Vec<Group> {
    let mut keys: Vec<(Value, Vec<usize>)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let key = run.experiment_key();
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => keys.push((key, vec![i])),
        }
    }
    keys.into_iter()
        .map(|(_, members)| {
            let rs: Vec<&RunFolder> = members.iter().map(|&i| &runs[i]).collect();
            let evals = || rs.iter().filter_map(|r| r.eval.as_ref());
            Group {
                name: group_name(&rs),
                cure: rs[0].cure.clone(),
                seeds: rs.iter().map(|r| r.config.seed).collect(),
                iterations: Stat::of(rs.iter().map(|r| r.iterations as f64)),
                seconds: Stat::of(rs.iter().map(|r| r.seconds)),
                images_per_s: Stat::of(rs.iter().map(|r| r.images_per_s())),
                map_voc07: Stat::of(evals().map(|e| e.map_voc07)),
                map_area: Stat::of(evals().map(|e| e.map_area)),
                ar_1000: Stat::of(rs.iter().filter_map(|r| Some(r.recall.as_ref()?.ar_1000))),
                recall_50: Stat::of(rs.iter().filter_map(|r| Some(r.recall.as_ref()?.recall_50))),
                class_ap: classes
                    .iter()
                    .map(|c| {
                        Stat::of(evals().filter_map(|e| e.classes.get(c.index).map(|a| a.ap_voc07)))
                    })
                    .collect(),
                runs: members,
            }
        })
        .collect()
}

/// Read and compare run folders. `names` (one per folder) replace the folder names. Runs on
/// other data, splits, classes or networks are refused, naming the difference, unless `force`
/// (the differences are then kept in the report).
pub fn compare(dirs: &[PathBuf], names: Option<&[String]>, force: bool) -> Result<Comparison> {
    if dirs.is_empty() {
        crate::bail_input!("compare: give at least one run folder");
    }
    if let Some(n) = names {
        if n.len() != dirs.len() {
            crate::bail_input!("--names: {} names for {} run folders", n.len(), dirs.len());
        }
    }
    let runs = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| RunFolder::read(d, names.map(|n| n[i].clone())))
        .collect::<Result<Vec<_>>>()?;
    let differences = differences(&runs);
    if !differences.is_empty() && !force {
        crate::bail_input!(
            "these runs are not comparable (other data, splits, classes or network):\n  {}\n\
             (compare them anyway with --force: the report marks it)",
            differences.join("\n  ")
        );
    }
    let (classes, counts_from) = class_counts(&runs);
    let nonzero = classes.iter().map(|c| c.objects).filter(|&n| n > 0);
    let imbalance = match (nonzero.clone().max(), nonzero.min()) {
        (Some(max), Some(min)) => Some(max as f64 / min as f64),
        _ => None,
    };
    let groups = group(&runs, &classes);
    Ok(Comparison {
        runs,
        groups,
        classes,
        counts_from,
        imbalance,
        differences,
    })
}
