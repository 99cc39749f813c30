//! A dataset (VOC or COCO, as [`crate::data`] reads either) seen by the COCO metric: its ground
//! truth with crowd regions, ignored (difficult) objects and areas passed through, and its ids,
//! so that detections and results files use the data's own image and category ids (a COCO
//! file's, non-contiguous ones included; VOC data: positions + 1 and classes + 1, as
//! [`super::from_voc`] numbers them).

use std::collections::HashMap;

use anyhow::Result;
use tch::Device;

use super::format::{coco_box_to_voc, voc_box_to_coco};
use super::from_voc::pixel_box_to_coco;
use super::{evaluate, CocoDetection, CocoEvalResult, CocoGroundTruth, CocoParams};
use crate::bail_input;
use crate::bbox::{BoxCoder, DecodeConfig};
use crate::data::coco::{instances_of, InstancesOptions};
use crate::data::{Loader, VocDataset};
use crate::eval::detections::ImageDetections;
use crate::eval::runner::evaluate_detector;
use crate::eval::voc::{Detection, VocEvalConfig, VocEvalResult};
use crate::models::Detector;

/// A dataset's COCO ground truth and the maps between its record ids / class indices and the
/// COCO ids.
#[derive(Debug, Clone)]
pub struct CocoView {
    pub gt: CocoGroundTruth,
    /// Record id (unique: the COCO reader names the records of sets that repeat image ids
    /// `<set>/<id>`) -> COCO image id.
    image_ids: HashMap<String, i64>,
    /// COCO image id -> record id.
    record_ids: HashMap<i64, String>,
    /// Class index -> COCO category id.
    category_ids: Vec<i64>,
}

impl CocoView {
    /// The ground truth of `dataset` ([`instances_of`]); `upright`: boxes in the frame of the
    /// upright decoded image (tchcv's detections; needs the image headers), else as annotated
    /// (the frame of results files). Each record keeps its own COCO image id: the data's when
    /// the image ids are unique (one set, or sets that do not repeat ids), else its position
    /// plus one. A record id that appears twice is a bad-input error naming both records' sets
    /// and files.
    pub fn of(dataset: &VocDataset, upright: bool) -> Result<Self> {
        let options = InstancesOptions {
            upright,
            source: None,
        };
        let gt = instances_of(dataset, &options)?;
        let mut image_ids: HashMap<String, i64> = HashMap::with_capacity(gt.images.len());
        let mut record_ids = HashMap::with_capacity(gt.images.len());
        for (k, (r, image)) in dataset.records.iter().zip(&gt.images).enumerate() {
            if image_ids.insert(r.id.clone(), image.id).is_some() {
                let first = dataset.records[..k].iter().find(|f| f.id == r.id);
                let (set, file) = first.map_or((String::new(), String::new()), |f| {
                    (f.source.clone(), f.annotation_path.display().to_string())
                });
                bail_input!(
                    "image {:?} appears twice: in set {set:?} ({file}) and in set {:?} ({})",
                    r.id,
                    r.source,
                    r.annotation_path.display()
                );
            }
            record_ids.insert(image.id, r.id.clone());
        }
        Ok(Self {
            image_ids,
            record_ids,
            category_ids: dataset.category_ids.clone(),
            gt,
        })
    }

    /// The COCO image id of record `id`; `what` names the detection in the error.
    fn image_id(&self, id: &str, what: impl FnOnce() -> String) -> Result<i64> {
        match self.image_ids.get(id) {
            Some(&i) => Ok(i),
            None => bail_input!(
                "{}: image {id:?} is not in the ground truth (wrong image set?)",
                what()
            ),
        }
    }

    /// The COCO category id of class `class`.
    fn category_id(&self, class: usize, what: impl FnOnce() -> String) -> Result<i64> {
        match self.category_ids.get(class) {
            Some(&c) => Ok(c),
            None => bail_input!(
                "{}: class {class} out of range for {} classes",
                what(),
                self.category_ids.len()
            ),
        }
    }

    /// A detector's boxes (0-based pixels, images named by record id) as COCO results.
    pub fn detections_from_images(&self, images: &[ImageDetections]) -> Result<Vec<CocoDetection>> {
        let mut out = Vec::new();
        for img in images {
            let image_id = self.image_id(&img.image, || "detections".into())?;
            for b in &img.detections {
                out.push(CocoDetection {
                    image_id,
                    category_id: self.category_id(b.class, || format!("image {:?}", img.image))?,
                    bbox: pixel_box_to_coco(b.bbox),
                    score: f64::from(b.score),
                });
            }
        }
        Ok(out)
    }

    /// Devkit detections (VOC boxes, class indices, record ids) as COCO results.
    pub fn detections_from_voc(&self, detections: &[Detection]) -> Result<Vec<CocoDetection>> {
        detections
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let what = || format!("detection {k}");
                Ok(CocoDetection {
                    image_id: self.image_id(&d.image_id, what)?,
                    category_id: self.category_id(d.class, what)?,
                    bbox: voc_box_to_coco(d.bbox),
                    score: f64::from(d.score),
                })
            })
            .collect()
    }

    /// COCO results back to devkit detections (VOC boxes, class indices, record ids), for the
    /// VOC metrics. Errors name the result.
    pub fn voc_detections(&self, results: &[CocoDetection]) -> Result<Vec<Detection>> {
        results
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let Some(image) = self.record_ids.get(&d.image_id) else {
                    bail_input!(
                        "result {k}: image_id {} is not an image of the set",
                        d.image_id
                    );
                };
                let Some(class) = self.category_ids.iter().position(|&c| c == d.category_id) else {
                    bail_input!("result {k}: category_id {} is not a class", d.category_id);
                };
                Ok(Detection {
                    image_id: image.clone(),
                    class,
                    score: d.score as f32,
                    bbox: coco_box_to_voc(d.bbox),
                })
            })
            .collect()
    }
}

/// [`crate::eval::detect_dataset`] once, then both metrics against the loader's dataset: the
/// VOC evaluation (`voc`; crowd regions flagged difficult) and COCO's (crowd regions and ignored
/// objects as COCO's evaluation treats them, the data's own image and category ids). Returns
/// `(voc, coco)`.
pub fn evaluate_detector_voc_coco(
    model: &dyn Detector,
    coder: &BoxCoder,
    loader: &Loader,
    decode: &DecodeConfig,
    voc: &VocEvalConfig,
    device: Device,
) -> Result<(VocEvalResult, CocoEvalResult)> {
    let (voc_result, images) = evaluate_detector(model, coder, loader, decode, voc, device)?;
    let view = CocoView::of(loader.dataset(), true)?;
    let detections = view.detections_from_images(&images)?;
    let coco = evaluate(&view.gt, &detections, &CocoParams::default())?.result();
    Ok((voc_result, coco))
}
