//! Link-time settings for binaries and tests that use libtorch from the pip wheel.
//!
//! * rpath to libtorch's lib dir (exported by torch-sys as `DEP_TCH_LIBTORCH_LIB`, visible only
//!   because torch-sys is a direct dependency), so binaries start without `LD_LIBRARY_PATH`;
//! * `--no-as-needed -ltorch` where the CUDA runtime is installed: the wheel's `libtorch.so` pulls
//!   in `libtorch_cuda.so`, which rustc's default `--as-needed` would otherwise drop, leaving CUDA
//!   silently "not available". `TCHCV_LINK_CUDA=0|1` forces the choice.
//! * `csrc/torch_ext.cpp` (autocast, memory formats, allocator statistics): [`build_torch_ext`];
//! * the c10d shim (`csrc/c10d_shim.cpp`, distributed training): see [`build_c10d_shim`].
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
    println!("cargo:rustc-check-cfg=cfg(tchcv_dist)");
    println!("cargo:rustc-check-cfg=cfg(tchcv_nccl)");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        dist_absent("distributed training is built on Linux only");
        return;
    }
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is unset: torch-sys must be a direct dependency"
        );
        dist_absent("build.rs did not find libtorch (DEP_TCH_LIBTORCH_LIB)");
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
    build_torch_ext(&lib);
    build_c10d_shim(&lib, link_cuda);
}

// ---- Distributed training: the c10d shim ---------------------------------------------------
//
// `csrc/c10d_shim.cpp` binds libtorch's c10d (TCPStore, ProcessGroupGloo, ProcessGroupNCCL),
// which tch does not. It is compiled against the wheel's headers with torch-sys's flags, and
// the code that runs is libtorch's own. Gloo needs Gloo's headers (Debian's libgloo-dev; the
// wheel guards ProcessGroupGloo.hpp behind USE_C10D_GLOO without shipping them); NCCL needs
// nccl.h and the CUDA runtime headers from the wheel's nvidia packages (crt/ and nv/ too, from
// nvidia-cuda-crt and nvidia-cuda-cccl; scripts/setup installs them). Where something is
// missing the crate builds without distributed support, and `tchcv info` says why.
//
// Sets `cfg(tchcv_dist)` (Gloo, so c10d is bound) and `cfg(tchcv_nccl)`, and the env var
// `TCHCV_DIST_NOTE` (what is missing, for `tchcv info`).
// `TCHCV_NO_DIST=1` builds without it; `TCHCV_NO_NCCL=1` without NCCL; `TCHCV_GLOO_INCLUDE`
// names a directory holding `gloo/` when it is not under /usr/include or /usr/local/include.

fn dist_absent(note: &str) {
    println!("cargo:rustc-env=TCHCV_DIST_NOTE={note}");
}

fn env_flag(name: &str) -> bool {
    println!("cargo:rerun-if-env-changed={name}");
    matches!(std::env::var(name).as_deref(), Ok(v) if !v.is_empty() && v != "0")
}

/// The directory holding `gloo/algorithm.h`.
fn gloo_include_dir() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=TCHCV_GLOO_INCLUDE");
    let explicit = std::env::var_os("TCHCV_GLOO_INCLUDE").map(PathBuf::from);
    explicit
        .into_iter()
        .chain(["/usr/include", "/usr/local/include"].map(PathBuf::from))
        .find(|dir| dir.join("gloo/algorithm.h").exists())
}

/// Include dirs for NCCL: the wheel's `nvidia/*/include` (nccl.h, the CUDA runtime headers),
/// or why they do not suffice.
fn nccl_include_dirs(lib: &Path) -> Result<Vec<PathBuf>, String> {
    let nvidia = lib.join("../../nvidia");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("include"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    for header in [
        "nccl.h",
        "cuda_runtime_api.h",
        "crt/host_config.h",
        "nv/target",
    ] {
        if !dirs.iter().any(|d| d.join(header).exists()) {
            return Err(format!(
                "NCCL needs {header}, which is not under {}/*/include (scripts/setup installs \
                 nvidia-cuda-crt and nvidia-cuda-cccl for crt/ and nv/)",
                nvidia.display()
            ));
        }
    }
    Ok(dirs)
}

/// A C++ build of `file` against the wheel's headers, with torch-sys's flags.
fn cpp_build(file: &str, torch_includes: &[PathBuf]) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file(file)
        .includes(torch_includes)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .warnings(false);
    build
}

/// The wheel's include dirs: `include/` and the C++ API's `include/torch/csrc/api/include`.
fn torch_includes(lib: &Path) -> Vec<PathBuf> {
    let include = lib.join("../include");
    vec![include.clone(), include.join("torch/csrc/api/include")]
}

fn compile_shim(
    torch_includes: &[PathBuf],
    extra: &[PathBuf],
    defines: &[&str],
) -> Result<(), String> {
    let mut build = cpp_build("csrc/c10d_shim.cpp", torch_includes);
    build.includes(extra);
    for define in defines {
        build.define(define, None);
    }
    build.try_compile("c10d_shim").map_err(|e| e.to_string())
}

// ---- libtorch calls tch does not bind: csrc/torch_ext.cpp ------------------------------------
//
// Autocast with a device type and dtype, memory formats (channels-last), and the device
// allocator's statistics (`tchcv::device`, `tchcv::memory`). It needs only the wheel's headers,
// which torch-sys compiles against too, so it is always built.
fn build_torch_ext(lib: &Path) {
    println!("cargo:rerun-if-changed=csrc/torch_ext.cpp");
    println!("cargo:rerun-if-changed=csrc/torch_ext.h");
    println!("cargo:rerun-if-changed=csrc/guarded.h");
    cpp_build("csrc/torch_ext.cpp", &torch_includes(lib)).compile("torch_ext");
}

fn build_c10d_shim(lib: &Path, link_cuda: bool) {
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d_shim.h");
    println!("cargo:rerun-if-changed=csrc/guarded.h");
    if env_flag("TCHCV_NO_DIST") {
        return dist_absent("built with TCHCV_NO_DIST set");
    }
    let torch_includes = torch_includes(lib);
    if !lib
        .join("../include")
        .join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
        .exists()
    {
        return dist_absent("the libtorch headers lack c10d (ProcessGroupGloo.hpp)");
    }
    let Some(gloo) = gloo_include_dir() else {
        println!("cargo:warning=Gloo headers not found (apt-get install libgloo-dev, or run scripts/setup): building without distributed training");
        return dist_absent("Gloo's headers are missing (install libgloo-dev: scripts/setup does)");
    };
    let nccl = if env_flag("TCHCV_NO_NCCL") {
        Err("built with TCHCV_NO_NCCL set".to_string())
    } else if !link_cuda {
        Err("libtorch_cuda is not linked (CPU-only build)".to_string())
    } else {
        nccl_include_dirs(lib)
    };
    let mut note = String::new();
    if let Ok(cuda_dirs) = &nccl {
        let mut extra = vec![gloo.clone()];
        extra.extend(cuda_dirs.iter().cloned());
        match compile_shim(&torch_includes, &extra, &["USE_C10D_GLOO", "USE_C10D_NCCL"]) {
            Ok(()) => {
                println!("cargo:rustc-cfg=tchcv_dist");
                println!("cargo:rustc-cfg=tchcv_nccl");
                // ProcessGroupNCCL lives in libtorch_cuda (torch-sys links it); the shim also
                // calls c10::cuda::set_device.
                println!("cargo:rustc-link-lib=dylib=c10_cuda");
                println!("cargo:rustc-env=TCHCV_DIST_NOTE=");
                return;
            }
            Err(e) => {
                println!("cargo:warning=the c10d shim did not compile with NCCL ({e}); trying Gloo alone");
                note = format!("NCCL: the shim did not compile with it: {e}");
            }
        }
    } else if let Err(why) = &nccl {
        note = format!("NCCL: {why}");
    }
    match compile_shim(&torch_includes, &[gloo], &["USE_C10D_GLOO"]) {
        Ok(()) => {
            println!("cargo:rustc-cfg=tchcv_dist");
            println!(
                "cargo:rustc-env=TCHCV_DIST_NOTE={}",
                note.replace('\n', " ")
            );
        }
        Err(e) => {
            println!("cargo:warning=the c10d shim did not compile ({e}): building without distributed training");
            dist_absent(&format!(
                "the c10d shim did not compile: {}",
                e.replace('\n', " ")
            ));
        }
    }
}
