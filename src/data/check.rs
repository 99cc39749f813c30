//! What can be wrong with a dataset (VOC or COCO): the problem taxonomy, the counts, and the
//! `tchcv check-data` report.
//!
//! Every problem has a kind, the file it was found in and a detail. Errors mean data was lost
//! (an image or object skipped); warnings mean data was fixed up (a box clipped or dropped as
//! degenerate, an image without objects); notes record conversions that need no action
//! (greyscale, CMYK, PNG, EXIF orientation).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::voc::VocDataset;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Data was lost: the image or object is skipped. `check-data` exits 1.
    Error,
    /// Data was fixed up (clipped, dropped as degenerate) or is unusual (no objects).
    Warning,
    /// A conversion that needs no action.
    Note,
}

/// The kinds of problem, each with a fixed severity and what the reader does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// An id in a set file has no `Annotations/<id>.xml`; the image is skipped.
    MissingAnnotation,
    /// The XML does not parse, or lacks `<annotation>`; the image is skipped.
    MalformedXml,
    /// An `<object>` lacks `<name>` or `<bndbox>`, or a coordinate is not a number (COCO: an
    /// annotation's `image_id` is not in `images`); the object is skipped.
    BadObject,
    /// An object's class is not in the class list (COCO: its `category_id` is not in
    /// `categories`, or its category not in a given class list); the object is skipped.
    UnknownClass,
    /// No image file for the id; the image is skipped.
    MissingImage,
    /// The image file is corrupt, not an image, or in an unsupported format; skipped.
    CorruptImage,
    /// The image file ends before the image data does; skipped.
    TruncatedImage,
    /// The same id appears twice in the selected sets; the later one is skipped (COCO: an image
    /// id; a repeated annotation id is reported and both are kept).
    DuplicateId,
    /// A box reaches outside the image; it is clipped to the image.
    BoxClipped,
    /// A box has `xmax <= xmin` or `ymax <= ymin` (after clipping; COCO: a side under one
    /// pixel, as given or inside the image); it is dropped.
    DegenerateBox,
    /// An annotation's `area` (COCO) is negative; it is dropped, and the box's area is used.
    BadArea,
    /// An image has no (usable) objects; it is kept as background-only.
    NoObjects,
    /// `<size>` differs from the real image; the real size is used and boxes are clipped to it.
    SizeMismatch,
    /// `<size>` (COCO: `width`/`height`) is missing or zero; the real image size is used.
    MissingSize,
    /// The image carries an EXIF orientation; pixels are turned upright and boxes mapped.
    ExifOrientation,
    /// The image is greyscale, CMYK/YCCK or has alpha; it is converted to RGB.
    ConvertedColor,
    /// The image is a PNG (or another format than its extension says); decoded by content.
    NotJpeg,
}

impl ProblemKind {
    pub fn severity(self) -> Severity {
        use ProblemKind::*;
        match self {
            MissingAnnotation | MalformedXml | BadObject | UnknownClass | MissingImage
            | CorruptImage | TruncatedImage => Severity::Error,
            DuplicateId | BoxClipped | DegenerateBox | BadArea | NoObjects | SizeMismatch
            | MissingSize => Severity::Warning,
            ExifOrientation | ConvertedColor | NotJpeg => Severity::Note,
        }
    }

    /// The kebab-case name used in reports.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// True for problems that make a whole image unusable.
    pub fn skips_image(self) -> bool {
        use ProblemKind::*;
        matches!(
            self,
            MissingAnnotation
                | MalformedXml
                | MissingImage
                | CorruptImage
                | TruncatedImage
                | DuplicateId
        )
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One problem: its kind, the file it was found in, and what exactly is wrong.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub file: PathBuf,
    pub detail: String,
}

impl Problem {
    pub fn new(kind: ProblemKind, file: &Path, detail: impl Into<String>) -> Self {
        Self {
            kind,
            file: file.to_path_buf(),
            detail: detail.into(),
        }
    }

    pub fn severity(&self) -> Severity {
        self.kind.severity()
    }

    /// This problem as a bad-input error whose chain carries it (see [`problem_of`]).
    pub fn into_error(self) -> anyhow::Error {
        let message = format!("{}: {}: {}", self.file.display(), self.kind, self.detail);
        crate::bad_input(message).context(self)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.kind, self.detail)
    }
}

/// The [`Problem`] an error was made from with [`Problem::into_error`], if any.
pub fn problem_of(err: &anyhow::Error) -> Option<&Problem> {
    err.downcast_ref::<Problem>()
}

/// Problems found while reading a dataset, in the order found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataReport {
    pub problems: Vec<Problem>,
}

impl DataReport {
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.problems.extend(problems);
    }

    /// How many problems of each kind.
    pub fn counts(&self) -> BTreeMap<ProblemKind, usize> {
        let mut counts = BTreeMap::new();
        for p in &self.problems {
            *counts.entry(p.kind).or_insert(0) += 1;
        }
        counts
    }

    /// How many problems of `kind`.
    pub fn count(&self, kind: ProblemKind) -> usize {
        self.problems.iter().filter(|p| p.kind == kind).count()
    }

    /// How many problems of `severity`.
    pub fn count_severity(&self, severity: Severity) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity() == severity)
            .count()
    }

    pub fn has_errors(&self) -> bool {
        self.count_severity(Severity::Error) > 0
    }

    /// One line: `3 errors, 2 warnings (degenerate-box 2, ...)`.
    pub fn summary_line(&self) -> String {
        let counts = self.counts();
        let kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        format!(
            "{} errors, {} warnings, {} notes{}",
            self.count_severity(Severity::Error),
            self.count_severity(Severity::Warning),
            self.count_severity(Severity::Note),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        )
    }
}

/// Per-class statistics of a dataset.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClassStats {
    pub name: String,
    /// Objects of this class (difficult included).
    pub objects: usize,
    /// Of which marked difficult.
    pub difficult: usize,
    /// Of which crowd regions (COCO `iscrowd`).
    pub crowd: usize,
    /// Images containing at least one object of this class.
    pub images: usize,
}

/// What `tchcv check-data` prints: counts, per-class statistics, sizes and every problem.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub sets: Vec<String>,
    pub images: usize,
    pub images_without_objects: usize,
    pub objects: usize,
    pub difficult: usize,
    /// Crowd regions among the objects (COCO `iscrowd`).
    pub crowd: usize,
    pub classes: Vec<ClassStats>,
    /// `[min_w, min_h, max_w, max_h]` over the images (as recorded), or zeros when empty.
    pub size_range: [u32; 4],
    pub problem_counts: BTreeMap<ProblemKind, usize>,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Statistics of the usable records of `dataset`, with the problems of `report`.
    pub fn new(dataset: &VocDataset, report: &DataReport) -> Self {
        let mut classes: Vec<ClassStats> = dataset
            .classes
            .names()
            .iter()
            .map(|n| ClassStats {
                name: n.clone(),
                ..Default::default()
            })
            .collect();
        let (mut objects, mut difficult, mut crowd, mut empty) = (0, 0, 0, 0);
        let mut size = [u32::MAX, u32::MAX, 0, 0];
        for r in &dataset.records {
            let mut seen = vec![false; classes.len()];
            for o in &r.objects {
                let c = &mut classes[o.class_id];
                c.objects += 1;
                c.difficult += o.difficult as usize;
                c.crowd += o.crowd as usize;
                if !seen[o.class_id] {
                    seen[o.class_id] = true;
                    c.images += 1;
                }
                objects += 1;
                difficult += o.difficult as usize;
                crowd += o.crowd as usize;
            }
            empty += r.objects.is_empty() as usize;
            size = [
                size[0].min(r.width),
                size[1].min(r.height),
                size[2].max(r.width),
                size[3].max(r.height),
            ];
        }
        if dataset.records.is_empty() {
            size = [0; 4];
        }
        let mut problems = report.problems.clone();
        problems
            .sort_by(|a, b| (a.severity(), &a.file, a.kind).cmp(&(b.severity(), &b.file, b.kind)));
        Self {
            sets: dataset.sets.clone(),
            images: dataset.records.len(),
            images_without_objects: empty,
            objects,
            difficult,
            crowd,
            classes,
            size_range: size,
            problem_counts: report.counts(),
            problems,
        }
    }

    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity() == Severity::Error)
            .count()
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "sets: {}", self.sets.join(", "));
        let _ = writeln!(
            s,
            "images: {} ({} without objects)   objects: {} ({} difficult{})",
            self.images,
            self.images_without_objects,
            self.objects,
            self.difficult,
            if self.crowd > 0 {
                format!(", {} crowd", self.crowd)
            } else {
                String::new()
            }
        );
        let [w0, h0, w1, h1] = self.size_range;
        let _ = writeln!(
            s,
            "image sizes: {w0}x{h0} .. {w1}x{h1} (min w x min h .. max w x max h)"
        );
        let _ = writeln!(
            s,
            "{:<20} {:>8} {:>10} {:>8}",
            "class", "objects", "difficult", "images"
        );
        for (i, c) in self.classes.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>10} {:>8}",
                format!("{i:>2} {}", c.name),
                c.objects,
                c.difficult,
                c.images
            );
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "problems: none");
        } else {
            let errors = self.errors();
            let warnings = self
                .problems
                .iter()
                .filter(|p| p.severity() == Severity::Warning)
                .count();
            let notes = self.problems.len() - errors - warnings;
            let _ = writeln!(
                s,
                "problems: {errors} errors, {warnings} warnings, {notes} notes"
            );
            for (kind, n) in &self.problem_counts {
                let _ = writeln!(
                    s,
                    "  {:<8} {:<20} {n}",
                    format!("{:?}", kind.severity()).to_lowercase(),
                    kind.name()
                );
            }
            let _ = writeln!(s, "by file:");
            for p in &self.problems {
                let _ = writeln!(
                    s,
                    "  {:<8} {}: {}: {}",
                    format!("{:?}", p.severity()).to_lowercase(),
                    p.file.display(),
                    p.kind,
                    p.detail
                );
            }
        }
        s
    }
}
