//! ResNet backbones (torchcv `models/retinanet/fpn.py`, torchvision `resnet.py`): a 7x7
//! stride-2 stem, a 3x3 stride-2 max pool, and four stages of BasicBlocks (depth 18, 34) or
//! Bottlenecks (50, 101, 152, stride on the 3x3 conv), tapped at C3, C4, C5 (strides 8, 16,
//! 32).
//!
//! ```text
//! torchcv FPN / Bottleneck                             tchcv
//! c1 = F.relu(self.bn1(self.conv1(x)))                 stem: conv1, bn1, relu
//! c1 = F.max_pool2d(c1, 3, stride=2, padding=1)        max_pool(c1, 3, 2, 1, false)
//! c2..c5 = self.layer1..4(...)                         layers[0..4]
//! out = F.relu(self.bn1(self.conv1(x)))                Block::forward_t
//! out = F.relu(self.bn2(self.conv2(out)))
//! out = self.bn3(self.conv3(out))
//! out += self.downsample(x); F.relu(out)
//! ```
//!
//! Names are torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`/`.1`),
//! under the given path (the RetinaNet puts them under `fpn`, as torchcv does).
//! Init: Kaiming-normal (fan-out) convolutions, batch norm 1/0 (torchvision's).

use anyhow::Result;
use tch::{nn, Tensor};

use super::layers::{max_pool, relu, BatchNorm2d, Conv2d, ConvOpts, InitStyle};

/// BasicBlock (two 3x3) or Bottleneck (1x1, 3x3, 1x1 with expansion 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    pub fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// The block kind and blocks per stage of a standard depth.
pub fn layout(depth: i64) -> Option<(BlockKind, [usize; 4])> {
    Some(match depth {
        18 => (BlockKind::Basic, [2, 2, 2, 2]),
        34 => (BlockKind::Basic, [3, 4, 6, 3]),
        50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
        101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
        152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
        _ => return None,
    })
}

/// Options shared by every layer of a ResNet.
#[derive(Debug, Clone, Copy)]
pub struct ResNetOptions {
    pub init: InitStyle,
    /// Frozen batch norm (running statistics only, nothing trainable).
    pub frozen_bn: bool,
}

/// One residual block.
#[derive(Debug)]
struct Block {
    /// `(conv, bn)` pairs: conv1/bn1, conv2/bn2 (and conv3/bn3 for a bottleneck).
    convs: Vec<(Conv2d, BatchNorm2d)>,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl Block {
    fn new(
        path: &nn::Path,
        kind: BlockKind,
        c_in: i64,
        planes: i64,
        stride: i64,
        o: ResNetOptions,
    ) -> Result<Self> {
        let opts = ConvOpts::new(o.init.hidden()).no_bias();
        let conv_bn = |n: usize, c_in: i64, c_out: i64, k: i64, opts: ConvOpts| -> Result<_> {
            Ok((
                Conv2d::new(path / format!("conv{n}"), c_in, c_out, k, opts)?,
                BatchNorm2d::new(path / format!("bn{n}"), c_out, o.frozen_bn)?,
            ))
        };
        let c_out = planes * kind.expansion();
        let convs = match kind {
            BlockKind::Basic => vec![
                conv_bn(1, c_in, planes, 3, opts.stride(stride).padding(1))?,
                conv_bn(2, planes, planes, 3, opts.padding(1))?,
            ],
            BlockKind::Bottleneck => vec![
                conv_bn(1, c_in, planes, 1, opts)?,
                conv_bn(2, planes, planes, 3, opts.stride(stride).padding(1))?,
                conv_bn(3, planes, c_out, 1, opts)?,
            ],
        };
        let downsample = if stride != 1 || c_in != c_out {
            let d = path / "downsample";
            Some((
                Conv2d::new(&d / 0, c_in, c_out, 1, opts.stride(stride))?,
                BatchNorm2d::new(&d / 1, c_out, o.frozen_bn)?,
            ))
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut out = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            out = bn.forward_t(&conv.forward(&out)?, train)?;
            if i < last {
                out = relu(&out)?;
            }
        }
        let shortcut = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&conv.forward(x)?, train)?,
            None => x.shallow_clone(),
        };
        relu(&out.f_add(&shortcut)?)
    }
}

/// The names of a ResNet's stem and stages under its path (what backbone weights fill).
pub const STEM_AND_STAGES: [&str; 6] =
    ["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."];

/// A ResNet trunk returning C3, C4, C5 (or C2 to C5).
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    layers: Vec<Vec<Block>>,
    /// Channels of C2, C3, C4, C5.
    stage_channels: [i64; 4],
}

impl ResNet {
    /// depth: 18, 34, 50, 101 or 152 (see [`layout`]; the caller checks it).
    pub fn new(
        path: &nn::Path,
        kind: BlockKind,
        blocks: [usize; 4],
        o: ResNetOptions,
    ) -> Result<Self> {
        let stem = ConvOpts::new(o.init.hidden())
            .no_bias()
            .stride(2)
            .padding(3);
        let conv1 = Conv2d::new(path / "conv1", 3, 64, 7, stem)?;
        let bn1 = BatchNorm2d::new(path / "bn1", 64, o.frozen_bn)?;
        let mut c_in = 64;
        let mut layers = Vec::with_capacity(4);
        let mut stage_channels = [0; 4];
        for (s, &n) in blocks.iter().enumerate() {
            let planes = 64 << s;
            let stride = if s == 0 { 1 } else { 2 };
            let stage_path = path / format!("layer{}", s + 1);
            let mut stage = Vec::with_capacity(n);
            for j in 0..n {
                let block_stride = if j == 0 { stride } else { 1 };
                stage.push(Block::new(
                    &(&stage_path / j),
                    kind,
                    c_in,
                    planes,
                    block_stride,
                    o,
                )?);
                c_in = planes * kind.expansion();
            }
            layers.push(stage);
            stage_channels[s] = c_in;
        }
        Ok(Self {
            conv1,
            bn1,
            layers,
            stage_channels,
        })
    }

    /// Channels of C3, C4, C5 (512, 1024, 2048 for bottlenecks; 128, 256, 512 for basic).
    pub fn out_channels(&self) -> [i64; 3] {
        let [_, c3, c4, c5] = self.stage_channels;
        [c3, c4, c5]
    }

    /// Channels of C2, C3, C4, C5 (256 to 2048 for bottlenecks; 64 to 512 for basic).
    pub fn stage_channels(&self) -> [i64; 4] {
        self.stage_channels
    }

    /// x: `[N, 3, H, W]` -> C3 `[N, c3, H/8, W/8]`, C4 (H/16), C5 (H/32), sizes rounded up.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<[Tensor; 3]> {
        let [_, c3, c4, c5] = self.forward_stages(x, train)?;
        Ok([c3, c4, c5])
    }

    /// x: `[N, 3, H, W]` -> C2 `[N, c2, H/4, W/4]`, C3, C4, C5 (torchvision's `layer1` to
    /// `layer4` outputs).
    pub fn forward_stages(&self, x: &Tensor, train: bool) -> Result<[Tensor; 4]> {
        let c1 = relu(&self.bn1.forward_t(&self.conv1.forward(x)?, train)?)?;
        let mut h = max_pool(&c1, 3, 2, 1, false)?;
        let mut taps = Vec::with_capacity(4);
        for stage in &self.layers {
            for block in stage {
                h = block.forward_t(&h, train)?;
            }
            taps.push(h.shallow_clone());
        }
        taps.try_into()
            .map_err(|_| anyhow::anyhow!("a ResNet has four stages"))
    }

    /// A weight of the network (its device and kind).
    pub fn probe(&self) -> &Tensor {
        &self.conv1.weight
    }
}
