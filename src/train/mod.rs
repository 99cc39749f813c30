//! Training: the loop, optimizer state, schedules, checkpoints and the metrics log
//! (torchcv `examples/ssd/train.py`, grown up).

pub mod checkpoint;
pub mod metrics;
pub mod optim;
pub mod schedule;
