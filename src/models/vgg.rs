//! torchcv's VGG16 trunk for SSD (`models/ssd/net.py` `VGG16` and the first layers of
//! `VGG16Extractor300`): conv1_1 to conv4_3 in `features.layers`, ceil-mode pools, then
//! pool4, conv5_1 to conv5_3, pool5 (3x3, stride 1, pad 1), the dilated conv6 and conv7.
//!
//! ```text
//! torchcv                                              tchcv
//! cfg = [64, 64, 'M', 128, 128, 'M', 256, 256, 256,   FEATURES (same list)
//!        'M', 512, 512, 512]
//! layers += [Conv2d(c, x, 3, padding=1), ReLU]        features.layers.{i}: Conv2d, relu
//! MaxPool2d(2, 2, ceil_mode=True)                     max_pool(x, 2, 2, 0, true)
//! h = F.max_pool2d(h, 2, 2, ceil_mode=True)           (after conv4_3)
//! conv5_1..3 = Conv2d(512, 512, 3, padding=1)         conv5_1..3
//! F.max_pool2d(h, 3, stride=1, padding=1, ceil=True)  max_pool(x, 3, 1, 1, true)
//! conv6 = Conv2d(512, 1024, 3, padding=6, dilation=6) conv6
//! conv7 = Conv2d(1024, 1024, 1)                       conv7
//! ```
//!
//! Layer indices in `features.layers` are those of the `nn.Sequential` (ReLUs and pools count),
//! which are also torchvision's `vgg16().features` indices for conv1_1 to conv4_3, so converted
//! ImageNet weights map one to one (`scripts/convert_weights.py`).

use anyhow::Result;
use tch::{nn, Tensor};

use super::layers::{max_pool, relu, Conv2d, ConvOpts, InitStyle};

/// Output channels of conv1_1 .. conv4_3, with `None` for a max pool (torchcv's `cfg`).
pub const FEATURES: [Option<i64>; 13] = [
    Some(64),
    Some(64),
    None,
    Some(128),
    Some(128),
    None,
    Some(256),
    Some(256),
    Some(256),
    None,
    Some(512),
    Some(512),
    Some(512),
];

/// The VarStore prefixes of the VGG16 backbone (what ImageNet weights fill).
pub const BACKBONE_PREFIXES: [&str; 6] = [
    "extractor.features.",
    "extractor.conv5_1.",
    "extractor.conv5_2.",
    "extractor.conv5_3.",
    "extractor.conv6.",
    "extractor.conv7.",
];

/// Channels of conv4_3 and conv7.
pub const OUT_CHANNELS: [i64; 2] = [512, 1024];

/// VGG16 up to conv7, as torchcv's SSD extractor builds it.
#[derive(Debug)]
pub struct Vgg16 {
    /// conv1_1 .. conv4_3 (`None`: a pool).
    features: Vec<Option<Conv2d>>,
    conv5: [Conv2d; 3],
    conv6: Conv2d,
    conv7: Conv2d,
}

impl Vgg16 {
    /// Variables under `path` (torchcv: `extractor`).
    pub fn new(path: &nn::Path, init: InitStyle) -> Result<Self> {
        let conv3 = ConvOpts::new(init.hidden()).padding(1);
        let layers = path / "features" / "layers";
        let mut features = Vec::with_capacity(FEATURES.len());
        let mut c_in = 3;
        let mut index = 0;
        for item in FEATURES {
            match item {
                Some(c_out) => {
                    features.push(Some(Conv2d::new(&layers / index, c_in, c_out, 3, conv3)?));
                    c_in = c_out;
                    index += 2; // conv, ReLU
                }
                None => {
                    features.push(None);
                    index += 1;
                }
            }
        }
        let conv5 = [
            Conv2d::new(path / "conv5_1", 512, 512, 3, conv3)?,
            Conv2d::new(path / "conv5_2", 512, 512, 3, conv3)?,
            Conv2d::new(path / "conv5_3", 512, 512, 3, conv3)?,
        ];
        let conv6 = Conv2d::new(path / "conv6", 512, 1024, 3, conv3.padding(6).dilation(6))?;
        let conv7 = Conv2d::new(path / "conv7", 1024, 1024, 1, ConvOpts::new(init.hidden()))?;
        Ok(Self {
            features,
            conv5,
            conv6,
            conv7,
        })
    }

    /// x: `[N, 3, H, W]` -> conv4_3 (after its ReLU) `[N, 512, H/8, W/8]` and conv7
    /// `[N, 1024, H/16, W/16]` (sizes rounded up by the ceil-mode pools).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = x.shallow_clone();
        for layer in &self.features {
            h = match layer {
                Some(conv) => relu(&conv.forward(&h)?)?,
                None => max_pool(&h, 2, 2, 0, true)?,
            };
        }
        let conv4_3 = h.shallow_clone();
        h = max_pool(&h, 2, 2, 0, true)?;
        for conv in &self.conv5 {
            h = relu(&conv.forward(&h)?)?;
        }
        h = max_pool(&h, 3, 1, 1, true)?;
        h = relu(&self.conv6.forward(&h)?)?;
        let conv7 = relu(&self.conv7.forward(&h)?)?;
        Ok((conv4_3, conv7))
    }

    /// A weight of the network (its device and kind).
    pub fn probe(&self) -> &Tensor {
        &self.conv7.weight
    }
}
