//! Minimal VOC ground-truth reading for `tchcv eval`.
//!
//! **Temporary: to be replaced by the VOC reader of `tchcv::data` at merge.** It reads only
//! what the evaluation needs: object names, `bndbox` and `difficult` (absent = 0) from
//! `Annotations/<id>.xml` for the ids listed in `ImageSets/Main/<set>.txt`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::voc::GroundTruth;
use crate::bail_input;

/// The 20 PASCAL VOC classes, in the devkit's (alphabetical) order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The class list for the object names found: the 20 VOC classes when every name is one of
/// them, else the names sorted.
pub fn class_names_for(found: &BTreeSet<String>) -> Vec<String> {
    if found.iter().all(|n| VOC_CLASSES.contains(&n.as_str())) {
        VOC_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        found.iter().cloned().collect()
    }
}

/// The folder of a set: `YEAR:NAME` is `root/VOC<YEAR>` (VOCdevkit layout), a plain `NAME`
/// is `root` itself.
fn set_dir(root: &Path, set: &str) -> (PathBuf, String) {
    match set.split_once(':') {
        Some((year, name)) => (root.join(format!("VOC{year}")), name.to_string()),
        None => (root.to_path_buf(), set.to_string()),
    }
}

/// One annotated object: name, xyxy box, difficult.
type Object = (String, [f32; 4], bool);

fn parse_annotation(xml: &str, file: &Path) -> Result<Vec<Object>> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| crate::bad_input(format!("{}: not valid XML: {e}", file.display())))?;
    fn child<'a>(node: roxmltree::Node<'a, '_>, tag: &str) -> Option<&'a str> {
        node.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(str::trim)
    }
    let mut objects = Vec::new();
    // children(), not descendants(): a person's <part> boxes are not objects.
    for (k, object) in doc
        .root_element()
        .children()
        .filter(|c| c.has_tag_name("object"))
        .enumerate()
    {
        let Some(name) = child(object, "name") else {
            bail_input!("{}: object {k} has no <name>", file.display());
        };
        let difficult = match child(object, "difficult") {
            None | Some("0") | Some("") => false,
            Some("1") => true,
            Some(other) => bail_input!(
                "{}: object {k} ({name}): <difficult> is {other:?}, expected 0 or 1",
                file.display()
            ),
        };
        let Some(bndbox) = object.children().find(|c| c.has_tag_name("bndbox")) else {
            bail_input!("{}: object {k} ({name}) has no <bndbox>", file.display());
        };
        let mut bbox = [0f32; 4];
        for (slot, tag) in bbox.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
            let text = child(bndbox, tag).unwrap_or("");
            *slot = match text.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => bail_input!(
                    "{}: object {k} ({name}): <{tag}> {text:?} is not a number",
                    file.display()
                ),
            };
        }
        if bbox[2] < bbox[0] || bbox[3] < bbox[1] {
            bail_input!(
                "{}: object {k} ({name}): box {bbox:?} has xmax < xmin or ymax < ymin",
                file.display()
            );
        }
        objects.push((name.to_string(), bbox, difficult));
    }
    Ok(objects)
}

/// Read the ground truth of `sets` under `root`: the class names ([`class_names_for`]) and one
/// [`GroundTruth`] per listed image, in list order. Sets are `YEAR:NAME` (`root/VOC<YEAR>/...`)
/// or `NAME` (`root/ImageSets/Main/NAME.txt`). An image listed twice is an error.
pub fn load_ground_truth(root: &Path, sets: &[String]) -> Result<(Vec<String>, Vec<GroundTruth>)> {
    if sets.is_empty() {
        bail_input!("no image sets given");
    }
    let mut images: Vec<(String, Vec<Object>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for set in sets {
        let (dir, name) = set_dir(root, set);
        let list = dir.join("ImageSets/Main").join(format!("{name}.txt"));
        let text = std::fs::read_to_string(&list)
            .map_err(|e| crate::bad_input(format!("set {set:?}: {}: {e}", list.display())))?;
        for id in text.lines().filter_map(|l| l.split_whitespace().next()) {
            if !seen.insert(id.to_string()) {
                bail_input!("{}: image {id:?} is listed twice", list.display());
            }
            let file = dir.join("Annotations").join(format!("{id}.xml"));
            let xml = std::fs::read_to_string(&file)
                .map_err(|e| crate::bad_input(format!("{}: {e}", file.display())))?;
            images.push((id.to_string(), parse_annotation(&xml, &file)?));
        }
    }
    let found: BTreeSet<String> = images
        .iter()
        .flat_map(|(_, objects)| objects.iter().map(|o| o.0.clone()))
        .collect();
    let classes = class_names_for(&found);
    let ground_truth = images
        .into_iter()
        .map(|(image_id, objects)| {
            let mut gt = GroundTruth {
                image_id,
                boxes: Vec::with_capacity(objects.len()),
                labels: Vec::with_capacity(objects.len()),
                difficult: Vec::with_capacity(objects.len()),
            };
            for (name, bbox, difficult) in objects {
                // Every name is in `classes` by construction.
                let label = classes.iter().position(|c| *c == name).unwrap_or(0);
                gt.boxes.push(bbox);
                gt.labels.push(label);
                gt.difficult.push(difficult);
            }
            gt
        })
        .collect();
    Ok((classes, ground_truth))
}
