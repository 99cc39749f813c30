//! Model specs: one JSON file per architecture (`models/*.json`), read at run time, so a user can
//! add a layout without recompiling.
//!
//! A spec says what the detector builder needs (input size, backbone and head names, feature-map
//! sizes, anchors per cell) and what the box coder needs (anchor layout, matching rule, coder
//! constants). It is validated on load: every error names the file and the field, e.g.
//! `models/x.json: anchors.steps: expected 6 values (one per feature map), got 5`.
//!
//! ```json
//! {
//!   "name": "ssd300", "input_size": [300, 300], "backbone": "vgg16", "head": "ssd", "loss": "ssd",
//!   "anchors": {"style": "ssd", "feature_maps": [38, 19, 10, 5, 3, 1],
//!               "steps": [8, 16, 32, 64, 100, 300], "box_sizes": [30, 60, 111, 162, 213, 264, 315],
//!               "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2], [2]]},
//!   "matching": {"rule": "bipartite", "threshold": 0.5},
//!   "coder": {"variances": [0.1, 0.2]},
//!   "num_anchors": 8732
//! }
//! ```
//! A third anchor style, `"torchvision"`, lays out torchvision's `AnchorGenerator` anchors (Faster
//! R-CNN's region proposal network); an optional `"rpn"` object holds the RPN's sampling and
//! proposal settings. See `docs/box.md` for every field.

mod json;

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use json::{Node, Obj};

/// `log(1000 / 16)`: torchvision's default cap on decoded `dw`, `dh` (`exp` of at most 62.5).
pub const DEFAULT_DECODE_CLAMP: f64 = 4.135_166_556_742_356;

/// At most this many anchors per spec (a guard against a typo such as a 3000x3000 map).
pub const MAX_ANCHORS: i64 = 1 << 24;

/// The loss names a spec may give (`tchcv::loss::LossKind` parses them). `"rpn"` (Faster
/// R-CNN's region proposal loss) goes with `head: "rpn"` and only with it.
pub const LOSS_NAMES: [&str; 4] = ["ssd", "focal", "softmax_focal", "rpn"];

/// The heads whose first stage is a region proposal network trained with the `"rpn"` loss:
/// the RPN alone, and Faster R-CNN (RPN + RoI box head, whose settings are `roi_heads`).
pub const RPN_HEADS: [&str; 2] = ["rpn", "faster_rcnn"];

/// The RPN sampler names a spec's `rpn.sampler` may give (`tchcv::bbox::SamplerKind` parses
/// them).
pub const SAMPLER_NAMES: [&str; 3] = ["random", "hard", "all"];

/// One architecture: input size, network names, anchors, matching and coder constants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    pub name: String,
    /// Free text for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Model-input size `[width, height]` in pixels.
    pub input_size: [i64; 2],
    /// Backbone name for the detector builder ("vgg16", "resnet50", "small", ...).
    pub backbone: String,
    /// Head name for the detector builder ("ssd", "retina").
    pub head: String,
    /// Free-form options for the detector builder; not validated here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Value>,
    /// Default loss: "ssd", "focal", "softmax_focal" or "rpn". Default: "focal" for
    /// `head: "retina"`, "rpn" for `head: "rpn"` (the only loss it takes), else "ssd".
    pub loss: String,
    pub anchors: AnchorSpec,
    pub matching: MatchingSpec,
    pub coder: CoderSpec,
    /// Region proposal settings (sampling, proposals); None: torchvision's defaults
    /// ([`RpnSpec::default`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpn: Option<RpnSpec>,
    /// Faster R-CNN's second stage (`head: "faster_rcnn"` only); None: torchvision's defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roi_heads: Option<RoiHeadsSpec>,
}

/// Faster R-CNN's second stage: which RoIs train the box head and with which loss, how they are
/// pooled, the head's width and the detection settings (torchvision `RoIHeads` defaults).
///
/// ```json
/// "roi_heads": {"sampler": {"kind": "ohem", "ohem_per_image": 128},
///               "loss": {"cls": {"kind": "softmax_focal", "gamma": 2.0}},
///               "pool": {"maps": [0], "output_size": [7, 7], "sampling_ratio": 2},
///               "representation_size": 1024,
///               "score_threshold": 0.05, "nms_threshold": 0.5, "detections_per_image": 100}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoiHeadsSpec {
    /// Matching and sampling (`kind`: `random` 512 at 25% foreground, `all`, `ohem`).
    pub sampler: RoiSamplerConfig,
    /// The box head's loss: `tchcv::loss::RcnnLossConfig`'s fields (`cls.kind`:
    /// `cross_entropy` or `softmax_focal` with its options; `beta`), read by training (the
    /// spec layer knows no losses); None: torchvision's cross entropy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<Value>,
    /// RoIAlign over the RPN's feature maps.
    pub pool: RoiPoolSpec,
    /// The two fully connected layers' width (torchvision: 1024).
    pub representation_size: i64,
    /// Detections keep scores above this (torchvision `box_score_thresh`: 0.05).
    pub score_threshold: f64,
    /// Class-wise NMS suppresses IoU > this (`box_nms_thresh`: 0.5).
    pub nms_threshold: f64,
    /// Detections per image (`box_detections_per_img`: 100).
    pub detections_per_image: i64,
}

impl Default for RoiHeadsSpec {
    fn default() -> Self {
        Self {
            sampler: Default::default(),
            loss: Default::default(),
            pool: RoiPoolSpec::default(),
            representation_size: 1024,
            score_threshold: 0.05,
            nms_threshold: 0.5,
            detections_per_image: 100,
        }
    }
}

/// How the labelled proposals of an image are chosen for the second-stage loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoiSamplerKind {
    /// torchvision's balanced sampler: up to `positive_fraction` foreground, random.
    #[default]
    Random,
    /// Every labelled (not ignored) proposal.
    All,
    /// Every labelled proposal as a candidate; [`ohem_select`] keeps the hardest.
    Ohem,
}

impl std::str::FromStr for RoiSamplerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(Self::Random),
            "all" => Ok(Self::All),
            "ohem" => Ok(Self::Ohem),
            _ => Err(crate::bad_input(format!(
                "roi sampler {s:?}: expected random, all or ohem"
            ))),
        }
    }
}

/// Second-stage matching and sampling settings (torchvision's `RoIHeads` defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoiSamplerConfig {
    pub kind: RoiSamplerKind,
    /// IoU >= this: foreground (torchvision `fg_iou_thresh`: 0.5).
    pub fg_iou: f64,
    /// IoU < this: background (torchvision `bg_iou_thresh`: 0.5); in between: ignored.
    pub bg_iou_hi: f64,
    /// IoU < this: ignored (Fast R-CNN's 0.1; torchvision: 0, nothing ignored).
    pub bg_iou_lo: f64,
    /// RoIs per image (torchvision: 512).
    pub batch_size_per_image: i64,
    /// At most this share foreground (torchvision: 0.25).
    pub positive_fraction: f64,
    /// OHEM: the NMS threshold on the loss-ranked RoIs (0.7).
    pub ohem_nms: f64,
    /// OHEM: RoIs kept per image after the NMS.
    pub ohem_per_image: i64,
    /// Seed of the random draws (training replaces it with the run's `--seed`).
    pub seed: u64,
}

impl Default for RoiSamplerConfig {
    fn default() -> Self {
        Self {
            kind: RoiSamplerKind::Random,
            fg_iou: 0.5,
            bg_iou_hi: 0.5,
            bg_iou_lo: 0.0,
            batch_size_per_image: 512,
            positive_fraction: 0.25,
            ohem_nms: 0.7,
            ohem_per_image: 128,
            seed: 0,
        }
    }
}

impl RoiSamplerConfig {
    /// Check the thresholds and OHEM settings (bad input, named).
    pub fn validate(&self) -> Result<()> {
        let ok = |v: f64| (0.0..=1.0).contains(&v);
        if !(ok(self.fg_iou) && ok(self.bg_iou_hi) && ok(self.bg_iou_lo))
            || self.bg_iou_lo > self.bg_iou_hi
            || self.bg_iou_hi > self.fg_iou
        {
            crate::bail_input!(
                "roi sampler: expected 0 <= bg_iou_lo <= bg_iou_hi <= fg_iou <= 1, got {}, {}, {}",
                self.bg_iou_lo,
                self.bg_iou_hi,
                self.fg_iou
            );
        }
        if self.ohem_per_image < 0 || !self.ohem_nms.is_finite() {
            crate::bail_input!(
                "roi sampler: ohem_per_image must be >= 0 and ohem_nms finite, got {} and {}",
                self.ohem_per_image,
                self.ohem_nms
            );
        }
        Ok(())
    }
}

/// torchvision `MultiScaleRoIAlign` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoiPoolSpec {
    /// Indices of the feature maps pooled from, finest first (torchvision's FPN: P2-P5, the
    /// first four; None: every map). The maps must have the same channels.
    pub maps: Option<Vec<usize>>,
    /// `[h, w]` (7x7).
    pub output_size: [i64; 2],
    /// Samples per bin side (2; 0 or less: adaptive).
    pub sampling_ratio: i64,
}

impl Default for RoiPoolSpec {
    fn default() -> Self {
        Self {
            maps: None,
            output_size: [7, 7],
            sampling_ratio: 2,
        }
    }
}

/// A feature map's size in cells (JSON: `n` for a square map, else `[h, w]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridSize {
    pub h: i64,
    pub w: i64,
}

/// The pixel distance between neighbouring cell centres (`cx = (col + 0.5) * x`; JSON: one
/// number, or `[y, x]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub y: f64,
    pub x: f64,
}

/// A number when both are equal, else the pair (the form the parser reads).
fn serialize_one_or_pair<S: serde::Serializer, T: Serialize + PartialEq>(
    pair: [T; 2],
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    if pair[0] == pair[1] {
        pair[0].serialize(serializer)
    } else {
        pair.serialize(serializer)
    }
}

impl Serialize for GridSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        serialize_one_or_pair([self.h, self.w], s)
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        serialize_one_or_pair([self.y, self.x], s)
    }
}

/// How anchors are laid out, tagged by `"style"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "style", rename_all = "snake_case")]
pub enum AnchorSpec {
    /// torchcv/SSD default boxes.
    Ssd(SsdAnchorSpec),
    /// RetinaNet anchors (areas x aspect ratios x scales).
    Retina(RetinaAnchorSpec),
    /// torchvision `AnchorGenerator` anchors (sizes x aspect ratios, rounded, on a stride grid).
    Torchvision(TorchvisionAnchorSpec),
}

/// SSD default boxes: per cell, `s`, `sqrt(s * s_next)`, then for each ratio `r` the wide box
/// `(s*sqrt(r), s/sqrt(r))` and the tall one `(s/sqrt(r), s*sqrt(r))`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SsdAnchorSpec {
    /// `[[h, w], ...]`, or one integer per map for square maps.
    pub feature_maps: Vec<GridSize>,
    /// One per map: a number, or `[step_y, step_x]`.
    pub steps: Vec<Step>,
    /// `s_0 .. s_M` in pixels: one more than the maps.
    pub box_sizes: Vec<f64>,
    /// Per map, the extra ratios `r` (each adds two boxes).
    pub aspect_ratios: Vec<Vec<f64>>,
    /// Clamp `cx, w` to `[0, width]` and `cy, h` to `[0, height]` (ssd.pytorch's `clip`).
    pub clip: bool,
}

/// RetinaNet anchors: per map one area; per cell, for each aspect ratio `r = w/h` (outer) and
/// scale `k` (inner), `h = sqrt(area / r) * k`, `w = r * sqrt(area / r) * k` (torchcv's order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetinaAnchorSpec {
    pub feature_maps: Vec<GridSize>,
    /// One per map (JSON `strides`, or `steps`).
    pub strides: Vec<Step>,
    /// One anchor area (pixels squared) per map.
    pub areas: Vec<f64>,
    /// `w / h`, shared by every map.
    pub aspect_ratios: Vec<f64>,
    /// Size multipliers, shared by every map.
    pub scales: Vec<f64>,
    pub clip: bool,
}

/// torchvision `AnchorGenerator` anchors (Faster R-CNN's RPN). Per map, for each aspect ratio
/// `r = h / w` (outer) and size `s` (inner), the base anchor
/// `round([-w/2, -h/2, w/2, h/2])` with `h = sqrt(r) * s`, `w = s / sqrt(r)` (f32, ties to
/// even), shifted by `(col * stride_x, row * stride_y)`: centres on the grid's corners, not its
/// cells' centres, as in torchvision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TorchvisionAnchorSpec {
    pub feature_maps: Vec<GridSize>,
    /// One per map, whole pixels. Default: torchvision's `input_size // feature_map`.
    pub strides: Vec<Step>,
    /// Per map, the anchor sizes in pixels (torchvision `sizes[i]`).
    pub sizes: Vec<Vec<f64>>,
    /// Per map, the ratios `h / w` (torchvision `aspect_ratios[i]`; note: the inverse of the
    /// retina style's `w / h`).
    pub aspect_ratios: Vec<Vec<f64>>,
}

/// A pair of values for training and for testing (torchvision's `{"training": .., "testing": ..}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrainTest {
    pub train: i64,
    pub test: i64,
}

/// Region proposal settings (torchvision `RegionProposalNetwork`'s arguments). JSON `"rpn"`, every
/// field optional.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpnSpec {
    /// Anchors sampled per image for the loss (torchvision: 256).
    pub batch_size_per_image: i64,
    /// At most this share of the sample is positive (torchvision: 0.5).
    pub positive_fraction: f64,
    /// Proposals kept per feature map before NMS (torchvision: 2000 / 1000).
    pub pre_nms_top_n: TrainTest,
    /// Proposals kept per image after NMS (torchvision: 2000 / 1000).
    pub post_nms_top_n: TrainTest,
    /// NMS suppresses IoU > this, per feature map (torchvision: 0.7).
    pub nms_threshold: f64,
    /// Proposals need an objectness probability >= this (torchvision: 0.0).
    pub score_threshold: f64,
    /// Proposals need both sides >= this many pixels (torchvision: 1e-3).
    pub min_size: f64,
    /// Which anchors of an image enter the loss when training: `"random"` (torchvision's
    /// balanced sampler), `"hard"` (OHEM negatives) or `"all"` ([`SAMPLER_NAMES`]).
    pub sampler: String,
}

impl Default for RpnSpec {
    fn default() -> Self {
        Self {
            batch_size_per_image: 256,
            positive_fraction: 0.5,
            pre_nms_top_n: TrainTest {
                train: 2000,
                test: 1000,
            },
            post_nms_top_n: TrainTest {
                train: 2000,
                test: 1000,
            },
            nms_threshold: 0.7,
            score_threshold: 0.0,
            min_size: 1e-3,
            sampler: "random".to_string(),
        }
    }
}

/// Where the IoU band between the thresholds of max-IoU matching is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreBand {
    /// `[neg_iou, pos_iou)` is ignored, so IoU == neg_iou is ignored (torchvision `Matcher`).
    Torchvision,
    /// `(neg_iou, pos_iou)` is ignored, so IoU == neg_iou is background (torchcv RetinaNet).
    Torchcv,
}

/// How anchors are assigned to ground-truth boxes, tagged by `"rule"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum MatchingSpec {
    /// torchcv: greedy bipartite matching (each GT gets its best free anchor, in descending
    /// IoU order), then every other anchor with IoU >= threshold takes its best GT.
    Bipartite { threshold: f64 },
    /// ssd.pytorch / torchvision: each GT's best anchor is forced to it (a later GT wins a
    /// conflict), then every other anchor with IoU >= threshold takes its best GT.
    ForcedBest { threshold: f64 },
    /// RetinaNet: IoU >= pos_iou is positive, below the band background, in the band ignored.
    MaxIou {
        pos_iou: f64,
        neg_iou: f64,
        band: IgnoreBand,
        /// torchvision's `allow_low_quality_matches`: anchors tied for a GT's best IoU become
        /// positive (with their own best GT) even below pos_iou.
        allow_low_quality: bool,
    },
}

/// Box delta constants.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoderSpec {
    /// `[v_xy, v_wh]`: SSD's `(0.1, 0.2)`; None: plain Faster R-CNN deltas (RetinaNet).
    pub variances: Option<[f64; 2]>,
    /// Decoded `dw`, `dh` (after the variance) are capped here before `exp`; None: no cap
    /// (torchcv). Default [`DEFAULT_DECODE_CLAMP`].
    pub decode_clamp: Option<f64>,
}

impl ModelSpec {
    /// Read and validate a spec file.
    pub fn load(path: &Path) -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::bad_input(format!(
                "{}: cannot read the model spec: {e}",
                path.display()
            ))
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parse and validate spec JSON; `origin` names it in errors (usually the file path).
    pub fn from_json_str(text: &str, origin: &str) -> Result<ModelSpec> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| crate::bad_input(format!("{origin}: not valid JSON: {e}")))?;
        let root = Node::root(origin, &value).object(&[
            "name",
            "description",
            "input_size",
            "backbone",
            "head",
            "network",
            "loss",
            "anchors",
            "matching",
            "coder",
            "rpn",
            "roi_heads",
            "num_anchors",
        ])?;
        let name = root.required("name", |n| n.string())?;
        let description = root.optional("description", |n| n.string())?;
        let input_size = root.required("input_size", |n| {
            let wh = n.list_of_len(2, "[width, height]", |v| v.count())?;
            Ok([wh[0], wh[1]])
        })?;
        let backbone = root.required("backbone", |n| n.string())?;
        let head = root.required("head", |n| n.string())?;
        let network = root.optional("network", |n| Ok(n.value().clone()))?;
        let loss = root
            .optional("loss", |n| one_of(n, &LOSS_NAMES))?
            .unwrap_or_else(|| default_loss(&head).to_string());
        let anchors = root.required("anchors", |n| parse_anchors(n, input_size))?;
        let default_matching = anchors.default_matching();
        let matching = root
            .optional("matching", |n| parse_matching(n, &default_matching))?
            .unwrap_or(default_matching);
        let coder = root.optional("coder", parse_coder)?.unwrap_or(CoderSpec {
            variances: None,
            decode_clamp: Some(DEFAULT_DECODE_CLAMP),
        });
        let rpn = root.optional("rpn", parse_rpn)?;
        let roi_heads = root.optional("roi_heads", parse_roi_heads)?;
        check_head_fits(&head, &loss, roi_heads.is_some(), origin)?;
        let spec = ModelSpec {
            name,
            description,
            input_size,
            backbone,
            head,
            network,
            loss,
            anchors,
            matching,
            coder,
            rpn,
            roi_heads,
        };
        let total = spec.num_anchors();
        if total > MAX_ANCHORS {
            return Err(crate::bad_input(format!(
                "{origin}: anchors: {total} anchors ({}) is more than the {MAX_ANCHORS} tchcv accepts",
                spec.count_breakdown()
            )));
        }
        root.optional("num_anchors", |n| {
            let declared = n.count()?;
            let computed = spec.num_anchors();
            if declared != computed {
                return Err(n.fail(format!(
                    "the spec says {declared} but its anchors give {computed} ({})",
                    spec.count_breakdown()
                )));
            }
            Ok(())
        })?;
        Ok(spec)
    }

    /// The spec as JSON (the same schema `from_json_str` reads; `num_anchors` included).
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        value["num_anchors"] = self.num_anchors().into();
        value
    }

    pub fn input_width(&self) -> i64 {
        self.input_size[0]
    }

    pub fn input_height(&self) -> i64 {
        self.input_size[1]
    }

    /// Feature-map sizes `[h, w]`, one per map, in anchor order.
    pub fn feature_map_sizes(&self) -> Vec<[i64; 2]> {
        self.anchors
            .feature_maps()
            .iter()
            .map(|g| [g.h, g.w])
            .collect()
    }

    /// Anchors per cell, one per feature map (what a head's conv emits per cell, divided by
    /// 4 or by the class count).
    pub fn anchors_per_cell(&self) -> Vec<i64> {
        match &self.anchors {
            AnchorSpec::Ssd(s) => s
                .aspect_ratios
                .iter()
                .map(|r| 2 + 2 * r.len() as i64)
                .collect(),
            AnchorSpec::Retina(r) => {
                let per_cell = (r.aspect_ratios.len() * r.scales.len()) as i64;
                vec![per_cell; r.feature_maps.len()]
            }
            AnchorSpec::Torchvision(t) => t
                .sizes
                .iter()
                .zip(&t.aspect_ratios)
                .map(|(s, r)| (s.len() * r.len()) as i64)
                .collect(),
        }
    }

    /// Anchors per feature map (`h * w * anchors_per_cell`).
    pub fn anchors_per_map(&self) -> Vec<i64> {
        self.anchors
            .feature_maps()
            .iter()
            .zip(self.anchors_per_cell())
            .map(|(g, k)| g.h * g.w * k)
            .collect()
    }

    /// The total anchor count `A`.
    pub fn num_anchors(&self) -> i64 {
        self.anchors_per_map().iter().sum()
    }

    /// `38x38x4 + 19x19x6 + ...`
    pub fn count_breakdown(&self) -> String {
        self.anchors
            .feature_maps()
            .iter()
            .zip(self.anchors_per_cell())
            .map(|(g, k)| format!("{}x{}x{k}", g.h, g.w))
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Whether the classifier has a background column 0 (softmax losses) rather than none
    /// (sigmoid focal loss, the RPN's objectness).
    pub fn has_background_column(&self) -> bool {
        self.loss != "focal" && self.loss != "rpn"
    }

    /// Whether the first stage is a region proposal network (`head` `"rpn"` or
    /// `"faster_rcnn"`): its anchors are labelled and sampled as torchvision's RPN does.
    pub fn has_rpn(&self) -> bool {
        RPN_HEADS.contains(&self.head.as_str())
    }

    /// Whether the spec is a two-stage detector (`head: "faster_rcnn"`).
    pub fn is_two_stage(&self) -> bool {
        self.head == "faster_rcnn"
    }

    /// The spec's `roi_heads` settings, or torchvision's defaults when it has none.
    pub fn roi_heads_or_default(&self) -> RoiHeadsSpec {
        self.roi_heads.clone().unwrap_or_default()
    }

    /// The spec's `rpn` settings, or torchvision's defaults when it has none.
    pub fn rpn_or_default(&self) -> RpnSpec {
        self.rpn.clone().unwrap_or_default()
    }
}

impl AnchorSpec {
    pub fn feature_maps(&self) -> &[GridSize] {
        match self {
            AnchorSpec::Ssd(s) => &s.feature_maps,
            AnchorSpec::Retina(r) => &r.feature_maps,
            AnchorSpec::Torchvision(t) => &t.feature_maps,
        }
    }

    /// The spec's steps (SSD) or strides (RetinaNet, torchvision), one per map.
    pub fn steps(&self) -> &[Step] {
        match self {
            AnchorSpec::Ssd(s) => &s.steps,
            AnchorSpec::Retina(r) => &r.strides,
            AnchorSpec::Torchvision(t) => &t.strides,
        }
    }

    /// Whether anchors are clamped into the input (never for the torchvision style).
    pub fn clip(&self) -> bool {
        match self {
            AnchorSpec::Ssd(s) => s.clip,
            AnchorSpec::Retina(r) => r.clip,
            AnchorSpec::Torchvision(_) => false,
        }
    }

    /// The matching of the style's reference: torchcv bipartite + 0.5 for SSD, max-IoU
    /// 0.5 / 0.4 (torchvision band) for RetinaNet, torchvision's RPN `Matcher(0.7, 0.3,
    /// allow_low_quality_matches=True)` for the torchvision style.
    pub fn default_matching(&self) -> MatchingSpec {
        match self {
            AnchorSpec::Ssd(_) => MatchingSpec::Bipartite { threshold: 0.5 },
            AnchorSpec::Retina(_) => MatchingSpec::MaxIou {
                pos_iou: 0.5,
                neg_iou: 0.4,
                band: IgnoreBand::Torchvision,
                allow_low_quality: false,
            },
            AnchorSpec::Torchvision(_) => MatchingSpec::MaxIou {
                pos_iou: 0.7,
                neg_iou: 0.3,
                band: IgnoreBand::Torchvision,
                allow_low_quality: true,
            },
        }
    }
}

fn parse_grid(n: Node<'_>) -> Result<GridSize> {
    let [h, w] = n.one_or_pair(|v| v.count())?;
    Ok(GridSize { h, w })
}

fn parse_step(n: Node<'_>) -> Result<Step> {
    let [y, x] = n.one_or_pair(|v| v.positive())?;
    Ok(Step { y, x })
}

fn parse_anchors(n: Node<'_>, input_size: [i64; 2]) -> Result<AnchorSpec> {
    let style = n.tag("style", &["ssd", "retina", "torchvision"])?;
    if style == "torchvision" {
        let o = n.object(&["style", "feature_maps", "strides", "sizes", "aspect_ratios"])?;
        parse_torchvision_anchors(o, input_size).map(AnchorSpec::Torchvision)
    } else if style == "ssd" {
        let o = n.object(&[
            "style",
            "feature_maps",
            "steps",
            "box_sizes",
            "aspect_ratios",
            "clip",
        ])?;
        parse_ssd_anchors(o).map(AnchorSpec::Ssd)
    } else {
        let o = n.object(&[
            "style",
            "feature_maps",
            "strides",
            "steps",
            "areas",
            "aspect_ratios",
            "scales",
            "clip",
        ])?;
        parse_retina_anchors(o).map(AnchorSpec::Retina)
    }
}

fn parse_ssd_anchors(o: Obj<'_>) -> Result<SsdAnchorSpec> {
    let feature_maps = o.required("feature_maps", |n| n.non_empty_list(parse_grid))?;
    let m = feature_maps.len();
    let steps = o.required("steps", |n| {
        n.list_of_len(m, "one per feature map", parse_step)
    })?;
    let box_sizes = o.required("box_sizes", |n| {
        n.list_of_len(
            m + 1,
            "one per feature map, plus the last map's next size",
            |v| v.positive(),
        )
    })?;
    let aspect_ratios = o.required("aspect_ratios", |n| {
        n.list_of_len(m, "a list of ratios per feature map", |per_map| {
            per_map.list(|r| r.positive())
        })
    })?;
    let clip = o.optional("clip", |n| n.boolean())?.unwrap_or(false);
    Ok(SsdAnchorSpec {
        feature_maps,
        steps,
        box_sizes,
        aspect_ratios,
        clip,
    })
}

fn parse_retina_anchors(o: Obj<'_>) -> Result<RetinaAnchorSpec> {
    let feature_maps = o.required("feature_maps", |n| n.non_empty_list(parse_grid))?;
    let m = feature_maps.len();
    let read_strides = |n: Node<'_>| n.list_of_len(m, "one per feature map", parse_step);
    let strides = match (o.has("strides"), o.has("steps")) {
        (true, true) => return Err(o.fail("give strides or steps, not both")),
        (false, true) => o.required("steps", read_strides)?,
        _ => o.required("strides", read_strides)?,
    };
    let areas = o.required("areas", |n| {
        n.list_of_len(m, "one per feature map", |v| v.positive())
    })?;
    let aspect_ratios = o.required("aspect_ratios", |n| n.non_empty_list(|v| v.positive()))?;
    let scales = o.required("scales", |n| n.non_empty_list(|v| v.positive()))?;
    let clip = o.optional("clip", |n| n.boolean())?.unwrap_or(false);
    Ok(RetinaAnchorSpec {
        feature_maps,
        strides,
        areas,
        aspect_ratios,
        scales,
        clip,
    })
}

/// One number or a list of numbers, each > 0 (a list of one for a number).
fn one_or_list(n: Node<'_>) -> Result<Vec<f64>> {
    if n.value().is_array() {
        n.non_empty_list(|v| v.positive())
    } else {
        Ok(vec![n.positive()?])
    }
}

/// A stride: a whole number of pixels > 0, or `[y, x]`.
fn parse_whole_step(n: Node<'_>) -> Result<Step> {
    let [y, x] = n.one_or_pair(|v| {
        let x = v.positive()?;
        if x.fract() != 0.0 {
            return Err(v.fail(format!(
                "expected a whole number of pixels (torchvision strides are integers), got {x}"
            )));
        }
        Ok(x)
    })?;
    Ok(Step { y, x })
}

fn parse_torchvision_anchors(o: Obj<'_>, input_size: [i64; 2]) -> Result<TorchvisionAnchorSpec> {
    let feature_maps = o.required("feature_maps", |n| n.non_empty_list(parse_grid))?;
    let m = feature_maps.len();
    let strides = match o.optional("strides", |n| {
        n.list_of_len(m, "one per feature map", parse_whole_step)
    })? {
        Some(strides) => strides,
        None => default_strides(&o, input_size)?,
    };
    let sizes = o.required("sizes", |n| {
        n.list_of_len(m, "a size or a list of sizes per feature map", one_or_list)
    })?;
    let aspect_ratios = o.required("aspect_ratios", |n| {
        let per_map = n
            .value()
            .as_array()
            .and_then(|items| items.first())
            .is_some_and(|first| first.is_array());
        if per_map {
            n.list_of_len(m, "a list of ratios per feature map", |r| {
                r.non_empty_list(|v| v.positive())
            })
        } else {
            Ok(vec![n.non_empty_list(|v| v.positive())?; m])
        }
    })?;
    Ok(TorchvisionAnchorSpec {
        feature_maps,
        strides,
        sizes,
        aspect_ratios,
    })
}

/// torchvision's strides: `input_size // feature_map` per axis (which must not be 0).
fn default_strides(o: &Obj<'_>, input_size: [i64; 2]) -> Result<Vec<Step>> {
    let [width, height] = input_size;
    o.required("feature_maps", |n| {
        n.list(|item| {
            let g = parse_grid(item)?;
            let (y, x) = (height / g.h, width / g.w);
            if y == 0 || x == 0 {
                return Err(item.fail(format!(
                    "a {}x{} map in a {width}x{height} input gives a stride of 0 \
                     (input // map); give anchors.strides",
                    g.h, g.w
                )));
            }
            Ok(Step {
                y: y as f64,
                x: x as f64,
            })
        })
    })
}

fn parse_train_test(n: Node<'_>) -> Result<TrainTest> {
    let o = n.object(&["train", "test"])?;
    Ok(TrainTest {
        train: o.required("train", |v| v.count())?,
        test: o.required("test", |v| v.count())?,
    })
}

/// A string that must be one of `names`.
fn one_of(n: Node<'_>, names: &[&str]) -> Result<String> {
    let s = n.string()?;
    if !names.contains(&s.as_str()) {
        return Err(n.fail(format!("expected one of {names:?}, got {s:?}")));
    }
    Ok(s)
}

/// The `"rpn"` loss goes with the RPN heads and only with them; `roi_heads` with
/// `"faster_rcnn"` only.
fn check_head_fits(head: &str, loss: &str, has_roi_heads: bool, origin: &str) -> Result<()> {
    if RPN_HEADS.contains(&head) != (loss == "rpn") {
        crate::bail_input!(
            "{origin}: loss: {loss:?} does not fit head {head:?} (the \"rpn\" and \
             \"faster_rcnn\" heads are trained with the \"rpn\" loss on their first stage, \
             and only they; Faster R-CNN's second-stage loss is roi_heads.loss)"
        );
    }
    if has_roi_heads && head != "faster_rcnn" {
        crate::bail_input!(
            "{origin}: roi_heads: only a \"faster_rcnn\" head has a second stage, this spec's \
             head is {head:?}"
        );
    }
    Ok(())
}

/// The loss of a spec that names none: the head's own.
fn default_loss(head: &str) -> &'static str {
    match head {
        "retina" => "focal",
        "rpn" | "faster_rcnn" => "rpn",
        _ => "ssd",
    }
}

/// `roi_heads`: [`RoiHeadsSpec`]'s fields (unknown keys are errors), checked for range.
fn parse_roi_heads(n: Node<'_>) -> Result<RoiHeadsSpec> {
    let spec: RoiHeadsSpec =
        serde_json::from_value(n.value().clone()).map_err(|e| n.fail(e.to_string()))?;
    let positive = spec.representation_size >= 1
        && spec.detections_per_image >= 0
        && spec.pool.output_size.iter().all(|&s| s >= 1);
    if !positive {
        return Err(n.fail(format!(
            "representation_size and pool.output_size must be >= 1 and detections_per_image >= \
             0, got {}, {:?} and {}",
            spec.representation_size, spec.pool.output_size, spec.detections_per_image
        )));
    }
    for (name, v) in [
        ("score_threshold", spec.score_threshold),
        ("nms_threshold", spec.nms_threshold),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(n.fail(format!("{name}: expected a number in [0, 1], got {v}")));
        }
    }
    spec.sampler
        .validate()
        .map_err(|e| n.fail(format!("sampler: {e}")))?;
    Ok(spec)
}

fn parse_rpn(n: Node<'_>) -> Result<RpnSpec> {
    let o = n.object(&[
        "batch_size_per_image",
        "positive_fraction",
        "pre_nms_top_n",
        "post_nms_top_n",
        "nms_threshold",
        "score_threshold",
        "min_size",
        "sampler",
    ])?;
    let d = RpnSpec::default();
    Ok(RpnSpec {
        batch_size_per_image: o
            .optional("batch_size_per_image", |v| v.count())?
            .unwrap_or(d.batch_size_per_image),
        positive_fraction: o
            .optional("positive_fraction", |v| v.in_range(0.0, 1.0))?
            .unwrap_or(d.positive_fraction),
        pre_nms_top_n: o
            .optional("pre_nms_top_n", parse_train_test)?
            .unwrap_or(d.pre_nms_top_n),
        post_nms_top_n: o
            .optional("post_nms_top_n", parse_train_test)?
            .unwrap_or(d.post_nms_top_n),
        nms_threshold: o
            .optional("nms_threshold", |v| v.in_range(0.0, 1.0))?
            .unwrap_or(d.nms_threshold),
        score_threshold: o
            .optional("score_threshold", |v| v.in_range(0.0, 1.0))?
            .unwrap_or(d.score_threshold),
        min_size: o
            .optional("min_size", |v| {
                let x = v.number()?;
                if x < 0.0 {
                    return Err(v.fail(format!("expected a number >= 0, got {x}")));
                }
                Ok(x)
            })?
            .unwrap_or(d.min_size),
        sampler: o
            .optional("sampler", |v| one_of(v, &SAMPLER_NAMES))?
            .unwrap_or(d.sampler),
    })
}

/// `matching`; absent max-IoU fields take the style's defaults (`default`, when it is max-IoU)
/// or 0.5 / 0.4 / torchvision band / no low-quality matches.
fn parse_matching(n: Node<'_>, default: &MatchingSpec) -> Result<MatchingSpec> {
    let rule = n.tag("rule", &["bipartite", "forced_best", "max_iou"])?;
    let iou = |v: Node<'_>| v.in_range(0.0, 1.0);
    if rule != "max_iou" {
        let o = n.object(&["rule", "threshold"])?;
        let threshold = o.optional("threshold", iou)?.unwrap_or(0.5);
        return Ok(if rule == "bipartite" {
            MatchingSpec::Bipartite { threshold }
        } else {
            MatchingSpec::ForcedBest { threshold }
        });
    }
    let o = n.object(&["rule", "pos_iou", "neg_iou", "band", "allow_low_quality"])?;
    let (d_pos, d_neg, d_band, d_low) = match *default {
        MatchingSpec::MaxIou {
            pos_iou,
            neg_iou,
            band,
            allow_low_quality,
        } => (pos_iou, neg_iou, band, allow_low_quality),
        _ => (0.5, 0.4, IgnoreBand::Torchvision, false),
    };
    let pos_iou = o.optional("pos_iou", iou)?.unwrap_or(d_pos);
    let neg_iou = o.optional("neg_iou", iou)?.unwrap_or(d_neg);
    if neg_iou > pos_iou {
        return Err(o.fail(format!(
            "neg_iou ({neg_iou}) must not exceed pos_iou ({pos_iou})"
        )));
    }
    let band = o
        .optional("band", |v| match v.string()?.as_str() {
            "torchvision" => Ok(IgnoreBand::Torchvision),
            "torchcv" => Ok(IgnoreBand::Torchcv),
            other => Err(v.fail(format!(
                "expected \"torchvision\" ([neg, pos) ignored) or \"torchcv\" \
                 ((neg, pos) ignored), got {other:?}"
            ))),
        })?
        .unwrap_or(d_band);
    let allow_low_quality = o
        .optional("allow_low_quality", |v| v.boolean())?
        .unwrap_or(d_low);
    Ok(MatchingSpec::MaxIou {
        pos_iou,
        neg_iou,
        band,
        allow_low_quality,
    })
}

fn parse_coder(n: Node<'_>) -> Result<CoderSpec> {
    let o = n.object(&["variances", "decode_clamp"])?;
    let variances = o
        .optional("variances", |v| {
            if v.is_null() {
                return Ok(None);
            }
            let pair = v.list_of_len(2, "[v_xy, v_wh]", |x| x.positive())?;
            Ok(Some([pair[0], pair[1]]))
        })?
        .flatten();
    let decode_clamp = o
        .optional("decode_clamp", |v| {
            if v.is_null() {
                Ok(None)
            } else {
                v.positive().map(Some)
            }
        })?
        .unwrap_or(Some(DEFAULT_DECODE_CLAMP));
    Ok(CoderSpec {
        variances,
        decode_clamp,
    })
}
