//! `tchcv sample`: one image's anchors labelled and sampled as the region proposal network's
//! loss sees them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use tch::Tensor;
use tchcv::bbox::rpn::{IGNORE, NEGATIVE, POSITIVE};
use tchcv::bbox::sampler::negative_bce;
use tchcv::bbox::{ops, sample_image, RpnCoder, SamplerKind};
use tchcv::spec::ModelSpec;

use super::encode::read_boxes;

/// Label one image's anchors (IoU >= pos_iou or a GT's best anchor: 1; below neg_iou: 0; else
/// -1) and sample them (per image `batch_size_per_image` anchors, at most `positive_fraction`
/// positive). Writes `labels [A]` i64 (1 sampled positive, 0 sampled negative, -1 not sampled
/// or ignored), `max_iou [A]` f32 and `anchor_labels [A]` i64 (before sampling), in the order of
/// `tchcv anchors`. Bad input exits with status 2.
#[derive(clap::Args)]
pub struct Args {
    /// The model spec (models/*.json), e.g. models/rpn_small.json.
    #[arg(long)]
    model: PathBuf,
    /// JSON: {"boxes": [[xmin, ymin, xmax, ymax], ...], "labels": [...], "image_size": [w, h]},
    /// boxes in image pixels, labels 0-based (the format of `tchcv encode`; the RPN is
    /// class-agnostic). Boxes are scaled to the model input.
    #[arg(long)]
    boxes: PathBuf,
    /// Seed of the random draws (the same seed gives the same sample).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// random: torchvision's balanced sampler; hard: positives as random, negatives of highest
    /// objectness loss (OHEM); all: no sampling.
    #[arg(long, default_value = "random")]
    sampler: SamplerKind,
    /// safetensors with `objectness [A]` float logits (required by --sampler hard).
    #[arg(long)]
    objectness: Option<PathBuf>,
    /// Output .safetensors file.
    #[arg(long)]
    out: PathBuf,
}

/// `objectness [A]` from the file, as `BCE(objectness, 0)` per anchor.
fn read_negative_loss(path: &Path, num_anchors: i64) -> Result<Vec<f32>> {
    let mut tensors = tchcv::io::read_tensors(path)?;
    let logits = tchcv::io::take_tensor(&mut tensors, "objectness", path)?;
    if logits.size() != [num_anchors] {
        tchcv::bail_input!(
            "{}: objectness: expected [{num_anchors}] logits (one per anchor), got {:?}",
            path.display(),
            logits.size()
        );
    }
    negative_bce(&logits.view([1, num_anchors])).with_context(|| path.display().to_string())
}

/// The boxes of the file in model-input pixels, after checking the labels.
fn model_boxes(path: &Path, spec: &ModelSpec) -> Result<(Vec<[f32; 4]>, [f64; 2])> {
    let input = read_boxes(path)?;
    let file = path.display();
    if input.labels.len() != input.boxes.len() {
        tchcv::bail_input!(
            "{file}: labels: {} labels for {} boxes",
            input.labels.len(),
            input.boxes.len()
        );
    }
    if let Some(i) = input.labels.iter().position(|&l| l < 0) {
        tchcv::bail_input!("{file}: labels[{i}]: {} is negative", input.labels[i]);
    }
    let model_size = [spec.input_width() as f64, spec.input_height() as f64];
    let boxes = ops::scale_boxes(&input.boxes, input.image_size, model_size)
        .with_context(|| format!("{file}: image_size"))?;
    Ok((boxes, input.image_size))
}

fn count(labels: &[i64], which: i64) -> usize {
    labels.iter().filter(|&&l| l == which).count()
}

pub fn run(args: Args) -> Result<ExitCode> {
    let spec = ModelSpec::load(&args.model)?;
    let rpn = RpnCoder::from_spec(&spec)?;
    let (boxes, image_size) = model_boxes(&args.boxes, &spec)?;
    let file = args.boxes.display().to_string();
    let targets = rpn.label(&boxes).with_context(|| file.clone())?;
    let neg_loss = match (&args.objectness, args.sampler) {
        (Some(path), _) => Some(read_negative_loss(path, rpn.num_anchors())?),
        (None, SamplerKind::Hard) => tchcv::bail_input!(
            "--sampler hard ranks negatives by their objectness loss: give --objectness \
             LOGITS.safetensors (objectness [{}] f32)",
            rpn.num_anchors()
        ),
        (None, _) => None,
    };
    let config = rpn.sampler_config(args.sampler, args.seed);
    let sampled = sample_image(
        &targets.labels,
        neg_loss.as_deref(),
        &config,
        &mut config.rng(&[], 0),
    )?;
    tchcv::io::write_safetensors(
        &args.out,
        &[
            ("labels", &Tensor::from_slice(&sampled)),
            ("max_iou", &targets.max_iou_tensor()),
            ("anchor_labels", &targets.labels_tensor()),
        ],
    )?;
    let [w, h] = rpn.input_size();
    println!(
        "{file}: {} boxes against {} anchors ({}), image {}x{} -> input {w}x{h}",
        boxes.len(),
        rpn.num_anchors(),
        spec.name,
        image_size[0],
        image_size[1]
    );
    for i in &targets.dropped {
        println!("  box {i}: dropped (w or h <= 0)");
    }
    let labels = &targets.labels;
    println!(
        "  anchors: {} positive, {} negative, {} ignored",
        count(labels, POSITIVE),
        count(labels, NEGATIVE),
        count(labels, IGNORE)
    );
    println!(
        "  sampled ({}, seed {}, {} per image, positive fraction {}): {} positive, {} negative",
        args.sampler.name(),
        args.seed,
        config.batch_size_per_image,
        config.positive_fraction,
        count(&sampled, POSITIVE),
        count(&sampled, NEGATIVE)
    );
    println!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
