//! COCO-shaped ground truth and detections, in memory and as JSON files: the instances file
//! (`images`, `annotations`, `categories`) and the results file (a list of
//! `{image_id, category_id, bbox, score}`).
//!
//! Boxes are COCO's `[x, y, width, height]` in pixels: `(x, y)` the top-left corner in a
//! continuous frame whose origin is the image's top-left corner (a pixel `(i, j)` covers
//! `[i, i+1) x [j, j+1)`). Numbers are f64, as JSON and pycocotools hold them.
//!
//! Reading is lenient about what the evaluation does not use (segmentations, licences, extra
//! fields are skipped) and strict about what it does: an id that is not an integer, a box that
//! is not four finite numbers or has a negative side, a reference to an unknown image or
//! category, a duplicate id: each is a bad-input error naming the file and the annotation id
//! (or the entry's position when it has no usable id).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bail_input;

/// The COCO box `[x, y, w, h]` of a VOC box (1-based, inclusive pixels): it covers the
/// continuous `[x1 - 1, x2] x [y1 - 1, y2]` (computed in f64).
pub fn voc_box_to_coco(b: [f32; 4]) -> [f64; 4] {
    let [x1, y1, x2, y2] = b.map(f64::from);
    [x1 - 1.0, y1 - 1.0, x2 - x1 + 1.0, y2 - y1 + 1.0]
}

/// The VOC box (1-based, inclusive pixels) of a COCO box: the inverse of [`voc_box_to_coco`].
pub fn coco_box_to_voc(b: [f64; 4]) -> [f32; 4] {
    let [x, y, w, h] = b;
    [x + 1.0, y + 1.0, x + w, y + h].map(|v| v as f32)
}

/// One image of the ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoImage {
    pub id: i64,
    /// The image file, relative to the images folder ("" when unknown).
    #[serde(default)]
    pub file_name: String,
    /// Pixels, when the file gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
}

/// One category (class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoCategory {
    pub id: i64,
    pub name: String,
}

/// One annotated object (or crowd region).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]` pixels, width and height >= 0.
    pub bbox: [f64; 4],
    /// Pixels² (COCO: the segmentation's area). `None`: the box's `width * height`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    /// A crowd region: never a true positive, matches any number of detections, and its IoU
    /// with a detection divides by the detection's area.
    #[serde(default, with = "flag")]
    pub iscrowd: bool,
    /// An ignored object (VOC `difficult`): not counted in recall; a detection matched to it
    /// is ignored. pycocotools drops this field (see the module docs of [`crate::eval::coco`]).
    #[serde(default, with = "flag", skip_serializing_if = "std::ops::Not::not")]
    pub ignore: bool,
}

impl CocoAnnotation {
    /// The area the evaluation uses: `area`, else `width * height` (pixels²).
    pub fn area(&self) -> f64 {
        self.area.unwrap_or(self.bbox[2] * self.bbox[3])
    }
}

/// COCO's 0/1 flags, written as integers and read from integers or booleans.
mod flag {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(u8::from(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        super::flag_value(&v).map_err(serde::de::Error::custom)
    }
}

/// 0, 1, false or true.
fn flag_value(v: &Value) -> std::result::Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        _ => Err(format!("expected 0, 1, false or true, got {v}")),
    }
}

/// A COCO ground truth: what an instances file holds for box evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CocoGroundTruth {
    pub images: Vec<CocoImage>,
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
}

/// One scored box of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoDetection {
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]` pixels, width and height >= 0.
    pub bbox: [f64; 4],
    pub score: f64,
}

impl CocoDetection {
    /// `width * height` (pixels²): the area pycocotools' `loadRes` gives a box result.
    pub fn area(&self) -> f64 {
        self.bbox[2] * self.bbox[3]
    }
}

/// The ground truth's ids resolved: positions of images and categories.
#[derive(Debug, Clone)]
pub struct CocoIndex {
    /// Image id -> position in `images`.
    pub image: HashMap<i64, usize>,
    /// Category id -> position in `categories`.
    pub category: HashMap<i64, usize>,
}

/// A box that is four finite numbers with width and height >= 0, else the problem.
fn box_problem(b: &[f64; 4]) -> Option<String> {
    if b.iter().any(|v| !v.is_finite()) {
        return Some(format!("bbox {b:?} has a non-finite number"));
    }
    if b[2] < 0.0 || b[3] < 0.0 {
        return Some(format!("bbox {b:?} has a negative width or height"));
    }
    None
}

/// Unique ids -> positions, or the first duplicate.
fn positions(ids: impl Iterator<Item = i64>) -> std::result::Result<HashMap<i64, usize>, i64> {
    let mut map = HashMap::new();
    for (i, id) in ids.enumerate() {
        if map.insert(id, i).is_some() {
            return Err(id);
        }
    }
    Ok(map)
}

impl CocoGroundTruth {
    /// Check ids, references and boxes, and index the ids. `source` (a file name, or
    /// "ground truth") starts every error message, which names the annotation id.
    pub fn index(&self, source: &str) -> Result<CocoIndex> {
        let image = positions(self.images.iter().map(|i| i.id))
            .or_else(|id| bail_input!("{source}: image id {id} appears more than once"))?;
        let category = positions(self.categories.iter().map(|c| c.id))
            .or_else(|id| bail_input!("{source}: category id {id} appears more than once"))?;
        let mut seen = HashMap::with_capacity(self.annotations.len());
        for a in &self.annotations {
            let at = || format!("{source}: annotation id {}", a.id);
            if seen.insert(a.id, ()).is_some() {
                bail_input!("{}: the id appears more than once", at());
            }
            if !image.contains_key(&a.image_id) {
                bail_input!("{}: image_id {} is not in images", at(), a.image_id);
            }
            if !category.contains_key(&a.category_id) {
                bail_input!(
                    "{}: category_id {} is not in categories",
                    at(),
                    a.category_id
                );
            }
            if let Some(problem) = box_problem(&a.bbox) {
                bail_input!("{}: {problem}", at());
            }
            if let Some(area) = a.area.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                bail_input!("{}: area {area} is not a finite number >= 0", at());
            }
        }
        Ok(CocoIndex { image, category })
    }

    /// The category names in the order of `categories`.
    pub fn category_names(&self) -> Vec<String> {
        self.categories.iter().map(|c| c.name.clone()).collect()
    }

    /// Read a COCO instances file (e.g. `annotations/instances_val2017.json`) and check it
    /// ([`CocoGroundTruth::index`]). Errors name the file and the annotation id.
    pub fn read_json(path: &Path) -> Result<Self> {
        let gt = Self::parse_json(path)?;
        gt.index(&path.display().to_string())?;
        Ok(gt)
    }

    /// Read a COCO instances file without checking references, duplicate ids or box sides:
    /// only its structure (every id an integer, every box four finite numbers, flags 0/1).
    /// What [`crate::data::coco`] reads before it reports each problem by annotation id.
    pub fn parse_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::bad_input(format!("{}: {e}", path.display())))?;
        let raw: RawInstances = serde_json::from_str(&text).map_err(|e| {
            crate::bad_input(format!(
                "{}: not a COCO instances file: {e}",
                path.display()
            ))
        })?;
        raw.resolve(&path.display().to_string())
    }

    /// Write as a COCO instances file (`area` written for every annotation, as pycocotools
    /// needs it), atomically.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let mut out = self.clone();
        for a in &mut out.annotations {
            a.area = Some(a.area());
        }
        crate::io::write_bytes_atomic(path, serde_json::to_string(&out)?.as_bytes())
    }
}

/// Check detections against the ground truth's index: known image and category, a finite
/// score, a box of four finite numbers with sides >= 0. `source` starts the messages, which
/// name the detection's position.
pub fn check_detections(
    detections: &[CocoDetection],
    index: &CocoIndex,
    source: &str,
) -> Result<()> {
    for (k, d) in detections.iter().enumerate() {
        let at = || format!("{source}: result {k} (image_id {})", d.image_id);
        if !index.image.contains_key(&d.image_id) {
            bail_input!("{}: the image is not in the ground truth", at());
        }
        if !index.category.contains_key(&d.category_id) {
            bail_input!(
                "{}: category_id {} is not in the ground truth's categories",
                at(),
                d.category_id
            );
        }
        if !d.score.is_finite() {
            bail_input!("{}: score {} is not finite", at(), d.score);
        }
        if let Some(problem) = box_problem(&d.bbox) {
            bail_input!("{}: {problem}", at());
        }
    }
    Ok(())
}

/// Read a COCO results file (a JSON list of `{image_id, category_id, bbox, score}`; other
/// fields are skipped) and check it against `gt`. Errors name the file and the result's
/// position.
pub fn read_coco_results(path: &Path, gt: &CocoGroundTruth) -> Result<Vec<CocoDetection>> {
    let source = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| crate::bad_input(format!("{source}: {e}")))?;
    let raw: Vec<RawResult> = serde_json::from_str(&text).map_err(|e| {
        crate::bad_input(format!(
            "{source}: not a COCO results file (a list of {{image_id, category_id, bbox, \
             score}}): {e}"
        ))
    })?;
    let detections = raw
        .iter()
        .enumerate()
        .map(|(k, r)| r.resolve(&format!("{source}: result {k}")))
        .collect::<Result<Vec<_>>>()?;
    check_detections(&detections, &gt.index("ground truth")?, &source)?;
    Ok(detections)
}

/// Write a COCO results file (numbers in the shortest form that reads back exactly),
/// atomically.
pub fn write_coco_results(path: &Path, detections: &[CocoDetection]) -> Result<()> {
    crate::io::write_bytes_atomic(path, serde_json::to_string(detections)?.as_bytes())
}

// ---- lenient reading: every field the evaluation uses as a JSON value, checked by name ----

#[derive(Deserialize)]
struct RawInstances {
    images: Option<Vec<RawImage>>,
    annotations: Option<Vec<RawAnnotation>>,
    categories: Option<Vec<RawCategory>>,
}

#[derive(Deserialize)]
struct RawImage {
    id: Option<Value>,
    file_name: Option<Value>,
    width: Option<Value>,
    height: Option<Value>,
}

#[derive(Deserialize)]
struct RawCategory {
    id: Option<Value>,
    name: Option<Value>,
}

#[derive(Deserialize)]
struct RawAnnotation {
    id: Option<Value>,
    image_id: Option<Value>,
    category_id: Option<Value>,
    bbox: Option<Value>,
    area: Option<Value>,
    iscrowd: Option<Value>,
    ignore: Option<Value>,
}

#[derive(Deserialize)]
struct RawResult {
    image_id: Option<Value>,
    category_id: Option<Value>,
    bbox: Option<Value>,
    score: Option<Value>,
}

fn integer(v: &Option<Value>, name: &str, at: &str) -> Result<i64> {
    match v {
        None => bail_input!("{at}: {name} is missing"),
        Some(value) => match value.as_i64() {
            Some(x) => Ok(x),
            None => bail_input!("{at}: {name} {value} is not an integer"),
        },
    }
}

fn number(v: &Value, name: &str, at: &str) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => bail_input!("{at}: {name} {v} is not a finite number"),
    }
}

fn optional_u32(v: &Option<Value>, name: &str, at: &str) -> Result<Option<u32>> {
    match v {
        None => Ok(None),
        Some(value) => match value.as_u64().and_then(|x| u32::try_from(x).ok()) {
            Some(x) => Ok(Some(x)),
            None => bail_input!("{at}: {name} {value} is not a pixel count"),
        },
    }
}

fn bbox(v: &Option<Value>, at: &str) -> Result<[f64; 4]> {
    let Some(v) = v else {
        bail_input!("{at}: bbox is missing");
    };
    let values = match v.as_array() {
        Some(a) if a.len() == 4 => a,
        _ => bail_input!("{at}: bbox {v} is not [x, y, width, height]"),
    };
    let mut b = [0.0; 4];
    for (slot, value) in b.iter_mut().zip(values) {
        *slot = number(value, "bbox value", at)?;
    }
    Ok(b)
}

fn optional_flag(v: &Option<Value>, name: &str, at: &str) -> Result<bool> {
    match v {
        None => Ok(false),
        Some(v) => flag_value(v).map_err(|e| crate::bad_input(format!("{at}: {name}: {e}"))),
    }
}

impl RawInstances {
    fn resolve(self, source: &str) -> Result<CocoGroundTruth> {
        let (Some(images), Some(annotations), Some(categories)) =
            (self.images, self.annotations, self.categories)
        else {
            bail_input!("{source}: a COCO instances file needs images, annotations and categories");
        };
        let images = images
            .iter()
            .enumerate()
            .map(|(i, r)| r.resolve(&format!("{source}: images[{i}]")))
            .collect::<Result<_>>()?;
        let categories = categories
            .iter()
            .enumerate()
            .map(|(i, r)| r.resolve(&format!("{source}: categories[{i}]")))
            .collect::<Result<_>>()?;
        let annotations = annotations
            .iter()
            .enumerate()
            .map(|(i, r)| r.resolve(source, i))
            .collect::<Result<_>>()?;
        Ok(CocoGroundTruth {
            images,
            annotations,
            categories,
        })
    }
}

impl RawImage {
    fn resolve(&self, at: &str) -> Result<CocoImage> {
        let id = integer(&self.id, "id", at)?;
        let at = format!("{at} (id {id})");
        let file_name = match &self.file_name {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail_input!("{at}: file_name {other} is not a string"),
        };
        Ok(CocoImage {
            id,
            file_name,
            width: optional_u32(&self.width, "width", &at)?,
            height: optional_u32(&self.height, "height", &at)?,
        })
    }
}

impl RawCategory {
    fn resolve(&self, at: &str) -> Result<CocoCategory> {
        let id = integer(&self.id, "id", at)?;
        let name = match &self.name {
            None => id.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => bail_input!("{at} (id {id}): name {other} is not a string"),
        };
        Ok(CocoCategory { id, name })
    }
}

impl RawAnnotation {
    fn resolve(&self, source: &str, position: usize) -> Result<CocoAnnotation> {
        let id = integer(
            &self.id,
            "id",
            &format!("{source}: annotations[{position}]"),
        )?;
        let at = format!("{source}: annotation id {id}");
        let area = match &self.area {
            None => None,
            Some(v) => Some(number(v, "area", &at)?),
        };
        Ok(CocoAnnotation {
            id,
            image_id: integer(&self.image_id, "image_id", &at)?,
            category_id: integer(&self.category_id, "category_id", &at)?,
            bbox: bbox(&self.bbox, &at)?,
            area,
            iscrowd: optional_flag(&self.iscrowd, "iscrowd", &at)?,
            ignore: optional_flag(&self.ignore, "ignore", &at)?,
        })
    }
}

impl RawResult {
    fn resolve(&self, at: &str) -> Result<CocoDetection> {
        let score = match &self.score {
            None => bail_input!("{at}: score is missing"),
            Some(v) => number(v, "score", at)?,
        };
        Ok(CocoDetection {
            image_id: integer(&self.image_id, "image_id", at)?,
            category_id: integer(&self.category_id, "category_id", at)?,
            bbox: bbox(&self.bbox, at)?,
            score,
        })
    }
}
