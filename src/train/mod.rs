//! Training: the loop, optimizer state, schedules, checkpoints and the metrics log
//! (torchcv `examples/ssd/train.py`, grown up).

pub mod checkpoint;
pub mod compare;
mod compare_report;
pub mod config;
pub mod metrics;
pub mod optim;
mod progress;
pub mod schedule;
pub mod seeds;
mod trainer;
mod two_stage;

pub use config::{ClassWeightsMode, EvalMetric, OptimizerKind, RoiLossKind, TrainConfig};
pub use trainer::{
    best_checkpoint, last_checkpoint, saved_config, snapshot_dir, snapshot_path, train,
    TrainOptions, TrainSummary,
};
