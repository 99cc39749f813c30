//! `tchcv eval`: score devkit results files (or a checkpoint's detections) against VOC
//! ground truth.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use tchcv::bbox::DecodeConfig;
use tchcv::data::{Loader, LoaderConfig};
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
    #[arg(
        long,
        required_unless_present = "checkpoint",
        conflicts_with = "checkpoint"
    )]
    detections: Option<PathBuf>,
    /// A checkpoint (runs/NAME/best.safetensors): run its model over the set, write the
    /// detections in the devkit format (to --out), then score them.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// With --checkpoint: where the devkit results files go (default: a folder `detections`
    /// beside the checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --checkpoint: keep (anchor, class) scores above this.
    #[arg(long, default_value_t = 0.01)]
    score: f64,
    /// With --checkpoint: class-wise NMS suppresses IoU above this.
    #[arg(long, default_value_t = 0.45)]
    nms: f64,
    /// With --checkpoint: candidates per class entering NMS.
    #[arg(long, default_value_t = 200)]
    top_k: i64,
    /// With --checkpoint: detections kept per image.
    #[arg(long, default_value_t = 200)]
    max_detections: i64,
    /// With --checkpoint: images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// With --checkpoint: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// File name prefix of the results files (e.g. comp4_det_test_). Default: with
    /// --detections, the one prefix all the folder's `*.txt` files share before a class name;
    /// with --checkpoint, none.
    #[arg(long)]
    prefix: Option<String>,
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

/// Where the detections come from, and what they are scored against.
struct Scoring {
    detections: PathBuf,
    classes: Vec<String>,
    ground_truth: Vec<eval::GroundTruth>,
}

/// Run the checkpoint's model over the sets and write devkit results files. The ground truth is
/// in the frame of the model's detections (upright images).
fn write_checkpoint_detections(args: &Args, checkpoint: &Path) -> Result<Scoring> {
    let device = tchcv::device::parse_device(&args.device)?;
    let trained = tchcv::train::checkpoint::load_detector(checkpoint, device)?;
    let dataset = eval::open_for_eval(&args.data, &args.sets, Some(trained.classes.clone()), true)?;
    let [w, h] = trained.spec.input_size;
    let workers =
        tchcv::data::ThreadPlan::for_device(device, tchcv::data::ThreadPlan::available_cores())
            .workers;
    let loader = Loader::new(
        Arc::new(dataset),
        Arc::new(trained.coder.clone()),
        LoaderConfig::eval([w as u32, h as u32], args.batch, workers),
    )?;
    let decode = DecodeConfig {
        score_threshold: args.score,
        nms_threshold: args.nms,
        top_k: Some(args.top_k),
        max_detections: args.max_detections,
        ..DecodeConfig::for_spec(&trained.spec)
    };
    let images = eval::detect_dataset(
        trained.model.as_ref(),
        &trained.coder,
        &loader,
        &decode,
        device,
    )?;
    let out = args.out.clone().unwrap_or_else(|| {
        checkpoint
            .parent()
            .unwrap_or(Path::new("."))
            .join("detections")
    });
    let classes = trained.classes.names().to_vec();
    let prefix = args.prefix.as_deref().unwrap_or("");
    eval::write_voc_results(&out, prefix, &classes, &eval::voc_detections(&images))?;
    eprintln!(
        "{} images on {}: devkit results in {}",
        images.len(),
        tchcv::device::device_name(device),
        out.display()
    );
    Ok(Scoring {
        detections: out,
        classes,
        ground_truth: eval::ground_truth_of(loader.dataset(), true),
    })
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Scoring {
        detections,
        classes,
        ground_truth,
    } = match (&args.checkpoint, &args.detections) {
        (Some(checkpoint), _) => write_checkpoint_detections(&args, checkpoint)?,
        (None, Some(dir)) => {
            let (classes, ground_truth) = eval::load_ground_truth(&args.data, &args.sets)?;
            Scoring {
                detections: dir.clone(),
                classes,
                ground_truth,
            }
        }
        (None, None) => tchcv::bail_input!("give --detections DIR or --checkpoint FILE"),
    };
    let prefix = match &args.prefix {
        Some(prefix) => prefix.clone(),
        None => eval::detections::find_results_prefix(&detections, &classes)?,
    };
    let results = eval::read_voc_results(&detections, &prefix, &classes)?;
    if results.missing.len() == classes.len() {
        tchcv::bail_input!(
            "{}: no results file {} for any of the {} classes (wrong --prefix?)",
            detections.display(),
            eval::detections::results_path(&detections, &prefix, "<class>").display(),
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
