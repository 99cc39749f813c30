//! Evaluation: VOC average precision, detection files, drawn detections and plots.
//!
//! | torchcv / VOC devkit | here |
//! |---|---|
//! | `evaluations/voc_eval.py` `voc_eval` (ChainerCV), devkit `VOCevaldet.m` | [`voc::evaluate`] |
//! | devkit results files `<prefix><class>.txt` | [`detections`] |
//! | pycocotools `COCOeval` (bbox), COCO instances and results files | [`coco`] |
//! | (examples drew with PIL) | [`draw::draw_detections`] |
//! | (printed losses only) | [`plot::plot_loss`], [`plot::plot_pr`] |
//!
//! The AP computation, files and pictures run on host data; [`runner`] runs a detector over a
//! dataset and hands its decoded boxes to them.

pub mod coco;
pub mod compare_plot;
pub mod detections;
pub mod draw;
mod font;
pub mod ground_truth;
pub mod plot;
pub mod recall;
pub mod runner;
pub mod voc;

pub use detections::{read_voc_results, write_voc_results, ImageDetections, LabeledBox};
pub use ground_truth::{ground_truth_of, load_ground_truth, open_for_eval, open_for_eval_from};
pub use runner::{detect_batch, detect_dataset, detect_image, evaluate_detector, voc_detections};
pub use voc::{
    evaluate, ClassAp, Detection, GroundTruth, Matching, Metric, VocEvalConfig, VocEvalResult,
};
