//! `tchcv detect`: draw a checkpoint's detections on images.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use tchcv::bbox::DecodeConfig;
use tchcv::eval::draw::{draw_detections, DrawStyle};
use tchcv::eval::{detect_image, ImageDetections};

/// Run a trained detector on images and write each with its boxes, class names and scores
/// drawn (a colour per class), plus detections.json. Unreadable images are reported and
/// skipped (exit status 1 when any was).
#[derive(clap::Args)]
pub struct Args {
    /// A checkpoint (runs/NAME/best.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Image files or folders (their .jpg, .jpeg and .png files).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Output folder: <name>.png per image and detections.json.
    #[arg(long)]
    out: PathBuf,
    /// Draw detections scoring above this.
    #[arg(long, default_value_t = 0.5)]
    score: f64,
    /// Class-wise NMS suppresses IoU above this (a Faster R-CNN uses its spec's
    /// roi_heads.nms_threshold).
    #[arg(long, default_value_t = 0.45)]
    nms: f64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn is_image(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

/// The image files named, folders expanded (sorted).
fn image_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    if files.is_empty() {
        tchcv::bail_input!("no images in {inputs:?}");
    }
    Ok(files)
}

pub fn run(args: Args) -> Result<ExitCode> {
    let device = tchcv::device::parse_device(&args.device)?;
    let trained = tchcv::train::checkpoint::load_detector(&args.checkpoint, device)?;
    let decode = DecodeConfig {
        score_threshold: args.score,
        nms_threshold: args.nms,
        ..DecodeConfig::for_spec(&trained.spec)
    };
    // Bad flags fail here, not once per image as skipped images.
    decode.validate()?;
    // A region proposal network scores "object or not", whatever classes its data had.
    let classes = if trained.spec.head == "rpn" {
        vec!["object".to_string()]
    } else {
        trained.classes.names().to_vec()
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut all: Vec<ImageDetections> = Vec::new();
    let mut failed = 0;
    let mut written = std::collections::HashSet::new();
    for path in image_files(&args.images)? {
        let name = path.display().to_string();
        let result = tchcv::data::image::read(&path).and_then(|decoded| {
            let dets = detect_image(
                trained.model.as_ref(),
                &trained.coder,
                &decoded.image,
                &name,
                &decode,
                &classes,
                device,
            )?;
            let mut picture = decoded.image;
            draw_detections(&mut picture, &dets.detections, &DrawStyle::default());
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Two inputs with the same stem (a/x.jpg, b/x.jpg) get x.png and x-2.png.
            let mut file = args.out.join(format!("{stem}.png"));
            for k in 2.. {
                if written.insert(file.clone()) {
                    break;
                }
                file = args.out.join(format!("{stem}-{k}.png"));
            }
            picture
                .save(&file)
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "{name}: {} detections -> {}",
                dets.detections.len(),
                file.display()
            );
            Ok(dets)
        });
        match result {
            Ok(dets) => all.push(dets),
            Err(e) => {
                failed += 1;
                eprintln!("skipped {name}: {e:#}");
            }
        }
    }
    tchcv::eval::detections::write_detections_json(&args.out.join("detections.json"), &all)?;
    if failed > 0 {
        eprintln!("{failed} image(s) failed (see above) and were skipped");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
