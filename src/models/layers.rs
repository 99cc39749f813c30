//! Building blocks with fallible forwards: convolution, batch norm, group norm, L2Norm, pooling.
//!
//! tch's own `nn` layers panic when an op fails (a wrong shape, an out-of-memory device); these
//! return `Result`, so a bad input or a full GPU becomes an error instead. Parameters are created
//! under the given `nn::Path` with PyTorch's names (`weight`, `bias`, `running_mean`,
//! `running_var`), so a module's VarStore names read like its `state_dict` keys.

use std::borrow::Borrow;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init};
use tch::Tensor;

/// How a network's weights start when no weights are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitStyle {
    /// For training from scratch: Kaiming-normal (fan-out, ReLU) convolutions with zero bias
    /// (torchvision's VGG/ResNet init), batch norm 1/0, heads as each detector documents.
    #[default]
    Kaiming,
    /// PyTorch's `nn.Conv2d` defaults everywhere (`kaiming_uniform_(a=sqrt(5))`, bias
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`): what torchcv's networks started from.
    Torch,
}

/// How one convolution's weight starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// `kaiming_uniform_(a=sqrt(5))`: `U(-b, b)`, `b = 1/sqrt(fan_in)` (PyTorch's default).
    Torch,
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: `N(0, 2/fan_out)`.
    KaimingFanOut,
    /// `kaiming_uniform_(a=1)`: `U(-b, b)`, `b = sqrt(3/fan_in)` (torchvision's FPN).
    KaimingUniformA1,
    /// `xavier_uniform_`: `U(-b, b)`, `b = sqrt(6/(fan_in + fan_out))` (torchvision's SSD heads).
    XavierUniform,
    /// `normal_(0, std)` (RetinaNet heads: 0.01).
    Normal(f64),
}

/// How one convolution's bias starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BiasInit {
    /// PyTorch's default: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    Torch,
    /// A constant (0, or RetinaNet's prior `-log((1-pi)/pi)`).
    Const(f64),
}

impl InitStyle {
    /// The weight init of a hidden convolution (followed by a ReLU or a norm).
    pub fn hidden(self) -> (WeightInit, BiasInit) {
        match self {
            InitStyle::Kaiming => (WeightInit::KaimingFanOut, BiasInit::Const(0.0)),
            InitStyle::Torch => (WeightInit::Torch, BiasInit::Torch),
        }
    }

    /// `init` for a kaiming-style network, PyTorch's defaults for a torch-style one.
    pub fn or_torch(self, init: (WeightInit, BiasInit)) -> (WeightInit, BiasInit) {
        match self {
            InitStyle::Kaiming => init,
            InitStyle::Torch => (WeightInit::Torch, BiasInit::Torch),
        }
    }
}

/// `fan_in`, `fan_out` of a conv weight `[out, in/groups, k, k]` as PyTorch computes them.
fn fans(dims: &[i64]) -> (f64, f64) {
    let receptive: i64 = dims[2..].iter().product();
    ((dims[1] * receptive) as f64, (dims[0] * receptive) as f64)
}

impl WeightInit {
    fn tch_init(self, dims: &[i64]) -> Init {
        let (fan_in, fan_out) = fans(dims);
        let uniform = |b: f64| Init::Uniform { lo: -b, up: b };
        match self {
            WeightInit::Torch => uniform(1.0 / fan_in.sqrt()),
            WeightInit::KaimingFanOut => Init::Randn {
                mean: 0.0,
                stdev: (2.0 / fan_out).sqrt(),
            },
            WeightInit::KaimingUniformA1 => uniform((3.0 / fan_in).sqrt()),
            WeightInit::XavierUniform => uniform((6.0 / (fan_in + fan_out)).sqrt()),
            WeightInit::Normal(stdev) => Init::Randn { mean: 0.0, stdev },
        }
    }
}

/// Options of a [`Conv2d`] (PyTorch's `nn.Conv2d` arguments).
#[derive(Debug, Clone, Copy)]
pub struct ConvOpts {
    pub stride: i64,
    pub padding: i64,
    pub dilation: i64,
    pub groups: i64,
    pub bias: bool,
    pub weight_init: WeightInit,
    pub bias_init: BiasInit,
}

impl ConvOpts {
    /// Stride 1, no padding or dilation, one group, with a bias; `init` as given.
    pub fn new(init: (WeightInit, BiasInit)) -> Self {
        Self {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
            bias: true,
            weight_init: init.0,
            bias_init: init.1,
        }
    }

    pub fn stride(self, stride: i64) -> Self {
        Self { stride, ..self }
    }

    pub fn padding(self, padding: i64) -> Self {
        Self { padding, ..self }
    }

    pub fn dilation(self, dilation: i64) -> Self {
        Self { dilation, ..self }
    }

    pub fn groups(self, groups: i64) -> Self {
        Self { groups, ..self }
    }

    pub fn no_bias(self) -> Self {
        Self {
            bias: false,
            ..self
        }
    }
}

/// `nn.Conv2d`: weight `[out, in/groups, k, k]` f32, bias `[out]` f32.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    opts: ConvOpts,
    /// The VarStore name of the weight, for error messages.
    name: String,
}

impl Conv2d {
    pub fn new<'a>(
        path: impl Borrow<nn::Path<'a>>,
        c_in: i64,
        c_out: i64,
        k: i64,
        opts: ConvOpts,
    ) -> Result<Self> {
        let path = path.borrow();
        let dims = [c_out, c_in / opts.groups, k, k];
        let weight = path
            .f_var("weight", &dims, opts.weight_init.tch_init(&dims))
            .with_context(|| format!("creating {}", path.path("weight")))?;
        let bias = if opts.bias {
            let init = match opts.bias_init {
                BiasInit::Const(c) => Init::Const(c),
                BiasInit::Torch => {
                    let b = 1.0 / fans(&dims).0.sqrt();
                    Init::Uniform { lo: -b, up: b }
                }
            };
            Some(
                path.f_var("bias", &[c_out], init)
                    .with_context(|| format!("creating {}", path.path("bias")))?,
            )
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            opts,
            name: module_name(path),
        })
    }

    /// x: `[N, in, H, W]` -> `[N, out, H', W']`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let o = &self.opts;
        x.f_conv2d(
            &self.weight,
            self.bias.as_ref(),
            [o.stride, o.stride],
            [o.padding, o.padding],
            [o.dilation, o.dilation],
            o.groups,
        )
        .with_context(|| format!("conv {} on {:?}", self.name, x.size()))
    }

    /// The output channels.
    pub fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// `nn.BatchNorm2d` (eps 1e-5, momentum 0.1), or torchvision's `FrozenBatchNorm2d` when
/// `frozen`: then every tensor is a non-trainable buffer and the running statistics are always
/// used, so a fine-tuned backbone keeps its ImageNet statistics at small batch sizes.
#[derive(Debug)]
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub frozen: bool,
    name: String,
}

impl BatchNorm2d {
    pub const EPS: f64 = 1e-5;
    pub const MOMENTUM: f64 = 0.1;

    pub fn new<'a>(path: impl Borrow<nn::Path<'a>>, channels: i64, frozen: bool) -> Result<Self> {
        let path = path.borrow();
        let dims = [channels];
        let name = module_name(path);
        let (weight, bias) = if frozen {
            (
                path.f_ones_no_train("weight", &dims),
                path.f_zeros_no_train("bias", &dims),
            )
        } else {
            (
                path.f_var("weight", &dims, Init::Const(1.0)),
                path.f_var("bias", &dims, Init::Const(0.0)),
            )
        };
        let running_mean = path.f_zeros_no_train("running_mean", &dims);
        let running_var = path.f_ones_no_train("running_var", &dims);
        let made = |r: Result<Tensor, tch::TchError>| {
            r.with_context(|| format!("creating batch norm {name}"))
        };
        Ok(Self {
            weight: made(weight)?,
            bias: made(bias)?,
            running_mean: made(running_mean)?,
            running_var: made(running_var)?,
            frozen,
            name: module_name(path),
        })
    }

    /// x: `[N, C, H, W]`. With `train` (and not frozen) the batch statistics normalise and the
    /// running statistics are updated in place.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train && !self.frozen,
            Self::MOMENTUM,
            Self::EPS,
            true,
        )
        .with_context(|| format!("batch norm {} on {:?}", self.name, x.size()))
    }
}

/// `nn.GroupNorm(groups, channels)` (eps 1e-5), weight 1 and bias 0 at init.
#[derive(Debug)]
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: i64,
}

impl GroupNorm {
    pub fn new<'a>(path: impl Borrow<nn::Path<'a>>, groups: i64, channels: i64) -> Result<Self> {
        let path = path.borrow();
        Ok(Self {
            weight: path.f_var("weight", &[channels], Init::Const(1.0))?,
            bias: path.f_var("bias", &[channels], Init::Const(0.0))?,
            groups,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.f_group_norm(
            self.groups,
            Some(&self.weight),
            Some(&self.bias),
            1e-5,
            true,
        )
        .context("group norm")
    }
}

/// SSD's L2Norm on conv4_3: `weight[c] * x / sqrt(max(sum_c x^2, 1e-12))`, weight `[C]` f32,
/// learnable, initialised to `scale` (20).
///
/// torchcv's `L2Norm2d(20)` multiplies by the constant 20; the Caffe SSD, ssd.pytorch and
/// torchvision learn one weight per channel starting at 20. The two agree at initialisation; a
/// torchcv checkpoint loads with `weight` filled with 20.
#[derive(Debug)]
pub struct L2Norm {
    pub weight: Tensor,
}

impl L2Norm {
    pub fn new<'a>(path: impl Borrow<nn::Path<'a>>, channels: i64, scale: f64) -> Result<Self> {
        let weight = path
            .borrow()
            .f_var("weight", &[channels], Init::Const(scale))?;
        Ok(Self { weight })
    }

    /// x: `[N, C, H, W]` -> `[N, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // No explicit dtype on the sum: under CUDA autocast `sum` then runs in f32, as the
        // PyTorch recipe's `x.pow(2).sum(1)` does (an explicit dtype would keep bf16).
        let sum_sq = x
            .f_square()?
            .f_sum_dim_intlist(1, true, None::<tch::Kind>)?
            .f_clamp_min(1e-12)?;
        let scale = self.weight.f_view([1, -1, 1, 1])?;
        Ok(x.f_mul(&sum_sq.f_rsqrt()?)?.f_mul(&scale)?)
    }
}

/// The dotted VarStore name of the module at `path` (`extractor.conv5_1`).
pub fn module_name(path: &nn::Path) -> String {
    path.components().collect::<Vec<_>>().join(".")
}

/// `F.max_pool2d(x, k, stride, padding, ceil_mode=ceil)`.
pub fn max_pool(x: &Tensor, k: i64, stride: i64, padding: i64, ceil: bool) -> Result<Tensor> {
    x.f_max_pool2d([k, k], [stride, stride], [padding, padding], [1, 1], ceil)
        .with_context(|| format!("max pool {k}x{k}/{stride} on {:?}", x.size()))
}

/// `F.relu`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_relu()?)
}
