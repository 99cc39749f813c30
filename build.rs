//! Link-time settings for binaries and tests that use libtorch from the pip wheel.
//!
//! * rpath to libtorch's lib dir (exported by torch-sys as `DEP_TCH_LIBTORCH_LIB`, visible only
//!   because torch-sys is a direct dependency), so binaries start without `LD_LIBRARY_PATH`;
//! * `--no-as-needed -ltorch` where the CUDA runtime is installed: the wheel's `libtorch.so` pulls
//!   in `libtorch_cuda.so`, which rustc's default `--as-needed` would otherwise drop, leaving CUDA
//!   silently "not available". `TCHCV_LINK_CUDA=0|1` forces the choice.
use std::path::{Path, PathBuf};

fn cuda_runtime_present(lib: &Path) -> bool {
    let pip_cudnn = lib.join("../../nvidia/cudnn/lib/libcudnn.so.9");
    let bundled_cudnn = std::fs::read_dir(lib)
        .map(|dir| {
            dir.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcudnn"))
        })
        .unwrap_or(false);
    lib.join("libtorch_cuda.so").exists() && (pip_cudnn.exists() || bundled_cudnn)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TCHCV_LINK_CUDA");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is unset: torch-sys must be a direct dependency"
        );
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let link_cuda = match std::env::var("TCHCV_LINK_CUDA").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => cuda_runtime_present(&lib),
    };
    println!("cargo:rustc-env=TCHCV_LIBTORCH_LIB={}", lib.display());
    println!(
        "cargo:rustc-env=TCHCV_CUDA_LINKED={}",
        if link_cuda { "1" } else { "0" }
    );
    if link_cuda {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
