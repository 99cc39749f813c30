//! `tchcv convert`: VOC folders <-> COCO instances files, lossless for what both hold.
//!
//! | VOC | COCO |
//! |---|---|
//! | set `NAME` (`YEAR:NAME`) | `annotations/instances_NAME.json` (`NAMEYEAR`) + images in `NAME/` |
//! | image id (`ImageSets/Main`, `Annotations/<id>.xml`) | `file_name` `<id>.<ext>` (the id is its stem) |
//! | `<size>` | `width`, `height` |
//! | class names (discovered order) | `categories`, ids `1..=K` (COCO ids: not kept by VOC) |
//! | `<bndbox>` `x1, y1, x2, y2` (1-based, inclusive) | `bbox` `[x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]` |
//! | `<difficult>1` | `"ignore": 1` (what the COCO metric honours as ignored; pycocotools drops it) |
//! | `<iscrowd>1` (tchcv's element, with `<difficult>1` for other VOC tools) | `"iscrowd": 1` |
//! | `<truncated>` | not held by COCO: dropped |
//! | (none) | `area` (segmentation area), image and annotation ids, segmentations: not kept |
//!
//! Images are copied, or hard-linked ([`ImageTransfer::Link`], a copy where linking fails).
//! Boxes keep their values (VOC coordinates are f32: a COCO box round-trips to f32 precision).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::check::DataReport;
use super::coco::{instances_of, InstancesOptions};
use super::open::{open_dataset, DataFormat, DataSource};
use super::voc::{ImageCheck, ImageRecord, ReadOptions, SetSpec, VocDataset};
use super::ClassMap;
use crate::bail_input;

/// How images reach the converted dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageTransfer {
    #[default]
    Copy,
    /// A hard link (no space used); a copy where the file system refuses one.
    Link,
}

/// What [`convert`] does.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub to: DataFormat,
    pub transfer: ImageTransfer,
    /// The class list; `None`: discovered over all the sets.
    pub classes: Option<ClassMap>,
}

/// One converted set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedSet {
    /// The set's name in the output (`trainval2007`, `val2017`).
    pub name: String,
    pub images: usize,
    pub objects: usize,
}

/// What [`convert`] wrote, and the problems reading the source (skipped images are not written).
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub sets: Vec<ConvertedSet>,
    pub report: DataReport,
}

/// Each set of `source` on its own (an image listed in two sets is in both), with the classes of
/// all of them.
fn open_sets(
    source: &DataSource,
    sets: &[SetSpec],
    classes: Option<ClassMap>,
) -> Result<Vec<(SetSpec, VocDataset, DataReport)>> {
    let read = |classes| ReadOptions {
        classes,
        check_images: ImageCheck::Exists,
    };
    let (all, _) = open_dataset(source, sets, &read(classes))?;
    let specs: Vec<SetSpec> = if sets.is_empty() {
        all.sets.iter().map(|s| s.parse()).collect::<Result<_>>()?
    } else {
        sets.to_vec()
    };
    specs
        .into_iter()
        .map(|spec| {
            let (ds, report) = open_dataset(
                source,
                std::slice::from_ref(&spec),
                &read(Some(all.classes.clone())),
            )?;
            Ok((spec, ds, report))
        })
        .collect()
}

/// Copy or link `from` to `to`.
fn transfer(from: &Path, to: &Path, how: ImageTransfer) -> Result<()> {
    if how == ImageTransfer::Link && std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// The image file's extension (`jpg` when it has none).
fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "jpg".into())
}

/// Refuse an output folder that holds anything.
fn check_out(out: &Path) -> Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(out) {
        if entries.next().is_some() {
            bail_input!(
                "--out {}: exists and is not empty (convert writes a fresh dataset)",
                out.display()
            );
        }
    } else if out.exists() {
        bail_input!("--out {}: not a folder", out.display());
    }
    Ok(())
}

/// Convert the sets `sets` of `source` (none: all its sets, see [`open_dataset`]) into a new
/// dataset in `out` (which must not exist or be empty), in `options.to`'s format.
pub fn convert(
    source: &DataSource,
    sets: &[SetSpec],
    out: &Path,
    options: &ConvertOptions,
) -> Result<ConvertSummary> {
    if source.format() == options.to {
        bail_input!(
            "--data {} is {} data already (--to {})",
            source.root.display(),
            options.to.name(),
            options.to.name()
        );
    }
    check_out(out)?;
    let opened = open_sets(source, sets, options.classes.clone())?;
    let mut report = DataReport::default();
    for (_, _, r) in &opened {
        report.extend(r.problems.iter().cloned());
    }
    let sets = match options.to {
        DataFormat::Coco => write_coco(&opened, out, options.transfer)?,
        DataFormat::Voc => write_voc(&opened, out, options.transfer)?,
    };
    Ok(ConvertSummary { sets, report })
}

/// The COCO set name of a VOC set: `NAME`, or `NAMEYEAR` for `YEAR:NAME` (`trainval2007`).
pub fn coco_set_name(spec: &SetSpec) -> String {
    match &spec.year {
        Some(year) => format!("{}{year}", spec.name),
        None => spec.name.clone(),
    }
}

/// Each set as `out/annotations/instances_<set>.json` with its images in `out/<set>/`, named
/// `<id>.<ext>`; image and annotation ids run on across the sets (unique, as COCO's are).
fn write_coco(
    opened: &[(SetSpec, VocDataset, DataReport)],
    out: &Path,
    how: ImageTransfer,
) -> Result<Vec<ConvertedSet>> {
    let mut written: Vec<ConvertedSet> = Vec::new();
    for (spec, ds, _) in opened {
        let name = coco_set_name(spec);
        let images_dir = out.join(&name);
        std::fs::create_dir_all(&images_dir)
            .with_context(|| format!("creating {}", images_dir.display()))?;
        let mut gt = instances_of(ds, &InstancesOptions::default())?;
        let image_offset: usize = written.iter().map(|s| s.images).sum();
        let object_offset: usize = written.iter().map(|s| s.objects).sum();
        for (image, record) in gt.images.iter_mut().zip(&ds.records) {
            image.file_name = format!("{}.{}", record.id, extension(&record.image_path));
            image.id += image_offset as i64;
            transfer(&record.image_path, &images_dir.join(&image.file_name), how)?;
        }
        for a in &mut gt.annotations {
            a.id += object_offset as i64;
            a.image_id += image_offset as i64;
        }
        gt.write_json(
            &out.join("annotations")
                .join(format!("instances_{name}.json")),
        )?;
        written.push(ConvertedSet {
            name,
            images: gt.images.len(),
            objects: gt.annotations.len(),
        });
    }
    Ok(written)
}

/// `s` with XML's special characters escaped.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The VOC XML of `record`, its image named `file_name` (crowd regions as `<iscrowd>1` with
/// `<difficult>1`, which keeps other VOC tools from counting them).
pub fn annotation_xml(record: &ImageRecord, classes: &ClassMap, file_name: &str) -> String {
    let mut s = String::from("<annotation>\n");
    let _ = writeln!(s, "\t<filename>{}</filename>", xml_escape(file_name));
    let (w, h) = record.xml_size.unwrap_or((record.width, record.height));
    let _ = writeln!(
        s,
        "\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>"
    );
    for o in &record.objects {
        let name = xml_escape(classes.name(o.class_id).unwrap_or_default());
        let [x1, y1, x2, y2] = o.bbox;
        let _ = writeln!(
            s,
            "\t<object>\n\t\t<name>{name}</name>\n\t\t<truncated>{}</truncated>\n\t\t<difficult>{}</difficult>{}\n\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>",
            u8::from(o.truncated),
            u8::from(o.difficult || o.crowd),
            if o.crowd { "\n\t\t<iscrowd>1</iscrowd>" } else { "" },
        );
    }
    s.push_str("</annotation>\n");
    s
}

/// The VOC id of a record converted from COCO: its image file's stem (no whitespace, which set
/// files cannot hold).
fn voc_id(record: &ImageRecord) -> Result<String> {
    let stem = record
        .image_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if stem.is_empty() || stem.chars().any(char::is_whitespace) {
        bail_input!(
            "{}: image id {}: file name {:?} cannot be a VOC id (empty or with whitespace)",
            record.annotation_path.display(),
            record.id,
            record.image_path.display()
        );
    }
    Ok(stem)
}

/// All sets into one VOC folder `out`: `Annotations/<id>.xml`, `JPEGImages/<id>.<ext>`,
/// `ImageSets/Main/<set>.txt`. Two images with the same file stem are refused.
fn write_voc(
    opened: &[(SetSpec, VocDataset, DataReport)],
    out: &Path,
    how: ImageTransfer,
) -> Result<Vec<ConvertedSet>> {
    let main = out.join("ImageSets").join("Main");
    for dir in [
        out.join("Annotations"),
        out.join("JPEGImages"),
        main.clone(),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut owner: HashMap<String, PathBuf> = HashMap::new();
    let mut written = Vec::new();
    for (_, ds, _) in opened {
        let mut ids = String::new();
        for record in &ds.records {
            let id = voc_id(record)?;
            match owner.get(&id) {
                Some(first) if *first != record.image_path => bail_input!(
                    "{} and {}: both would be VOC image {id} (file names must differ in their stem)",
                    first.display(),
                    record.image_path.display()
                ),
                Some(_) => {}
                None => {
                    let file_name = format!("{id}.{}", extension(&record.image_path));
                    let xml = annotation_xml(record, &ds.classes, &file_name);
                    let xml_path = out.join("Annotations").join(format!("{id}.xml"));
                    crate::io::write_bytes_atomic(&xml_path, xml.as_bytes())?;
                    transfer(&record.image_path, &out.join("JPEGImages").join(&file_name), how)?;
                    owner.insert(id.clone(), record.image_path.clone());
                }
            }
            let _ = writeln!(ids, "{id}");
        }
        let name = ds.sets.join("_");
        crate::io::write_bytes_atomic(&main.join(format!("{name}.txt")), ids.as_bytes())?;
        written.push(ConvertedSet {
            name,
            images: ds.records.len(),
            objects: ds.records.iter().map(|r| r.objects.len()).sum(),
        });
    }
    Ok(written)
}
