//! Error conventions.
//!
//! Library functions return [`anyhow::Result`] with context naming the file, field or tensor.
//! Errors caused by what the user gave us (a malformed file, a tensor of the wrong shape, a label
//! out of range) carry a [`BadInput`] in their chain, so the CLI can exit with status 2 for them
//! and 1 for everything else.

use std::fmt;

/// Marker error: the user's input is invalid. The message names the file, field or tensor.
#[derive(Debug, Clone)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// An [`anyhow::Error`] marked as bad input.
pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

/// True when any error in the chain is a [`BadInput`].
pub fn is_bad_input(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<BadInput>())
}

/// The error convention of the C shims (`csrc/*.cpp`): `Ok` for a null message, else the
/// message as an error, after `free` has released the C string (which the caller owns).
pub(crate) fn shim_result(
    message: *mut std::ffi::c_char,
    free: impl FnOnce(*mut std::ffi::c_char),
) -> anyhow::Result<()> {
    if message.is_null() {
        return Ok(());
    }
    Err(anyhow::anyhow!(take_c_string(message, free)))
}

/// The text of a C string a shim returned, after `free` has released it ("" for null).
pub(crate) fn take_c_string(
    text: *mut std::ffi::c_char,
    free: impl FnOnce(*mut std::ffi::c_char),
) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: a non-null string from a shim is NUL-terminated and valid until freed.
    let owned = unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    free(text);
    owned
}

/// Return early with a [`BadInput`] error built like `format!`.
#[macro_export]
macro_rules! bail_input {
    ($($arg:tt)*) => {
        return Err($crate::error::bad_input(format!($($arg)*)))
    };
}
