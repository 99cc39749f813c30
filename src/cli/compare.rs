//! `tchcv compare`: training runs side by side (cure, options, speed, mAP, AP per class by class
//! frequency, seed spread), as Markdown, JSON and pictures.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tchcv::train::compare::compare;

/// Compare finished (or running) run folders: one row per experiment (runs that differ only in
/// the seed are one experiment, reported as mean ± spread), the best value per column marked
/// and differences within the seed-to-seed spread marked as not significant. Writes
/// compare.md, compare.json, compare-ap.png, compare-loss.png and compare-pr.png (the rarest
/// class) to --out and prints the table. Runs on other data, splits or networks are refused
/// unless --force.
#[derive(clap::Args)]
pub struct Args {
    /// Run folders (what tchcv train --out wrote).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where the report goes (default: compare/ in the current folder).
    #[arg(long, default_value = "compare")]
    out: PathBuf,
    /// Names for the runs, comma separated, one per folder (default: the folder names).
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Compare runs on other data, splits, classes or networks anyway (marked in the report).
    #[arg(long)]
    force: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let comparison = compare(&args.runs, args.names.as_deref(), args.force)?;
    let written = comparison.write(&args.out)?;
    print!("{}", comparison.markdown());
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
