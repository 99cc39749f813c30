//! mAP over training time: each side's snapshots scored, placed at the training loop's seconds
//! up to them (mean over the seeds), the seconds each side needs to reach a target mAP, and the
//! chart of both curves.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::sides::SideRun;
use crate::train::compare::Stat;

/// One point of a side's curve: its seeds' runs at `iteration`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    pub iteration: u64,
    /// Seconds of the training loop up to and including `iteration`, mean over the seeds.
    pub seconds: f64,
    /// VOC07 mAP of each seed's weights at `iteration`.
    pub maps: Vec<f64>,
    pub map_mean: f64,
    /// Sample standard deviation over the seeds (0 for one seed).
    pub map_std: f64,
}

/// Mean and sample standard deviation over the seeds ([`Stat`]; a spread of 0 for one seed).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let stat = Stat::of(values.iter().copied());
    (stat.mean, stat.spread.unwrap_or(0.0))
}

/// The curve of one side: `maps[r]` holds run `runs[r]`'s `(iteration, mAP)` scores, every run
/// scored at the same iterations (ascending). A point per iteration.
pub fn side_curve(runs: &[&SideRun], maps: &[Vec<(u64, f64)>]) -> Vec<CurvePoint> {
    let Some(first) = maps.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(k, &(iteration, _))| {
            let at: Vec<f64> = maps.iter().map(|m| m[k].1).collect();
            let seconds = runs
                .iter()
                .map(|r| r.loop_seconds_through(iteration))
                .sum::<f64>()
                / runs.len().max(1) as f64;
            let (map_mean, map_std) = mean_std(&at);
            CurvePoint {
                iteration,
                seconds,
                maps: at,
                map_mean,
                map_std,
            }
        })
        .collect()
}

/// The training seconds at which the mean curve first reaches `target` (linear between the
/// points); None when it never does.
pub fn seconds_to_reach(curve: &[CurvePoint], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.map_mean >= target {
        return Some(first.seconds);
    }
    curve.windows(2).find_map(|w| {
        let (a, b) = (&w[0], &w[1]);
        (b.map_mean >= target).then(|| {
            let t = (target - a.map_mean) / (b.map_mean - a.map_mean).max(1e-12);
            a.seconds + t * (b.seconds - a.seconds)
        })
    })
}

/// Both sides' curves and the training seconds each takes to reach the target mAP.
#[derive(Debug, Clone, Serialize)]
pub struct TimeToMap {
    pub target_map: f64,
    pub tchcv: Vec<CurvePoint>,
    pub pytorch: Option<Vec<CurvePoint>>,
    pub tchcv_seconds: Option<f64>,
    pub pytorch_seconds: Option<f64>,
}

impl TimeToMap {
    /// `target`, else 0.9 x the lower of the sides' final mean mAPs.
    pub fn new(
        target: Option<f64>,
        tchcv: Vec<CurvePoint>,
        pytorch: Option<Vec<CurvePoint>>,
    ) -> Self {
        let final_mean = |c: &[CurvePoint]| c.last().map_or(0.0, |p| p.map_mean);
        let lower = pytorch.as_deref().map_or(final_mean(&tchcv), |p| {
            final_mean(p).min(final_mean(&tchcv))
        });
        let target_map = target.unwrap_or(0.9 * lower);
        Self {
            target_map,
            tchcv_seconds: seconds_to_reach(&tchcv, target_map),
            pytorch_seconds: pytorch
                .as_deref()
                .and_then(|p| seconds_to_reach(p, target_map)),
            tchcv,
            pytorch,
        }
    }

    /// The report's line: each side's seconds to the target and their ratio.
    pub fn line(&self) -> String {
        let secs = |s: Option<f64>| s.map_or("not reached".to_string(), |s| format!("{s:.1} s"));
        let mut line = format!(
            "training seconds to mAP {:.3}: {}",
            self.target_map,
            secs(self.tchcv_seconds)
        );
        if self.pytorch.is_some() {
            line += &format!(" vs {}", secs(self.pytorch_seconds));
            match (self.tchcv_seconds, self.pytorch_seconds) {
                (Some(t), Some(p)) if t > 0.0 => line += &format!(" ({:.2}x)", p / t),
                _ => {}
            }
        }
        line
    }

    /// The chart of both curves (see [`plot`]).
    pub fn plot(&self, title: &str, path: &Path) -> Result<()> {
        let mut sides = vec![("tchcv", self.tchcv.as_slice())];
        if let Some(p) = &self.pytorch {
            sides.push(("PyTorch", p.as_slice()));
        }
        plot(&sides, self.target_map, title, path)
    }
}

/// The chart: each side's mean mAP over its training seconds, and the target as a level line.
pub fn plot(sides: &[(&str, &[CurvePoint])], target: f64, title: &str, path: &Path) -> Result<()> {
    let mut lines: Vec<(String, Vec<(f64, f64)>)> = sides
        .iter()
        .map(|(name, curve)| {
            let points = curve.iter().map(|p| (p.seconds, p.map_mean)).collect();
            (name.to_string(), points)
        })
        .collect();
    let x_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(0.0f64, f64::max);
    lines.push((
        format!("target mAP {target:.3}"),
        vec![(0.0, target), (x_max, target)],
    ));
    crate::eval::compare_plot::plot_lines(
        &lines,
        [
            title,
            "seconds in the training loop (mean over the seeds)",
            "VOC07 mAP (mean over the seeds)",
        ],
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seconds: f64, map_mean: f64) -> CurvePoint {
        CurvePoint {
            iteration: 0,
            seconds,
            maps: vec![map_mean],
            map_mean,
            map_std: 0.0,
        }
    }

    #[test]
    fn time_to_map_interpolates_the_first_crossing() {
        let curve = [
            point(0.0, 0.0),
            point(10.0, 0.2),
            point(20.0, 0.6),
            point(30.0, 0.4),
        ];
        assert_eq!(seconds_to_reach(&curve, 0.4), Some(15.0));
        assert_eq!(seconds_to_reach(&curve, 0.2), Some(10.0));
        assert_eq!(seconds_to_reach(&curve, 0.0), Some(0.0));
        assert_eq!(seconds_to_reach(&curve, 0.7), None);
        assert_eq!(seconds_to_reach(&[], 0.1), None);
    }

    #[test]
    fn mean_and_sample_spread() {
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 2f64.sqrt()).abs() < 1e-12);
    }
}
