//! `tchcv anchors`: a model spec's anchors to a file, and their count per feature map.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tch::Tensor;
use tchcv::bbox::Anchors;
use tchcv::spec::ModelSpec;

/// Write the anchors of a model spec as `anchors [A, 4]` (cx, cy, w, h in model-input pixels,
/// f32) and `anchors_per_map [M]` (i64), and print the count per feature map.
#[derive(clap::Args)]
pub struct Args {
    /// The model spec (models/*.json).
    #[arg(long)]
    model: PathBuf,
    /// Output .safetensors file.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let spec = ModelSpec::load(&args.model)?;
    let anchors = Anchors::from_spec(&spec);
    println!(
        "{}: {} anchors for a {}x{} input",
        spec.name,
        anchors.len(),
        spec.input_width(),
        spec.input_height()
    );
    let steps = spec.anchors.steps();
    for (i, (([h, w], per_cell), count)) in spec
        .feature_map_sizes()
        .into_iter()
        .zip(spec.anchors_per_cell())
        .zip(&anchors.per_map)
        .enumerate()
    {
        let step = steps[i];
        let step = if step.x == step.y {
            format!("{}", step.x)
        } else {
            format!("{}x{}", step.y, step.x)
        };
        println!(
            "  map {i}: {h}x{w} cells x {per_cell} per cell = {count:6} anchors (step {step})"
        );
    }
    if let Some(out) = &args.out {
        let per_map = Tensor::from_slice(&anchors.per_map);
        tchcv::io::write_safetensors(
            out,
            &[
                ("anchors", &anchors.to_tensor()),
                ("anchors_per_map", &per_map),
            ],
        )?;
        println!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}
