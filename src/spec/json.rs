//! A small reader over `serde_json::Value` that knows where it is, so every error names the file
//! and the field (`models/x.json: anchors.steps[2]: expected a number > 0, got "8"`).

use anyhow::Result;
use serde_json::{Map, Value};

use crate::error::bad_input;

/// A JSON value at a field path inside a named file.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    origin: &'a str,
    path: &'a str,
    value: &'a Value,
}

/// What a JSON value is, for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("a list of {} values", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

impl<'a> Node<'a> {
    /// The whole document.
    pub fn root(origin: &'a str, value: &'a Value) -> Self {
        Self {
            origin,
            path: "",
            value,
        }
    }

    /// An error about this field, marked as bad input.
    pub fn fail(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        field_error(self.origin, self.path, msg)
    }

    pub fn value(&self) -> &'a Value {
        self.value
    }

    pub fn is_null(&self) -> bool {
        self.value.is_null()
    }

    /// An object whose keys are all in `allowed` (a typo is an error naming the key).
    pub fn object(&self, allowed: &[&str]) -> Result<Obj<'a>> {
        let Value::Object(map) = self.value else {
            return Err(self.fail(format!("expected an object, got {}", describe(self.value))));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(field_error(
                self.origin,
                &child_path(self.path, unknown),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
        Ok(Obj {
            origin: self.origin,
            path: self.path,
            map,
        })
    }

    /// The string field `key` of this object, one of `choices` (the tag of a tagged union).
    pub fn tag(&self, key: &str, choices: &[&str]) -> Result<String> {
        let Value::Object(map) = self.value else {
            return Err(self.fail(format!("expected an object, got {}", describe(self.value))));
        };
        let path = child_path(self.path, key);
        let expected = choices
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        match map.get(key) {
            Some(Value::String(s)) if choices.contains(&s.as_str()) => Ok(s.clone()),
            Some(v) => Err(field_error(
                self.origin,
                &path,
                format!("expected one of {expected}, got {}", describe(v)),
            )),
            None => Err(field_error(
                self.origin,
                &path,
                format!("missing (required: one of {expected})"),
            )),
        }
    }

    pub fn string(&self) -> Result<String> {
        match self.value {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.fail("expected a non-empty string")),
            v => Err(self.fail(format!("expected a string, got {}", describe(v)))),
        }
    }

    pub fn boolean(&self) -> Result<bool> {
        self.value.as_bool().ok_or_else(|| {
            self.fail(format!(
                "expected true or false, got {}",
                describe(self.value)
            ))
        })
    }

    /// A finite number.
    pub fn number(&self) -> Result<f64> {
        match self.value.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(self.fail(format!("expected a number, got {}", describe(self.value)))),
        }
    }

    /// A finite number > 0.
    pub fn positive(&self) -> Result<f64> {
        let x = self.number()?;
        if x > 0.0 {
            Ok(x)
        } else {
            Err(self.fail(format!("expected a number > 0, got {x}")))
        }
    }

    /// A number in `lo..=hi`.
    pub fn in_range(&self, lo: f64, hi: f64) -> Result<f64> {
        let x = self.number()?;
        if (lo..=hi).contains(&x) {
            Ok(x)
        } else {
            Err(self.fail(format!("expected a number in [{lo}, {hi}], got {x}")))
        }
    }

    /// A whole number > 0.
    pub fn count(&self) -> Result<i64> {
        match self.value.as_i64() {
            Some(n) if n > 0 => Ok(n),
            _ => Err(self.fail(format!(
                "expected a whole number > 0, got {}",
                describe(self.value)
            ))),
        }
    }

    /// A list; `f` reads each item (its path is `field[i]`).
    pub fn list<T>(&self, mut f: impl FnMut(Node<'_>) -> Result<T>) -> Result<Vec<T>> {
        let Value::Array(items) = self.value else {
            return Err(self.fail(format!("expected a list, got {}", describe(self.value))));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let path = format!("{}[{i}]", self.path);
                f(Node {
                    origin: self.origin,
                    path: &path,
                    value,
                })
            })
            .collect()
    }

    /// A list of exactly `n` values, `what` saying why (`"one per feature map"`).
    pub fn list_of_len<T>(
        &self,
        n: usize,
        what: &str,
        f: impl FnMut(Node<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let items = self.list(f)?;
        if items.len() != n {
            return Err(self.fail(format!("expected {n} values ({what}), got {}", items.len())));
        }
        Ok(items)
    }

    /// A non-empty list.
    pub fn non_empty_list<T>(&self, f: impl FnMut(Node<'_>) -> Result<T>) -> Result<Vec<T>> {
        let items = self.list(f)?;
        if items.is_empty() {
            return Err(self.fail("expected at least one value, got an empty list"));
        }
        Ok(items)
    }

    /// One value, or a pair `[a, b]`: returns `[a, a]` for a single value.
    pub fn one_or_pair<T: Copy>(&self, f: impl Fn(Node<'_>) -> Result<T>) -> Result<[T; 2]> {
        if self.value.is_array() {
            let items = self.list_of_len(2, "a pair", &f)?;
            Ok([items[0], items[1]])
        } else {
            let x = f(*self)?;
            Ok([x, x])
        }
    }
}

/// `file: field: msg` (or `file: msg` for the document), marked as bad input.
fn field_error(origin: &str, path: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    if path.is_empty() {
        bad_input(format!("{origin}: {msg}"))
    } else {
        bad_input(format!("{origin}: {path}: {msg}"))
    }
}

fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A JSON object inside a named file.
pub(crate) struct Obj<'a> {
    origin: &'a str,
    path: &'a str,
    map: &'a Map<String, Value>,
}

impl Obj<'_> {
    /// Call `f` with the field `key`, or return None when it is absent.
    pub fn optional<T>(
        &self,
        key: &str,
        f: impl FnOnce(Node<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(value) => {
                let path = child_path(self.path, key);
                f(Node {
                    origin: self.origin,
                    path: &path,
                    value,
                })
                .map(Some)
            }
        }
    }

    /// Call `f` with the field `key`; an absent field is an error naming it.
    pub fn required<T>(&self, key: &str, f: impl FnOnce(Node<'_>) -> Result<T>) -> Result<T> {
        match self.optional(key, f)? {
            Some(v) => Ok(v),
            None => Err(field_error(
                self.origin,
                &child_path(self.path, key),
                "missing (required)",
            )),
        }
    }

    /// Whether the field is present (even as null).
    pub fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// An error about the object itself.
    pub fn fail(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        field_error(self.origin, self.path, msg)
    }
}
