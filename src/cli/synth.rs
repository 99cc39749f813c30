//! `tchcv synth`: write the synthetic VOC-format dataset of drawn shapes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tchcv::data::synth::{write_dataset, SynthConfig, SYNTH_CLASSES};

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (a VOC folder: JPEGImages/, Annotations/, ImageSets/Main/).
    #[arg(long)]
    out: PathBuf,
    /// Training images (train.txt = trainval.txt).
    #[arg(long, default_value_t = 400)]
    train: usize,
    /// Test images (test.txt).
    #[arg(long, default_value_t = 100)]
    test: usize,
    /// Image size WxH.
    #[arg(long, default_value = "256x256")]
    size: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let parsed = s
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
    match parsed {
        Some(size) => Ok(size),
        None => tchcv::bail_input!("--size {s:?}: expected WxH, e.g. 256x256"),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let config = SynthConfig {
        train: args.train,
        test: args.test,
        size: parse_size(&args.size)?,
        seed: args.seed,
        ..SynthConfig::default()
    };
    let start = std::time::Instant::now();
    let s = write_dataset(&args.out, &config)?;
    println!(
        "wrote {} images ({} train, {} test; {} without objects) to {} in {:.1} s",
        s.images,
        config.train,
        config.test,
        s.empty_images,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    let per_class: Vec<String> = SYNTH_CLASSES
        .iter()
        .zip(s.per_class)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!(
        "objects: {} ({} difficult): {}",
        s.objects,
        s.difficult,
        per_class.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
