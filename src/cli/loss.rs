//! `tchcv loss`: one loss evaluation on tensors from a file, printed as JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Map, Value};
use tch::{Kind, Tensor};
use tchcv::io::{read_tensors, take_tensor, write_safetensors};
use tchcv::loss::{LossInputs, LossKind};

/// Evaluate a loss on `loc_preds`, `loc_targets`, `cls_preds`, `cls_targets` read from a file.
///
/// Prints one JSON object: total, loc_sum, cls_sum, num_pos, num_neg, loc_per_pos, cls_per_pos
/// (and median_ms with --repeat). Bad input exits with status 2 and names the tensor.
#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors or .npz file with loc_preds [N,A,4], loc_targets [N,A,4],
    /// cls_preds [N,A,C] and cls_targets [N,A] (int64).
    #[arg(long)]
    input: PathBuf,
    /// ssd (background column 0, hard negative mining), focal (sigmoid, no background column)
    /// or softmax-focal (background column 0, histogram class weights).
    #[arg(long, default_value = "ssd")]
    loss: LossKind,
    /// Loss options as JSON (same keys as below, snake_case); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// SSD: negatives kept per positive.
    #[arg(long)]
    neg_pos_ratio: Option<f64>,
    /// SSD: hard, random or all.
    #[arg(long)]
    neg_mining: Option<String>,
    /// SSD: at least this many negatives per image.
    #[arg(long)]
    min_negatives: Option<i64>,
    /// SSD: seed of random mining.
    #[arg(long)]
    seed: Option<u64>,
    /// Focal: alpha in [0, 1], or "none" to disable the weighting.
    #[arg(long)]
    alpha: Option<String>,
    /// Focal losses: focusing exponent gamma.
    #[arg(long)]
    gamma: Option<f64>,
    /// Softmax focal: none, static (needs --class-counts or a class_counts tensor) or batch.
    #[arg(long)]
    class_weights: Option<String>,
    /// Softmax focal: the class histogram for static weights, comma separated, background first.
    #[arg(long, value_delimiter = ',')]
    class_counts: Option<Vec<f64>>,
    /// Softmax focal: histogram or fg-sum-over-3.
    #[arg(long)]
    background_weight: Option<String>,
    /// Softmax focal: per-positive or mean.
    #[arg(long)]
    reduction: Option<String>,
    /// Divide by max(normalizer_min, num_pos) (default 1).
    #[arg(long)]
    normalizer_min: Option<f64>,
    /// Smooth-L1 beta (default 1).
    #[arg(long)]
    beta: Option<f64>,
    /// torchcv behaviour: an error on a batch without positives.
    #[arg(long)]
    strict: bool,
    /// Write grad_loc_preds and grad_cls_preds (gradients of total) to this .safetensors file.
    #[arg(long)]
    grads: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Time K forward+backward passes (after one warm-up) and report the median.
    #[arg(long)]
    repeat: Option<usize>,
}

/// A number flag as JSON. JSON has no NaN or inf (`json!` would write null), so those are
/// refused here, naming the flag.
fn finite(flag: &str, v: f64) -> Result<Value> {
    if !v.is_finite() {
        tchcv::bail_input!("--{flag} {v}: expected a finite number");
    }
    Ok(json!(v))
}

impl Args {
    /// The loss options as JSON: the --config file, then the flags on top.
    fn options(&self) -> Result<Value> {
        let mut options = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| tchcv::bad_input(format!("{}: {e}", path.display())))?;
                serde_json::from_str::<Map<String, Value>>(&text).map_err(|e| {
                    tchcv::bad_input(format!("{}: not a JSON object: {e}", path.display()))
                })?
            }
            None => Map::new(),
        };
        let snake = |s: &str| s.replace('-', "_");
        let mut set = |key: &str, value: Value| {
            options.insert(key.to_string(), value);
        };
        if let Some(v) = self.neg_pos_ratio {
            set("neg_pos_ratio", finite("neg-pos-ratio", v)?);
        }
        if let Some(v) = &self.neg_mining {
            set("mining", json!(v));
        }
        if let Some(v) = self.min_negatives {
            set("min_negatives", json!(v));
        }
        if let Some(v) = self.seed {
            set("seed", json!(v));
        }
        if let Some(v) = &self.alpha {
            let alpha = match v.as_str() {
                "none" | "off" | "-1" => Value::Null,
                s => s
                    .parse::<f64>()
                    .ok()
                    .filter(|a| a.is_finite())
                    .map(|a| json!(a))
                    .ok_or_else(|| {
                        tchcv::bad_input(format!(
                            "--alpha {s:?}: expected a number in [0, 1] or none"
                        ))
                    })?,
            };
            set("alpha", alpha);
        }
        if let Some(v) = self.gamma {
            set("gamma", finite("gamma", v)?);
        }
        if let Some(v) = &self.class_weights {
            set("class_weights", json!(snake(v)));
        }
        if let Some(v) = &self.class_counts {
            let counts = v.iter().map(|&h| finite("class-counts", h));
            set("class_counts", counts.collect::<Result<Value>>()?);
        }
        if let Some(v) = &self.background_weight {
            set("background_weight", json!(snake(v)));
        }
        if let Some(v) = &self.reduction {
            set("reduction", json!(snake(v)));
        }
        if let Some(v) = self.normalizer_min {
            set("normalizer_min", finite("normalizer-min", v)?);
        }
        if let Some(v) = self.beta {
            set("beta", finite("beta", v)?);
        }
        if self.strict {
            set("strict", json!(true));
        }
        Ok(Value::Object(options))
    }
}

/// `t` on `device`, as a leaf that records its gradient. Only float tensors can: another dtype
/// is an error naming the tensor (and the file), not tch's panic.
fn differentiable(name: &str, t: Tensor, device: tch::Device, file: &Path) -> Result<Tensor> {
    if !tchcv::device::is_float(t.kind()) {
        tchcv::bail_input!(
            "{}: {name}: expected a float tensor (f32, f64, f16 or bf16), got {:?} with shape {:?}",
            file.display(),
            t.kind(),
            t.size()
        );
    }
    Ok(t.f_to_device(device)?.f_set_requires_grad(true)?)
}

/// The `class_counts` tensor of the input file: `[C]` finite counts >= 0 of a number dtype.
fn class_counts(counts: &Tensor, file: &Path) -> Result<Vec<f64>> {
    let bad = |why: String| {
        tchcv::bad_input(format!(
            "{}: class_counts: expected [C] counts (one per class, background first), {why}",
            file.display()
        ))
    };
    if counts.dim() != 1 || counts.kind() == Kind::Bool {
        return Err(bad(format!(
            "got {:?} with shape {:?}",
            counts.kind(),
            counts.size()
        )));
    }
    let counts = Vec::<f64>::try_from(counts.f_to_kind(Kind::Double)?)
        .map_err(|e| bad(format!("cannot read them: {e}")))?;
    if let Some(h) = counts.iter().find(|h| !(h.is_finite() && **h >= 0.0)) {
        return Err(bad(format!("got a count of {h}")));
    }
    Ok(counts)
}

pub fn run(args: Args) -> Result<ExitCode> {
    let device = tchcv::device::parse_device(&args.device)?;
    let mut tensors = read_tensors(&args.input)?;
    let file = args.input.as_path();
    let mut take = |name: &str| take_tensor(&mut tensors, name, file);
    let loc_preds = differentiable("loc_preds", take("loc_preds")?, device, file)?;
    let loc_targets = take("loc_targets")?.f_to_device(device)?;
    let cls_preds = differentiable("cls_preds", take("cls_preds")?, device, file)?;
    let cls_targets = take("cls_targets")?.f_to_device(device)?;
    let class_counts_tensor = take("class_counts").ok();

    let mut options = args.options()?;
    let static_weights = options.get("class_weights").and_then(Value::as_str) == Some("static");
    if let (true, None, Some(counts)) = (
        static_weights,
        options.get("class_counts"),
        class_counts_tensor,
    ) {
        options["class_counts"] = json!(class_counts(&counts, file)?);
    }
    let loss = args.loss.build(options)?;
    let inputs = LossInputs {
        loc_preds: &loc_preds,
        loc_targets: &loc_targets,
        cls_preds: &cls_preds,
        cls_targets: &cls_targets,
    };
    let with_input = |e: anyhow::Error| e.context(format!("{}", args.input.display()));

    // Forward and backward; returns the output and [grad_loc_preds, grad_cls_preds].
    let forward_backward = || -> Result<_> {
        let out = loss.forward(&inputs)?;
        let grads = Tensor::f_run_backward(&[&out.total], &[&loc_preds, &cls_preds], false, false)?;
        tchcv::device::synchronize(device);
        Ok((out, grads))
    };
    let (out, grads) = forward_backward().map_err(with_input)?;
    let stats = out.stats();
    let size = cls_preds.size();
    let mut report = json!({
        "loss": args.loss,
        "device": tchcv::device::device_name(device),
        "shape": {"n": size[0], "a": size[1], "c": size[2]},
        "total": stats.total,
        "loc_sum": stats.loc_sum,
        "cls_sum": stats.cls_sum,
        "num_pos": stats.num_pos,
        "num_neg": stats.num_neg,
        "loc_per_pos": stats.loc_per_pos,
        "cls_per_pos": stats.cls_per_pos,
        "normalizer": out.normalizer,
    });
    if let Some(path) = &args.grads {
        write_safetensors(
            path,
            &[("grad_loc_preds", &grads[0]), ("grad_cls_preds", &grads[1])],
        )?;
    }
    if let Some(k) = args.repeat.filter(|&k| k > 0) {
        let mut times = Vec::with_capacity(k);
        for _ in 0..k {
            let start = Instant::now();
            forward_backward()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        report["repeat"] = json!(k);
        report["median_ms"] = json!(times[k / 2]);
    }
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
