//! `tchcv bench loss`: loss forward + backward, tchcv against the torchcv/torchvision-style
//! PyTorch implementations (`bench/loss_reference.py`) on the same tensors. Each side also counts
//! the operators one forward + backward dispatches and how many of them would wait for a CUDA
//! device ([`crate::device::op_count`]): the host-side work that dominates a loss on a GPU.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::{median_ms, run_reference, Comparison};
use crate::device::op_count::{count_ops, OpCounts};
use crate::loss::{LossInputs, LossKind};

/// What to time.
#[derive(Debug, Clone, clap::Args)]
pub struct LossBench {
    /// ssd, focal or softmax-focal.
    #[arg(long, default_value = "ssd")]
    pub loss: LossKind,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub n: i64,
    /// Anchors per image (8732: SSD300, 24564: SSD512, 49104: RetinaNet at 512).
    #[arg(long, default_value_t = 8732)]
    pub a: i64,
    /// Classes (with the background column for ssd and softmax-focal).
    #[arg(long, default_value_t = 21)]
    pub c: i64,
    /// Fraction of anchors that are positive.
    #[arg(long, default_value_t = 0.01)]
    pub pos_fraction: f64,
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 20)]
    pub repeat: usize,
    /// Only time tchcv.
    #[arg(long)]
    pub no_reference: bool,
    /// Time tchcv with `check_finite: false` (the training loop's setting) instead of the
    /// default options, so the check's cost is the difference of two rows.
    #[arg(long)]
    pub no_check_finite: bool,
}

/// Random inputs with `pos_fraction` positives: `[N,A,4]`, `[N,A,4]`, `[N,A,C]`, `[N,A]`.
fn random_case(b: &LossBench, device: Device) -> [Tensor; 4] {
    tch::manual_seed(0);
    let (n, a, c) = (b.n, b.a, b.c);
    let loc_targets = Tensor::randn([n, a, 4], (Kind::Float, device));
    let loc_preds = &loc_targets + Tensor::randn([n, a, 4], (Kind::Float, device)) * 0.5;
    let cls_preds = Tensor::randn([n, a, c], (Kind::Float, device));
    let max_label = if b.loss.has_background_column() {
        c - 1
    } else {
        c
    };
    let is_pos = Tensor::rand([n, a], (Kind::Float, device)).lt(b.pos_fraction);
    let labels = Tensor::randint_low(1, max_label + 1, [n, a], (Kind::Int64, device));
    let cls_targets = labels * is_pos.to_kind(Kind::Int64);
    [loc_preds, loc_targets, cls_preds, cls_targets]
}

/// The reference's timing of the same loss: its median in ms, its loss and its operator counts.
struct ReferenceTiming {
    median_ms: f64,
    total: f64,
    ops: OpCounts,
}

/// Time tchcv (and the reference on the same tensors) on `device`.
pub fn run(b: &LossBench, device: Device) -> Result<Comparison> {
    check_sizes(b)?;
    let [loc_preds, loc_targets, cls_preds, cls_targets] = random_case(b, device);
    // The default options, as a library user gets them, unless told otherwise.
    let options = if b.no_check_finite {
        serde_json::json!({ "check_finite": false })
    } else {
        serde_json::json!({})
    };
    let loss = b.loss.build(options)?;
    let loc_preds = loc_preds.set_requires_grad(true);
    let cls_preds = cls_preds.set_requires_grad(true);
    let inputs = LossInputs {
        loc_preds: &loc_preds,
        loc_targets: &loc_targets,
        cls_preds: &cls_preds,
        cls_targets: &cls_targets,
    };
    let step = || {
        let out = loss.forward(&inputs)?;
        Tensor::f_run_backward(&[&out.total], &[&loc_preds, &cls_preds], false, false)?;
        crate::device::synchronize(device);
        Ok(())
    };
    let tchcv_ms = median_ms(3, b.repeat, step)?;
    let (_, tchcv_ops) = count_ops(step)?;
    let total = loss.forward(&inputs)?.stats().total;
    let pytorch = if b.no_reference {
        None
    } else {
        Some(time_reference(b, device, &inputs, total)?)
    };
    comparison_row(b, device, tchcv_ms, total, &tchcv_ops, pytorch.as_ref())
}

/// `--n`, `--a`, `--c` in range (the background column counts in `--c` where the loss has one).
fn check_sizes(b: &LossBench) -> Result<()> {
    let min_c = if b.loss.has_background_column() { 2 } else { 1 };
    if b.n < 1 || b.a < 1 || b.c < min_c {
        crate::bail_input!(
            "bench loss: --n and --a must be >= 1 and --c >= {min_c} (classes, background column included), got {} {} {}",
            b.n,
            b.a,
            b.c
        );
    }
    Ok(())
}

/// Run `bench/reference.py loss` on the same tensors (written to a temporary safetensors file)
/// and check that it computed the same loss as tchcv's `total` (1e-4 relative).
fn time_reference(
    b: &LossBench,
    device: Device,
    inputs: &LossInputs,
    total: f64,
) -> Result<ReferenceTiming> {
    let dir = std::env::temp_dir().join(format!("tchcv-bench-loss-{}", std::process::id()));
    let case = dir.join("case.safetensors");
    crate::io::write_safetensors(
        &case,
        &[
            ("loc_preds", &inputs.loc_preds.detach()),
            ("loc_targets", inputs.loc_targets),
            ("cls_preds", &inputs.cls_preds.detach()),
            ("cls_targets", inputs.cls_targets),
        ],
    )?;
    let kind = serde_json::to_value(b.loss)?;
    let device_arg = if device.is_cuda() { "cuda" } else { "cpu" };
    let args: Vec<String> = vec![
        "--case".into(),
        case.display().to_string(),
        "--loss".into(),
        kind.as_str().unwrap_or("ssd").into(),
        "--device".into(),
        device_arg.into(),
        "--repeat".into(),
        b.repeat.to_string(),
        "--threads".into(),
        tch::get_num_threads().to_string(),
    ];
    let report = run_reference("loss", &args);
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    // The same work: both sides must compute the same loss on these tensors.
    let theirs = report["total"].as_f64().unwrap_or(f64::NAN);
    let agree = (theirs - total).abs() <= 1e-4 * total.abs().max(1.0);
    if !agree {
        anyhow::bail!(
            "bench loss: tchcv computed {total}, the PyTorch reference {theirs}: not the same loss"
        );
    }
    Ok(ReferenceTiming {
        median_ms: report["median_ms"].as_f64().unwrap_or(f64::NAN),
        total: theirs,
        ops: OpCounts::from_json(&report["op_calls"])?,
    })
}

/// The printed row: both timings, the options timed, and both sides' operator counts.
fn comparison_row(
    b: &LossBench,
    device: Device,
    tchcv_ms: f64,
    total: f64,
    tchcv_ops: &OpCounts,
    pytorch: Option<&ReferenceTiming>,
) -> Result<Comparison> {
    let size = format!("N={} A={} C={} pos={}", b.n, b.a, b.c, b.pos_fraction);
    let (suffix, options) = if b.no_check_finite {
        (" [unchecked]", "check_finite off")
    } else {
        ("", "default options")
    };
    let work = format!(
        "{} loss fwd+bwd{suffix}",
        serde_json::to_value(b.loss)?.as_str().unwrap_or("?")
    );
    let device_name = crate::device::device_name(device);
    let mut row = Comparison::new(
        &work,
        &size,
        &device_name,
        tchcv_ms,
        pytorch.map(|p| p.median_ms),
    );
    let ops_line = |side: &str, ops: &OpCounts| {
        format!("{side} {} ({} host syncs)", ops.ops(), ops.host_syncs())
    };
    let mut detail = format!(
        "tchcv with {options}; operators per fwd+bwd: {}",
        ops_line("tchcv", tchcv_ops)
    );
    if let Some(p) = pytorch {
        detail += &format!(", {}", ops_line("pytorch", &p.ops));
    }
    row.detail = Some(detail);
    row.extra = serde_json::json!({
        "tchcv_total": total,
        "pytorch_total": pytorch.map(|p| p.total),
        "tchcv_ops": tchcv_ops.summary(),
        "pytorch_ops": pytorch.map(|p| p.ops.summary()),
    });
    Ok(row)
}
