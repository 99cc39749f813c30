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
        "safetensors" => Tensor::read_safetensors(path).map_err(|e| e.to_string()),
        "npz" => read_npz(path),
        _ => bail_input!("{}: expected a .safetensors or .npz file", path.display()),
    }
    .map_err(|e| crate::bad_input(format!("{}: cannot read tensors: {e}", path.display())))?;
    Ok(named.into_iter().collect())
}

/// The tensors of an `.npz` (numpy's zip of `.npy` files), named by member without `.npy`.
///
/// Not tch's `Tensor::read_npz`: it panics on a damaged member and copies as many bytes as a
/// member's header promises, however few the member holds. Here each member must hold exactly
/// the bytes of its header's dtype and shape.
fn read_npz(path: &Path) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let mut named = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut member = zip.by_index(i).map_err(|e| format!("member {i}: {e}"))?;
        let name = member.name().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut member, &mut bytes).map_err(|e| format!("{name}: {e}"))?;
        let tensor = npy_tensor(&bytes).map_err(|e| format!("{name}: {e}"))?;
        let name = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        named.push((name, tensor));
    }
    Ok(named)
}

/// The tensor of one `.npy` file's bytes (format versions 1 to 3, C order, little-endian).
fn npy_tensor(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (no \\x93NUMPY header)".into());
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} (expected 1, 2 or 3)")),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("the .npy header is cut short or not text")?;
    let (kind, shape) = npy_header(header)?;
    let data = &bytes[start + len..];
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
    let expected = numel.and_then(|n| n.checked_mul(kind.elt_size_in_bytes()));
    if expected != Some(data.len()) {
        return Err(format!(
            "the header promises {kind:?} {shape:?} but the member holds {} bytes of data",
            data.len()
        ));
    }
    Tensor::f_from_data_size(data, &shape, kind).map_err(|e| e.to_string())
}

/// The dtype and shape of a `.npy` header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5, 4), }`.
fn npy_header(header: &str) -> std::result::Result<(tch::Kind, Vec<i64>), String> {
    use tch::Kind;
    // The text after `'key':`.
    let value = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("no {key:?} in the .npy header {header:?}"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
    };
    let descr = value("descr")?
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("the .npy descr is not a quoted string")?;
    let kind = match descr.trim_start_matches(['<', '|', '=']) {
        "f2" => Kind::Half,
        "f4" => Kind::Float,
        "f8" => Kind::Double,
        "i1" => Kind::Int8,
        "i2" => Kind::Int16,
        "i4" => Kind::Int,
        "i8" => Kind::Int64,
        "u1" => Kind::Uint8,
        "b1" => Kind::Bool,
        _ => {
            let known = "little-endian f2, f4, f8, i1, i2, i4, i8, u1 or b1";
            return Err(format!("dtype {descr:?} is not supported ({known})"));
        }
    };
    if value("fortran_order")?.starts_with("True") {
        return Err(
            "Fortran (column-major) order is not supported; save a C-contiguous array".into(),
        );
    }
    let shape = value("shape")?
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("the .npy shape is not a tuple")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<i64>()
                .map_err(|_| format!("shape ({shape}): {d:?} is not a size"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((kind, shape))
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
    // A float variable takes float values only: integers or booleans are another file's data.
    let mut mistyped: Vec<String> = variables
        .iter()
        .filter_map(|(k, v)| {
            let t = named.get(k)?;
            (v.is_floating_point() && !t.is_floating_point())
                .then(|| format!("{k} (file {:?}, model {:?})", t.kind(), v.kind()))
        })
        .collect();
    if !(missing.is_empty()
        && unexpected.is_empty()
        && mismatched.is_empty()
        && mistyped.is_empty())
    {
        missing.sort();
        unexpected.sort();
        mismatched.sort();
        mistyped.sort();
        let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let dtypes = if mistyped.is_empty() {
            String::new()
        } else {
            format!(
                ", {} of a non-float dtype [{}]",
                mistyped.len(),
                mistyped.join(", ")
            )
        };
        crate::bail_input!(
            "{origin}: weights do not fit the model: {} missing [{}], {} unexpected [{}], {} with another shape [{}]{dtypes}",
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
