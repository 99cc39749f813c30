//! torchcv's SSD300 and SSD512 (`models/ssd/net.py`): the VGG16 trunk ([`super::vgg`]),
//! L2Norm on conv4_3, the extra layers, and one 3x3 box conv and one 3x3 class conv per map.
//!
//! ```text
//! torchcv VGG16Extractor300.forward                   tchcv SsdVgg::heads_t
//! h = self.features(x); hs.append(self.norm4(h))      (conv4_3, conv7) = vgg.forward(x)
//! ... conv5, pool5, conv6, conv7; hs.append(h)        maps = [norm4(conv4_3), conv7]
//! h = F.relu(self.conv8_1(h))                         for (c1, c2) in extras:
//! h = F.relu(self.conv8_2(h)); hs.append(h)               h = relu(c2(relu(c1(h)))); push
//! SSD300.forward: loc_layers[i](x), cls_layers[i](x)  SsdHead::forward
//! ```
//!
//! Extras (1x1 reduction, then 3x3):
//!
//! | layer | SSD300 | SSD512 |
//! |---|---|---|
//! | conv8  | 1024-256-512, stride 2, pad 1 | same |
//! | conv9  | 512-128-256, stride 2, pad 1 | same |
//! | conv10 | 256-128-256, valid | 256-128-256, stride 2, pad 1 |
//! | conv11 | 256-128-256, valid | 256-128-256, stride 2, pad 1 |
//! | conv12 | - | 256-128-256, kernel 4, pad 1 |
//!
//! The layout follows the spec's map count: 6 maps build SSD300's extras, 7 SSD512's.
//!
//! Init (`network.init`): `"kaiming"` (default) gives Kaiming-normal fan-out convolutions with
//! zero bias (torchvision's VGG) and Xavier-uniform heads with zero bias (torchvision's SSD);
//! `"torch"` keeps PyTorch's `nn.Conv2d` defaults, as torchcv had. L2Norm starts at
//! `network.l2norm_scale` (20). A head without a background column (a spec whose loss is the
//! sigmoid focal loss) starts its class bias at RetinaNet's prior `-log((1 - pi) / pi)`,
//! `pi = network.prior_prob` (0.01), whatever the init style: the focal paper's initialisation,
//! without which the first steps are swamped by the loss of the easy negatives.

use anyhow::Result;
use serde::Deserialize;
use tch::{nn, Tensor};

use super::layers::{relu, BiasInit, Conv2d, ConvOpts, InitStyle, L2Norm, WeightInit};
use super::vgg::{self, Vgg16};
use super::{MapOutput, MultiBoxNet};
use crate::spec::ModelSpec;

/// `network` options of a VGG16 SSD.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsdVggOptions {
    pub init: InitStyle,
    /// L2Norm's initial per-channel weight (torchcv: 20).
    pub l2norm_scale: f64,
    /// Without a background column: the foreground probability the class bias starts at.
    pub prior_prob: f64,
}

impl Default for SsdVggOptions {
    fn default() -> Self {
        Self {
            init: InitStyle::default(),
            l2norm_scale: 20.0,
            prior_prob: 0.01,
        }
    }
}

/// The class bias an SSD head starts from: `Some(-log((1 - pi) / pi))` for a head without a
/// background column (sigmoid scores: RetinaNet's prior, focal paper section 4.1), `None` (the
/// init style's bias) for softmax scores. `pi` must lie in (0, 1).
pub(crate) fn class_prior(spec: &ModelSpec, prior_prob: f64, origin: &str) -> Result<Option<f64>> {
    if !(prior_prob > 0.0 && prior_prob < 1.0) {
        crate::bail_input!(
            "{origin}: network.prior_prob: expected a number in (0, 1), got {prior_prob}"
        );
    }
    Ok((!spec.has_background_column()).then(|| super::prior_bias(prior_prob)))
}

/// One extra layer pair: `conv{n}_1` 1x1 `c_in -> mid`, `conv{n}_2` `k`x`k` `mid -> out`.
#[derive(Debug, Clone, Copy)]
struct ExtraLayout {
    c_in: i64,
    mid: i64,
    out: i64,
    k: i64,
    stride: i64,
    padding: i64,
}

const fn extra(c_in: i64, mid: i64, out: i64, k: i64, stride: i64, padding: i64) -> ExtraLayout {
    ExtraLayout {
        c_in,
        mid,
        out,
        k,
        stride,
        padding,
    }
}

/// conv8 .. conv11 of SSD300.
const EXTRAS_300: [ExtraLayout; 4] = [
    extra(1024, 256, 512, 3, 2, 1),
    extra(512, 128, 256, 3, 2, 1),
    extra(256, 128, 256, 3, 1, 0),
    extra(256, 128, 256, 3, 1, 0),
];

/// conv8 .. conv12 of SSD512.
const EXTRAS_512: [ExtraLayout; 5] = [
    extra(1024, 256, 512, 3, 2, 1),
    extra(512, 128, 256, 3, 2, 1),
    extra(256, 128, 256, 3, 2, 1),
    extra(256, 128, 256, 3, 2, 1),
    extra(256, 128, 256, 4, 1, 1),
];

/// Extra feature layers: pairs of (1x1 reduction, strided or valid 3x3), each followed by a
/// ReLU; every pair's output is a feature map. Shared by the VGG and the small SSD.
#[derive(Debug)]
pub struct Extras {
    layers: Vec<(Conv2d, Conv2d)>,
}

impl Extras {
    fn new(path: &nn::Path, first: usize, layout: &[ExtraLayout], init: InitStyle) -> Result<Self> {
        let mut layers = Vec::with_capacity(layout.len());
        for (j, e) in layout.iter().enumerate() {
            let n = first + j;
            let opts = ConvOpts::new(init.hidden());
            let reduce = Conv2d::new(path / format!("conv{n}_1"), e.c_in, e.mid, 1, opts)?;
            let conv = Conv2d::new(
                path / format!("conv{n}_2"),
                e.mid,
                e.out,
                e.k,
                opts.stride(e.stride).padding(e.padding),
            )?;
            layers.push((reduce, conv));
        }
        Ok(Self { layers })
    }

    /// Runs every pair from `x`; returns each pair's output.
    fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut h = x.shallow_clone();
        let mut maps = Vec::with_capacity(self.layers.len());
        for (reduce, conv) in &self.layers {
            h = relu(&conv.forward(&relu(&reduce.forward(&h)?)?)?)?;
            maps.push(h.shallow_clone());
        }
        Ok(maps)
    }
}

/// torchcv's `loc_layers` and `cls_layers`: per map, a 3x3 conv (pad 1) to `k * 4` box
/// channels and one to `k * C` class channels.
#[derive(Debug)]
pub struct SsdHead {
    loc_layers: Vec<Conv2d>,
    cls_layers: Vec<Conv2d>,
}

impl SsdHead {
    /// in_channels and anchors_per_cell: one per map; columns: `C`; cls_prior: the class
    /// layers' starting bias ([`class_prior`]), else the init style's. Variables under `path`
    /// (`loc_layers.{i}`, `cls_layers.{i}`).
    pub fn new(
        path: &nn::Path,
        in_channels: &[i64],
        anchors_per_cell: &[i64],
        columns: i64,
        init: InitStyle,
        cls_prior: Option<f64>,
    ) -> Result<Self> {
        let opts = ConvOpts::new(init.or_torch((WeightInit::XavierUniform, BiasInit::Const(0.0))))
            .padding(1);
        let cls_opts = match cls_prior {
            Some(b) => ConvOpts {
                bias_init: BiasInit::Const(b),
                ..opts
            },
            None => opts,
        };
        let mut loc_layers = Vec::with_capacity(in_channels.len());
        let mut cls_layers = Vec::with_capacity(in_channels.len());
        for (i, (&c, &k)) in in_channels.iter().zip(anchors_per_cell).enumerate() {
            loc_layers.push(Conv2d::new(path / "loc_layers" / i, c, k * 4, 3, opts)?);
            cls_layers.push(Conv2d::new(
                path / "cls_layers" / i,
                c,
                k * columns,
                3,
                cls_opts,
            )?);
        }
        Ok(Self {
            loc_layers,
            cls_layers,
        })
    }

    /// maps: `(name, [N, c_i, h_i, w_i])`, as many as the head was built for.
    pub fn forward(&self, maps: Vec<(String, Tensor)>) -> Result<Vec<MapOutput>> {
        maps.into_iter()
            .zip(self.loc_layers.iter().zip(&self.cls_layers))
            .map(|((name, x), (loc, cls))| {
                Ok(MapOutput {
                    loc: loc.forward(&x)?,
                    cls: cls.forward(&x)?,
                    name,
                })
            })
            .collect()
    }
}

/// The spec's map count, or an error saying which counts a network supports.
pub(crate) fn check_map_count(
    spec: &ModelSpec,
    allowed: &[usize],
    what: &str,
    origin: &str,
) -> Result<usize> {
    let n = spec.feature_map_sizes().len();
    if !allowed.contains(&n) {
        crate::bail_input!(
            "{origin}: anchors.feature_maps: {what} gives {allowed:?} feature maps, the spec lists {n}"
        );
    }
    Ok(n)
}

/// torchcv's SSD300 / SSD512: VGG16, L2Norm on conv4_3, extras, 3x3 heads.
#[derive(Debug)]
pub struct SsdVgg {
    vgg: Vgg16,
    norm4: L2Norm,
    extras: Extras,
    head: SsdHead,
    names: Vec<String>,
}

impl SsdVgg {
    pub fn new(
        path: &nn::Path,
        spec: &ModelSpec,
        columns: i64,
        options: SsdVggOptions,
        origin: &str,
    ) -> Result<Self> {
        let n_maps = check_map_count(
            spec,
            &[6, 7],
            "the VGG16 SSD (SSD300: 6, SSD512: 7)",
            origin,
        )?;
        let layout: &[ExtraLayout] = if n_maps == 6 {
            &EXTRAS_300
        } else {
            &EXTRAS_512
        };
        let init = options.init;
        let extractor = path / "extractor";
        let vgg = Vgg16::new(&extractor, init)?;
        let norm4 = L2Norm::new(&extractor / "norm4", 512, options.l2norm_scale)?;
        let extras = Extras::new(&extractor, 8, layout, init)?;
        let mut in_channels = vgg::OUT_CHANNELS.to_vec();
        in_channels.extend(layout.iter().map(|e| e.out));
        let cls_prior = class_prior(spec, options.prior_prob, origin)?;
        let head = SsdHead::new(
            path,
            &in_channels,
            &spec.anchors_per_cell(),
            columns,
            init,
            cls_prior,
        )?;
        let mut names = vec!["conv4_3".to_string(), "conv7".to_string()];
        names.extend((0..layout.len()).map(|j| format!("conv{}_2", 8 + j)));
        Ok(Self {
            vgg,
            norm4,
            extras,
            head,
            names,
        })
    }
}

impl MultiBoxNet for SsdVgg {
    fn heads_t(&self, images: &Tensor, _train: bool) -> Result<Vec<MapOutput>> {
        let (conv4_3, conv7) = self.vgg.forward(images)?;
        let mut maps = vec![self.norm4.forward(&conv4_3)?];
        maps.extend(self.extras.forward(&conv7)?);
        maps.insert(1, conv7);
        self.head
            .forward(self.names.iter().cloned().zip(maps).collect())
    }

    fn probe(&self) -> &Tensor {
        self.vgg.probe()
    }
}
