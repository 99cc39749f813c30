//! What a run prints: an indicatif progress line on a terminal, plain lines otherwise (rank 0
//! only). Each step shows the loc and cls loss per positive, as torchcv printed them (a
//! two-stage detector: the RPN's, then the box head's `roi loc`, `roi cls`).

use indicatif::{ProgressBar, ProgressStyle};

use crate::loss::LossStats;

/// The console side of a run.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Print anything at all (rank 0).
    enabled: bool,
    total: u64,
    log_every: u64,
}

impl Progress {
    /// `bar`: draw a progress line (use it on a terminal); else plain lines every `log_every`
    /// iterations.
    pub fn new(enabled: bool, bar: bool, total: u64, done: u64, log_every: u64) -> Self {
        let bar = (enabled && bar).then(|| {
            let b = ProgressBar::new(total);
            b.set_position(done);
            let style = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta} | {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b
        });
        Self {
            bar,
            enabled,
            total,
            log_every: log_every.max(1),
        }
    }

    /// One step's numbers.
    pub fn step(&self, iter: u64, epoch: u64, s: &LossStats, lr: f64, images_per_s: f64) {
        if !self.enabled {
            return;
        }
        let second = s.second_stage.map_or(String::new(), |r| {
            format!(
                " | roi loc {:.3} cls {:.3} fg {} bg {}",
                r.loc_per_pos, r.cls_per_pos, r.num_pos, r.num_neg
            )
        });
        let numbers = format!(
            "epoch {epoch} | loc_loss {:.3} | cls_loss {:.3} | pos {} neg {}{second} | lr {lr:.2e} | {images_per_s:.1} img/s",
            s.loc_per_pos, s.cls_per_pos, s.num_pos, s.num_neg
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(iter + 1);
                bar.set_message(numbers);
            }
            None if (iter + 1).is_multiple_of(self.log_every) || iter + 1 == self.total => {
                println!("iter {}/{} | {numbers}", iter + 1, self.total);
            }
            None => {}
        }
    }

    /// A message line (above the bar on a terminal).
    pub fn line(&self, text: &str) {
        if !self.enabled {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
