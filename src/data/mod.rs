//! The VOC data pipeline: files in, training tensors out (torchcv's `datasets/` and
//! `transforms/`).
//!
//! | torchcv | here |
//! |---|---|
//! | `datasets/listdataset.py` | [`voc`]: reads VOC XML + JPEG folders directly (no list files) |
//! | `transforms/*.py` | [`transforms`]: one function per transform, seeded per image |
//! | `torch.utils.data.DataLoader` | [`loader`]: worker threads, bounded prefetch, deterministic batches |
//! | — | [`check`]: the problem taxonomy and `tchcv check-data` report |
//! | — | [`synth`]: a synthetic VOC-format dataset of drawn shapes |
//! | (COCO `instances_*.json`) | [`coco`]: the COCO reader, into the same records; [`open`]: either format ([`open_dataset`]); [`convert`]: VOC <-> COCO |
//!
//! Box conventions: [`voc::VocObject::bbox`] keeps the XML's 1-based inclusive pixel values;
//! everything after loading ([`voc::Sample`], transforms, batches) uses 0-based continuous pixel
//! coordinates of the decoded, upright image, where a VOC box `(xmin, ymin, xmax, ymax)` is
//! `[xmin - 1, ymin - 1, xmax, ymax]` (so its width is `xmax - xmin + 1`, as in VOC evaluation).

pub mod check;
pub mod classes;
pub mod coco;
pub mod convert;
pub mod image;
pub mod loader;
pub mod open;
mod record;
pub mod synth;
mod targets;

pub mod transforms;
pub mod voc;

pub use check::{DataReport, Problem, ProblemKind, Severity};
pub use classes::ClassMap;
pub use loader::{Batch, Loader, LoaderConfig, Shard, TargetEncoder, ThreadPlan};
pub use open::{detect_format, open_dataset, DataFormat, DataSource};
pub use transforms::AugmentConfig;
pub use voc::{ImageCheck, ImageRecord, ReadOptions, Sample, SetSpec, VocDataset, VocObject};
