//! VOC ground truth and detections as COCO, so that COCO's metric runs on VOC data.
//!
//! - Boxes: a VOC box `[x1, y1, x2, y2]` is an inclusive range of 1-based pixels, so it covers
//!   the continuous `[x1 - 1, x2] x [y1 - 1, y2]`: COCO `[x1 - 1, y1 - 1, x2 - x1 + 1,
//!   y2 - y1 + 1]` (computed in f64). IoUs of converted boxes equal the devkit's `+1` IoUs.
//! - Categories: class `c` (0-based, in the class-name order) is category id `c + 1`.
//! - Images: the image at position `i` of the set is image id `i + 1`; `file_name` is its VOC id.
//!   A COCO results file for VOC data uses these ids.
//! - `difficult` objects become `ignore` annotations (not crowd): they do not count in recall,
//!   and the first detection matched to one is ignored (neither true nor false positive).
//!   Unlike the devkit, where every detection whose best object is difficult is ignored, a
//!   difficult object absorbs one detection per IoU threshold, as any non-crowd COCO object does;
//!   a second detection on it is a false positive unless it matches another object.

use std::collections::HashMap;

use anyhow::Result;

use super::format::{CocoAnnotation, CocoCategory, CocoDetection, CocoGroundTruth, CocoImage};
use crate::bail_input;
use crate::eval::detections::ImageDetections;
use crate::eval::voc::{Detection, GroundTruth};

pub use super::format::{coco_box_to_voc, voc_box_to_coco};

/// The COCO box of a box in 0-based pixel coordinates `[x1, y1, x2, y2]` (a detector's frame).
pub fn pixel_box_to_coco(b: [f32; 4]) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [x1, y1, x2 - x1, y2 - y1]
}

/// VOC image id -> COCO image id (its position in the set + 1).
pub fn voc_image_ids(ground_truth: &[GroundTruth]) -> HashMap<&str, i64> {
    ground_truth
        .iter()
        .enumerate()
        .map(|(i, g)| (g.image_id.as_str(), i as i64 + 1))
        .collect()
}

/// VOC ground truth as COCO (see the module docs). Annotation ids run from 1 in image order.
/// Errors (bad input) name the image and object: a label out of range, a box that is not
/// finite or whose corners are swapped.
pub fn coco_from_voc(
    class_names: &[String],
    ground_truth: &[GroundTruth],
) -> Result<CocoGroundTruth> {
    let categories = class_names
        .iter()
        .enumerate()
        .map(|(c, name)| CocoCategory {
            id: c as i64 + 1,
            name: name.clone(),
        })
        .collect();
    let mut images = Vec::with_capacity(ground_truth.len());
    let mut annotations = Vec::new();
    for (i, g) in ground_truth.iter().enumerate() {
        let image_id = i as i64 + 1;
        images.push(CocoImage {
            id: image_id,
            file_name: g.image_id.clone(),
            width: None,
            height: None,
        });
        let m = g.boxes.len();
        if g.labels.len() != m || g.difficult.len() != m {
            bail_input!(
                "ground truth of image {:?}: {m} boxes but {} labels and {} difficult flags",
                g.image_id,
                g.labels.len(),
                g.difficult.len()
            );
        }
        for (j, ((b, &label), &difficult)) in
            g.boxes.iter().zip(&g.labels).zip(&g.difficult).enumerate()
        {
            let at = || format!("ground truth of image {:?}, object {j}", g.image_id);
            if label >= class_names.len() {
                bail_input!(
                    "{}: label {label} out of range for {} classes",
                    at(),
                    class_names.len()
                );
            }
            if b.iter().any(|v| !v.is_finite()) || b[2] < b[0] || b[3] < b[1] {
                bail_input!(
                    "{}: box {b:?} is not finite or has x2 < x1 or y2 < y1",
                    at()
                );
            }
            annotations.push(CocoAnnotation {
                id: annotations.len() as i64 + 1,
                image_id,
                category_id: label as i64 + 1,
                bbox: voc_box_to_coco(*b),
                area: None,
                iscrowd: false,
                ignore: difficult,
            });
        }
    }
    Ok(CocoGroundTruth {
        images,
        annotations,
        categories,
    })
}

fn image_id_of(
    ids: &HashMap<&str, i64>,
    image: &str,
    what: impl FnOnce() -> String,
) -> Result<i64> {
    match ids.get(image) {
        Some(&id) => Ok(id),
        None => bail_input!(
            "{}: image {image:?} is not in the ground truth (wrong image set?)",
            what()
        ),
    }
}

/// Devkit detections (VOC boxes, 0-based class indices) as COCO results against
/// `ground_truth` (see the module docs). Errors name the detection.
pub fn coco_detections_from_voc(
    ground_truth: &[GroundTruth],
    detections: &[Detection],
) -> Result<Vec<CocoDetection>> {
    let ids = voc_image_ids(ground_truth);
    detections
        .iter()
        .enumerate()
        .map(|(k, d)| {
            Ok(CocoDetection {
                image_id: image_id_of(&ids, &d.image_id, || format!("detection {k}"))?,
                category_id: d.class as i64 + 1,
                bbox: voc_box_to_coco(d.bbox),
                score: f64::from(d.score),
            })
        })
        .collect()
}

/// A detector's boxes (0-based pixels, one [`ImageDetections`] per image named by its VOC id)
/// as COCO results against `ground_truth`.
pub fn coco_detections_from_images(
    ground_truth: &[GroundTruth],
    images: &[ImageDetections],
) -> Result<Vec<CocoDetection>> {
    let ids = voc_image_ids(ground_truth);
    let mut out = Vec::new();
    for img in images {
        let image_id = image_id_of(&ids, &img.image, || "detections".to_string())?;
        out.extend(img.detections.iter().map(|b| CocoDetection {
            image_id,
            category_id: b.class as i64 + 1,
            bbox: pixel_box_to_coco(b.bbox),
            score: f64::from(b.score),
        }));
    }
    Ok(out)
}

/// COCO results against VOC ground truth back to devkit detections (VOC boxes, 0-based class
/// indices), for the VOC metrics. Errors name the result: an image id that is not a position of
/// the set, a category id that is not a class.
pub fn voc_detections_from_coco(
    ground_truth: &[GroundTruth],
    n_classes: usize,
    detections: &[CocoDetection],
) -> Result<Vec<Detection>> {
    detections
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let image = d
                .image_id
                .checked_sub(1)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| ground_truth.get(i));
            let Some(image) = image else {
                bail_input!(
                    "result {k}: image_id {} is not an image of the set (ids are positions 1..={})",
                    d.image_id,
                    ground_truth.len()
                );
            };
            let class = match d.category_id.checked_sub(1).map(usize::try_from) {
                Some(Ok(c)) if c < n_classes => c,
                _ => bail_input!(
                    "result {k}: category_id {} is not a class (ids are 1..={n_classes})",
                    d.category_id
                ),
            };
            Ok(Detection {
                image_id: image.image_id.clone(),
                class,
                score: d.score as f32,
                bbox: coco_box_to_voc(d.bbox),
            })
        })
        .collect()
}
