//! `tchcv check-data`: read a VOC or COCO dataset, decode every image, and report counts and
//! problems.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tchcv::data::check::CheckReport;
use tchcv::data::{
    open_dataset, ClassMap, DataFormat, DataSource, ImageCheck, ReadOptions, SetSpec,
};

#[derive(clap::Args)]
pub struct Args {
    /// A VOCdevkit folder (VOC2007/, VOC2012/ inside) or a single VOC-format folder; or COCO: an
    /// instances file (images in --images), or a folder with annotations/instances_<set>.json
    /// next to <set>/.
    #[arg(long)]
    data: PathBuf,
    /// Comma-separated sets: trainval, or 2007:trainval,2012:trainval for a VOCdevkit; COCO:
    /// val2017 (the instances file's name). Default: VOC's trainval; COCO's only instances file.
    #[arg(long)]
    sets: Option<String>,
    /// The data's format (default: detected: COCO for a JSON file or an annotations/ folder of
    /// instances files, else VOC).
    #[arg(long, value_enum)]
    format: Option<DataFormat>,
    /// COCO: the folder the images' file_name are relative to (default: <root>/<set>/ for the
    /// standard layout, else the instances file's folder).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Class list (one name per line, or a classes.json); default: discovered.
    #[arg(long)]
    classes: Option<PathBuf>,
    /// Only read image headers instead of decoding every image.
    #[arg(long)]
    headers_only: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let sets = match &args.sets {
        Some(s) => SetSpec::parse_list(s)?,
        None => Vec::new(),
    };
    let options = ReadOptions {
        classes: args.classes.as_deref().map(ClassMap::load).transpose()?,
        check_images: if args.headers_only {
            ImageCheck::Header
        } else {
            ImageCheck::Decode
        },
    };
    let source = DataSource {
        root: args.data.clone(),
        format: args.format,
        images: args.images.clone(),
    };
    let (dataset, report) = open_dataset(&source, &sets, &options)?;
    let check = CheckReport::new(&dataset, &report);
    println!("data: {} ({})", args.data.display(), source.format().name());
    print!("{}", check.render());
    if let Some(path) = &args.json {
        tchcv::io::write_bytes_atomic(path, serde_json::to_string_pretty(&check)?.as_bytes())?;
    }
    Ok(if check.errors() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
