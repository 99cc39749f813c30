//! The run's `metrics.jsonl`: one JSON object per line, flushed as written.
//!
//! Lines carry `"kind"`: `"step"` (every iteration: loc and cls per positive, total, num_pos,
//! num_neg, lr, images/s), `"epoch"` (a summary) and `"eval"` (mAP).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// Appends JSON lines to a file.
pub struct MetricsLog {
    out: BufWriter<File>,
}

impl MetricsLog {
    /// Open for appending (a resumed run continues the same file), or start it afresh.
    pub fn open(path: &Path, append: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            out: BufWriter::new(file),
        })
    }

    /// Write one line and flush it.
    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")?;
        self.out.flush()?;
        Ok(())
    }
}
