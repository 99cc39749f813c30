//! Subcommands: each parses its flags, calls the library and prints. No logic lives here that
//! a library user would need.

mod anchors;
mod bench;
mod check_data;
mod compare;
mod convert;
mod detect;
mod encode;
mod eval;
mod eval_proposals;
mod info;
mod loss;
mod plot;
mod sample;
mod synth;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tchcv: torchcv's detection losses (SSD hard negative mining, focal losses) on libtorch,
/// and the detectors, data pipeline and VOC evaluation around them.
#[derive(Parser)]
#[command(name = "tchcv", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Versions, libtorch location, CUDA devices and threads.
    Info(info::Args),
    /// Write a synthetic VOC-format dataset of drawn shapes (what `make demo` trains on).
    Synth(synth::Args),
    /// Read a VOC or COCO dataset and report images, objects per class and every problem.
    CheckData(check_data::Args),
    /// Convert a dataset between VOC and COCO (lossless for what both hold).
    #[command(long_about = convert::ABOUT)]
    Convert(convert::Args),
    /// Train a detector on VOC-format data (loc and cls loss per positive, checkpoints, resume).
    Train(train::Args),
    /// VOC mAP of a checkpoint, or of devkit results files: AP per class (devkit algorithm).
    #[command(long_about = eval::ABOUT)]
    Eval(eval::Args),
    /// Draw a trained detector's boxes on images (and write them as JSON).
    Detect(detect::Args),
    /// Training runs side by side: the cures, their speed, mAP and AP per class (rare classes
    /// first in view), with the seed-to-seed spread.
    Compare(compare::Args),
    /// Write a run's loss.png (from metrics.jsonl) and pr.png (from eval.json).
    Plot(plot::Args),
    /// Evaluate a loss on tensors from a file (check tchcv against your PyTorch code).
    Loss(loss::Args),
    /// A model spec's anchors to a file, and their count per feature map.
    Anchors(anchors::Args),
    /// One image's ground-truth boxes to training targets (loc_targets, cls_targets).
    Encode(encode::Args),
    /// One image's anchors labelled and sampled for the region proposal network's loss.
    Sample(sample::Args),
    /// Time tchcv against its PyTorch counterpart, side by side.
    Bench(bench::Args),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Synth(args) => synth::run(args),
        Command::CheckData(args) => check_data::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Plot(args) => plot::run(args),
        Command::Loss(args) => loss::run(args),
        Command::Anchors(args) => anchors::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Sample(args) => sample::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Run the command line; errors print their chain and exit with 2 for bad input, 1 otherwise.
pub fn main() -> ExitCode {
    tchcv::memory::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(if tchcv::is_bad_input(&err) { 2 } else { 1 })
        }
    }
}
