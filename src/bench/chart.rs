//! The bar chart of a benchmark run: the speed-up of tchcv over PyTorch for each row.

use std::path::Path;

use anyhow::{Context, Result};

use super::Comparison;

/// Read the rows of one or more `--json` reports.
pub fn read_rows(files: &[std::path::PathBuf]) -> Result<Vec<serde_json::Value>> {
    let mut rows = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&text).map_err(|e| {
            crate::bad_input(format!("{}: not a bench report: {e}", file.display()))
        })?;
        rows.extend(parsed);
    }
    Ok(rows)
}

/// `speedup.png`: one bar per row (`work | size`; say the device in the title), the ratio
/// PyTorch / tchcv.
pub fn plot_speedups(rows: &[serde_json::Value], path: &Path, title: &str) -> Result<()> {
    let bars: Vec<(String, f64)> = rows
        .iter()
        .filter_map(|r| {
            let row: Comparison = serde_json::from_value(r.clone()).ok()?;
            Some((format!("{} | {}", row.work, row.size), row.speedup?))
        })
        .collect();
    crate::eval::plot::plot_bars(
        &bars,
        path,
        title,
        "speed-up over PyTorch eager (x)",
        Some(1.0),
    )
}
