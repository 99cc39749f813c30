//! Detection files: the VOC devkit results format, and the per-image JSON of `tchcv detect`.
//!
//! Devkit results: one file per class, `<dir>/<prefix><class>.txt`, one detection a line:
//! `image_id score xmin ymin xmax ymax` (whitespace separated; coordinates in the pixel frame
//! of the annotations). A missing class file means no detections of that class.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::voc::Detection;
use crate::bail_input;

/// `<dir>/<prefix><class>.txt`
pub fn results_path(dir: &Path, prefix: &str, class: &str) -> PathBuf {
    dir.join(format!("{prefix}{class}.txt"))
}

/// The prefix every results file in `dir` shares: the one `P` for which each `*.txt` there is
/// `<P><class>.txt` for a class of `class_names` (the devkit's own names, such as
/// `comp4_det_test_<class>.txt`, and plain `<class>.txt` alike). An error listing what was found
/// when no prefix or more than one fits.
pub fn find_results_prefix(dir: &Path, class_names: &[String]) -> Result<String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| crate::bad_input(format!("{}: {e}", dir.display())))?;
    let mut stems: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".txt").map(str::to_string))
        .collect();
    stems.sort();
    if stems.is_empty() {
        bail_input!(
            "{}: no results files (<prefix><class>.txt) in this folder",
            dir.display()
        );
    }
    // Every (file, class) pair proposes a prefix; it fits when it explains every file.
    let mut candidates: Vec<&str> = stems
        .iter()
        .flat_map(|stem| {
            class_names
                .iter()
                .filter_map(move |class| stem.strip_suffix(class.as_str()))
        })
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    let explains = |prefix: &str, stem: &str| {
        stem.strip_prefix(prefix)
            .is_some_and(|class| class_names.iter().any(|c| c == class))
    };
    let fitting: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|prefix| stems.iter().all(|stem| explains(prefix, stem)))
        .collect();
    let found = || {
        let shown: Vec<String> = stems.iter().take(8).map(|s| format!("{s}.txt")).collect();
        let more = stems.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        format!("found {}{more}", shown.join(", "))
    };
    match fitting.as_slice() {
        [prefix] => Ok(prefix.to_string()),
        [] => bail_input!(
            "{}: the results files are not all <prefix><class>.txt with one prefix and the data's \
             classes ({}); give --prefix",
            dir.display(),
            found()
        ),
        several => bail_input!(
            "{}: the results file names fit more than one prefix ({}; {}); give --prefix",
            dir.display(),
            several
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            found()
        ),
    }
}

fn check_image_id(id: &str) -> Result<()> {
    if id.is_empty() || id.chars().any(char::is_whitespace) {
        bail_input!("image id {id:?}: must be non-empty and without whitespace (devkit format)");
    }
    Ok(())
}

/// Write the devkit results files: one per class (empty ones included), lines in the order of
/// `detections`, numbers in the shortest form that reads back to the same f32. Atomic per file.
pub fn write_voc_results(
    dir: &Path,
    prefix: &str,
    class_names: &[String],
    detections: &[Detection],
) -> Result<()> {
    let mut texts = vec![String::new(); class_names.len()];
    for (k, d) in detections.iter().enumerate() {
        let Some(text) = texts.get_mut(d.class) else {
            bail_input!(
                "detection {k}: class {} out of range for {} classes",
                d.class,
                class_names.len()
            );
        };
        check_image_id(&d.image_id).with_context(|| format!("detection {k}"))?;
        let [x1, y1, x2, y2] = d.bbox;
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{} {} {x1} {y1} {x2} {y2}", d.image_id, d.score);
    }
    for (name, text) in class_names.iter().zip(&texts) {
        crate::io::write_bytes_atomic(&results_path(dir, prefix, name), text.as_bytes())?;
    }
    Ok(())
}

/// Parse one class's results file. `file` names it in errors (`file:line: ...`).
pub fn parse_voc_results(text: &str, class: usize, file: &Path) -> Result<Vec<Detection>> {
    let mut detections = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let at = || format!("{}:{}", file.display(), i + 1);
        if fields.len() != 6 {
            bail_input!(
                "{}: expected `image_id score xmin ymin xmax ymax`, got {} fields: {line:?}",
                at(),
                fields.len()
            );
        }
        let mut numbers = [0f32; 5];
        for (slot, (field, name)) in numbers.iter_mut().zip(
            fields[1..]
                .iter()
                .zip(["score", "xmin", "ymin", "xmax", "ymax"]),
        ) {
            *slot = match field.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => bail_input!("{}: {name} {field:?} is not a finite number", at()),
            };
        }
        let [score, x1, y1, x2, y2] = numbers;
        detections.push(Detection {
            image_id: fields[0].to_string(),
            class,
            score,
            bbox: [x1, y1, x2, y2],
        });
    }
    Ok(detections)
}

/// Detections read from devkit results files.
#[derive(Debug, Clone, PartialEq)]
pub struct VocResults {
    /// In class order, then line order.
    pub detections: Vec<Detection>,
    /// Classes whose file was absent (no detections).
    pub missing: Vec<String>,
}

/// Read `<dir>/<prefix><class>.txt` for every class. Bad lines are errors naming the file and
/// line; a missing file means no detections of that class (listed in `missing`).
pub fn read_voc_results(dir: &Path, prefix: &str, class_names: &[String]) -> Result<VocResults> {
    if !dir.is_dir() {
        bail_input!("{}: not a folder of detection results", dir.display());
    }
    let mut results = VocResults {
        detections: Vec::new(),
        missing: Vec::new(),
    };
    for (class, name) in class_names.iter().enumerate() {
        let path = results_path(dir, prefix, name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                results.missing.push(name.clone());
                continue;
            }
            Err(e) => bail_input!("{}: {e}", path.display()),
        };
        results
            .detections
            .extend(parse_voc_results(&text, class, &path)?);
    }
    Ok(results)
}

/// One drawn or reported detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabeledBox {
    /// 0-based class index.
    pub class: usize,
    /// The class name.
    pub name: String,
    pub score: f32,
    /// xyxy in the image's pixels.
    pub bbox: [f32; 4],
}

/// The detections of one image, as `tchcv detect` writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageDetections {
    /// The image's path or id.
    pub image: String,
    pub width: u32,
    pub height: u32,
    /// Highest score first.
    pub detections: Vec<LabeledBox>,
}

fn host_f32(t: &Tensor, name: &str) -> Result<Vec<f32>> {
    let flat = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Float))
        .and_then(|t| t.f_reshape([-1]))
        .with_context(|| format!("{name}: reading to the host"))?;
    Vec::<f32>::try_from(&flat).with_context(|| format!("{name}: reading to the host"))
}

impl ImageDetections {
    /// From a decoder's output for one image.
    ///
    /// boxes: `[K, 4]` float xyxy pixels; scores: `[K]` float; labels: `[K]` int 0-based
    /// (below `class_names.len()`). Any device. Sorted by score, highest first.
    pub fn from_tensors(
        image: &str,
        (width, height): (u32, u32),
        boxes: &Tensor,
        scores: &Tensor,
        labels: &Tensor,
        class_names: &[String],
    ) -> Result<Self> {
        let size = boxes.size();
        let k = match size.as_slice() {
            [k, 4] => *k,
            _ => bail_input!("boxes: expected shape [K, 4], got {size:?}"),
        };
        if scores.size() != [k] || labels.size() != [k] {
            bail_input!(
                "scores {:?} and labels {:?}: expected shape [{k}] (K from boxes)",
                scores.size(),
                labels.size()
            );
        }
        let boxes = host_f32(boxes, "boxes")?;
        let scores = host_f32(scores, "scores")?;
        let labels = labels
            .f_to_device(Device::Cpu)
            .and_then(|t| t.f_to_kind(Kind::Int64))
            .context("labels: reading to the host")?;
        let labels = Vec::<i64>::try_from(&labels).context("labels: reading to the host")?;
        let mut detections = Vec::with_capacity(k as usize);
        for (i, (&label, &score)) in labels.iter().zip(&scores).enumerate() {
            let Some(name) = usize::try_from(label).ok().and_then(|c| class_names.get(c)) else {
                bail_input!(
                    "labels: label {label} at {i} out of range for {} classes",
                    class_names.len()
                );
            };
            detections.push(LabeledBox {
                class: label as usize,
                name: name.clone(),
                score,
                bbox: [
                    boxes[4 * i],
                    boxes[4 * i + 1],
                    boxes[4 * i + 2],
                    boxes[4 * i + 3],
                ],
            });
        }
        detections.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(Self {
            image: image.to_string(),
            width,
            height,
            detections,
        })
    }

    /// The detections as devkit [`Detection`]s of image `image_id`.
    pub fn voc_detections(&self, image_id: &str) -> Vec<Detection> {
        self.detections
            .iter()
            .map(|b| Detection {
                image_id: image_id.to_string(),
                class: b.class,
                score: b.score,
                bbox: b.bbox,
            })
            .collect()
    }
}

/// Write the detections of many images as one pretty JSON array, atomically.
pub fn write_detections_json(path: &Path, images: &[ImageDetections]) -> Result<()> {
    let text = serde_json::to_string_pretty(images)?;
    crate::io::write_bytes_atomic(path, text.as_bytes())
}

/// Read a file written by [`write_detections_json`].
pub fn read_detections_json(path: &Path) -> Result<Vec<ImageDetections>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::bad_input(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| crate::bad_input(format!("{}: not a detections JSON: {e}", path.display())))
}
