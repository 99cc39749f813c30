//! RetinaNet (torchcv `models/retinanet/fpn.py`, `net.py`): a ResNet ([`super::resnet`]), an
//! FPN with levels P3 to P7, and two heads shared across levels: 4 x (3x3 conv + ReLU) and a
//! 3x3 conv to `k * 4` box or `k * C` class channels (no background column: sigmoid focal
//! loss).
//!
//! ```text
//! torchcv FPN.forward                                  tchcv Fpn::forward
//! p6 = self.conv6(c5)                                  p6 = conv6(c5)   (network.p6_from: "c5")
//! p7 = self.conv7(F.relu(p6))                          p7 = conv7(relu(p6))
//! p5 = self.toplayer(c5)                               p5 = toplayer(c5)
//! p4 = self._upsample_add(p5, self.latlayer1(c4))      p4 = upsample_add(p5, latlayer1(c4))
//! p3 = self._upsample_add(p4, self.latlayer2(c3))      p3 = upsample_add(p4, latlayer2(c3))
//! p4 = self.smooth1(p4); p3 = self.smooth2(p3)         smooth1, smooth2
//! ```
//!
//! Differences from torchcv, each a `network` option:
//! - `upsample`: `"nearest"` (default: the FPN paper, Detectron, torchvision) or `"bilinear"`
//!   (torchcv's `F.upsample(mode='bilinear')`, `align_corners=False`), to the lateral's size.
//! - `p6_from`: `"c5"` (default: the RetinaNet paper, torchcv and torchvision's
//!   `retinanet_resnet50_fpn_v2`) or `"p5"` (torchvision's v1 `retinanet_resnet50_fpn`).
//! - `head_norm`: `"none"` (default) or `"group_norm"` (32 groups after each head conv, as in
//!   torchvision's v2 heads).
//! - The classification conv's bias starts at `-log((1 - pi) / pi)` with
//!   `pi = network.prior_prob` (0.01), as in the paper; torchcv left PyTorch's default.
//!
//! Other options: `depth` (18, 34, 50, 101, 152; default from the backbone name,
//! `"resnet50"` -> 50), `fpn_channels` (256), `head_convs` (4), `frozen_bn` (false: batch norms
//! train; true: torchvision's `FrozenBatchNorm2d`, for fine-tuning ImageNet weights with small
//! batches), `init`.
//!
//! Init (`"kaiming"`): the ResNet as torchvision's; FPN convs `kaiming_uniform_(a=1)` with zero
//! bias (torchvision's FPN); head convs `N(0, 0.01)` with zero bias, the class bias at the
//! prior (the paper's). `"torch"`: PyTorch's defaults, the class bias still at the prior.
//! Names follow torchcv: `fpn.conv1`, `fpn.layer1.0.conv1`, `fpn.toplayer`, `fpn.latlayer1`,
//! `fpn.smooth1`, `fpn.conv6`, `loc_head.{0,2,4,6,8}`, `cls_head.*` (the `nn.Sequential`
//! indices; with group norm: conv at 3i, norm at 3i+1, the last conv at 3 * head_convs).

use anyhow::Result;
use serde::Deserialize;
use tch::{nn, Tensor};

use super::layers::{relu, BiasInit, Conv2d, ConvOpts, GroupNorm, InitStyle, WeightInit};
use super::resnet::{self, ResNet, ResNetOptions};
use super::ssd::check_map_count;
use super::{prior_bias, MapOutput, MultiBoxNet};
use crate::spec::ModelSpec;

/// The VarStore prefixes of the ResNet backbone.
pub const BACKBONE_PREFIXES: [&str; 6] = [
    "fpn.conv1.",
    "fpn.bn1.",
    "fpn.layer1.",
    "fpn.layer2.",
    "fpn.layer3.",
    "fpn.layer4.",
];

/// Where P6 is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum P6From {
    #[default]
    C5,
    P5,
}

/// How the top-down path upsamples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upsample {
    #[default]
    Nearest,
    Bilinear,
}

/// The norm after each head conv.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadNorm {
    #[default]
    None,
    GroupNorm,
}

/// `network` options of a RetinaNet.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetinaOptions {
    pub init: InitStyle,
    pub depth: Option<i64>,
    pub fpn_channels: i64,
    pub head_convs: usize,
    pub head_norm: HeadNorm,
    pub p6_from: P6From,
    pub upsample: Upsample,
    pub frozen_bn: bool,
    pub prior_prob: f64,
}

impl Default for RetinaOptions {
    fn default() -> Self {
        Self {
            init: InitStyle::default(),
            depth: None,
            fpn_channels: 256,
            head_convs: 4,
            head_norm: HeadNorm::default(),
            p6_from: P6From::default(),
            upsample: Upsample::default(),
            frozen_bn: false,
            prior_prob: 0.01,
        }
    }
}

/// torchcv's FPN on C3-C5: P3-P5 top-down, P6 and P7 by stride-2 convs.
#[derive(Debug)]
pub struct Fpn {
    toplayer: Conv2d,
    latlayer1: Conv2d,
    latlayer2: Conv2d,
    smooth1: Conv2d,
    smooth2: Conv2d,
    conv6: Option<Conv2d>,
    conv7: Option<Conv2d>,
    p6_from: P6From,
    upsample: Upsample,
}

impl Fpn {
    /// c: channels of C3, C4, C5; levels: 3 (P3-P5), 4 (to P6) or 5 (to P7).
    pub fn new(path: &nn::Path, c: [i64; 3], levels: usize, o: &RetinaOptions) -> Result<Self> {
        let f = o.fpn_channels;
        let init = o
            .init
            .or_torch((WeightInit::KaimingUniformA1, BiasInit::Const(0.0)));
        let conv1 = ConvOpts::new(init);
        let conv3 = conv1.padding(1);
        let down = conv3.stride(2);
        let p6_in = match o.p6_from {
            P6From::C5 => c[2],
            P6From::P5 => f,
        };
        Ok(Self {
            toplayer: Conv2d::new(path / "toplayer", c[2], f, 1, conv1)?,
            latlayer1: Conv2d::new(path / "latlayer1", c[1], f, 1, conv1)?,
            latlayer2: Conv2d::new(path / "latlayer2", c[0], f, 1, conv1)?,
            smooth1: Conv2d::new(path / "smooth1", f, f, 3, conv3)?,
            smooth2: Conv2d::new(path / "smooth2", f, f, 3, conv3)?,
            conv6: (levels >= 4)
                .then(|| Conv2d::new(path / "conv6", p6_in, f, 3, down))
                .transpose()?,
            conv7: (levels >= 5)
                .then(|| Conv2d::new(path / "conv7", f, f, 3, down))
                .transpose()?,
            p6_from: o.p6_from,
            upsample: o.upsample,
        })
    }

    fn upsample_add(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        upsample_add(x, y, self.upsample)
    }

    /// C3, C4, C5 -> P3, P4, P5 (and P6, P7), each `[N, fpn_channels, h, w]`.
    pub fn forward(&self, [c3, c4, c5]: &[Tensor; 3]) -> Result<Vec<Tensor>> {
        let p5 = self.toplayer.forward(c5)?;
        let p4 = self.upsample_add(&p5, &self.latlayer1.forward(c4)?)?;
        let p3 = self.upsample_add(&p4, &self.latlayer2.forward(c3)?)?;
        let p4 = self.smooth1.forward(&p4)?;
        let p3 = self.smooth2.forward(&p3)?;
        let mut levels = vec![p3, p4];
        if let Some(conv6) = &self.conv6 {
            let p6 = conv6.forward(match self.p6_from {
                P6From::C5 => c5,
                P6From::P5 => &p5,
            })?;
            levels.push(p5);
            if let Some(conv7) = &self.conv7 {
                let p7 = conv7.forward(&relu(&p6)?)?;
                levels.push(p6);
                levels.push(p7);
            } else {
                levels.push(p6);
            }
        } else {
            levels.push(p5);
        }
        Ok(levels)
    }
}

/// `x` upsampled to `y`'s size, plus `y` (torchcv's `_upsample_add`; torchvision's top-down
/// step with `"nearest"`).
fn upsample_add(x: &Tensor, y: &Tensor, mode: Upsample) -> Result<Tensor> {
    let size = y.size();
    let hw = [size[2], size[3]];
    let up = match mode {
        Upsample::Nearest => x.f_upsample_nearest2d(hw, None, None)?,
        Upsample::Bilinear => x.f_upsample_bilinear2d(hw, false, None, None)?,
    };
    Ok(up.f_add(y)?)
}

/// torchvision's `FeaturePyramidNetwork` (`ops/feature_pyramid_network.py`), as Faster R-CNN's
/// `resnet_fpn_backbone` builds it: per input level a 1x1 lateral (`inner_blocks.{i}.0`) and a
/// 3x3 output conv on every level, P5 included (`layer_blocks.{i}.0`), nearest top-down
/// upsampling to each lateral's size, and with `max_pool_level` torchvision's
/// `LastLevelMaxPool`: one more level `max_pool2d(P_last, 1, stride 2)`. Convs start at
/// `kaiming_uniform_(a=1)`, bias 0 (torchvision's). torchcv's [`Fpn`] differs: no 3x3 on P5,
/// conv P6/P7.
#[derive(Debug)]
pub struct TorchvisionFpn {
    inner_blocks: Vec<Conv2d>,
    layer_blocks: Vec<Conv2d>,
    max_pool_level: bool,
}

impl TorchvisionFpn {
    /// in_channels: per input level (C2..C5: 256, 512, 1024, 2048 for ResNet-50); out: the FPN
    /// width (256).
    pub fn new(
        path: &nn::Path,
        in_channels: &[i64],
        out: i64,
        max_pool_level: bool,
        init: InitStyle,
    ) -> Result<Self> {
        let conv1 =
            ConvOpts::new(init.or_torch((WeightInit::KaimingUniformA1, BiasInit::Const(0.0))));
        let mut inner_blocks = Vec::with_capacity(in_channels.len());
        let mut layer_blocks = Vec::with_capacity(in_channels.len());
        for (i, &c) in in_channels.iter().enumerate() {
            inner_blocks.push(Conv2d::new(
                path / "inner_blocks" / i / 0,
                c,
                out,
                1,
                conv1,
            )?);
            let conv3 = conv1.padding(1);
            layer_blocks.push(Conv2d::new(
                path / "layer_blocks" / i / 0,
                out,
                out,
                3,
                conv3,
            )?);
        }
        Ok(Self {
            inner_blocks,
            layer_blocks,
            max_pool_level,
        })
    }

    /// The levels it gives: one per input, plus the max-pool level.
    pub fn levels(&self) -> usize {
        self.inner_blocks.len() + usize::from(self.max_pool_level)
    }

    /// C2..C5 (as many as it was built for) -> P2..P5 (and P6), each `[N, out, h, w]`.
    pub fn forward(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        let n = self.inner_blocks.len();
        if features.len() != n {
            anyhow::bail!("the FPN takes {n} feature maps, got {}", features.len());
        }
        let mut last_inner = self.inner_blocks[n - 1].forward(&features[n - 1])?;
        let mut results = vec![self.layer_blocks[n - 1].forward(&last_inner)?];
        for i in (0..n - 1).rev() {
            let lateral = self.inner_blocks[i].forward(&features[i])?;
            last_inner = upsample_add(&last_inner, &lateral, Upsample::Nearest)?;
            results.push(self.layer_blocks[i].forward(&last_inner)?);
        }
        results.reverse();
        if self.max_pool_level {
            let top = &results[n - 1];
            results.push(super::layers::max_pool(top, 1, 2, 0, false)?);
        }
        Ok(results)
    }
}

/// A RetinaNet head: `head_convs` x (3x3 conv [+ group norm] + ReLU), then a 3x3 conv to
/// `out` channels, shared by every level.
#[derive(Debug)]
pub struct RetinaHead {
    convs: Vec<(Conv2d, Option<GroupNorm>)>,
    out: Conv2d,
}

impl RetinaHead {
    pub fn new(
        path: &nn::Path,
        out: i64,
        o: &RetinaOptions,
        out_bias: Option<f64>,
    ) -> Result<Self> {
        let f = o.fpn_channels;
        let gn = o.head_norm == HeadNorm::GroupNorm;
        let step = if gn { 3 } else { 2 };
        let init = o
            .init
            .or_torch((WeightInit::Normal(0.01), BiasInit::Const(0.0)));
        let conv3 = ConvOpts::new(init).padding(1);
        let mut convs = Vec::with_capacity(o.head_convs);
        for i in 0..o.head_convs {
            let conv = Conv2d::new(path / (step * i), f, f, 3, conv3)?;
            let norm = if gn {
                Some(GroupNorm::new(path / (step * i + 1), 32, f)?)
            } else {
                None
            };
            convs.push((conv, norm));
        }
        let out_opts = match out_bias {
            Some(b) => ConvOpts {
                bias_init: BiasInit::Const(b),
                ..conv3
            },
            None => conv3,
        };
        let out = Conv2d::new(path / (step * o.head_convs), f, out, 3, out_opts)?;
        Ok(Self { convs, out })
    }

    /// x: `[N, F, h, w]` -> `[N, out, h, w]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for (conv, norm) in &self.convs {
            h = conv.forward(&h)?;
            if let Some(norm) = norm {
                h = norm.forward(&h)?;
            }
            h = relu(&h)?;
        }
        self.out.forward(&h)
    }
}

/// The ResNet depth a spec asks for: `"resnet50"` -> 50, or `network.depth` (`option`,
/// default 50) for `"resnet"`.
pub(crate) fn resnet_depth(spec: &ModelSpec, option: Option<i64>, origin: &str) -> Result<i64> {
    let named = spec.backbone.strip_prefix("resnet").unwrap_or("");
    let from_name = if named.is_empty() {
        None
    } else {
        match named.parse::<i64>() {
            Ok(d) => Some(d),
            Err(_) => crate::bail_input!(
                "{origin}: backbone {:?}: expected \"resnet\" or \"resnet<depth>\"",
                spec.backbone
            ),
        }
    };
    let depth = match (from_name, option) {
        (Some(a), Some(b)) if a != b => crate::bail_input!(
            "{origin}: network.depth {b} contradicts backbone {:?}",
            spec.backbone
        ),
        (Some(d), _) | (None, Some(d)) => d,
        (None, None) => 50,
    };
    if resnet::layout(depth).is_none() {
        crate::bail_input!("{origin}: ResNet depth {depth}: expected 18, 34, 50, 101 or 152");
    }
    Ok(depth)
}

/// torchcv's RetinaNet: ResNet + FPN + shared heads.
#[derive(Debug)]
pub struct RetinaNet {
    backbone: ResNet,
    fpn: Fpn,
    loc_head: RetinaHead,
    cls_head: RetinaHead,
}

impl RetinaNet {
    pub fn new(
        path: &nn::Path,
        spec: &ModelSpec,
        columns: i64,
        o: RetinaOptions,
        origin: &str,
    ) -> Result<Self> {
        let levels = check_map_count(
            spec,
            &[3, 4, 5],
            "the RetinaNet FPN (P3-P5 .. P3-P7)",
            origin,
        )?;
        let per_cell = spec.anchors_per_cell();
        let k = per_cell[0];
        if per_cell.iter().any(|&x| x != k) {
            crate::bail_input!(
                "{origin}: the RetinaNet heads are shared across levels, so every level needs \
                 the same anchors per cell; the spec gives {per_cell:?}"
            );
        }
        if o.fpn_channels < 1 || (o.head_norm == HeadNorm::GroupNorm && o.fpn_channels % 32 != 0) {
            crate::bail_input!(
                "{origin}: network.fpn_channels: expected a positive number (a multiple of 32 \
                 with group norm), got {}",
                o.fpn_channels
            );
        }
        if !(o.prior_prob > 0.0 && o.prior_prob < 1.0) {
            crate::bail_input!(
                "{origin}: network.prior_prob: expected a number in (0, 1), got {}",
                o.prior_prob
            );
        }
        let (kind, blocks) = resnet::layout(resnet_depth(spec, o.depth, origin)?)
            .ok_or_else(|| crate::bad_input(format!("{origin}: unknown ResNet depth")))?;
        let fpn_path = path / "fpn";
        let backbone = ResNet::new(
            &fpn_path,
            kind,
            blocks,
            ResNetOptions {
                init: o.init,
                frozen_bn: o.frozen_bn,
            },
        )?;
        let fpn = Fpn::new(&fpn_path, backbone.out_channels(), levels, &o)?;
        let loc_head = RetinaHead::new(&(path / "loc_head"), k * 4, &o, None)?;
        let prior = Some(prior_bias(o.prior_prob));
        let cls_head = RetinaHead::new(&(path / "cls_head"), k * columns, &o, prior)?;
        Ok(Self {
            backbone,
            fpn,
            loc_head,
            cls_head,
        })
    }
}

impl MultiBoxNet for RetinaNet {
    fn heads_t(&self, images: &Tensor, train: bool) -> Result<Vec<MapOutput>> {
        let c = self.backbone.forward_t(images, train)?;
        self.fpn
            .forward(&c)?
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                Ok(MapOutput {
                    name: format!("P{}", i + 3),
                    loc: self.loc_head.forward(&p)?,
                    cls: self.cls_head.forward(&p)?,
                })
            })
            .collect()
    }

    fn probe(&self) -> &Tensor {
        self.backbone.probe()
    }
}
