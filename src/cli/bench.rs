//! `tchcv bench <work>`: tchcv and its PyTorch counterpart timed side by side.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use tchcv::bench::{write_report, Comparison};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    work: Work,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// Also write the rows as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ChartArgs {
    /// Reports written with --json.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "tchcv vs PyTorch eager")]
    title: String,
}

#[derive(clap::Subcommand)]
enum Work {
    /// Loss forward + backward (SSD with hard negative mining, focal, softmax focal).
    Loss(tchcv::bench::loss::LossBench),
    /// Encoding ground truth into anchor targets (32 images x up to 20 boxes, SSD300).
    Encode(tchcv::bench::encode::EncodeBench),
    /// One training step: forward, SSD loss, backward, SGD update (and peak memory).
    TrainStep(tchcv::bench::train_step::TrainStepBench),
    /// A bar chart (PNG) of the speed-ups in one or more --json reports.
    Chart(ChartArgs),
    /// Data pipeline: decode + SSD augmentation + target encoding, images per second.
    Data(tchcv::bench::data::DataBench),
    /// COCO box evaluation (5000 images x 100 detections) against pycocotools, one thread each.
    CocoEval(tchcv::bench::coco_eval::CocoEvalBench),
    /// A whole training run against the ordinary PyTorch script: images/s, start-up, data
    /// wait, peak memory and the VOC07 mAP after equal iterations (--profile: where one tchcv
    /// iteration's time goes).
    Train(Box<tchcv::bench::train::TrainBench>),
}

pub fn run(args: Args) -> Result<ExitCode> {
    let device = tchcv::device::parse_device(&args.device)?;
    let rows: Vec<Comparison> = match &args.work {
        Work::Loss(b) => vec![tchcv::bench::loss::run(b, device)?],
        Work::Encode(b) => vec![tchcv::bench::encode::run(b, device)?],
        Work::TrainStep(b) => vec![tchcv::bench::train_step::run(b, device)?],
        Work::Chart(c) => {
            let rows = tchcv::bench::chart::read_rows(&c.reports)?;
            tchcv::bench::chart::plot_speedups(&rows, &c.out, &c.title)?;
            println!("wrote {}", c.out.display());
            return Ok(ExitCode::SUCCESS);
        }
        Work::Data(b) => vec![tchcv::bench::data::run(b, device)?],
        Work::CocoEval(b) => vec![tchcv::bench::coco_eval::run(b, device)?],
        Work::Train(b) => vec![tchcv::bench::train::run(b, device)?],
    };
    for row in &rows {
        println!("{}", row.line());
    }
    if let Some(path) = &args.json {
        write_report(path, &rows)?;
    }
    Ok(ExitCode::SUCCESS)
}
