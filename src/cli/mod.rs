//! Subcommands: each parses its flags, calls the library and prints. No logic lives here that
//! a library user would need.

mod bench;
mod check_data;
mod info;
mod loss;
mod synth;

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

#[derive(Subcommand)]
enum Command {
    /// Versions, libtorch location, CUDA devices and threads.
    Info(info::Args),
    /// Evaluate a loss on tensors from a file (check tchcv against your PyTorch code).
    Loss(loss::Args),
    /// Time tchcv against its PyTorch counterpart, side by side.
    Bench(bench::Args),
    /// Read a VOC dataset and report images, objects per class and every problem.
    CheckData(check_data::Args),
    /// Write a synthetic VOC-format dataset of drawn shapes (what `make demo` trains on).
    Synth(synth::Args),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Info(args) => info::run(args),
        Command::Loss(args) => loss::run(args),
        Command::Bench(args) => bench::run(args),
        Command::CheckData(args) => check_data::run(args),
        Command::Synth(args) => synth::run(args),
    }
}

/// Run the command line; errors print their chain and exit with 2 for bad input, 1 otherwise.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(if tchcv::is_bad_input(&err) { 2 } else { 1 })
        }
    }
}
