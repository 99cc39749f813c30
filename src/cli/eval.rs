//! `tchcv eval`: score devkit results files, a COCO results file (or a checkpoint's
//! detections) against VOC or COCO data with the VOC or the COCO metric, or a COCO results file
//! against a COCO instances file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use tchcv::bbox::DecodeConfig;
use tchcv::data::{DataFormat, DataSource, Loader, LoaderConfig};
use tchcv::eval::coco::{self, CocoDetection, CocoGroundTruth, CocoParams, CocoView};
use tchcv::eval::{self, Detection, ImageDetections, Matching, Metric, VocEvalConfig};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MetricArg {
    /// VOC2007 11-point AP.
    Voc07,
    /// Area under the precision envelope (VOC2010+).
    Area,
    /// Both VOC rules.
    Both,
    /// COCO's AP@[.5:.95] and the eleven other numbers pycocotools prints, and per-class AP.
    Coco,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MatchingArg {
    /// The devkit: the highest-IoU object; if already taken, a duplicate (false positive).
    Devkit,
    /// The highest-IoU object not yet taken (COCO-style).
    Unmatched,
}

/// What `tchcv eval --help` says about the algorithm.
pub const ABOUT: &str = "Score detections against VOC ground truth with the VOC devkit algorithm \
(default), or with COCO's metric (--metric coco) on VOC data or on a COCO instances file \
(--coco-gt).

VOC: prints AP per class (with ground truths and detections) and the mAP over the classes that \
have ground truth. A class's detections are sorted by score (ties keep file order); each is \
matched to the object of its class with the highest IoU in its image; a true positive when IoU \
>= --iou and the object was not taken yet; matches to difficult objects are ignored (neither TP \
nor FP); duplicates are false positives. AP by the VOC2007 11-point rule and by the area under \
the precision envelope. Boxes are inclusive pixel ranges (width = x2 - x1 + 1) as in the devkit, \
unless --no-legacy-plus-one.

COCO: what pycocotools' COCOeval computes for boxes (IoU 0.50:0.05:0.95, 101-point \
interpolated precision, at most 1/10/100 detections per image and class, areas \
all/small/medium/large, crowd regions); prints its twelve lines (-1: no ground truth) and AP \
per class. On VOC data, difficult objects are COCO's ignored objects, VOC boxes x1..x2 \
(inclusive, 1-based) are COCO [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], and a COCO results \
file's image ids are the images' positions in --sets (1-based), its category ids the classes' \
(1-based). On COCO data (--data an instances file or a COCO folder), the data's own image and \
category ids, crowd regions and areas are used; the VOC metrics there treat crowd regions as \
difficult.";

#[derive(clap::Args)]
pub struct Args {
    /// VOC root: ROOT/VOC<YEAR>/{Annotations,ImageSets} for YEAR:NAME sets, or
    /// ROOT/{Annotations,ImageSets} for plain NAME sets; or COCO data: an instances file, or a
    /// folder with annotations/instances_<set>.json next to <set>/.
    #[arg(long, required_unless_present = "coco_gt")]
    data: Option<PathBuf>,
    /// Image sets, comma separated: 2007:test, or test; COCO: val2017 (the instances file's
    /// name).
    #[arg(long, value_delimiter = ',', required_unless_present = "coco_gt")]
    sets: Vec<String>,
    /// The data's format (default: detected).
    #[arg(long, value_enum, conflicts_with = "coco_gt")]
    format: Option<DataFormat>,
    /// COCO data: the folder the images' file_name are relative to.
    #[arg(long, conflicts_with = "coco_gt")]
    images: Option<PathBuf>,
    /// A COCO instances file (images, annotations, categories) as the ground truth, instead of
    /// --data and --sets; with --detections RESULTS.json. Implies --metric coco.
    #[arg(long, conflicts_with_all = ["data", "sets", "checkpoint", "prefix"], requires = "detections")]
    coco_gt: Option<PathBuf>,
    /// Folder of devkit results files <prefix><class>.txt, lines `image_id score xmin ymin xmax
    /// ymax` (a missing class file means no detections of that class); or a COCO results file
    /// (a JSON list of {image_id, category_id, bbox: [x, y, w, h], score}).
    #[arg(
        long,
        required_unless_present = "checkpoint",
        conflicts_with = "checkpoint"
    )]
    detections: Option<PathBuf>,
    /// A checkpoint (runs/NAME/best.safetensors): run its model over the set, write the
    /// detections in the devkit format (to --out), then score them. A region proposal
    /// network's checkpoint is scored by proposal recall instead (AR@100, AR@300, AR@1000,
    /// recall at IoU 0.5 and 0.7 with 1000 proposals; --json writes it).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// With --checkpoint: where the devkit results files go (default: a folder `detections`
    /// beside the checkpoint); with --metric coco also `coco_results.json` and the ground truth
    /// as `coco_instances.json` there.
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
    /// Which AP to print [default: both; coco with --coco-gt].
    #[arg(long, value_enum)]
    metric: Option<MetricArg>,
    /// VOC metrics: IoU threshold for a true positive (>=) [default: 0.5].
    #[arg(long)]
    iou: Option<f64>,
    /// VOC metrics: widths are x2 - x1, not the devkit's x2 - x1 + 1 (the +1 is on by default).
    #[arg(long)]
    no_legacy_plus_one: bool,
    /// VOC metrics: how a detection picks its object [default: devkit].
    #[arg(long, value_enum)]
    matching: Option<MatchingArg>,
    /// Also write the full result as JSON (VOC: per class AP by both rules, counts, PR curves;
    /// COCO: the twelve numbers with their lines, and per class AP, AP50, AP75 and counts).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where the detections come from, and what they are scored against.
struct Scoring {
    /// A folder of devkit results files, or a COCO results file.
    detections: PathBuf,
    classes: Vec<String>,
    ground_truth: Vec<eval::GroundTruth>,
    /// The same ground truth as COCO's metric sees it (crowd regions, areas, the data's ids).
    coco: CocoView,
}

/// A checkpoint's detections on the sets, and what they are scored against.
struct Detected {
    images: Vec<ImageDetections>,
    classes: Vec<String>,
    /// Upright: the frame of the model's detections.
    ground_truth: Vec<eval::GroundTruth>,
    coco: CocoView,
    device: String,
}

/// `--data` with `--format` and `--images`.
fn data_source(args: &Args) -> DataSource {
    DataSource {
        root: args.data.clone().unwrap_or_else(|| PathBuf::from(".")),
        format: args.format,
        images: args.images.clone(),
    }
}

/// Run the checkpoint's model over the sets.
fn run_checkpoint(args: &Args, checkpoint: &Path) -> Result<Detected> {
    let device = tchcv::device::parse_device(&args.device)?;
    let trained = tchcv::train::checkpoint::load_detector(checkpoint, device)?;
    let classes = Some(trained.classes.clone());
    let dataset = eval::open_for_eval_from(&data_source(args), &args.sets, classes, true)?;
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
    Ok(Detected {
        images,
        classes: trained.classes.names().to_vec(),
        ground_truth: eval::ground_truth_of(loader.dataset(), true),
        coco: CocoView::of(loader.dataset(), true)?,
        device: tchcv::device::device_name(device),
    })
}

/// Run the checkpoint's model over the sets and write devkit results files (and, for the COCO
/// metric, a COCO results file, which is then what is scored, with the ground truth as a COCO
/// instances file beside it: the pair scores again with --coco-gt, or with pycocotools).
fn write_checkpoint_detections(args: &Args, checkpoint: &Path, coco: bool) -> Result<Scoring> {
    let Detected {
        images,
        classes,
        ground_truth,
        coco: view,
        device,
    } = run_checkpoint(args, checkpoint)?;
    let out = args.out.clone().unwrap_or_else(|| {
        checkpoint
            .parent()
            .unwrap_or(Path::new("."))
            .join("detections")
    });
    let prefix = args.prefix.as_deref().unwrap_or("");
    eval::write_voc_results(&out, prefix, &classes, &eval::voc_detections(&images))?;
    let mut detections = out.clone();
    if coco {
        detections = out.join("coco_results.json");
        let results = view.detections_from_images(&images)?;
        coco::write_coco_results(&detections, &results)?;
        view.gt.write_json(&out.join("coco_instances.json"))?;
    }
    eprintln!(
        "{} images on {device}: devkit results in {}{}",
        images.len(),
        out.display(),
        if coco {
            ", COCO results and ground truth in coco_results.json and coco_instances.json there"
        } else {
            ""
        }
    );
    Ok(Scoring {
        detections,
        classes,
        ground_truth,
        coco: view,
    })
}

/// The metric asked for, after refusing flags that do not apply to it.
fn metric_of(args: &Args) -> Result<MetricArg> {
    let metric = args.metric.unwrap_or(if args.coco_gt.is_some() {
        MetricArg::Coco
    } else {
        MetricArg::Both
    });
    if args.coco_gt.is_some() && metric != MetricArg::Coco {
        tchcv::bail_input!("--coco-gt: the VOC metrics need VOC ground truth (--data, --sets)");
    }
    if metric == MetricArg::Coco {
        let voc_only = [
            (args.iou.is_some(), "--iou"),
            (args.matching.is_some(), "--matching"),
            (args.no_legacy_plus_one, "--no-legacy-plus-one"),
        ];
        if let Some((_, flag)) = voc_only.iter().find(|(given, _)| *given) {
            tchcv::bail_input!(
                "{flag} is a VOC metric option: --metric coco sweeps IoU 0.50:0.95 with COCO's \
                 own matching and box convention"
            );
        }
    }
    Ok(metric)
}

/// The devkit detections of a results folder (prefix found when not given) or a COCO results
/// file.
fn read_voc_detections(args: &Args, scoring: &Scoring) -> Result<Vec<Detection>> {
    let Scoring {
        detections,
        classes,
        coco: view,
        ..
    } = scoring;
    if detections.is_file() {
        let results = coco::read_coco_results(detections, &view.gt)?;
        return view.voc_detections(&results);
    }
    let prefix = match &args.prefix {
        Some(prefix) => prefix.clone(),
        None => eval::detections::find_results_prefix(detections, classes)?,
    };
    let results = eval::read_voc_results(detections, &prefix, classes)?;
    if results.missing.len() == classes.len() {
        tchcv::bail_input!(
            "{}: no results file {} for any of the {} classes (wrong --prefix?)",
            detections.display(),
            eval::detections::results_path(detections, &prefix, "<class>").display(),
            classes.len()
        );
    }
    for name in &results.missing {
        eprintln!("note: no results file for class {name}: no detections");
    }
    Ok(results.detections)
}

/// The VOC metrics.
fn score_voc(args: &Args, scoring: &Scoring, metric: MetricArg) -> Result<()> {
    let detections = read_voc_detections(args, scoring)?;
    let config = VocEvalConfig {
        iou_threshold: args.iou.unwrap_or(0.5),
        legacy_plus_one: !args.no_legacy_plus_one,
        matching: match args.matching {
            Some(MatchingArg::Unmatched) => Matching::Unmatched,
            Some(MatchingArg::Devkit) | None => Matching::Devkit,
        },
    };
    let result = eval::evaluate(
        &scoring.classes,
        &scoring.ground_truth,
        &detections,
        &config,
    )?;
    let metrics: &[Metric] = match metric {
        MetricArg::Voc07 => &[Metric::Voc07],
        MetricArg::Area => &[Metric::Area],
        _ => &[Metric::Voc07, Metric::Area],
    };
    print!("{}", result.table(metrics));
    if let Some(path) = &args.json {
        result.write_json(path)?;
    }
    Ok(())
}

/// COCO's metric, then its twelve lines and the per-class table (and JSON).
fn score_coco(args: &Args, gt: &CocoGroundTruth, detections: &[CocoDetection]) -> Result<()> {
    let result = coco::evaluate(gt, detections, &CocoParams::default())?.result();
    print!("{}", result.lines());
    println!();
    print!("{}", result.table());
    if let Some(path) = &args.json {
        result.write_json(path)?;
    }
    Ok(())
}

/// COCO's metric on the data's ground truth (VOC: difficult objects ignored).
fn score_coco_on_data(args: &Args, scoring: &Scoring) -> Result<()> {
    let gt = &scoring.coco.gt;
    let detections = if scoring.detections.is_file() {
        coco::read_coco_results(&scoring.detections, gt)?
    } else {
        let voc = read_voc_detections(args, scoring)?;
        scoring.coco.detections_from_voc(&voc)?
    };
    score_coco(args, gt, &detections)
}

pub fn run(args: Args) -> Result<ExitCode> {
    // A region proposal network's checkpoint is scored by proposal recall.
    if let Some(checkpoint) = &args.checkpoint {
        if super::eval_proposals::is_rpn_checkpoint(checkpoint)? {
            return super::eval_proposals::run(&super::eval_proposals::ProposalEval {
                data: data_source(&args),
                sets: &args.sets,
                checkpoint,
                batch: args.batch,
                device: &args.device,
                json: args.json.as_deref(),
            });
        }
    }
    let metric = metric_of(&args)?;
    if let Some(instances) = &args.coco_gt {
        let results = args.detections.as_deref().unwrap_or(Path::new(""));
        if !results.is_file() {
            tchcv::bail_input!(
                "{}: with --coco-gt, --detections is a COCO results file (a JSON list)",
                results.display()
            );
        }
        let gt = CocoGroundTruth::read_json(instances)?;
        let detections = coco::read_coco_results(results, &gt)?;
        score_coco(&args, &gt, &detections)?;
        return Ok(ExitCode::SUCCESS);
    }
    let scoring = match (&args.checkpoint, &args.detections, &args.data) {
        (Some(checkpoint), _, _) => {
            write_checkpoint_detections(&args, checkpoint, metric == MetricArg::Coco)?
        }
        (None, Some(detections), Some(_)) => {
            let dataset = eval::open_for_eval_from(&data_source(&args), &args.sets, None, false)?;
            Scoring {
                detections: detections.clone(),
                classes: dataset.classes.names().to_vec(),
                ground_truth: eval::ground_truth_of(&dataset, false),
                coco: CocoView::of(&dataset, false)?,
            }
        }
        _ => tchcv::bail_input!("give --data and --sets with --detections or --checkpoint"),
    };
    match metric {
        MetricArg::Coco => score_coco_on_data(&args, &scoring)?,
        voc => score_voc(&args, &scoring, voc)?,
    }
    Ok(ExitCode::SUCCESS)
}
