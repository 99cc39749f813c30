//! Ground truth for the evaluation, from the readers of [`crate::data`] (VOC or COCO).
//!
//! Boxes stay in the annotation's own convention (VOC: 1-based inclusive pixels), which is what
//! the devkit's `+1` rule expects; detections are mapped into it (see [`super::runner`]).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use super::voc::GroundTruth;
use crate::data::{
    open_dataset, ClassMap, DataSource, ImageCheck, ImageRecord, ReadOptions, SetSpec, Severity,
    VocDataset,
};

/// One [`GroundTruth`] per image of `dataset`, in dataset order; difficult objects included
/// (flagged), as the devkit needs them; crowd regions (COCO data) flagged difficult too, so the
/// VOC metric ignores detections on them. `upright`: boxes in the frame of the upright decoded
/// image (EXIF orientation applied, the frame of tchcv's own detections; needs the image
/// headers, see [`open_for_eval`]); else as annotated (the frame of devkit results files).
pub fn ground_truth_of(dataset: &VocDataset, upright: bool) -> Vec<GroundTruth> {
    dataset
        .records
        .iter()
        .map(|r| GroundTruth {
            image_id: r.id.clone(),
            boxes: if upright {
                r.upright_voc_boxes()
            } else {
                r.objects.iter().map(|o| o.bbox).collect()
            },
            labels: r.objects.iter().map(|o| o.class_id).collect(),
            difficult: r.objects.iter().map(|o| o.difficult || o.crowd).collect(),
        })
        .collect()
}

/// Open `sets` under `root` (VOC or COCO, detected: see [`open_for_eval_from`]) for evaluation.
pub fn open_for_eval(
    root: &Path,
    sets: &[String],
    classes: Option<ClassMap>,
    images: bool,
) -> Result<VocDataset> {
    open_for_eval_from(&DataSource::new(root), sets, classes, images)
}

/// Open `sets` of `source` for evaluation: an error (naming the files) when the reader had to
/// skip an image, since scores against partial ground truth would mislead. `classes`: the
/// class list (a checkpoint's); `None`: discovered as the reader does. `images`: whether the
/// images must be there (to run a detector; their headers are read for the EXIF orientation) or
/// only the annotations (to score result files).
pub fn open_for_eval_from(
    source: &DataSource,
    sets: &[String],
    classes: Option<ClassMap>,
    images: bool,
) -> Result<VocDataset> {
    let root = &source.root;
    let specs: Vec<SetSpec> = SetSpec::parse_list(&sets.join(","))?;
    let check_images = if images {
        ImageCheck::Header
    } else {
        ImageCheck::AnnotationsOnly
    };
    let options = ReadOptions {
        classes,
        check_images,
    };
    let (dataset, report) = open_dataset(source, &specs, &options)?;
    let errors: Vec<String> = report
        .problems
        .iter()
        .filter(|p| p.severity() == Severity::Error)
        .map(|p| p.to_string())
        .collect();
    if !errors.is_empty() {
        let shown = errors
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ");
        crate::bail_input!(
            "{}: {} problem(s) would make the evaluation incomplete (tchcv check-data lists all):\n  {shown}",
            root.display(),
            errors.len()
        );
    }
    check_unique_ids(&dataset)?;
    Ok(dataset)
}

/// Refuse a dataset whose record ids repeat (the evaluation tells images apart by id): a
/// bad-input error naming both records' sets and annotation files.
fn check_unique_ids(dataset: &VocDataset) -> Result<()> {
    let mut first: HashMap<&str, &ImageRecord> = HashMap::with_capacity(dataset.records.len());
    for r in &dataset.records {
        if let Some(f) = first.insert(&r.id, r) {
            crate::bail_input!(
                "image {:?} appears twice: in set {:?} ({}) and in set {:?} ({})",
                r.id,
                f.source,
                f.annotation_path.display(),
                r.source,
                r.annotation_path.display()
            );
        }
    }
    Ok(())
}

/// The class names and ground truth of `sets` under `root` (`YEAR:NAME` in a VOCdevkit, or
/// `NAME` in a single VOC folder), classes discovered as the reader does (the 20 VOC classes in
/// the standard order when the data uses only those, else the names found, sorted).
pub fn load_ground_truth(root: &Path, sets: &[String]) -> Result<(Vec<String>, Vec<GroundTruth>)> {
    let dataset = open_for_eval(root, sets, None, false)?;
    Ok((
        dataset.classes.names().to_vec(),
        ground_truth_of(&dataset, false),
    ))
}
