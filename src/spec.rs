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
//! See `docs/box.md` for every field.

mod json;

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use json::{Node, Obj};

/// `log(1000 / 16)`: torchvision's default cap on decoded `dw`, `dh` (`exp` of at most 62.5).
pub const DEFAULT_DECODE_CLAMP: f64 = 4.135_166_556_742_356;

/// At most this many anchors per spec (a guard against a typo such as a 3000x3000 map).
pub const MAX_ANCHORS: i64 = 1 << 24;

/// The loss names a spec may give (`tchcv::loss::LossKind` parses them).
pub const LOSS_NAMES: [&str; 3] = ["ssd", "focal", "softmax_focal"];

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
    /// Default loss: "ssd", "focal" or "softmax_focal". Default: "focal" for `head: "retina"`,
    /// else "ssd".
    pub loss: String,
    pub anchors: AnchorSpec,
    pub matching: MatchingSpec,
    pub coder: CoderSpec,
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
            .optional("loss", |n| {
                let s = n.string()?;
                if !LOSS_NAMES.contains(&s.as_str()) {
                    return Err(n.fail(format!("expected one of {LOSS_NAMES:?}, got {s:?}")));
                }
                Ok(s)
            })?
            .unwrap_or_else(|| if head == "retina" { "focal" } else { "ssd" }.to_string());
        let anchors = root.required("anchors", parse_anchors)?;
        let matching = root
            .optional("matching", parse_matching)?
            .unwrap_or_else(|| anchors.default_matching());
        let coder = root.optional("coder", parse_coder)?.unwrap_or(CoderSpec {
            variances: None,
            decode_clamp: Some(DEFAULT_DECODE_CLAMP),
        });
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
    /// (sigmoid focal loss).
    pub fn has_background_column(&self) -> bool {
        self.loss != "focal"
    }
}

impl AnchorSpec {
    pub fn feature_maps(&self) -> &[GridSize] {
        match self {
            AnchorSpec::Ssd(s) => &s.feature_maps,
            AnchorSpec::Retina(r) => &r.feature_maps,
        }
    }

    /// The spec's steps (SSD) or strides (RetinaNet), one per map.
    pub fn steps(&self) -> &[Step] {
        match self {
            AnchorSpec::Ssd(s) => &s.steps,
            AnchorSpec::Retina(r) => &r.strides,
        }
    }

    pub fn clip(&self) -> bool {
        match self {
            AnchorSpec::Ssd(s) => s.clip,
            AnchorSpec::Retina(r) => r.clip,
        }
    }

    /// The matching of the style's reference: torchcv bipartite + 0.5 for SSD, max-IoU
    /// 0.5 / 0.4 (torchvision band) for RetinaNet.
    pub fn default_matching(&self) -> MatchingSpec {
        match self {
            AnchorSpec::Ssd(_) => MatchingSpec::Bipartite { threshold: 0.5 },
            AnchorSpec::Retina(_) => MatchingSpec::MaxIou {
                pos_iou: 0.5,
                neg_iou: 0.4,
                band: IgnoreBand::Torchvision,
                allow_low_quality: false,
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

fn parse_anchors(n: Node<'_>) -> Result<AnchorSpec> {
    if n.tag("style", &["ssd", "retina"])? == "ssd" {
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

fn parse_matching(n: Node<'_>) -> Result<MatchingSpec> {
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
    let pos_iou = o.optional("pos_iou", iou)?.unwrap_or(0.5);
    let neg_iou = o.optional("neg_iou", iou)?.unwrap_or(0.4);
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
        .unwrap_or(IgnoreBand::Torchvision);
    let allow_low_quality = o
        .optional("allow_low_quality", |v| v.boolean())?
        .unwrap_or(false);
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
