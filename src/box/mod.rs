//! Boxes: anchors, matching, target coding, decoding and NMS (torchcv `models/*/box_coder.py`
//! and `utils/box.py`). Module `tchcv::bbox` (`box` is a Rust keyword).
//!
//! | torchcv | here |
//! |---|---|
//! | `utils/box.py` `box_iou`, `change_box_order`, `box_clamp` | [`ops`] |
//! | `SSDBoxCoder._get_default_boxes`, `RetinaBoxCoder._get_anchor_boxes` | [`anchors`] |
//! | the matching inside `encode` | [`matcher`] |
//! | `encode` | [`BoxCoder::encode`] ([`coder`]) |
//! | `decode` | [`BoxCoder::decode`] ([`decode`]) |
//! | `utils/box.py` `box_nms` | [`nms`] |
//!
//! | torchvision `models/detection/` (Faster R-CNN's RPN) | here |
//! |---|---|
//! | `anchor_utils.py` `AnchorGenerator` | [`anchors::torchvision_anchors`] (`"style": "torchvision"`) |
//! | `_utils.py` `Matcher` | [`matcher`] (`max_iou` with `allow_low_quality`) |
//! | `rpn.py` `assign_targets_to_anchors`, `_utils.py` `BoxCoder` | [`rpn::RpnCoder`] |
//! | `_utils.py` `BalancedPositiveNegativeSampler` | [`sampler`] (random, hard, all) |
//! | `rpn.py` `filter_proposals` | [`proposals`] |
//! | `roi_heads.py` `select_training_samples`, `BoxCoder((10, 10, 5, 5))`; OHEM | [`rcnn`], [`coder::decode_weighted`] |
//!
//! Coordinates are model-input pixels; boxes are xyxy unless a name says cxcywh.

pub mod anchors;
pub mod coder;
pub mod decode;
pub mod matcher;
pub mod nms;
pub mod ops;
pub mod proposals;
pub mod rcnn;
pub mod rpn;
pub mod sampler;

pub use anchors::Anchors;
pub use coder::{BoxCoder, EncodeStats, Encoded};
pub use decode::{DecodeConfig, Detections, HostDetections};
pub use matcher::Matcher;
pub use nms::{batched_nms, batched_nms_top, nms, NmsMethod};
pub use proposals::{filter_proposals, ProposalConfig, Proposals};
pub use rpn::{AnchorTargets, RpnCoder};
pub use sampler::{sample_batch, sample_batch_of, sample_image, SamplerConfig, SamplerKind};
