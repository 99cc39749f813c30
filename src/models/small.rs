//! A small SSD for CPUs (`models/ssd_small.json`, `"backbone": "small"`): conv-BN-ReLU
//! blocks, 16 to 128 channels, taps at strides 8, 16 and 32, then extra stride-2 layers, with
//! torchcv's SSD heads ([`super::ssd::SsdHead`]). For a 160x160 input the maps are 20, 10, 5
//! and 3 cells wide.
//!
//! ```text
//! stem        3 -> 16, 3x3 stride 2                     80x80
//! stage 0    16 -> 32, two blocks (the first stride 2)  40x40
//! stage 1    32 -> 64                                   20x20  map 0 (stride 8)
//! stage 2    64 -> 128                                  10x10  map 1 (stride 16)
//! stage 3   128 -> 128                                   5x5   map 2 (stride 32)
//! extras    128 -> 64 (1x1) -> 128 (3x3, stride 2, pad 1)  3x3   map 3, one per further map
//! ```
//!
//! A block is a depthwise 3x3 conv-BN-ReLU followed by a pointwise 1x1 conv-BN-ReLU
//! (MobileNet's), or with `network.depthwise: false` a plain 3x3 conv-BN-ReLU (more parameters,
//! slower on CPU; the stem is always plain). `network.width` multiplies every
//! channel count (rounded to a multiple of 8, at least 8); `network.bn: false` drops the batch
//! norms (the convs then get a bias). Variables: `extractor.stem.{conv,bn}`,
//! `extractor.layers.{i}.{conv,bn}` (depthwise: `.dw.` and `.pw.`), `extractor.extras.{j}.
//! {reduce,expand}.{conv,bn}`, and the heads' `loc_layers.{i}`, `cls_layers.{i}`.
//!
//! Init: Kaiming-normal (fan-out) convolutions, batch norm 1/0, Xavier-uniform heads with zero
//! bias (`network.init: "torch"`: PyTorch's defaults); without a background column (sigmoid
//! focal loss) the class bias starts at RetinaNet's prior, `network.prior_prob` (0.01), as in
//! [`super::ssd`].

use anyhow::Result;
use serde::Deserialize;
use tch::{nn, Tensor};

use super::layers::{relu, BatchNorm2d, Conv2d, ConvOpts, InitStyle};
use super::ssd::{check_map_count, class_prior, SsdHead};
use super::{MapOutput, MultiBoxNet};
use crate::spec::ModelSpec;

/// The VarStore prefixes of the small backbone.
pub const BACKBONE_PREFIXES: [&str; 1] = ["extractor."];

/// Stem output channels (before `width`).
const STEM: i64 = 16;
/// `(out channels, blocks)` per stage; the first block of each stage has stride 2.
const STAGES: [(i64, usize); 4] = [(32, 2), (64, 2), (128, 2), (128, 2)];
/// The stages whose outputs are feature maps (strides 8, 16, 32).
const TAPPED_FROM: usize = 1;

/// `network` options of the small SSD.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmallOptions {
    pub init: InitStyle,
    /// Channel multiplier (1.0: 16 to 128 channels).
    pub width: f64,
    /// Depthwise-separable blocks (default) instead of plain 3x3 convolutions.
    pub depthwise: bool,
    /// Batch norm after every convolution.
    pub bn: bool,
    /// Without a background column: the foreground probability the class bias starts at.
    pub prior_prob: f64,
}

impl Default for SmallOptions {
    fn default() -> Self {
        Self {
            init: InitStyle::default(),
            width: 1.0,
            depthwise: true,
            bn: true,
            prior_prob: 0.01,
        }
    }
}

/// A conv, an optional batch norm, a ReLU (`{path}.conv`, `{path}.bn`).
#[derive(Debug)]
struct ConvBnRelu {
    conv: Conv2d,
    bn: Option<BatchNorm2d>,
}

impl ConvBnRelu {
    fn new(
        path: &nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        opts: ConvOpts,
        bn: bool,
    ) -> Result<Self> {
        let opts = if bn { opts.no_bias() } else { opts };
        Ok(Self {
            conv: Conv2d::new(path / "conv", c_in, c_out, k, opts)?,
            bn: if bn {
                Some(BatchNorm2d::new(path / "bn", c_out, false)?)
            } else {
                None
            },
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.conv.forward(x)?;
        let h = match &self.bn {
            Some(bn) => bn.forward_t(&h, train)?,
            None => h,
        };
        relu(&h)
    }
}

/// A plain 3x3 block, or a depthwise 3x3 + pointwise 1x1 pair.
#[derive(Debug)]
enum Block {
    Plain(ConvBnRelu),
    Separable { dw: ConvBnRelu, pw: ConvBnRelu },
}

impl Block {
    fn new(
        path: &nn::Path,
        c_in: i64,
        c_out: i64,
        stride: i64,
        o: &SmallBackboneOptions,
    ) -> Result<Self> {
        let conv3 = ConvOpts::new(o.init.hidden()).stride(stride).padding(1);
        Ok(if o.depthwise {
            Block::Separable {
                dw: ConvBnRelu::new(&(path / "dw"), c_in, c_in, 3, conv3.groups(c_in), o.bn)?,
                pw: ConvBnRelu::new(
                    &(path / "pw"),
                    c_in,
                    c_out,
                    1,
                    ConvOpts::new(o.init.hidden()),
                    o.bn,
                )?,
            }
        } else {
            Block::Plain(ConvBnRelu::new(path, c_in, c_out, 3, conv3, o.bn)?)
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Block::Plain(unit) => unit.forward_t(x, train),
            Block::Separable { dw, pw } => pw.forward_t(&dw.forward_t(x, train)?, train),
        }
    }
}

/// `c * width`, rounded to a multiple of 8, at least 8.
fn scaled(c: i64, width: f64) -> i64 {
    (((c as f64 * width) / 8.0).round() as i64 * 8).max(8)
}

/// The small backbone's layout (the SSD's and the RPN's `network` options but the head's).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmallBackboneOptions {
    pub init: InitStyle,
    /// Channel multiplier (1.0: 16 to 128 channels).
    pub width: f64,
    /// Depthwise-separable blocks (default) instead of plain 3x3 convolutions.
    pub depthwise: bool,
    /// Batch norm after every convolution.
    pub bn: bool,
}

impl Default for SmallBackboneOptions {
    fn default() -> Self {
        let o = SmallOptions::default();
        o.backbone()
    }
}

impl SmallOptions {
    /// The backbone's part of the options.
    pub fn backbone(&self) -> SmallBackboneOptions {
        SmallBackboneOptions {
            init: self.init,
            width: self.width,
            depthwise: self.depthwise,
            bn: self.bn,
        }
    }
}

/// The small backbone (the module docs' stem, stages and extras), shared by the small SSD and
/// the small RPN ([`super::rpn::RpnSmall`]). Variables under the given path (`extractor`).
#[derive(Debug)]
pub struct SmallBackbone {
    stem: ConvBnRelu,
    /// Per stage, its blocks.
    stages: Vec<Vec<Block>>,
    /// `(reduce 1x1, expand 3x3 stride 2)` per extra map.
    extras: Vec<(ConvBnRelu, ConvBnRelu)>,
    /// Channels of each map.
    out_channels: Vec<i64>,
    names: Vec<String>,
}

impl SmallBackbone {
    /// The map counts the backbone gives: the tapped stages, plus 0 to 3 extras.
    pub fn map_counts() -> Vec<usize> {
        let taps = STAGES.len() - TAPPED_FROM;
        (taps..=taps + 3).collect()
    }

    /// A backbone of `n_maps` maps (one of [`Self::map_counts`]) under `extractor`.
    pub fn new(
        extractor: &nn::Path,
        n_maps: usize,
        o: &SmallBackboneOptions,
        origin: &str,
    ) -> Result<Self> {
        if !(o.width.is_finite() && o.width > 0.0 && o.width <= 16.0) {
            crate::bail_input!(
                "{origin}: network.width: expected a number in (0, 16], got {}",
                o.width
            );
        }
        let taps = STAGES.len() - TAPPED_FROM;
        let stem_c = scaled(STEM, o.width);
        let stem_opts = ConvOpts::new(o.init.hidden()).stride(2).padding(1);
        let stem = ConvBnRelu::new(&(extractor / "stem"), 3, stem_c, 3, stem_opts, o.bn)?;
        let mut c_in = stem_c;
        let mut index = 0;
        let mut stages = Vec::with_capacity(STAGES.len());
        let mut out_channels = Vec::with_capacity(n_maps);
        for (s, &(c, blocks)) in STAGES.iter().enumerate() {
            let c_out = scaled(c, o.width);
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let stride = if b == 0 { 2 } else { 1 };
                let block_path = extractor / "layers" / index;
                stage.push(Block::new(&block_path, c_in, c_out, stride, o)?);
                c_in = c_out;
                index += 1;
            }
            stages.push(stage);
            if s >= TAPPED_FROM {
                out_channels.push(c_out);
            }
        }
        let mut extras = Vec::with_capacity(n_maps.saturating_sub(taps));
        for j in 0..n_maps.saturating_sub(taps) {
            let p = extractor / "extras" / j;
            let mid = scaled(64, o.width);
            let hidden = ConvOpts::new(o.init.hidden());
            let reduce = ConvBnRelu::new(&(&p / "reduce"), c_in, mid, 1, hidden, o.bn)?;
            let expand_opts = hidden.stride(2).padding(1);
            let expand = ConvBnRelu::new(&(&p / "expand"), mid, c_in, 3, expand_opts, o.bn)?;
            extras.push((reduce, expand));
            out_channels.push(c_in);
        }
        let mut names: Vec<String> = (TAPPED_FROM..STAGES.len())
            .map(|s| format!("stage {s} (stride {})", 4 << s))
            .collect();
        names.extend((0..extras.len()).map(|j| format!("extra {j}")));
        Ok(Self {
            stem,
            stages,
            extras,
            out_channels,
            names,
        })
    }

    /// Channels of each map.
    pub fn out_channels(&self) -> &[i64] {
        &self.out_channels
    }

    /// images `[N, 3, H, W]` -> `(name, [N, c_i, h_i, w_i])` per map.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Vec<(String, Tensor)>> {
        let mut h = self.stem.forward_t(images, train)?;
        let mut maps = Vec::with_capacity(self.names.len());
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                h = block.forward_t(&h, train)?;
            }
            if s >= TAPPED_FROM {
                maps.push(h.shallow_clone());
            }
        }
        for (reduce, expand) in &self.extras {
            h = expand.forward_t(&reduce.forward_t(&h, train)?, train)?;
            maps.push(h.shallow_clone());
        }
        Ok(self.names.iter().cloned().zip(maps).collect())
    }

    /// A weight of the backbone (its device and kind).
    pub fn probe(&self) -> &Tensor {
        &self.stem.conv.weight
    }
}

/// The small SSD (see the module docs).
#[derive(Debug)]
pub struct SmallSsd {
    backbone: SmallBackbone,
    head: SsdHead,
}

impl SmallSsd {
    pub fn new(
        path: &nn::Path,
        spec: &ModelSpec,
        columns: i64,
        options: SmallOptions,
        origin: &str,
    ) -> Result<Self> {
        let allowed = SmallBackbone::map_counts();
        let n_maps = check_map_count(spec, &allowed, "the small SSD", origin)?;
        let backbone =
            SmallBackbone::new(&(path / "extractor"), n_maps, &options.backbone(), origin)?;
        let head = SsdHead::new(
            path,
            backbone.out_channels(),
            &spec.anchors_per_cell(),
            columns,
            options.init,
            class_prior(spec, options.prior_prob, origin)?,
        )?;
        Ok(Self { backbone, head })
    }
}

impl MultiBoxNet for SmallSsd {
    fn heads_t(&self, images: &Tensor, train: bool) -> Result<Vec<MapOutput>> {
        self.head.forward(self.backbone.forward_t(images, train)?)
    }

    fn probe(&self) -> &Tensor {
        self.backbone.probe()
    }
}
