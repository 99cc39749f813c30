//! Memory formats: channels-last (NHWC strides) for images, activations and convolution
//! weights, which cuDNN and oneDNN run faster on many machines. This is PyTorch's
//! `x.contiguous(memory_format=torch.channels_last)` and `model.to(memory_format=...)`. Only the
//! strides change: shapes stay `[N, C, H, W]`, so code that reads the tensors needs no change,
//! and every op gives the same values up to the order of its float sums (convolution and batch
//! norm kernels sum in another order per layout; batch norm's backward magnifies that).

use anyhow::{Context, Result};
use tch::nn::VarStore;
use tch::Tensor;

use super::ext;

/// How the elements of a 4-D tensor are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryFormat {
    /// Row-major `[N, C, H, W]` (`torch.contiguous_format`).
    #[default]
    Contiguous,
    /// `[N, C, H, W]` shape with `[N, H, W, C]` order in memory (`torch.channels_last`).
    ChannelsLast,
}

impl MemoryFormat {
    /// `ChannelsLast` when `channels_last`, else `Contiguous` (for a `--channels-last` flag).
    pub fn channels_last_if(channels_last: bool) -> Self {
        if channels_last {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        }
    }

    fn code(self) -> i32 {
        match self {
            MemoryFormat::Contiguous => 0,
            MemoryFormat::ChannelsLast => 1,
        }
    }

    /// `contiguous` or `channels-last`.
    pub fn name(self) -> &'static str {
        match self {
            MemoryFormat::Contiguous => "contiguous",
            MemoryFormat::ChannelsLast => "channels-last",
        }
    }
}

impl std::fmt::Display for MemoryFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `tensor` laid out in `format` (`tensor.contiguous(memory_format=format)`): the tensor itself
/// (shared) when it already is, else a copy; differentiable. Channels-last needs a 4-D tensor.
pub fn to_memory_format(tensor: &Tensor, format: MemoryFormat) -> Result<Tensor> {
    if format == MemoryFormat::ChannelsLast && tensor.dim() != 4 {
        crate::bail_input!(
            "channels-last needs a 4-D [N, C, H, W] tensor, got shape {:?}",
            tensor.size()
        );
    }
    let mut out = std::ptr::null_mut();
    // SAFETY: `tensor` outlives the call; on success `out` is a new `at::Tensor*` that the
    // returned tch tensor owns and frees.
    ext::check(unsafe { ext::tchcv_contiguous(ext::raw(tensor), format.code(), &mut out) })?;
    anyhow::ensure!(!out.is_null(), "libtorch returned no tensor");
    // SAFETY: see above; the pointer came from `new at::Tensor(...)`.
    Ok(unsafe { Tensor::from_ptr(out.cast()) })
}

/// Whether `tensor` is dense in `format` (`tensor.is_contiguous(memory_format=format)`).
pub fn is_memory_format(tensor: &Tensor, format: MemoryFormat) -> Result<bool> {
    let mut out = 0;
    // SAFETY: `tensor` outlives the call; `out` is a local.
    ext::check(unsafe { ext::tchcv_is_contiguous(ext::raw(tensor), format.code(), &mut out) })?;
    Ok(out != 0)
}

/// Lay out every 4-D variable of `vs` (convolution weights) in `format`, in place, as
/// `model.to(memory_format=format)` does: the variables keep their identity (optimizers and
/// gradients that hold them see the change). Returns how many were converted.
pub fn convert_variables(vs: &VarStore, format: MemoryFormat) -> Result<usize> {
    let _no_grad = tch::no_grad_guard();
    let mut converted = 0;
    for (name, mut variable) in vs.variables() {
        if variable.dim() != 4 || is_memory_format(&variable, format)? {
            continue;
        }
        let data =
            to_memory_format(&variable, format).with_context(|| format!("variable {name}"))?;
        variable
            .f_set_data(&data)
            .with_context(|| format!("variable {name}: setting its {format} data"))?;
        converted += 1;
    }
    Ok(converted)
}
