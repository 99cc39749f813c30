//! `tchcv eval`: score devkit results files against VOC ground truth.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tchcv::eval::{self, Matching, Metric, VocEvalConfig};

#[derive(Clone, Copy, clap::ValueEnum)]
enum MetricArg {
    /// VOC2007 11-point AP.
    Voc07,
    /// Area under the precision envelope (VOC2010+).
    Area,
    /// Both.
    Both,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MatchingArg {
    /// The devkit: the highest-IoU object; if already taken, a duplicate (false positive).
    Devkit,
    /// The highest-IoU object not yet taken (COCO-style).
    Unmatched,
}

/// What `tchcv eval --help` says about the algorithm.
pub const ABOUT: &str = "Score detections against VOC ground truth with the VOC devkit algorithm: \
prints AP per class (with ground truths and detections) and the mAP over the classes that have \
ground truth.

A class's detections are sorted by score (ties keep file order); each is matched to the object \
of its class with the highest IoU in its image; a true positive when IoU >= --iou and the object \
was not taken yet; matches to difficult objects are ignored (neither TP nor FP); duplicates are \
false positives. AP by the VOC2007 11-point rule and by the area under the precision envelope. \
Boxes are inclusive pixel ranges (width = x2 - x1 + 1) as in the devkit, unless \
--no-legacy-plus-one.";

#[derive(clap::Args)]
pub struct Args {
    /// VOC root: ROOT/VOC<YEAR>/{Annotations,ImageSets} for YEAR:NAME sets, or
    /// ROOT/{Annotations,ImageSets} for plain NAME sets.
    #[arg(long)]
    data: PathBuf,
    /// Image sets, comma separated: 2007:test, or test.
    #[arg(long, value_delimiter = ',', required = true)]
    sets: Vec<String>,
    /// Folder of devkit results files <prefix><class>.txt, lines `image_id score xmin ymin xmax
    /// ymax`. A missing class file means no detections of that class.
    #[arg(long)]
    detections: PathBuf,
    /// File name prefix of the results files (e.g. comp4_det_test_).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Which AP to print.
    #[arg(long, value_enum, default_value = "both")]
    metric: MetricArg,
    /// IoU threshold for a true positive (>=).
    #[arg(long, default_value_t = 0.5)]
    iou: f64,
    /// Widths are x2 - x1, not the devkit's x2 - x1 + 1 (the +1 is on by default).
    #[arg(long)]
    no_legacy_plus_one: bool,
    /// How a detection picks its object.
    #[arg(long, value_enum, default_value = "devkit")]
    matching: MatchingArg,
    /// Also write the full result (per class AP by both rules, counts, PR curves) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (classes, ground_truth) = eval::load_ground_truth(&args.data, &args.sets)?;
    let results = eval::read_voc_results(&args.detections, &args.prefix, &classes)?;
    if results.missing.len() == classes.len() {
        tchcv::bail_input!(
            "{}: no results file {} for any of the {} classes (wrong --prefix?)",
            args.detections.display(),
            eval::detections::results_path(&args.detections, &args.prefix, "<class>").display(),
            classes.len()
        );
    }
    for name in &results.missing {
        eprintln!("note: no results file for class {name}: no detections");
    }
    let config = VocEvalConfig {
        iou_threshold: args.iou,
        legacy_plus_one: !args.no_legacy_plus_one,
        matching: match args.matching {
            MatchingArg::Devkit => Matching::Devkit,
            MatchingArg::Unmatched => Matching::Unmatched,
        },
    };
    let result = eval::evaluate(&classes, &ground_truth, &results.detections, &config)?;
    let metrics: &[Metric] = match args.metric {
        MetricArg::Voc07 => &[Metric::Voc07],
        MetricArg::Area => &[Metric::Area],
        MetricArg::Both => &[Metric::Voc07, Metric::Area],
    };
    print!("{}", result.table(metrics));
    if let Some(path) = &args.json {
        result.write_json(path)?;
    }
    Ok(ExitCode::SUCCESS)
}
