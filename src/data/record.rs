//! Building an [`ImageRecord`] from what a reader found, shared by the VOC reader
//! ([`super::voc`]) and the COCO reader ([`super::coco`]): the image is read as much as
//! [`ImageCheck`] asks, the declared size is checked against it, the reader places its objects in
//! the right frame, and the image is decoded (or its header noted).

use std::path::PathBuf;

use super::check::{problem_of, Problem, ProblemKind};
use super::image::{self as img, Probe};
use super::voc::{load_record, ImageCheck, ImageRecord, VocObject};

/// One image as a reader found it, before its objects are placed in it.
#[derive(Debug, Clone)]
pub(crate) struct ImageEntry {
    pub id: String,
    /// The set it came from, e.g. `2007:trainval` or `val2017`.
    pub source: String,
    pub image_path: PathBuf,
    /// The file the annotation is in (problems name it).
    pub annotation_path: PathBuf,
    /// The size the annotation declares (VOC `<size>`, COCO `width`/`height`), if any.
    pub declared_size: Option<(u32, u32)>,
    /// The COCO image id (COCO data only).
    pub coco_id: Option<i64>,
    /// How problems name the declared size: `<size>` or `width/height`.
    pub size_field: &'static str,
}

/// A problem from an image error: the one it carries, else `fallback` naming the image.
fn image_problem(err: &anyhow::Error, fallback: &ImageEntry) -> Problem {
    problem_of(err).cloned().unwrap_or_else(|| {
        Problem::new(
            ProblemKind::CorruptImage,
            &fallback.image_path,
            format!("{err:#}"),
        )
    })
}

/// The image header, when `check` reads it now (always when no size is declared and the file
/// can be read).
fn probe_for(entry: &ImageEntry, check: ImageCheck) -> Result<Option<Probe>, Problem> {
    let read_image = match check {
        ImageCheck::Exists => entry.declared_size.is_none(),
        ImageCheck::AnnotationsOnly => entry.declared_size.is_none() && entry.image_path.is_file(),
        ImageCheck::Header | ImageCheck::Decode => true,
    };
    if !read_image {
        return Ok(None);
    }
    img::probe(&entry.image_path)
        .map(Some)
        .map_err(|e| image_problem(&e, entry))
}

/// A missing declared size, or one that is neither the image's upright nor its stored size.
fn size_problems(entry: &ImageEntry, probe: Option<Probe>) -> Vec<Problem> {
    let field = entry.size_field;
    let mut problems = Vec::new();
    match (probe, entry.declared_size) {
        (_, None) => problems.push(Problem::new(
            ProblemKind::MissingSize,
            &entry.annotation_path,
            format!("no usable {field}; the image's size is used"),
        )),
        (Some(p), Some(declared)) if declared != p.size() && declared != p.stored_size => problems
            .push(Problem::new(
                ProblemKind::SizeMismatch,
                &entry.annotation_path,
                format!(
                    "{field} {}x{} but the image is {}x{}; boxes are clipped to the image",
                    declared.0,
                    declared.1,
                    p.size().0,
                    p.size().1
                ),
            )),
        _ => {}
    }
    problems
}

/// Decode the image (`Decode`), or note its EXIF orientation and format from the header.
/// Err: the image cannot be decoded.
fn final_checks(
    record: &ImageRecord,
    check: ImageCheck,
    problems: &mut Vec<Problem>,
) -> Result<(), Problem> {
    if check == ImageCheck::Decode {
        let sample = load_record(record, true).map_err(|e| {
            problem_of(&e).cloned().unwrap_or_else(|| {
                Problem::new(
                    ProblemKind::CorruptImage,
                    &record.image_path,
                    format!("{e:#}"),
                )
            })
        })?;
        problems.extend(
            sample
                .problems
                .into_iter()
                .filter(|p| p.kind != ProblemKind::SizeMismatch),
        );
    } else if let Some(p) = record.probe {
        if p.orientation != 1 {
            problems.push(Problem::new(
                ProblemKind::ExifOrientation,
                &record.image_path,
                format!("EXIF orientation {} applied", p.orientation),
            ));
        }
        if p.format != img::Format::Jpeg {
            problems.push(Problem::new(
                ProblemKind::NotJpeg,
                &record.image_path,
                format!("{:?} image", p.format),
            ));
        }
    }
    Ok(())
}

/// Build the record of `entry`: read the image as `check` asks, let `place` turn the
/// annotation's objects into [`VocObject`]s in the annotation's frame `(w, h)` (the declared
/// size, else the stored image's, else `extent`, the boxes' own extent), reporting what it drops
/// or clips; then decode or note the image. `problems`: those the reader already found for this
/// image. `Err` holds the problems when the image is unusable.
pub(crate) fn build_record(
    entry: ImageEntry,
    check: ImageCheck,
    extent: (u32, u32),
    mut problems: Vec<Problem>,
    place: impl FnOnce((u32, u32), &mut Vec<Problem>) -> Vec<VocObject>,
) -> Result<(ImageRecord, Vec<Problem>), Vec<Problem>> {
    let probe = match probe_for(&entry, check) {
        Ok(p) => p,
        Err(problem) => {
            problems.push(problem);
            return Err(problems);
        }
    };
    problems.extend(size_problems(&entry, probe));
    let frame = entry
        .declared_size
        .or(probe.map(|p| p.stored_size))
        .unwrap_or(extent);
    let objects = place(frame, &mut problems);
    if objects.is_empty() {
        problems.push(Problem::new(
            ProblemKind::NoObjects,
            &entry.annotation_path,
            "no usable objects; kept as a background-only image",
        ));
    }
    let (width, height) = probe.map_or(frame, |p| p.size());
    let record = ImageRecord {
        id: entry.id,
        image_path: entry.image_path,
        annotation_path: entry.annotation_path,
        width,
        height,
        xml_size: entry.declared_size,
        objects,
        source: entry.source,
        probe,
        coco_id: entry.coco_id,
    };
    match final_checks(&record, check, &mut problems) {
        Ok(()) => Ok((record, problems)),
        Err(problem) => {
            problems.push(problem);
            Err(problems)
        }
    }
}
