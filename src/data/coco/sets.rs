//! Where a COCO set's instances file and images are: the two layouts `--data` accepts.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::bail_input;
use crate::data::voc::SetSpec;

/// One COCO set: its name (`val2017`), its instances file and its images folder (the one the
/// images' `file_name`s are relative to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CocoSet {
    pub name: String,
    pub annotations: PathBuf,
    pub images: PathBuf,
}

/// The set an instances file holds: its file name without `.json` and without `instances_`
/// (`annotations/instances_val2017.json` -> `val2017`).
pub fn split_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    stem.strip_prefix("instances_")
        .filter(|s| !s.is_empty())
        .map(String::from)
        .unwrap_or(stem)
}

/// The images folder of an instances file when `--images` is not given: for
/// `ROOT/annotations/instances_<set>.json`, `ROOT/<set>/` if it exists, else `ROOT`; for a file
/// anywhere else, its own folder (as Roboflow-style exports keep them).
pub fn default_images(annotations: &Path, split: &str) -> PathBuf {
    let dir = annotations.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "annotations") {
        let root = dir.parent().unwrap_or(Path::new("."));
        let split_dir = root.join(split);
        return if split_dir.is_dir() {
            split_dir
        } else {
            root.to_path_buf()
        };
    }
    dir.to_path_buf()
}

/// The instances files of a standard layout's `annotations/` folder, by set name, sorted.
fn available(annotations: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(annotations)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("instances_"))
                })
                .map(|p| split_name(&p))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A set name for COCO data: `NAME` (`YEAR:NAME` is VOC's).
fn coco_set_name(spec: &SetSpec) -> Result<&str> {
    if spec.year.is_some() {
        bail_input!(
            "--sets {spec}: COCO sets are written as their instances file's name, e.g. val2017 \
             for annotations/instances_val2017.json"
        );
    }
    Ok(&spec.name)
}

/// The instances file of set `name` for an instances file `file` given as `--data`: the file
/// itself when `name` is its set (or its stem), else `instances_<name>.json` or `<name>.json`
/// beside it.
fn file_set(file: &Path, name: &str) -> Result<PathBuf> {
    let own = split_name(file);
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
    if name == own || stem.as_deref() == Some(name) {
        return Ok(file.to_path_buf());
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join(format!("instances_{name}.json")),
        dir.join(format!("{name}.json")),
    ];
    match candidates.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => bail_input!(
            "--sets {name}: {} is a COCO instances file of set {own:?} (give --sets {own}, or \
             put instances_{name}.json beside it)",
            file.display()
        ),
    }
}

/// The instances files of `sets` in the standard layout under `root`.
fn layout_sets(root: &Path, sets: &[SetSpec]) -> Result<Vec<PathBuf>> {
    let annotations = root.join("annotations");
    let have = available(&annotations);
    let names: Vec<String> = if sets.is_empty() {
        match have.as_slice() {
            [one] => vec![one.clone()],
            _ => bail_input!(
                "--data {}: give --sets (the instances files there: {})",
                root.display(),
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            ),
        }
    } else {
        sets.iter()
            .map(|s| coco_set_name(s).map(String::from))
            .collect::<Result<_>>()?
    };
    names
        .iter()
        .map(|name| {
            let path = annotations.join(format!("instances_{name}.json"));
            if !path.is_file() {
                bail_input!(
                    "--sets {name}: no {} (the instances files there: {})",
                    path.display(),
                    if have.is_empty() {
                        "none".into()
                    } else {
                        have.join(", ")
                    }
                );
            }
            Ok(path)
        })
        .collect()
}

/// The COCO sets `sets` of `root`: an instances file (no sets: the file itself; see
/// [`file_set`] for named ones), or a folder holding `annotations/instances_<set>.json` (no
/// sets: its only instances file). Images: in `images` when given, else [`default_images`].
pub fn resolve_sets(root: &Path, sets: &[SetSpec], images: Option<&Path>) -> Result<Vec<CocoSet>> {
    if let Some(dir) = images.filter(|d| !d.is_dir()) {
        bail_input!("--images {}: no such folder", dir.display());
    }
    let files = if root.is_file() {
        if sets.is_empty() {
            vec![root.to_path_buf()]
        } else {
            sets.iter()
                .map(|s| file_set(root, coco_set_name(s)?))
                .collect::<Result<_>>()?
        }
    } else if root.is_dir() {
        layout_sets(root, sets)?
    } else {
        bail_input!("--data {}: no such file or folder", root.display());
    };
    let mut out: Vec<CocoSet> = Vec::with_capacity(files.len());
    for annotations in files {
        let name = split_name(&annotations);
        if out.iter().any(|s| s.annotations == annotations) {
            continue;
        }
        let images = match images {
            Some(dir) => dir.to_path_buf(),
            None => default_images(&annotations, &name),
        };
        out.push(CocoSet {
            name,
            annotations,
            images,
        });
    }
    Ok(out)
}
