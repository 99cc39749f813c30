//! `tchcv eval --checkpoint` of a region proposal network (a checkpoint whose spec has
//! `head: "rpn"`): proposal recall on the sets instead of VOC AP.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use tchcv::bbox::RpnCoder;
use tchcv::data::{Loader, LoaderConfig, ThreadPlan};
use tchcv::eval;

/// What `tchcv eval` passes on for an RPN checkpoint.
pub struct ProposalEval<'a> {
    /// `--data` with `--format` and `--images`.
    pub data: tchcv::data::DataSource,
    pub sets: &'a [String],
    pub checkpoint: &'a Path,
    /// Images per forward pass.
    pub batch: usize,
    pub device: &'a str,
    /// Where to write the result as JSON (the `eval.json` format).
    pub json: Option<&'a Path>,
}

/// Whether the checkpoint at `path` holds a region proposal network.
pub fn is_rpn_checkpoint(path: &Path) -> Result<bool> {
    let state = tchcv::train::checkpoint::load(path)?.state;
    Ok(state.spec.get("head").and_then(|h| h.as_str()) == Some("rpn"))
}

/// Run the checkpoint's RPN over the sets and print its proposal recall (AR@100, AR@300,
/// AR@1000, recall at IoU 0.5 and 0.7 with 1000 proposals, and the table per threshold).
pub fn run(e: &ProposalEval) -> Result<ExitCode> {
    let device = tchcv::device::parse_device(e.device)?;
    let trained = tchcv::train::checkpoint::load_detector(e.checkpoint, device)?;
    let rpn = RpnCoder::from_spec(&trained.spec)?;
    let classes = Some(trained.classes.clone());
    let dataset = eval::open_for_eval_from(&e.data, e.sets, classes, true)?;
    let [w, h] = trained.spec.input_size;
    let workers = ThreadPlan::for_device(device, ThreadPlan::available_cores()).workers;
    let loader = Loader::new(
        Arc::new(dataset),
        Arc::new(rpn.clone()),
        LoaderConfig::eval([w as u32, h as u32], e.batch, workers),
    )?;
    let result = eval::runner::evaluate_proposals(trained.model.as_ref(), &rpn, &loader, device)?;
    println!(
        "proposal recall of {} ({}) on {}: {} images, {} objects (difficult ones and crowd regions left out), {:.0} \
         proposals per image",
        e.checkpoint.display(),
        trained.spec.name,
        e.sets.join(","),
        result.images,
        result.objects,
        result.mean_proposals
    );
    print!("{}", result.table());
    println!("{}", result.line());
    if let Some(path) = e.json {
        result.write_json(path)?;
    }
    Ok(ExitCode::SUCCESS)
}
