//! tchcv: torchcv's detection losses on `tch` (libtorch), and the detector training around them.
//!
//! Floors (each imports only from floors below it): `train` > `eval` > `models` > `data` >
//! `loss`, `bbox` > `spec`, with `error`, `rng` and `io` at the bottom. See the README.

#[path = "box/mod.rs"]
pub mod bbox;
pub mod bench;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod eval;
pub mod info;
pub mod io;
pub mod loss;
pub mod memory;
pub mod models;
pub mod rng;
pub mod spec;
pub mod train;

pub use error::{bad_input, is_bad_input, BadInput};

/// The crate version.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
