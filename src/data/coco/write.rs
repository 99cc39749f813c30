//! A [`VocDataset`] as a COCO ground truth: what `tchcv convert --to coco` writes and what the
//! COCO metric scores against (crowd regions, ignored objects and areas passed through).

use anyhow::Result;

use super::format::{voc_box_to_coco, CocoAnnotation, CocoCategory, CocoGroundTruth, CocoImage};
use crate::bail_input;
use crate::data::voc::VocDataset;

/// Which records [`instances_of`] takes, and in which frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstancesOptions {
    /// Boxes in the frame of the upright decoded image (EXIF orientation applied: the frame of
    /// tchcv's detections; needs the image headers), else as annotated.
    pub upright: bool,
    /// Only the records of this set (their `source`); `None`: every record.
    pub source: Option<String>,
}

/// The COCO ground truth of `dataset`: categories from its classes and
/// [`VocDataset::category_ids`]; image ids from [`crate::data::ImageRecord::coco_id`], else (VOC
/// data, or COCO sets read together whose ids repeat) the record's position + 1 (as
/// [`crate::eval::coco::coco_from_voc`] numbers VOC images);
/// `file_name` the image file's name; annotation ids from 1 in record order. Boxes: VOC
/// `[x1, y1, x2, y2]` (1-based, inclusive) to `[x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]`;
/// `iscrowd` from [`crate::data::VocObject::crowd`], `ignore` from `difficult` (not on crowd
/// regions, which are ignored anyway), `area` when the data gave one. An object whose class has
/// no category id is a bad-input error naming its annotation file and image.
pub fn instances_of(dataset: &VocDataset, options: &InstancesOptions) -> Result<CocoGroundTruth> {
    let categories = dataset
        .classes
        .names()
        .iter()
        .zip(&dataset.category_ids)
        .map(|(name, &id)| CocoCategory {
            id,
            name: name.clone(),
        })
        .collect();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    let wanted = |source: &str| options.source.as_deref().is_none_or(|s| s == source);
    let chosen = || dataset.records.iter().filter(|r| wanted(&r.source));
    let mut ids = std::collections::HashSet::new();
    let own_ids = chosen().all(|r| r.coco_id.is_some_and(|id| ids.insert(id)));
    for (i, r) in dataset.records.iter().enumerate() {
        if !wanted(&r.source) {
            continue;
        }
        let image_id = match r.coco_id {
            Some(id) if own_ids => id,
            _ => i as i64 + 1,
        };
        images.push(CocoImage {
            id: image_id,
            file_name: r
                .image_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            width: Some(r.width),
            height: Some(r.height),
        });
        let boxes = if options.upright {
            r.upright_voc_boxes()
        } else {
            r.objects.iter().map(|o| o.bbox).collect()
        };
        for (o, b) in r.objects.iter().zip(boxes) {
            let Some(&category_id) = dataset.category_ids.get(o.class_id) else {
                bail_input!(
                    "{}: image {}: class {} has no category id ({} classes)",
                    r.annotation_path.display(),
                    r.id,
                    o.class_id,
                    dataset.category_ids.len()
                );
            };
            annotations.push(CocoAnnotation {
                id: annotations.len() as i64 + 1,
                image_id,
                category_id,
                bbox: voc_box_to_coco(b),
                area: o.area,
                iscrowd: o.crowd,
                ignore: o.difficult && !o.crowd,
            });
        }
    }
    Ok(CocoGroundTruth {
        images,
        annotations,
        categories,
    })
}
