//! The PASCAL VOC reader (torchcv's `datasets/listdataset.py`, reading the VOC folders
//! directly instead of list files).
//!
//! Layouts: a VOCdevkit folder (`VOC2007/`, `VOC2012/`, ... inside, sets written
//! `2007:trainval`) or a single VOC-format folder (`Annotations/`, `JPEGImages/`,
//! `ImageSets/Main/`, sets written `trainval`). Several sets combine.
//!
//! Every XML is parsed once, at [`VocDataset::open`], into [`ImageRecord`]s. Only direct
//! `<object>` children of `<annotation>` are read (never `<part>`); coordinates may be floats;
//! a missing `<difficult>` means 0. Boxes outside the image are clipped, boxes with
//! `xmax <= xmin` or `ymax <= ymin` are dropped, each with a counted [`Problem`].
//!
//! Coordinates: [`VocObject::bbox`] keeps the XML values (1-based, inclusive pixel indices).
//! [`VocObject::pixel_box`] and every [`Sample`] use 0-based continuous coordinates:
//! `[xmin - 1, ymin - 1, xmax, ymax]`, so the box covers exactly the annotated pixels.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};

use super::check::{DataReport, Problem, ProblemKind};
use super::classes::ClassMap;
use super::image::{self as img, RgbImage};
use super::record::{build_record, ImageEntry};
use crate::bail_input;

/// One set: `2007:trainval` (VOCdevkit/VOC2007/ImageSets/Main/trainval.txt) or `trainval`
/// (a single VOC folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub year: Option<String>,
    pub name: String,
}

impl SetSpec {
    /// Parse a comma-separated list: `2007:trainval,2012:trainval`.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let specs: Vec<Self> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Self::from_str)
            .collect::<Result<_>>()?;
        if specs.is_empty() {
            bail_input!("--sets {s:?}: no set given (e.g. trainval or 2007:trainval)");
        }
        Ok(specs)
    }
}

impl FromStr for SetSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let valid = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        let (year, name) = match s.split_once(':') {
            Some((y, n)) => (
                Some(y.trim().trim_start_matches("VOC").to_string()),
                n.trim(),
            ),
            None => (None, s.trim()),
        };
        if !valid(name) || year.as_deref().is_some_and(|y| !valid(y)) {
            bail_input!("set {s:?}: expected NAME or YEAR:NAME, e.g. trainval or 2007:trainval");
        }
        Ok(Self {
            year,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for SetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.year {
            Some(y) => write!(f, "{y}:{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How much of each image [`VocDataset::open`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageCheck {
    /// Only that the file exists (the loader decodes it later). Fast: for training.
    #[default]
    Exists,
    /// Read the header: format, real size (checked against `<size>`), EXIF orientation.
    Header,
    /// Decode every image: finds corrupt and truncated files (for `check-data`).
    Decode,
    /// Annotations only: a missing image is not a problem (scoring detection files needs no
    /// pixels). The image is read only when `<size>` is missing and the file exists.
    AnnotationsOnly,
}

/// Options of [`VocDataset::open`].
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// The class list; `None`: discovered (the 20 VOC classes in the standard order when the
    /// data uses only those, else the names found, sorted).
    pub classes: Option<ClassMap>,
    pub check_images: ImageCheck,
}

/// One annotated object.
#[derive(Debug, Clone, PartialEq)]
pub struct VocObject {
    /// 0-based class id in the dataset's [`ClassMap`].
    pub class_id: usize,
    /// `[xmin, ymin, xmax, ymax]` as in the XML (1-based inclusive pixels), clipped to the image.
    pub bbox: [f32; 4],
    /// VOC `<difficult>`, COCO `"ignore": 1`; never set on a crowd region (which is ignored
    /// anyway).
    pub difficult: bool,
    pub truncated: bool,
    /// A crowd region (COCO `iscrowd`; in VOC XML tchcv's `<iscrowd>1</iscrowd>`): never a
    /// positive; its anchors are ignored in training, and detections on it in evaluation.
    pub crowd: bool,
    /// COCO's `area` (pixels², the segmentation's), when the data gave one; `None`: the box's.
    pub area: Option<f64>,
}

impl VocObject {
    /// The box in 0-based continuous pixel coordinates of the annotated image frame:
    /// `[xmin - 1, ymin - 1, xmax, ymax]`.
    pub fn pixel_box(&self) -> [f32; 4] {
        voc_to_pixel_box(self.bbox)
    }
}

/// VOC `(xmin, ymin, xmax, ymax)` (1-based inclusive) to 0-based continuous coordinates.
pub fn voc_to_pixel_box(b: [f32; 4]) -> [f32; 4] {
    [b[0] - 1.0, b[1] - 1.0, b[2], b[3]]
}

/// 0-based continuous coordinates back to VOC's 1-based inclusive convention.
pub fn pixel_to_voc_box(b: [f32; 4]) -> [f32; 4] {
    [b[0] + 1.0, b[1] + 1.0, b[2], b[3]]
}

/// One image and its objects.
#[derive(Debug, Clone)]
pub struct ImageRecord {
    pub id: String,
    pub image_path: PathBuf,
    pub annotation_path: PathBuf,
    /// Upright size in pixels: the real image's when it was read (see [`ImageCheck`]),
    /// otherwise `<size>` from the XML.
    pub width: u32,
    pub height: u32,
    /// `<size>` from the XML, if present and non-zero.
    pub xml_size: Option<(u32, u32)>,
    /// The image file's header, when it was read at open time ([`ImageCheck::Header`],
    /// [`ImageCheck::Decode`], or a missing `<size>`): stored size and EXIF orientation.
    pub probe: Option<img::Probe>,
    /// Usable objects (clipped; degenerate, unknown-class and malformed ones dropped).
    pub objects: Vec<VocObject>,
    /// The set it came from, e.g. `2007:trainval`.
    pub source: String,
    /// The COCO image id, for COCO data (VOC data: `None`, and the image's COCO id is its
    /// position + 1).
    pub coco_id: Option<i64>,
}

/// A loaded image with its boxes, in 0-based continuous pixel coordinates of the upright image.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Upright RGB8 pixels.
    pub image: RgbImage,
    /// `[K, 4]` xyxy boxes.
    pub boxes: Vec<[f32; 4]>,
    /// `[K]` 0-based class ids.
    pub labels: Vec<i64>,
    /// `[K]` VOC difficult flags.
    pub difficult: Vec<bool>,
    /// `[K]` crowd regions (always loaded, whatever `use_difficult`: they are ignore regions).
    pub crowd: Vec<bool>,
    /// Conversions and fix-ups made while loading (notes and warnings).
    pub problems: Vec<Problem>,
}

/// A VOC dataset: records parsed from the XML of the chosen sets.
#[derive(Debug, Clone)]
pub struct VocDataset {
    pub root: PathBuf,
    /// The sets read, e.g. `["2007:trainval", "2012:trainval"]`.
    pub sets: Vec<String>,
    pub classes: ClassMap,
    /// `[classes.len()]` the COCO category id of each class: the data's for COCO data
    /// (non-contiguous ids kept), `1..=K` for VOC data.
    pub category_ids: Vec<i64>,
    pub records: Vec<ImageRecord>,
}

/// An object as written in the XML, before class mapping and clipping.
struct RawObject {
    name: String,
    bbox: [f32; 4],
    difficult: bool,
    truncated: bool,
    crowd: bool,
}

struct RawAnnotation {
    filename: Option<String>,
    size: Option<(u32, u32)>,
    objects: Vec<RawObject>,
    /// Objects that could not be read (missing name or box, bad number).
    bad_objects: Vec<String>,
}

/// The text of the direct child `name` of `node`, trimmed.
fn child_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.has_tag_name(name))
        .and_then(|c| c.text())
        .map(str::trim)
}

fn parse_flag(node: roxmltree::Node, name: &str) -> bool {
    child_text(node, name)
        .and_then(|t| t.parse::<f32>().ok())
        .is_some_and(|v| v != 0.0)
}

fn parse_annotation(text: &str) -> std::result::Result<RawAnnotation, String> {
    let text = text.trim_start_matches('\u{feff}');
    let doc = roxmltree::Document::parse(text).map_err(|e| format!("XML does not parse: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("annotation") {
        return Err(format!(
            "root element is <{}>, expected <annotation>",
            root.tag_name().name()
        ));
    }
    let size = root
        .children()
        .find(|c| c.has_tag_name("size"))
        .and_then(|s| {
            let w = child_text(s, "width")?.parse::<f64>().ok()?;
            let h = child_text(s, "height")?.parse::<f64>().ok()?;
            (w >= 1.0 && h >= 1.0).then_some((w.round() as u32, h.round() as u32))
        });
    let mut objects = Vec::new();
    let mut bad_objects = Vec::new();
    // Direct children only: `<part>` boxes inside an object are never read.
    for (k, obj) in root
        .children()
        .filter(|c| c.has_tag_name("object"))
        .enumerate()
    {
        let Some(name) = child_text(obj, "name").filter(|n| !n.is_empty()) else {
            bad_objects.push(format!("object {k}: no <name>"));
            continue;
        };
        let Some(bndbox) = obj.children().find(|c| c.has_tag_name("bndbox")) else {
            bad_objects.push(format!("object {k} ({name}): no <bndbox>"));
            continue;
        };
        let mut bbox = [0f32; 4];
        let mut missing = None;
        for (slot, tag) in bbox.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
            match child_text(bndbox, tag)
                .and_then(|t| t.parse::<f32>().ok())
                .filter(|v| v.is_finite())
            {
                Some(v) => *slot = v,
                None => missing = Some(tag),
            }
        }
        if let Some(tag) = missing {
            bad_objects.push(format!(
                "object {k} ({name}): <{tag}> missing or not a number"
            ));
            continue;
        }
        objects.push(RawObject {
            name: name.to_string(),
            bbox,
            difficult: parse_flag(obj, "difficult"),
            truncated: parse_flag(obj, "truncated"),
            crowd: parse_flag(obj, "iscrowd"),
        });
    }
    Ok(RawAnnotation {
        filename: child_text(root, "filename").map(String::from),
        size,
        objects,
        bad_objects,
    })
}

/// The VOC folder (with `ImageSets/`) that `spec` refers to under `root`.
fn set_folder(root: &Path, spec: &SetSpec) -> Result<PathBuf> {
    let is_voc = |p: &Path| p.join("ImageSets").is_dir();
    match &spec.year {
        Some(year) => {
            let name = format!("VOC{year}");
            let candidates = [
                root.join(&name),
                root.join("VOCdevkit").join(&name),
                root.to_path_buf(),
            ];
            for c in &candidates[..2] {
                if is_voc(c) {
                    return Ok(c.clone());
                }
            }
            if root.file_name().is_some_and(|n| n == name.as_str()) && is_voc(root) {
                return Ok(root.to_path_buf());
            }
            bail_input!(
                "--sets {spec}: no {name}/ImageSets under {} (expected a VOCdevkit folder)",
                root.display()
            )
        }
        None => {
            if is_voc(root) {
                return Ok(root.to_path_buf());
            }
            let mut years: Vec<PathBuf> = std::fs::read_dir(root)
                .map_err(|e| {
                    crate::bad_input(format!("--data {}: cannot read: {e}", root.display()))
                })?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("VOC"))
                        && is_voc(p)
                })
                .collect();
            years.sort();
            match years.len() {
                1 => Ok(years.remove(0)),
                0 => bail_input!(
                    "--data {}: not a VOC folder (no ImageSets/) nor a VOCdevkit (no VOC*/ImageSets/)",
                    root.display()
                ),
                _ => bail_input!(
                    "--sets {spec}: {} holds several VOC folders ({}); write the year, e.g. 2007:{}",
                    root.display(),
                    years
                        .iter()
                        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    spec.name
                ),
            }
        }
    }
}

/// The ids listed in `ImageSets/Main/<name>.txt` (first token of each non-empty line).
fn read_set(folder: &Path, spec: &SetSpec) -> Result<Vec<String>> {
    let main = folder.join("ImageSets").join("Main");
    let path = main.join(format!("{}.txt", spec.name));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            let mut have: Vec<String> = std::fs::read_dir(&main)
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.file_name().to_str().map(String::from))
                        .filter_map(|n| n.strip_suffix(".txt").map(String::from))
                        .filter(|n| !n.contains('_'))
                        .collect()
                })
                .unwrap_or_default();
            have.sort();
            bail_input!(
                "--sets {spec}: cannot read {}: {e} (sets there: {})",
                path.display(),
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            );
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// The image file of `id`: `<filename>` from the XML if it exists, else `<id>.jpg` and the
/// other usual extensions.
fn find_image(folder: &Path, id: &str, filename: Option<&str>) -> Option<PathBuf> {
    let dir = folder.join("JPEGImages");
    let named = filename
        .and_then(|f| Path::new(f).file_name().map(|n| dir.join(n)))
        .into_iter();
    let guesses = ["jpg", "jpeg", "png", "JPG", "JPEG", "PNG"]
        .iter()
        .map(|ext| dir.join(format!("{id}.{ext}")));
    named.chain(guesses).find(|p| p.is_file())
}

/// Which frame the XML boxes of an image with EXIF orientation refer to. Boxes are taken to
/// be annotated on the stored pixels (as PIL/torchcv and most VOC tools read them) unless
/// `<size>` matches only the upright size, in which case they are upright already.
fn boxes_are_upright(xml_size: Option<(u32, u32)>, stored: (u32, u32), orientation: u8) -> bool {
    let upright = img::oriented_size(stored, orientation);
    orientation == 1 || (xml_size == Some(upright) && upright != stored)
}

/// Clip a 1-based box to `[1, w] x [1, h]`; `None` when it is degenerate afterwards. Sets
/// `clipped` when clipping changed it.
fn clip_voc_box(b: [f32; 4], (w, h): (u32, u32), clipped: &mut bool) -> Option<[f32; 4]> {
    let (w, h) = (w as f32, h as f32);
    let c = [
        b[0].clamp(1.0, w),
        b[1].clamp(1.0, h),
        b[2].clamp(1.0, w),
        b[3].clamp(1.0, h),
    ];
    *clipped = c != b;
    (c[2] > c[0] && c[3] > c[1]).then_some(c)
}

/// `(folder, id, source)` of every image the sets list, in order, duplicates removed (and
/// reported).
fn list_images(
    root: &Path,
    sets: &[SetSpec],
    report: &mut DataReport,
) -> Result<Vec<(PathBuf, String, String)>> {
    let mut listed = Vec::new();
    let mut seen = HashSet::new();
    for spec in sets {
        let folder = set_folder(root, spec)?;
        for id in read_set(&folder, spec)? {
            let key = (folder.clone(), id.clone());
            if seen.insert(key) {
                listed.push((folder.clone(), id, spec.to_string()));
            } else {
                let file = folder.join("Annotations").join(format!("{id}.xml"));
                report.push(Problem::new(
                    ProblemKind::DuplicateId,
                    &file,
                    format!("id {id} listed again in {spec}"),
                ));
            }
        }
    }
    if listed.is_empty() {
        let names: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        bail_input!(
            "{}: the sets {} list no images (empty ImageSets/Main files)",
            root.display(),
            names.join(",")
        );
    }
    Ok(listed)
}

impl VocDataset {
    /// Read the sets `sets` under `root` (see the module docs). Problems are counted in the
    /// returned report; records with errors that make them unusable are left out.
    pub fn open(
        root: &Path,
        sets: &[SetSpec],
        options: &ReadOptions,
    ) -> Result<(Self, DataReport)> {
        if !root.is_dir() {
            bail_input!("--data {}: no such folder", root.display());
        }
        let mut report = DataReport::default();
        let listed = list_images(root, sets, &mut report)?;
        let parsed = parse_all(&listed);
        let classes = match &options.classes {
            Some(c) => c.clone(),
            None => ClassMap::discover(
                parsed
                    .iter()
                    .filter_map(|p| p.as_ref().ok())
                    .flat_map(|a| a.objects.iter().map(|o| o.name.as_str())),
            )
            .with_context(|| format!("discovering the classes of {}", root.display()))?,
        };
        let mut records = Vec::with_capacity(listed.len());
        for ((folder, id, source), raw) in listed.into_iter().zip(parsed) {
            let built = raw.map_err(|p| vec![p]).and_then(|raw| {
                voc_record(&classes, &folder, id, source, raw, options.check_images)
            });
            match built {
                Ok((record, problems)) => {
                    report.extend(problems);
                    records.push(record);
                }
                Err(problems) => report.extend(problems),
            }
        }
        let dataset = Self {
            root: root.to_path_buf(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
            category_ids: (1..=classes.len() as i64).collect(),
            classes,
            records,
        };
        Ok((dataset, report))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Decode image `index` and put its boxes in the upright image's 0-based continuous
    /// coordinates (difficult objects left out unless `use_difficult`; crowd regions always
    /// kept, flagged in [`Sample::crowd`]).
    pub fn load(&self, index: usize, use_difficult: bool) -> Result<Sample> {
        let record = self.records.get(index).ok_or_else(|| {
            anyhow::anyhow!(
                "image index {index} out of range (dataset has {})",
                self.len()
            )
        })?;
        load_record(record, use_difficult)
    }
}

/// Parse every listed annotation (in parallel over the cores).
fn parse_all(
    listed: &[(PathBuf, String, String)],
) -> Vec<std::result::Result<RawAnnotation, Problem>> {
    let parse_one = |(folder, id, _): &(PathBuf, String, String)| {
        let path = folder.join("Annotations").join(format!("{id}.xml"));
        let bytes = std::fs::read(&path).map_err(|e| {
            Problem::new(
                ProblemKind::MissingAnnotation,
                &path,
                format!("cannot read: {e}"),
            )
        })?;
        parse_annotation(&String::from_utf8_lossy(&bytes))
            .map_err(|detail| Problem::new(ProblemKind::MalformedXml, &path, detail))
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = listed.len().div_ceil(threads).max(64);
    std::thread::scope(|s| {
        let handles: Vec<_> = listed
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(parse_one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The record of VOC image `id` in `folder`: find its image, map classes, clip and drop boxes,
/// and check the image as `check` asks. `Err` holds the problems when the record is unusable.
fn voc_record(
    classes: &ClassMap,
    folder: &Path,
    id: String,
    source: String,
    raw: RawAnnotation,
    check: ImageCheck,
) -> std::result::Result<(ImageRecord, Vec<Problem>), Vec<Problem>> {
    let annotation_path = folder.join("Annotations").join(format!("{id}.xml"));
    let wanted = folder.join("JPEGImages").join(format!("{id}.jpg"));
    let found = match (find_image(folder, &id, raw.filename.as_deref()), check) {
        (None, ImageCheck::AnnotationsOnly) => Some(wanted.clone()),
        (found, _) => found,
    };
    let Some(image_path) = found else {
        return Err(vec![Problem::new(
            ProblemKind::MissingImage,
            &wanted,
            format!(
                "no image for {} (tried <filename> and {id}.jpg/.jpeg/.png)",
                annotation_path.display()
            ),
        )]);
    };
    let problems = raw
        .bad_objects
        .iter()
        .map(|d| Problem::new(ProblemKind::BadObject, &annotation_path, d.clone()))
        .collect();
    // Without a size or an image (AnnotationsOnly), the boxes' own extent: nothing is clipped.
    let extent = raw.objects.iter().fold((1, 1), |(w, h), o| {
        (
            w.max(o.bbox[2].ceil().max(1.0) as u32),
            h.max(o.bbox[3].ceil().max(1.0) as u32),
        )
    });
    let entry = ImageEntry {
        id,
        source,
        image_path,
        annotation_path: annotation_path.clone(),
        declared_size: raw.size,
        coco_id: None,
        size_field: "<size>",
    };
    build_record(entry, check, extent, problems, |frame, problems| {
        place_voc_objects(classes, &raw.objects, &annotation_path, frame, problems)
    })
}

/// The usable objects of an annotation in the frame `(w, h)`: known classes, boxes clipped to
/// the frame, degenerate ones dropped; each fix-up reported.
fn place_voc_objects(
    classes: &ClassMap,
    raw: &[RawObject],
    annotation_path: &Path,
    frame: (u32, u32),
    problems: &mut Vec<Problem>,
) -> Vec<VocObject> {
    let mut objects = Vec::with_capacity(raw.len());
    for (k, o) in raw.iter().enumerate() {
        let Some(class_id) = classes.id(&o.name) else {
            problems.push(Problem::new(
                ProblemKind::UnknownClass,
                annotation_path,
                format!("object {k}: class {:?} is not in the class list", o.name),
            ));
            continue;
        };
        let mut clipped = false;
        let b = o.bbox;
        let Some(bbox) = clip_voc_box(b, frame, &mut clipped) else {
            problems.push(Problem::new(
                ProblemKind::DegenerateBox,
                annotation_path,
                format!(
                    "object {k} ({}): box ({}, {}, {}, {}) has no area{}; dropped",
                    o.name,
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    if clipped { " inside the image" } else { "" }
                ),
            ));
            continue;
        };
        if clipped {
            problems.push(Problem::new(
                ProblemKind::BoxClipped,
                annotation_path,
                format!(
                    "object {k} ({}): box ({}, {}, {}, {}) reaches outside the {}x{} image; clipped",
                    o.name, b[0], b[1], b[2], b[3], frame.0, frame.1
                ),
            ));
        }
        objects.push(VocObject {
            class_id,
            bbox,
            // A crowd region is ignored anyway; tchcv's VOC files mark it difficult too (for
            // other VOC tools), which is not kept.
            difficult: o.difficult && !o.crowd,
            truncated: o.truncated,
            crowd: o.crowd,
            area: None,
        });
    }
    objects
}

impl ImageRecord {
    /// The objects' boxes in VOC's 1-based convention, in the frame of the *upright* decoded
    /// image (the frame tchcv's detections are in): the XML boxes, turned with the EXIF
    /// orientation where they were annotated on the stored pixels. Needs [`Self::probe`]; without
    /// it the XML boxes are returned as they are.
    pub fn upright_voc_boxes(&self) -> Vec<[f32; 4]> {
        let turn = self
            .probe
            .filter(|p| !boxes_are_upright(self.xml_size, p.stored_size, p.orientation));
        self.objects
            .iter()
            .map(|o| match turn {
                Some(p) => {
                    pixel_to_voc_box(img::orient_box(o.pixel_box(), p.stored_size, p.orientation))
                }
                None => o.bbox,
            })
            .collect()
    }
}

/// Decode a record's image and map its boxes (see [`VocDataset::load`]).
pub fn load_record(record: &ImageRecord, use_difficult: bool) -> Result<Sample> {
    let decoded = img::read(&record.image_path)?;
    let mut problems = decoded.notes(&record.image_path);
    let upright_size = decoded.image.dimensions();
    let upright = boxes_are_upright(record.xml_size, decoded.stored_size, decoded.orientation);
    if let Some(xml) = record.xml_size {
        if xml != upright_size && xml != decoded.stored_size {
            problems.push(Problem::new(
                ProblemKind::SizeMismatch,
                &record.annotation_path,
                format!(
                    "{} {}x{} but the image is {}x{}; boxes are clipped to the image",
                    if record.coco_id.is_some() {
                        "width/height"
                    } else {
                        "<size>"
                    },
                    xml.0,
                    xml.1,
                    upright_size.0,
                    upright_size.1
                ),
            ));
        }
    }
    let (w, h) = (upright_size.0 as f32, upright_size.1 as f32);
    let mut sample = Sample {
        image: decoded.image,
        boxes: Vec::with_capacity(record.objects.len()),
        labels: Vec::with_capacity(record.objects.len()),
        difficult: Vec::with_capacity(record.objects.len()),
        crowd: Vec::with_capacity(record.objects.len()),
        problems: Vec::new(),
    };
    for o in record
        .objects
        .iter()
        .filter(|o| use_difficult || !o.difficult || o.crowd)
    {
        let mut b = o.pixel_box();
        if !upright {
            b = img::orient_box(b, decoded.stored_size, decoded.orientation);
        }
        let b = [
            b[0].clamp(0.0, w),
            b[1].clamp(0.0, h),
            b[2].clamp(0.0, w),
            b[3].clamp(0.0, h),
        ];
        if b[2] > b[0] && b[3] > b[1] {
            sample.boxes.push(b);
            sample.labels.push(o.class_id as i64);
            sample.difficult.push(o.difficult);
            sample.crowd.push(o.crowd);
        }
    }
    sample.problems = problems;
    Ok(sample)
}
