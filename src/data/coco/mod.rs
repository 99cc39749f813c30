//! The COCO reader: instances files (`images`, `annotations` with `bbox` `[x, y, w, h]`,
//! `category_id`, `iscrowd`, `categories`) into the same [`VocDataset`] of [`ImageRecord`]s the
//! VOC reader gives, so training, evaluation and `check-data` run on either.
//!
//! Layouts ([`resolve_sets`]): one instances file (`--data FILE.json`, images in `--images DIR`),
//! or the standard folder `ROOT/annotations/instances_<set>.json` next to `ROOT/<set>/` (sets
//! written `train2017`). [`format`] holds the file types (shared with the COCO metric).
//!
//! Mapping: the classes are the categories' names in id order (or a given class list, matched
//! by name); [`VocDataset::category_ids`] keeps each class's category id, so non-contiguous ids
//! come back out (results files, `tchcv convert`). A record's `id` is the image id in decimal
//! and [`ImageRecord::coco_id`] the id itself (unique within a set). Sets read together may
//! repeat ids, as exports that number each split from 1 do: then every record's `id` is
//! `<set>/<image id>` (`val2017/1`), so record ids stay unique, and the COCO metric numbers the
//! images by position (see [`instances_of`]). Boxes become VOC's 1-based inclusive convention
//! ([`format::coco_box_to_voc`]: `[x + 1, y + 1, x + w, y + h]`, so the pixel box is exactly
//! `[x, y, x + w, y + h]`); `iscrowd` is [`VocObject::crowd`], `ignore` is
//! [`VocObject::difficult`] (the flag `tchcv convert` writes for VOC's difficult; not kept on
//! crowd regions, which are ignored anyway), `area` is kept. Crowd regions are never positives:
//! they are not matched, and the background anchors inside one are ignored in training (label
//! -1, see [`crate::bbox::BoxCoder::encode_with_crowd`]); COCO's metric treats them as COCO does.
//!
//! Problems, reported by annotation id in the instances file: unknown category or image id
//! (error, annotation skipped), a box under one pixel wide or high, as given or inside the
//! image (warning, dropped, as mmdetection's COCO reader does: VOC's inclusive box would be
//! inverted) or reaching outside the image (warning, clipped), a negative `area` (warning,
//! dropped: the box's area is used), a duplicate image id (warning, the later entry skipped) or
//! annotation id (warning, both kept), an image without annotations (warning), a missing or
//! unreadable image (error, skipped). A file that is not COCO JSON, or an entry whose id or box
//! is not numbers, is bad input naming the file and the annotation id.

pub mod format;
mod sets;
pub mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};

use self::format::{coco_box_to_voc, CocoAnnotation, CocoGroundTruth, CocoImage};
use super::check::{DataReport, Problem, ProblemKind};
use super::classes::ClassMap;
use super::record::{build_record, ImageEntry};
use super::voc::{ImageCheck, ImageRecord, ReadOptions, SetSpec, VocDataset, VocObject};
use crate::bail_input;

pub use sets::{resolve_sets, split_name, CocoSet};
pub use write::{instances_of, InstancesOptions};

/// The classes of the instances files: `options`' list (each category matched by name), else
/// the categories' names in id order. Returns the map and each class's category id (a class
/// that no file has gets a fresh id above theirs).
fn classes_of(
    files: &[(CocoSet, CocoGroundTruth)],
    given: Option<&ClassMap>,
) -> Result<(ClassMap, Vec<i64>)> {
    let mut by_id: BTreeMap<i64, String> = BTreeMap::new();
    for (set, gt) in files {
        let mut seen = HashSet::new();
        for c in &gt.categories {
            let at = set.annotations.display();
            if !seen.insert(c.id) {
                bail_input!("{at}: category id {} appears more than once", c.id);
            }
            match by_id.get(&c.id) {
                Some(name) if *name != c.name => bail_input!(
                    "{at}: category id {} is {:?} here but {name:?} in another set",
                    c.id,
                    c.name
                ),
                _ => {
                    by_id.insert(c.id, c.name.clone());
                }
            }
        }
    }
    let classes = match given {
        Some(c) => c.clone(),
        None => {
            if by_id.is_empty() {
                bail_input!(
                    "{}: no categories, so the classes cannot be discovered (give --classes FILE)",
                    files[0].0.annotations.display()
                );
            }
            ClassMap::new(by_id.values().cloned().collect()).with_context(|| {
                format!("the categories of {}", files[0].0.annotations.display())
            })?
        }
    };
    let ids = category_ids_of(files, &by_id, &classes)?;
    Ok((classes, ids))
}

/// The category id of each class of `classes`: its category's (by name in `by_id`), else a
/// fresh one above every id of the files (a bad-input error naming the file with the largest
/// id when there is none left).
fn category_ids_of(
    files: &[(CocoSet, CocoGroundTruth)],
    by_id: &BTreeMap<i64, String>,
    classes: &ClassMap,
) -> Result<Vec<i64>> {
    let largest = by_id.keys().next_back().copied().unwrap_or(0);
    let mut next = Some(largest);
    let mut ids = Vec::with_capacity(classes.len());
    for name in classes.names() {
        if let Some((&id, _)) = by_id.iter().find(|(_, n)| *n == name) {
            ids.push(id);
            continue;
        }
        next = next.and_then(|n| n.checked_add(1));
        let Some(id) = next else {
            let holder = files
                .iter()
                .find(|(_, gt)| gt.categories.iter().any(|c| c.id == largest))
                .map(|(s, _)| s.annotations.display().to_string())
                .unwrap_or_default();
            bail_input!(
                "{holder}: category id {largest} leaves no id above it for class {name:?}, which \
                 no category has (the largest id is {})",
                i64::MAX
            );
        };
        ids.push(id);
    }
    Ok(ids)
}

/// The `area` of annotation `a` when it is a number >= 0; else `None` (the box's area is used),
/// reported by annotation id.
fn checked_area(a: &CocoAnnotation, file: &Path, problems: &mut Vec<Problem>) -> Option<f64> {
    let area = a.area?;
    if area.is_finite() && area >= 0.0 {
        return Some(area);
    }
    let detail = format!(
        "annotation id {}: area {area} is not a number >= 0; dropped (the box's area is used)",
        a.id
    );
    problems.push(Problem::new(ProblemKind::BadArea, file, detail));
    None
}

/// The objects of one image in the annotation's frame `(w, h)`: boxes clipped to it, those
/// under one pixel wide or high (as given, or inside the image) dropped as mmdetection's COCO
/// reader does, each fix-up reported by annotation id. Every box kept is a valid VOC box
/// (`x2 >= x1`, `y2 >= y1`).
fn place_objects(
    annotations: &[(&CocoAnnotation, usize)],
    file: &Path,
    (w, h): (u32, u32),
    problems: &mut Vec<Problem>,
) -> Vec<VocObject> {
    let mut objects = Vec::with_capacity(annotations.len());
    for &(a, class_id) in annotations {
        let [x, y, bw, bh] = a.bbox;
        let at = format!("annotation id {}: bbox [{x}, {y}, {bw}, {bh}]", a.id);
        if !(bw >= 1.0 && bh >= 1.0) {
            let detail = format!("{at} is under one pixel wide or high; dropped");
            problems.push(Problem::new(ProblemKind::DegenerateBox, file, detail));
            continue;
        }
        let (fw, fh) = (f64::from(w), f64::from(h));
        let c = [
            x.clamp(0.0, fw),
            y.clamp(0.0, fh),
            (x + bw).clamp(0.0, fw),
            (y + bh).clamp(0.0, fh),
        ];
        // Unclipped, the given sides (>= 1) are kept as they are.
        let clipped = c != [x, y, x + bw, y + bh];
        let sides = if clipped {
            [c[2] - c[0], c[3] - c[1]]
        } else {
            [bw, bh]
        };
        if !(sides[0] >= 1.0 && sides[1] >= 1.0) {
            let detail = format!("{at} has less than one pixel inside the {w}x{h} image; dropped");
            problems.push(Problem::new(ProblemKind::DegenerateBox, file, detail));
            continue;
        }
        if clipped {
            let detail = format!("{at} reaches outside the {w}x{h} image; clipped");
            problems.push(Problem::new(ProblemKind::BoxClipped, file, detail));
        }
        objects.push(VocObject {
            class_id,
            bbox: coco_box_to_voc([c[0], c[1], sides[0], sides[1]]),
            difficult: a.ignore && !a.iscrowd,
            truncated: false,
            crowd: a.iscrowd,
            area: checked_area(a, file, problems),
        });
    }
    objects
}

/// The annotations of each image id of `gt` with their class ids; those of an unknown image or
/// category (errors) and repeated annotation ids (warnings) are reported.
fn group_annotations<'a>(
    set: &CocoSet,
    gt: &'a CocoGroundTruth,
    class_of: &HashMap<i64, usize>,
    report: &mut DataReport,
) -> HashMap<i64, Vec<(&'a CocoAnnotation, usize)>> {
    let file = &set.annotations;
    let images: HashSet<i64> = gt.images.iter().map(|i| i.id).collect();
    let categories: HashSet<i64> = gt.categories.iter().map(|c| c.id).collect();
    let mut seen = HashSet::new();
    let mut grouped: HashMap<i64, Vec<_>> = HashMap::new();
    for a in &gt.annotations {
        let at = format!("annotation id {}", a.id);
        if !seen.insert(a.id) {
            let detail = format!("{at} appears more than once; each is kept");
            report.push(Problem::new(ProblemKind::DuplicateId, file, detail));
        }
        if !images.contains(&a.image_id) {
            let detail = format!("{at}: image_id {} is not in images; skipped", a.image_id);
            report.push(Problem::new(ProblemKind::BadObject, file, detail));
            continue;
        }
        let Some(&class_id) = class_of.get(&a.category_id) else {
            let why = if categories.contains(&a.category_id) {
                "is not in the class list"
            } else {
                "is not in categories"
            };
            let detail = format!("{at}: category_id {} {why}; skipped", a.category_id);
            report.push(Problem::new(ProblemKind::UnknownClass, file, detail));
            continue;
        };
        grouped.entry(a.image_id).or_default().push((a, class_id));
    }
    grouped
}

/// What one image of a set becomes: its entry (record id `<prefix>/<image id>`, or the image id
/// without a prefix) and its objects' extent.
fn image_entry(
    set: &CocoSet,
    prefix: Option<&str>,
    image: &CocoImage,
    objects: &[(&CocoAnnotation, usize)],
) -> (ImageEntry, (u32, u32)) {
    let declared_size = match (image.width, image.height) {
        (Some(w), Some(h)) if w >= 1 && h >= 1 => Some((w, h)),
        _ => None,
    };
    let extent = objects.iter().fold((1, 1), |(w, h), (a, _)| {
        let right = (a.bbox[0] + a.bbox[2]).ceil().max(1.0) as u32;
        let bottom = (a.bbox[1] + a.bbox[3]).ceil().max(1.0) as u32;
        (w.max(right), h.max(bottom))
    });
    let entry = ImageEntry {
        id: match prefix {
            Some(p) => format!("{p}/{}", image.id),
            None => image.id.to_string(),
        },
        source: set.name.clone(),
        image_path: set.images.join(&image.file_name),
        annotation_path: set.annotations.clone(),
        declared_size,
        coco_id: Some(image.id),
        size_field: "width/height",
    };
    (entry, extent)
}

/// The records of one set, in the order of its `images` (a repeated image id is skipped), their
/// ids prefixed with `prefix/` when given; problems go to `report`.
fn read_set(
    (set, prefix): (&CocoSet, Option<&str>),
    gt: &CocoGroundTruth,
    class_of: &HashMap<i64, usize>,
    check: ImageCheck,
    report: &mut DataReport,
) -> Vec<ImageRecord> {
    let grouped = group_annotations(set, gt, class_of, report);
    let mut seen = HashSet::new();
    let mut records = Vec::with_capacity(gt.images.len());
    for image in &gt.images {
        let file = &set.annotations;
        if !seen.insert(image.id) {
            let detail = format!(
                "image id {} appears again ({:?}); skipped",
                image.id, image.file_name
            );
            report.push(Problem::new(ProblemKind::DuplicateId, file, detail));
            continue;
        }
        let objects = grouped.get(&image.id).map_or(&[][..], Vec::as_slice);
        let (entry, extent) = image_entry(set, prefix, image, objects);
        let missing = if image.file_name.is_empty() {
            Some("has no file_name".to_string())
        } else if check != ImageCheck::AnnotationsOnly && !entry.image_path.is_file() {
            Some(format!(
                "{:?}: no such file in {}",
                image.file_name,
                set.images.display()
            ))
        } else {
            None
        };
        if let Some(why) = missing {
            let detail = format!("image id {} of {} {why}", image.id, file.display());
            report.push(Problem::new(
                ProblemKind::MissingImage,
                &entry.image_path,
                detail,
            ));
            continue;
        }
        match build_record(entry, check, extent, Vec::new(), |frame, problems| {
            place_objects(objects, file, frame, problems)
        }) {
            Ok((record, problems)) => {
                report.extend(problems);
                records.push(record);
            }
            Err(problems) => report.extend(problems),
        }
    }
    records
}

/// The record id prefix of each set: none, unless an image id repeats across the sets (as in
/// exports that number each split from 1), then each set's name (with its position after a
/// `#` where two sets share a name), so that record ids stay unique.
fn record_prefixes(files: &[(CocoSet, CocoGroundTruth)]) -> Vec<Option<String>> {
    let mut seen = HashSet::new();
    let repeated = files.iter().any(|(_, gt)| {
        let ids: HashSet<i64> = gt.images.iter().map(|i| i.id).collect();
        ids.into_iter().any(|id| !seen.insert(id))
    });
    files
        .iter()
        .enumerate()
        .map(|(k, (set, _))| {
            if !repeated {
                return None;
            }
            let shared = files.iter().filter(|(s, _)| s.name == set.name).count() > 1;
            Some(if shared {
                format!("{}#{}", set.name, k + 1)
            } else {
                set.name.clone()
            })
        })
        .collect()
}

/// Read the COCO `sets` of `root` (an instances file or a folder in the standard layout; see
/// [`resolve_sets`]), images in `images` when given. Problems are counted in the report; unusable
/// images are left out.
pub fn open(
    root: &Path,
    sets: &[SetSpec],
    images: Option<&Path>,
    options: &ReadOptions,
) -> Result<(VocDataset, DataReport)> {
    let resolved = resolve_sets(root, sets, images)?;
    let files = resolved
        .into_iter()
        .map(|set| {
            let gt = CocoGroundTruth::parse_json(&set.annotations)?;
            Ok((set, gt))
        })
        .collect::<Result<Vec<_>>>()?;
    let (classes, category_ids) = classes_of(&files, options.classes.as_ref())?;
    let class_of: HashMap<i64, usize> = files
        .iter()
        .flat_map(|(_, gt)| &gt.categories)
        .filter_map(|c| Some((c.id, classes.id(&c.name)?)))
        .collect();
    let prefixes = record_prefixes(&files);
    let mut report = DataReport::default();
    let mut records = Vec::new();
    for ((set, gt), prefix) in files.iter().zip(&prefixes) {
        records.extend(read_set(
            (set, prefix.as_deref()),
            gt,
            &class_of,
            options.check_images,
            &mut report,
        ));
    }
    let dataset = VocDataset {
        root: root.to_path_buf(),
        sets: files.iter().map(|(s, _)| s.name.clone()).collect(),
        classes,
        category_ids,
        records,
    };
    Ok((dataset, report))
}
