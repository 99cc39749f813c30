//! Evaluation: VOC average precision, detection files, drawn detections and plots.
//!
//! | torchcv / VOC devkit | here |
//! |---|---|
//! | `evaluations/voc_eval.py` `voc_eval` (ChainerCV), devkit `VOCevaldet.m` | [`voc::evaluate`] |
//! | devkit results files `<prefix><class>.txt` | [`detections`] |
//! | (examples drew with PIL) | [`draw::draw_detections`] |
//! | (printed losses only) | [`plot::plot_loss`], [`plot::plot_pr`] |
//!
//! Everything here runs on host data; tensors appear only where a decoder's output is taken in
//! ([`detections::ImageDetections::from_tensors`]).

pub mod detections;
pub mod draw;
mod font;
pub mod ground_truth;
pub mod plot;
pub mod voc;

pub use detections::{read_voc_results, write_voc_results, ImageDetections, LabeledBox};
pub use ground_truth::load_ground_truth;
pub use voc::{
    evaluate, ClassAp, Detection, GroundTruth, Matching, Metric, VocEvalConfig, VocEvalResult,
};
