//! What `tchcv compare` writes: `compare.md`, `compare.json` and the pictures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

use super::compare::{Comparison, Group, Stat};
use crate::eval::compare_plot::{self, ApSeries, RunCurve};

/// How a value compares with the best of its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Best,
    /// Within the seed-to-seed spread of the best: not significantly different.
    Tied,
    None,
}

/// The mark of each group's `column` value (higher is better).
fn marks(groups: &[Group], column: impl Fn(&Group) -> Stat) -> Vec<Mark> {
    let stats: Vec<Stat> = groups.iter().map(&column).collect();
    let best = stats
        .iter()
        .filter(|s| s.mean.is_finite())
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
        .copied();
    stats
        .iter()
        .map(|s| match best {
            Some(b) if s.mean == b.mean => Mark::Best,
            Some(b) if s.differs_from(&b) == Some(false) => Mark::Tied,
            _ => Mark::None,
        })
        .collect()
}

/// `0.812 ± 0.010`, `0.812` (one run), `-` (none); bold when best, `≈` when tied with it.
fn cell(s: Stat, digits: usize, mark: Mark) -> String {
    if !s.mean.is_finite() {
        return "-".into();
    }
    let text = match s.spread {
        Some(d) => format!("{:.*} ± {:.*}", digits, s.mean, digits, d),
        None => format!("{:.*}", digits, s.mean),
    };
    match mark {
        Mark::Best => format!("**{text}**"),
        Mark::Tied => format!("≈ {text}"),
        Mark::None => text,
    }
}

/// `12 min 5 s`, `48 s`.
fn duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "-".into();
    }
    let s = seconds.round() as u64;
    if s >= 60 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

impl Comparison {
    /// The header lines: data, model, classes by frequency and the imbalance.
    fn header(&self) -> String {
        let run = &self.runs[0];
        let c = &run.config;
        let mut text = format!(
            "# tchcv compare: {} run(s), {} experiment(s)\n\n",
            self.runs.len(),
            self.groups.len()
        );
        let _ = writeln!(
            text,
            "Data `{}`, training sets `{}`, evaluated on `{}`; network `{}` ({}x{}).\n",
            c.data.display(),
            c.sets,
            c.test_sets.as_deref().unwrap_or("(none)"),
            run.spec["name"].as_str().unwrap_or("?"),
            run.spec["input_size"][0],
            run.spec["input_size"][1],
        );
        let counts: Vec<String> = self
            .classes
            .iter()
            .map(|k| format!("{} {}", k.name, k.objects))
            .collect();
        let _ = writeln!(
            text,
            "Classes by {} objects, most first: {}.",
            self.counts_from,
            counts.join(" · ")
        );
        if let (Some(ratio), Some(most), Some(least)) = (
            self.imbalance,
            self.classes.first(),
            self.classes.iter().rev().find(|k| k.objects > 0),
        ) {
            let _ = writeln!(
                text,
                "Imbalance (largest / smallest class): {ratio:.1} : 1 ({} : {}).",
                most.name, least.name
            );
        }
        if !self.differences.is_empty() {
            let _ = writeln!(
                text,
                "\n**Forced** (--force): these runs differ in more than the cure:\n"
            );
            for d in &self.differences {
                let _ = writeln!(text, "- {d}");
            }
        }
        text
    }

    /// The comparison as a Markdown table with its legend.
    pub fn markdown(&self) -> String {
        let mut text = self.header();
        let class_heads: Vec<String> = self
            .classes
            .iter()
            .map(|k| format!("{} ({})", k.name, k.objects))
            .collect();
        let proposals = self.groups.iter().any(|g| g.ar_1000.n > 0);
        let recall_heads = if proposals {
            " AR@1000 | recall@0.5 (1000) |"
        } else {
            ""
        };
        let _ = writeln!(
            text,
            "\n| experiment | cure | seeds | iterations | train time | images/s |{recall_heads} mAP VOC07 | mAP area | {} |",
            class_heads.join(" | ")
        );
        let columns = 8 + class_heads.len() + if proposals { 2 } else { 0 };
        let _ = writeln!(text, "|{}", "---|".repeat(columns));
        let ar = marks(&self.groups, |g| g.ar_1000);
        let r50 = marks(&self.groups, |g| g.recall_50);
        let map07 = marks(&self.groups, |g| g.map_voc07);
        let map_area = marks(&self.groups, |g| g.map_area);
        let per_class: Vec<Vec<Mark>> = (0..self.classes.len())
            .map(|k| marks(&self.groups, |g| g.class_ap[k]))
            .collect();
        for (i, g) in self.groups.iter().enumerate() {
            let seeds = match g.seeds.as_slice() {
                [one] => format!("{one} (1 seed)"),
                many => many
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            let classes: Vec<String> = per_class
                .iter()
                .enumerate()
                .map(|(k, m)| cell(g.class_ap[k], 3, m[i]))
                .collect();
            let recall = if proposals {
                format!(
                    " {} | {} |",
                    cell(g.ar_1000, 3, ar[i]),
                    cell(g.recall_50, 3, r50[i])
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                text,
                "| {} | {} | {seeds} | {:.0} | {} | {:.1} |{recall} {} | {} | {} |",
                g.name,
                g.cure.label,
                g.iterations.mean,
                duration(g.seconds.mean),
                g.images_per_s.mean,
                cell(g.map_voc07, 3, map07[i]),
                cell(g.map_area, 3, map_area[i]),
                classes.join(" | ")
            );
        }
        text.push_str(
            "\nAP per class is VOC07 11-point AP on the test split; `a ± s` is the mean and the \
             sample standard deviation over the seeds. **Bold**: the best of its column. ≈: not \
             significantly different from the best (the difference is within the two spreads, \
             |mean_a - mean_b| <= s_a + s_b). An experiment of one seed has no spread: its \
             differences from the others are not tested.\n",
        );
        text.push_str(&self.options_section());
        text
    }

    /// Each experiment's full loss options, for the record.
    fn options_section(&self) -> String {
        let mut text = String::from("\n## Cures and their options\n\n");
        for g in &self.groups {
            let runs: Vec<String> = g
                .runs
                .iter()
                .map(|&i| format!("`{}`", self.runs[i].dir.display()))
                .collect();
            let _ = writeln!(
                text,
                "- **{}**: {} — `{}` (runs: {})",
                g.name,
                g.cure.label,
                g.cure.options,
                runs.join(", ")
            );
        }
        text
    }

    /// Everything in the table, per run and per experiment, as JSON.
    pub fn to_json(&self) -> Value {
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                json!({
                    "name": r.name, "dir": r.dir, "seed": r.config.seed, "cure": r.cure,
                    "iterations": r.iterations, "train_seconds": r.seconds,
                    "images_per_s": r.images_per_s(),
                    "map_voc07": r.eval.as_ref().map(|e| e.map_voc07),
                    "map_area": r.eval.as_ref().map(|e| e.map_area),
                    "ar_1000": r.recall.as_ref().map(|e| e.ar_1000),
                    "recall_50": r.recall.as_ref().map(|e| e.recall_50),
                    "ap_voc07": r.eval.as_ref().map(|e| e.classes.iter().map(|c| (c.class.clone(), json!(c.ap_voc07))).collect::<serde_json::Map<_, _>>()),
                    "ap_area": r.eval.as_ref().map(|e| e.classes.iter().map(|c| (c.class.clone(), json!(c.ap_area))).collect::<serde_json::Map<_, _>>()),
                })
            })
            .collect();
        json!({
            "classes": self.classes,
            "counts_from": self.counts_from,
            "imbalance": self.imbalance,
            "forced": !self.differences.is_empty(),
            "differences": self.differences,
            "experiments": self.groups,
            "runs": runs,
        })
    }

    /// Write `compare.md`, `compare.json`, `compare-ap.png`, `compare-loss.png` and
    /// `compare-pr.png` (the rarest class's PR curves, when the runs were evaluated) into `out`.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(out)
            .map_err(|e| crate::bad_input(format!("{}: {e}", out.display())))?;
        let md = out.join("compare.md");
        crate::io::write_bytes_atomic(&md, self.markdown().as_bytes())?;
        let js = out.join("compare.json");
        crate::io::write_bytes_atomic(
            &js,
            serde_json::to_string_pretty(&self.to_json())?.as_bytes(),
        )?;
        let mut written = vec![md, js];
        written.extend(self.pictures(out)?);
        Ok(written)
    }

    fn pictures(&self, out: &Path) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        let evaluated = self.groups.iter().any(|g| g.map_voc07.n > 0);
        if evaluated {
            let path = out.join("compare-ap.png");
            let series: Vec<ApSeries> = self
                .groups
                .iter()
                .map(|g| ApSeries {
                    name: g.name.clone(),
                    ap: g.class_ap.iter().map(|s| (s.mean, s.spread)).collect(),
                })
                .collect();
            let classes: Vec<String> = self
                .classes
                .iter()
                .map(|k| format!("{} ({})", k.name, k.objects))
                .collect();
            compare_plot::plot_ap_bars(&classes, &series, &path)?;
            written.push(path);
        }
        let curves: Vec<RunCurve> = self
            .runs
            .iter()
            .map(|r| RunCurve {
                name: r.name.clone(),
                metrics: r.metrics.clone(),
            })
            .collect();
        let path = out.join("compare-loss.png");
        compare_plot::plot_loss_curves(&curves, &path)?;
        written.push(path);
        if let (true, Some(rarest)) = (evaluated, self.classes.iter().rev().find(|k| k.objects > 0))
        {
            let path = out.join("compare-pr.png");
            let pr: Vec<(String, crate::eval::voc::ClassAp)> = self
                .runs
                .iter()
                .filter_map(|r| {
                    Some((
                        r.name.clone(),
                        r.eval.as_ref()?.classes.get(rarest.index)?.clone(),
                    ))
                })
                .collect();
            compare_plot::plot_pr_of_class(&rarest.name, &pr, &path)?;
            written.push(path);
        }
        Ok(written)
    }
}
