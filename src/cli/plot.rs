//! `tchcv plot`: the pictures of a run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

/// Plot a run: loss.png from its metrics.jsonl (loc and cls per positive and total per
/// iteration, smoothed, learning rate on the right axis), and pr.png from its eval.json
/// (precision-recall per class).
#[derive(clap::Args)]
pub struct Args {
    /// The run folder (runs/NAME).
    run: PathBuf,
    /// Write the PNGs here instead of the run folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let plots = tchcv::eval::plot::plot_run(&args.run, args.out.as_deref())?;
    for path in plots.loss.iter().chain(&plots.pr) {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
