//! `tchcv check-data`: read a VOC dataset, decode every image, and report counts and problems.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tchcv::data::check::CheckReport;
use tchcv::data::{ClassMap, ImageCheck, ReadOptions, SetSpec, VocDataset};

#[derive(clap::Args)]
pub struct Args {
    /// A VOCdevkit folder (VOC2007/, VOC2012/ inside) or a single VOC-format folder.
    #[arg(long)]
    data: PathBuf,
    /// Comma-separated sets: trainval, or 2007:trainval,2012:trainval for a VOCdevkit.
    #[arg(long, default_value = "trainval")]
    sets: String,
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
    let sets = SetSpec::parse_list(&args.sets)?;
    let options = ReadOptions {
        classes: args.classes.as_deref().map(ClassMap::load).transpose()?,
        check_images: if args.headers_only {
            ImageCheck::Header
        } else {
            ImageCheck::Decode
        },
    };
    let (dataset, report) = VocDataset::open(&args.data, &sets, &options)?;
    let check = CheckReport::new(&dataset, &report);
    println!("data: {}", args.data.display());
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
