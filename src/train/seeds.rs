//! `tchcv train --seeds 0,1,2`: the same run once per seed, each in its own folder
//! (`OUT/seed-<s>`), then compared as one experiment (AP as mean and spread over the seeds).

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::compare::{compare, Comparison};
use super::config::TrainConfig;
use super::trainer::{last_checkpoint, train, TrainOptions, TrainSummary};

/// The folder of `seed`'s run under `out`.
pub fn seed_folder(out: &Path, seed: u64) -> PathBuf {
    out.join(format!("seed-{seed}"))
}

/// Train `config` once per seed, in `seed_folder(config.out, seed)`. With `options.resume`, a
/// seed whose folder holds a checkpoint continues it and the others start. Stops at the first
/// run that fails or is interrupted (a later `--resume` continues). Returns the summaries and,
/// when every run finished, their comparison (written to `config.out`).
pub fn train_seeds(
    config: &TrainConfig,
    seeds: &[u64],
    options: &TrainOptions,
) -> Result<(Vec<TrainSummary>, Option<Comparison>)> {
    if seeds.is_empty() {
        crate::bail_input!("--seeds: give at least one seed");
    }
    let mut summaries = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let out = seed_folder(&config.out, seed);
        let run = TrainConfig {
            seed,
            out: out.clone(),
            ..config.clone()
        };
        let run_options = TrainOptions {
            resume: options.resume && last_checkpoint(&out).is_file(),
            ..options.clone()
        };
        let summary = train(run, run_options)?;
        let interrupted = summary.interrupted;
        summaries.push(summary);
        if interrupted {
            return Ok((summaries, None));
        }
    }
    let dirs: Vec<PathBuf> = seeds.iter().map(|&s| seed_folder(&config.out, s)).collect();
    let comparison = compare(&dirs, None, false)?;
    comparison.write(&config.out)?;
    Ok((summaries, Some(comparison)))
}
