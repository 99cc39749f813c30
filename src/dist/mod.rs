//! Data-parallel training across processes, GPUs and machines, on libtorch's own c10d (the
//! engine of PyTorch's DDP): TCPStore, ProcessGroupGloo (CPU) and ProcessGroupNCCL (CUDA),
//! bound through `csrc/c10d_shim.cpp`.
//!
//! A run is W processes, one per device, started by torchrun (`torchrun --nproc-per-node W
//! --no-python tchcv train ...`: [`DistConfig::from_env`]) or by hand ([`DistConfig::explicit`]
//! with `--world-size W --rank R --master ADDR:PORT`). Each step of each rank:
//!
//! ```text
//! group.broadcast_varstore(&vs)                       once, before the first step
//! batch   = slice r of the global batch (W*B images)  the data loader's shard
//! sums    = loss.sums(&inputs)                        this rank's un-normalised parts
//! global  = dist::global_normalizer(Some(&group), &sums, loss.normalization())
//! output  = global.finish(sums); output.total.backward()
//! group.all_reduce_varstore_gradients(&vs, GradReduction::Sum)
//! optimizer step; rank 0 logs global.stats()
//! group.finish()                                      at the end
//! ```
//!
//! which gives the loss and gradients of one process with batch W*B (see [`loss`]). Floors:
//! `dist` uses `loss` (for [`LossSums`](crate::loss::LossSums)) and the bottom floor; `train`
//! uses `dist`.
//!
//! Failures: every store operation and collective is bounded by [`DistConfig::timeout`]. A
//! rank that dies or hangs makes the others fail within about that time, with an error that
//! names it (see `health.rs`). BatchNorm statistics are not synchronised (as in DDP without
//! SyncBatchNorm), so batch-statistics layers see B images, not W*B.

mod bucket;
mod config;
mod group;
mod health;
pub mod loss;
mod shim;

pub use config::{
    is_main, local_rank_from_env, parse_master, rank_from_env, Backend, DistConfig,
    DEFAULT_BUCKET_BYTES, DEFAULT_TIMEOUT,
};
pub use group::{GradReduction, ProcessGroup};
pub use loss::{global_normalizer, global_normalizer_by, GlobalNormalizer};

/// The backends compiled into this build (empty without distributed support).
pub fn backends() -> Vec<Backend> {
    let (gloo, nccl) = shim::compiled_backends();
    let mut list = Vec::new();
    if gloo {
        list.push(Backend::Gloo);
    }
    if nccl {
        list.push(Backend::Nccl);
    }
    list
}

/// Whether distributed training is compiled in.
pub fn available() -> bool {
    !backends().is_empty()
}

/// What build.rs said about the build: why distributed support or NCCL is missing (empty when
/// both are there).
pub fn build_note() -> &'static str {
    env!("TCHCV_DIST_NOTE")
}
