//! libtorch's CUDA library must stay linked where the CUDA runtime is installed (build.rs).
//!
//! Without `--no-as-needed -ltorch`, the linker drops `libtorch_cuda.so` and CUDA is silently
//! "not available" even on a GPU machine. On a machine without a GPU the two cases differ in
//! the error a CUDA tensor request gives: "Found no NVIDIA driver" (CUDA linked) versus
//! "Could not run 'aten::empty.memory_format' ... 'CUDA' backend" (CUDA dropped).

mod common;

use std::path::PathBuf;

/// Whether the libtorch this process loaded ships its CUDA runtime (the pip wheel's layout):
/// decided from the installed files, independently of what build.rs chose.
fn cuda_runtime_installed() -> Option<PathBuf> {
    let info = tchcv::info::collect();
    let lib = info.libtorch_path?;
    let cudnn = lib.join("../../nvidia/cudnn/lib/libcudnn.so.9");
    (lib.join("libtorch_cuda.so").exists() && cudnn.exists()).then_some(lib)
}

#[test]
fn cuda_tensor_request_reaches_the_driver() {
    if tch::Cuda::is_available() {
        let t = tch::Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cuda(0)));
        assert_eq!(t.device(), tch::Device::Cuda(0));
        eprintln!("CUDA available: {} device(s)", tch::Cuda::device_count());
        return;
    }
    let Some(lib) = cuda_runtime_installed() else {
        common::note_skip(
            "SKIPPED: this libtorch has no CUDA runtime (CPU-only install); nothing to link",
        );
        return;
    };
    let err = tchcv::info::cuda_probe_error().expect("CUDA is unavailable, so the request fails");
    assert!(
        err.contains("no NVIDIA driver"),
        "CUDA runtime installed in {} but libtorch_cuda is not loaded (dropped by --as-needed?): {err}",
        lib.display()
    );
    assert!(!err.contains("Could not run"), "{err}");
    assert!(
        tchcv::info::collect().cuda_linked,
        "build.rs reports CUDA linked"
    );
}

#[test]
fn binary_has_rpath_to_libtorch() {
    let bin = env!("CARGO_BIN_EXE_tchcv");
    let out = std::process::Command::new(bin)
        .arg("info")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run tchcv info");
    assert!(
        out.status.success(),
        "tchcv info without LD_LIBRARY_PATH: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libtorch         2.11.0"), "{text}");
}
