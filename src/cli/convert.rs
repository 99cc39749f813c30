//! `tchcv convert`: a VOC dataset as COCO instances files, or COCO as a VOC folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tchcv::data::convert::{convert, ConvertOptions, ImageTransfer};
use tchcv::data::{ClassMap, DataFormat, DataSource, SetSpec};

/// What `tchcv convert --help` says about the mapping.
pub const ABOUT: &str = "Convert a dataset between PASCAL VOC and COCO, lossless for what both \
hold.

VOC -> COCO: each set becomes DST/annotations/instances_<set>.json (YEAR:NAME: NAMEYEAR) with its \
images in DST/<set>/ named <id>.<ext>; categories are the classes with ids 1..K; boxes \
[x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]; difficult objects carry \"ignore\": 1 (what the COCO \
metric of tchcv eval honours; pycocotools drops the field); <truncated> is not kept.

COCO -> VOC: one VOC folder (Annotations/, JPEGImages/, ImageSets/Main/<set>.txt); image ids are \
the image files' stems; \"ignore\": 1 becomes <difficult>1; crowd regions become objects with \
<difficult>1 and tchcv's <iscrowd>1 (read back by tchcv, skipped as difficult by other VOC \
tools); COCO's image, annotation and category ids, areas and segmentations are not kept.

Exit status: 0, or 1 when the source had problems that left images or objects out (listed; \
tchcv check-data shows them all); 2 for bad input.";

#[derive(clap::Args)]
pub struct Args {
    /// The source: a VOC folder or VOCdevkit, a COCO instances file, or a folder with
    /// annotations/instances_<set>.json.
    #[arg(long)]
    data: PathBuf,
    /// The source's format (default: detected).
    #[arg(long, value_enum)]
    from: Option<DataFormat>,
    /// The format to write.
    #[arg(long, value_enum)]
    to: DataFormat,
    /// Sets to convert, comma separated (VOC: trainval or 2007:trainval; COCO: val2017). Default:
    /// VOC's trainval; COCO's only instances file.
    #[arg(long)]
    sets: Option<String>,
    /// COCO source: the images folder (default: <root>/<set>/, or the instances file's folder).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Class list (one name per line, or a classes.json); default: discovered over the sets.
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Hard-link the images instead of copying them (a copy where linking fails).
    #[arg(long)]
    link: bool,
    /// The new dataset's folder (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let sets = match &args.sets {
        Some(s) => SetSpec::parse_list(s)?,
        None => Vec::new(),
    };
    let source = DataSource {
        root: args.data.clone(),
        format: args.from,
        images: args.images.clone(),
    };
    let options = ConvertOptions {
        to: args.to,
        transfer: if args.link {
            ImageTransfer::Link
        } else {
            ImageTransfer::Copy
        },
        classes: args.classes.as_deref().map(ClassMap::load).transpose()?,
    };
    let summary = convert(&source, &sets, &args.out, &options)?;
    for set in &summary.sets {
        println!(
            "{}: {} images, {} objects",
            set.name, set.images, set.objects
        );
    }
    println!(
        "{} ({}) -> {} ({})",
        args.data.display(),
        source.format().name(),
        args.out.display(),
        args.to.name()
    );
    let report = &summary.report;
    if !report.problems.is_empty() {
        println!("source problems: {}", report.summary_line());
        for p in report
            .problems
            .iter()
            .filter(|p| p.severity() == tchcv::data::Severity::Error)
        {
            println!("  {p}");
        }
    }
    Ok(if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
