//! Class names <-> 0-based class ids, saved with every run as `classes.json`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::bail_input;

/// The 20 PASCAL VOC classes in the standard (alphabetical) order.
pub const VOC_CLASSES: [&str; 20] = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

/// The foreground classes of a dataset: `names[id]` is class `id` (0-based; the box coder adds
/// 1 for the background column). Names are case-sensitive and trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassMap {
    names: Vec<String>,
    #[serde(skip)]
    ids: HashMap<String, usize>,
}

impl ClassMap {
    /// A map from names in order; names must be non-empty and distinct.
    pub fn new(names: Vec<String>) -> Result<Self> {
        let names: Vec<String> = names.into_iter().map(|n| n.trim().to_string()).collect();
        if names.is_empty() {
            bail_input!("class list is empty");
        }
        let mut ids = HashMap::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                bail_input!("class {i} has an empty name");
            }
            if ids.insert(name.clone(), i).is_some() {
                bail_input!("class {name:?} is listed twice");
            }
        }
        Ok(Self { names, ids })
    }

    /// The 20 standard VOC classes.
    pub fn voc() -> Self {
        Self::new(VOC_CLASSES.iter().map(|s| s.to_string()).collect())
            .expect("the VOC class list is valid")
    }

    /// The classes a dataset uses: the standard VOC order when every name is a VOC class,
    /// otherwise the names sorted (byte order).
    pub fn discover<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let found: BTreeSet<String> = names.into_iter().map(|n| n.trim().to_string()).collect();
        if found.is_empty() {
            bail_input!("no object has a class name, so the classes cannot be discovered (give --classes FILE)");
        }
        if found.iter().all(|n| VOC_CLASSES.contains(&n.as_str())) {
            return Ok(Self::voc());
        }
        Self::new(found.into_iter().collect())
    }

    /// Read a class list: one name per line; blank lines and `#` comments are skipped.
    pub fn read_list(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            crate::bad_input(format!("{}: cannot read class list: {e}", path.display()))
        })?;
        let names = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        Self::new(names).with_context(|| format!("class list {}", path.display()))
    }

    /// Read `classes.json` (as written by [`ClassMap::save_json`]) or a plain list (any other
    /// extension).
    pub fn load(path: &Path) -> Result<Self> {
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            return Self::read_list(path);
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::bad_input(format!("{}: cannot read: {e}", path.display())))?;
        let raw: ClassMap = serde_json::from_str(&text).map_err(|e| {
            crate::bad_input(format!(
                "{}: not a classes.json ({{\"names\": [...]}}): {e}",
                path.display()
            ))
        })?;
        Self::new(raw.names).with_context(|| format!("classes in {}", path.display()))
    }

    /// Write `{"names": [...]}` atomically.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::io::write_bytes_atomic(path, text.as_bytes())
    }

    /// The id of `name` (trimmed, case-sensitive).
    pub fn id(&self, name: &str) -> Option<usize> {
        self.ids.get(name.trim()).copied()
    }

    /// The name of class `id`.
    pub fn name(&self, id: usize) -> Option<&str> {
        self.names.get(id).map(String::as_str)
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of foreground classes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
