//! Faster R-CNN's region proposal network, network side (torchvision
//! `models/detection/rpn.py` `RPNHead`) on a spec's backbone maps: the small backbone
//! ([`super::small::SmallBackbone`], `models/rpn_small.json`) or a ResNet with torchvision's FPN
//! (P2-P6, [`super::retina::TorchvisionFpn`], `models/rpn_r50_fpn.json`: the layout of
//! torchvision's `fasterrcnn_resnet50_fpn`).
//!
//! ```text
//! torchvision RPNHead.forward                          RpnHead::forward
//! t = self.conv(feature)   (3x3 conv + ReLU)           t = relu(conv(x))
//! logits = self.cls_logits(t)   [N, k, H, W]           objectness [N, k, H, W]
//! bbox_reg = self.bbox_pred(t)  [N, 4k, H, W]          deltas [N, 4k, H, W]
//! concat_box_prediction_layers(logits, bbox_reg)       flatten_maps: [N, A, 1], [N, A, 4]
//! ```
//!
//! torchvision's `permute_and_flatten` orders each level's outputs by row, column, anchor: the
//! order of [`super::flatten_maps`] and of `tchcv anchors`. So an RPN is a [`super::Detector`]
//! whose `loc_preds` are the deltas `[N, A, 4]` and whose `cls_preds` are the objectness logits
//! `[N, A, 1]` (one column, whatever the dataset's classes: proposals are class-agnostic).
//!
//! The head is torchvision's: one 3x3 conv (with bias) + ReLU, then 1x1 convs to `k` logits and
//! `4k` deltas, every weight `N(0, 0.01)`, every bias 0 (`network.init: "torch"`: PyTorch's
//! defaults). torchvision shares one head across the levels, which needs the same channels and
//! anchors per cell on every level: so does tchcv when the maps allow it (`rpn.head.conv.0.0`,
//! `rpn.head.cls_logits`, `rpn.head.bbox_pred`, torchvision's names); the small backbone's maps
//! have 64 and 128 channels, so there each map gets its own head (`rpn.head.{i}.conv.0.0`, ...).
//!
//! Variables: small: `extractor.*` (as the small SSD), ResNet-FPN: torchvision's
//! `fasterrcnn_resnet50_fpn` names, `backbone.body.*` (the ResNet), `backbone.fpn.inner_blocks.
//! {i}.0`, `backbone.fpn.layer_blocks.{i}.0`, and the head.

use anyhow::Result;
use serde::Deserialize;
use tch::{nn, Tensor};

use super::layers::{relu, BiasInit, Conv2d, ConvOpts, InitStyle, WeightInit};
use super::resnet::{self, ResNet, ResNetOptions};
use super::retina::{resnet_depth, TorchvisionFpn};
use super::small::{SmallBackbone, SmallBackboneOptions};
use super::ssd::check_map_count;
use super::{MapOutput, MultiBoxNet};
use crate::spec::ModelSpec;

/// The path of the RPN head under a detector's root: torchvision's `rpn.head`.
const HEAD_PATH: [&str; 2] = ["rpn", "head"];

/// torchvision's `RPNHead` for one set of maps: a 3x3 conv + ReLU, a 1x1 conv to `k`
/// objectness logits and one to `4k` deltas.
#[derive(Debug)]
pub struct RpnHead {
    conv: Conv2d,
    cls_logits: Conv2d,
    bbox_pred: Conv2d,
}

impl RpnHead {
    /// channels: of the maps it runs on; anchors: `k` per cell. Variables under `path`
    /// (`conv.0.0`, `cls_logits`, `bbox_pred`).
    pub fn new(path: &nn::Path, channels: i64, anchors: i64, init: InitStyle) -> Result<Self> {
        let opts = ConvOpts::new(init.or_torch((WeightInit::Normal(0.01), BiasInit::Const(0.0))));
        Ok(Self {
            conv: Conv2d::new(
                path / "conv" / 0 / 0,
                channels,
                channels,
                3,
                opts.padding(1),
            )?,
            cls_logits: Conv2d::new(path / "cls_logits", channels, anchors, 1, opts)?,
            bbox_pred: Conv2d::new(path / "bbox_pred", channels, 4 * anchors, 1, opts)?,
        })
    }

    /// x: `[N, C, h, w]` -> objectness `[N, k, h, w]` and deltas `[N, 4k, h, w]`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = relu(&self.conv.forward(x)?)?;
        Ok((self.cls_logits.forward(&t)?, self.bbox_pred.forward(&t)?))
    }
}

/// The RPN heads over a backbone's maps: one shared head (torchvision) when every map has the
/// same channels and anchors per cell, else one per map.
#[derive(Debug)]
pub struct RpnHeads {
    heads: Vec<RpnHead>,
}

impl RpnHeads {
    /// in_channels, anchors_per_cell: one per map. Variables under `root` / `rpn.head`.
    pub fn new(
        root: &nn::Path,
        in_channels: &[i64],
        anchors_per_cell: &[i64],
        init: InitStyle,
    ) -> Result<Self> {
        let path = root / HEAD_PATH[0] / HEAD_PATH[1];
        if in_channels.is_empty() || in_channels.len() != anchors_per_cell.len() {
            anyhow::bail!(
                "RPN heads: {} maps' channels for {} maps' anchors",
                in_channels.len(),
                anchors_per_cell.len()
            );
        }
        let shared = in_channels.windows(2).all(|w| w[0] == w[1])
            && anchors_per_cell.windows(2).all(|w| w[0] == w[1]);
        let heads = if shared {
            vec![RpnHead::new(
                &path,
                in_channels[0],
                anchors_per_cell[0],
                init,
            )?]
        } else {
            in_channels
                .iter()
                .zip(anchors_per_cell)
                .enumerate()
                .map(|(i, (&c, &k))| RpnHead::new(&(&path / i), c, k, init))
                .collect::<Result<_>>()?
        };
        Ok(Self { heads })
    }

    /// Whether one head runs on every map (torchvision's layout).
    pub fn shared(&self) -> bool {
        self.heads.len() == 1
    }

    /// maps: `(name, [N, c_i, h_i, w_i])` -> per map `loc` = deltas `[N, 4k, h, w]`, `cls` =
    /// objectness `[N, k, h, w]`.
    pub fn forward(&self, maps: Vec<(String, Tensor)>) -> Result<Vec<MapOutput>> {
        maps.into_iter()
            .enumerate()
            .map(|(i, (name, x))| {
                let at = if self.shared() { 0 } else { i };
                let Some(head) = self.heads.get(at) else {
                    anyhow::bail!("RPN heads: map {i} ({name}) has no head");
                };
                let (cls, loc) = head.forward(&x)?;
                Ok(MapOutput { name, loc, cls })
            })
            .collect()
    }
}

/// `network` options of the small RPN: the small backbone's ([`SmallBackboneOptions`]).
pub type RpnSmallOptions = SmallBackboneOptions;

/// The small backbone with RPN heads (`models/rpn_small.json`).
#[derive(Debug)]
pub struct RpnSmall {
    backbone: SmallBackbone,
    heads: RpnHeads,
}

impl RpnSmall {
    /// `columns` must be 1 (objectness).
    pub fn new(
        path: &nn::Path,
        spec: &ModelSpec,
        columns: i64,
        options: RpnSmallOptions,
        origin: &str,
    ) -> Result<Self> {
        check_one_column(columns, origin)?;
        let allowed = SmallBackbone::map_counts();
        let n_maps = check_map_count(spec, &allowed, "the small backbone", origin)?;
        let backbone = SmallBackbone::new(&(path / "extractor"), n_maps, &options, origin)?;
        let per_cell = spec.anchors_per_cell();
        let heads = RpnHeads::new(path, backbone.out_channels(), &per_cell, options.init)?;
        Ok(Self { backbone, heads })
    }
}

impl MultiBoxNet for RpnSmall {
    fn heads_t(&self, images: &Tensor, train: bool) -> Result<Vec<MapOutput>> {
        self.heads.forward(self.backbone.forward_t(images, train)?)
    }

    fn features_heads_t(
        &self,
        images: &Tensor,
        train: bool,
    ) -> Result<(Vec<Tensor>, Vec<MapOutput>)> {
        with_features(self.backbone.forward_t(images, train)?, &self.heads)
    }

    fn feature_channels(&self) -> Option<Vec<i64>> {
        Some(self.backbone.out_channels().to_vec())
    }

    fn probe(&self) -> &Tensor {
        self.backbone.probe()
    }
}

/// `network` options of the ResNet-FPN RPN.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpnResNetOptions {
    pub init: InitStyle,
    /// 18, 34, 50, 101, 152 (default: from the backbone name, else 50).
    pub depth: Option<i64>,
    /// The FPN's width (torchvision: 256).
    pub fpn_channels: i64,
    /// torchvision's `FrozenBatchNorm2d` (what `fasterrcnn_resnet50_fpn` uses with pretrained
    /// weights).
    pub frozen_bn: bool,
}

impl Default for RpnResNetOptions {
    fn default() -> Self {
        Self {
            init: InitStyle::default(),
            depth: None,
            fpn_channels: 256,
            frozen_bn: false,
        }
    }
}

/// The VarStore prefixes of the ResNet-FPN RPN's backbone (the ResNet, `backbone.body.*`).
pub fn resnet_backbone_prefixes() -> Vec<String> {
    resnet::STEM_AND_STAGES
        .iter()
        .map(|s| format!("backbone.body.{s}"))
        .collect()
}

/// torchvision's Faster R-CNN first stage: ResNet (`backbone.body`), FPN on C2-C5 with the
/// max-pool level (`backbone.fpn`: P2-P6, or P2-P5 for a spec of 4 maps), one shared head.
#[derive(Debug)]
pub struct RpnResNetFpn {
    body: ResNet,
    fpn: TorchvisionFpn,
    heads: RpnHeads,
    /// Each level's channels (the FPN's width).
    channels: Vec<i64>,
}

impl RpnResNetFpn {
    /// `columns` must be 1 (objectness).
    pub fn new(
        path: &nn::Path,
        spec: &ModelSpec,
        columns: i64,
        o: RpnResNetOptions,
        origin: &str,
    ) -> Result<Self> {
        check_one_column(columns, origin)?;
        let levels = check_map_count(spec, &[4, 5], "the FPN (P2-P5, or P2-P6)", origin)?;
        if o.fpn_channels < 1 {
            crate::bail_input!(
                "{origin}: network.fpn_channels: expected a positive number, got {}",
                o.fpn_channels
            );
        }
        let (kind, blocks) = resnet::layout(resnet_depth(spec, o.depth, origin)?)
            .ok_or_else(|| crate::bad_input(format!("{origin}: unknown ResNet depth")))?;
        let backbone = path / "backbone";
        let resnet_options = ResNetOptions {
            init: o.init,
            frozen_bn: o.frozen_bn,
        };
        let body = ResNet::new(&(&backbone / "body"), kind, blocks, resnet_options)?;
        let (fpn_path, f) = (&backbone / "fpn", o.fpn_channels);
        let fpn = TorchvisionFpn::new(&fpn_path, &body.stage_channels(), f, levels == 5, o.init)?;
        let per_cell = spec.anchors_per_cell();
        let channels = vec![f; levels];
        let heads = RpnHeads::new(path, &channels, &per_cell, o.init)?;
        Ok(Self {
            body,
            fpn,
            heads,
            channels,
        })
    }
}

impl RpnResNetFpn {
    /// `(P2, [N, C, h, w]), (P3, ..), ..`
    fn pyramid(&self, images: &Tensor, train: bool) -> Result<Vec<(String, Tensor)>> {
        let c = self.body.forward_stages(images, train)?;
        let maps = self.fpn.forward(&c)?;
        Ok(maps
            .into_iter()
            .enumerate()
            .map(|(i, p)| (format!("P{}", i + 2), p))
            .collect())
    }
}

impl MultiBoxNet for RpnResNetFpn {
    fn heads_t(&self, images: &Tensor, train: bool) -> Result<Vec<MapOutput>> {
        self.heads.forward(self.pyramid(images, train)?)
    }

    fn features_heads_t(
        &self,
        images: &Tensor,
        train: bool,
    ) -> Result<(Vec<Tensor>, Vec<MapOutput>)> {
        with_features(self.pyramid(images, train)?, &self.heads)
    }

    fn feature_channels(&self) -> Option<Vec<i64>> {
        Some(self.channels.clone())
    }

    fn probe(&self) -> &Tensor {
        self.body.probe()
    }
}

/// The maps (what Faster R-CNN's RoI heads pool from) and the heads' outputs on them.
fn with_features(
    maps: Vec<(String, Tensor)>,
    heads: &RpnHeads,
) -> Result<(Vec<Tensor>, Vec<MapOutput>)> {
    let features = maps.iter().map(|(_, m)| m.shallow_clone()).collect();
    Ok((features, heads.forward(maps)?))
}

/// An RPN scores one column (objectness), whatever the dataset's classes.
fn check_one_column(columns: i64, origin: &str) -> Result<()> {
    if columns != 1 {
        crate::bail_input!(
            "{origin}: the RPN head scores 1 column (objectness), asked for {columns}"
        );
    }
    Ok(())
}
