//! `tchcv encode`: one image's ground truth to training targets, as the data pipeline makes them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Deserialize;
use tchcv::bbox::{ops, BoxCoder};
use tchcv::spec::ModelSpec;

/// Encode ground-truth boxes against a model's anchors. Writes `loc_targets [A, 4]` f32 and
/// `cls_targets [A]` i64 (label + 1, 0 = background, -1 = ignore) and prints how many anchors
/// each box owns. Bad input exits with status 2.
#[derive(clap::Args)]
pub struct Args {
    /// The model spec (models/*.json).
    #[arg(long)]
    model: PathBuf,
    /// JSON: {"boxes": [[xmin, ymin, xmax, ymax], ...], "labels": [...], "image_size": [w, h]},
    /// boxes in image pixels, labels 0-based. Boxes are scaled to the model input.
    #[arg(long)]
    boxes: PathBuf,
    /// Output .safetensors file.
    #[arg(long)]
    out: PathBuf,
}

/// The `--boxes` file (also read by `tchcv sample`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BoxesFile {
    pub boxes: Vec<[f32; 4]>,
    pub labels: Vec<i64>,
    pub image_size: [f64; 2],
}

pub(super) fn read_boxes(path: &Path) -> Result<BoxesFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| tchcv::bad_input(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        tchcv::bad_input(format!(
            "{}: expected {{\"boxes\": [[xmin, ymin, xmax, ymax], ...], \"labels\": [...], \
             \"image_size\": [w, h]}}: {e}",
            path.display()
        ))
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let spec = ModelSpec::load(&args.model)?;
    let coder = BoxCoder::from_spec(&spec)?;
    let input = read_boxes(&args.boxes)?;
    let model_size = [spec.input_width() as f64, spec.input_height() as f64];
    let file = args.boxes.display().to_string();
    let boxes = ops::scale_boxes(&input.boxes, input.image_size, model_size)
        .with_context(|| format!("{file}: image_size"))?;
    let encoded = coder
        .encode(&boxes, &input.labels)
        .with_context(|| file.clone())?;
    tchcv::io::write_safetensors(
        &args.out,
        &[
            ("loc_targets", &encoded.loc_targets),
            ("cls_targets", &encoded.cls_targets),
        ],
    )?;
    println!(
        "{}: {} boxes against {} anchors ({}), image {}x{} -> input {}x{}",
        file,
        boxes.len(),
        coder.num_anchors(),
        spec.name,
        input.image_size[0],
        input.image_size[1],
        model_size[0],
        model_size[1]
    );
    for (i, (b, n)) in input.boxes.iter().zip(&encoded.num_pos_per_box).enumerate() {
        let what = if encoded.dropped.contains(&i) {
            "dropped (w or h <= 0)".to_string()
        } else {
            format!("{n} positive anchors")
        };
        println!("  box {i} {b:?} label {}: {what}", input.labels[i]);
    }
    let cls = Vec::<i64>::try_from(&encoded.cls_targets)?;
    let count = |pred: fn(i64) -> bool| cls.iter().filter(|&&c| pred(c)).count();
    println!(
        "  anchors: {} positive, {} background, {} ignored",
        count(|c| c > 0),
        count(|c| c == 0),
        count(|c| c < 0)
    );
    println!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
