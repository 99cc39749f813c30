//! Files: named tensors (safetensors, npz) and atomic writes.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::Tensor;

use crate::bail_input;

/// Named tensors read from a `.safetensors` or `.npz` file (on CPU).
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        bail_input!("{}: no such file", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let named = match ext {
        "safetensors" => Tensor::read_safetensors(path),
        "npz" => Tensor::read_npz(path),
        _ => bail_input!("{}: expected a .safetensors or .npz file", path.display()),
    }
    .map_err(|e| crate::bad_input(format!("{}: cannot read tensors: {e}", path.display())))?;
    Ok(named.into_iter().collect())
}

/// Take the tensor `name` out of `tensors`, or say which file lacks it and what it has.
pub fn take_tensor(
    tensors: &mut HashMap<String, Tensor>,
    name: &str,
    file: &Path,
) -> Result<Tensor> {
    tensors.remove(name).ok_or_else(|| {
        let mut have: Vec<_> = tensors.keys().cloned().collect();
        have.sort();
        crate::bad_input(format!(
            "{}: missing tensor {name:?} (the file has {have:?})",
            file.display()
        ))
    })
}

/// A temporary path beside `path` (same directory, so a rename is atomic).
fn temporary_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write a file atomically: `write` fills a temporary file beside `path`, which is synced and
/// then renamed over `path`. A crash leaves either the old file or the new one, never a part.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = temporary_beside(path);
    let result = write(&tmp).and_then(|()| {
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write bytes atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Write named tensors as safetensors, atomically. Tensors are made contiguous and moved to CPU.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(name, t)| (*name, t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    write_atomic(path, |tmp| {
        Tensor::write_safetensors(&cpu, tmp).with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Copy named tensors into a VarStore's variables, by name.
///
/// Every variable must be present with its shape, and (unless `allow_extra`) every tensor must
/// name a variable; otherwise the error lists the missing, unexpected and mismatched names.
/// `origin` names the source in messages (a file path).
pub fn load_into_varstore(
    vs: &tch::nn::VarStore,
    named: &HashMap<String, Tensor>,
    allow_extra: bool,
    origin: &str,
) -> Result<()> {
    load_into_variables(vs.variables(), named, allow_extra, origin)
}

/// [`load_into_varstore`] for a chosen set of a VarStore's variables (e.g. a backbone's).
pub fn load_into_variables(
    variables: HashMap<String, Tensor>,
    named: &HashMap<String, Tensor>,
    allow_extra: bool,
    origin: &str,
) -> Result<()> {
    let mut missing: Vec<&String> = variables
        .keys()
        .filter(|k| !named.contains_key(*k))
        .collect();
    let mut unexpected: Vec<&String> = if allow_extra {
        Vec::new()
    } else {
        named
            .keys()
            .filter(|k| !variables.contains_key(*k))
            .collect()
    };
    let mut mismatched: Vec<String> = variables
        .iter()
        .filter_map(|(k, v)| {
            let t = named.get(k)?;
            (t.size() != v.size())
                .then(|| format!("{k} (file {:?}, model {:?})", t.size(), v.size()))
        })
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && mismatched.is_empty()) {
        missing.sort();
        unexpected.sort();
        mismatched.sort();
        let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        crate::bail_input!(
            "{origin}: weights do not fit the model: {} missing [{}], {} unexpected [{}], {} with another shape [{}]",
            missing.len(),
            list(&missing),
            unexpected.len(),
            list(&unexpected),
            mismatched.len(),
            mismatched.join(", ")
        );
    }
    let _no_grad = tch::no_grad_guard();
    for (name, var) in variables {
        let mut var = var;
        var.f_copy_(&named[&name])
            .with_context(|| format!("{origin}: copying {name}"))?;
    }
    Ok(())
}
