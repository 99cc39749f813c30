//! One entry to the data, whatever its format: [`open_dataset`] reads VOC folders
//! ([`super::voc`]) or COCO instances files ([`super::coco`]) into the same [`VocDataset`], the
//! format detected from `--data` ([`detect_format`]) or forced (`--format voc|coco`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::check::DataReport;
use super::coco;
use super::voc::{ReadOptions, SetSpec, VocDataset};
use crate::bail_input;

/// The annotation format of a dataset (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// PASCAL VOC: `Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/<set>.txt`.
    Voc,
    /// COCO: an instances JSON file (`images`, `annotations`, `categories`) and an images folder.
    Coco,
}

impl DataFormat {
    /// `voc` or `coco`.
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Voc => "voc",
            DataFormat::Coco => "coco",
        }
    }
}

/// Where a dataset is: `--data`, and optionally `--format` and `--images` (COCO's images folder).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataSource {
    /// A VOC folder or VOCdevkit; a COCO instances file, or a folder holding
    /// `annotations/instances_<set>.json`.
    pub root: PathBuf,
    /// `None`: detected from `root` ([`detect_format`]).
    pub format: Option<DataFormat>,
    /// COCO: the folder the images' `file_name`s are relative to; `None`: where the layout keeps
    /// them (see [`coco::resolve_sets`]).
    pub images: Option<PathBuf>,
}

impl DataSource {
    /// `root` in the format it looks like, images where that format keeps them.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// The format: the one given, else detected.
    pub fn format(&self) -> DataFormat {
        self.format.unwrap_or_else(|| detect_format(&self.root))
    }
}

/// COCO when `root` is a file (an instances JSON) or a folder with `annotations/instances_*.json`
/// and no VOC `ImageSets/`; VOC otherwise.
pub fn detect_format(root: &Path) -> DataFormat {
    if root.is_file() {
        return DataFormat::Coco;
    }
    let has_instances = std::fs::read_dir(root.join("annotations")).is_ok_and(|d| {
        d.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("instances_") && name.ends_with(".json")
        })
    });
    if has_instances && !root.join("ImageSets").is_dir() {
        DataFormat::Coco
    } else {
        DataFormat::Voc
    }
}

/// Read the sets `sets` of `source` (no sets: VOC's `trainval`, or COCO's only instances file),
/// as [`VocDataset::open`] or [`coco::open`] do. Problems are counted in the report.
pub fn open_dataset(
    source: &DataSource,
    sets: &[SetSpec],
    options: &ReadOptions,
) -> Result<(VocDataset, DataReport)> {
    match source.format() {
        DataFormat::Voc => {
            if let Some(images) = &source.images {
                bail_input!(
                    "--images {}: only for COCO data ({} is read as VOC, whose images are in \
                     JPEGImages/; --format coco if it is COCO)",
                    images.display(),
                    source.root.display()
                );
            }
            if source.root.is_file() {
                bail_input!(
                    "--data {}: a file, and VOC data is a folder (--format coco for an instances \
                     file)",
                    source.root.display()
                );
            }
            let default = [SetSpec {
                year: None,
                name: "trainval".into(),
            }];
            let sets = if sets.is_empty() { &default[..] } else { sets };
            VocDataset::open(&source.root, sets, options)
        }
        DataFormat::Coco => coco::open(&source.root, sets, source.images.as_deref(), options),
    }
}
