//! Reads Kubernetes objects from YAML/JSON files and directories, as `kubectl get -o yaml` writes
//! them, into typed k8s-openapi values tagged with the file and line they came from.
//!
//! A file that is not YAML at all stops the run (`PATH:LINE: reason`); an object that is YAML but
//! not a valid Service/EndpointSlice/Node is skipped with a warning, as kube-proxy would never
//! have received it from the apiserver.

pub mod documents;
mod kinds;
pub mod toplevel;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::warning::Warning;

/// Where an object was read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Origin {
    /// The file, as given on the command line (or a label for in-memory text).
    pub file: String,
    /// The 1-based line the object starts on; 0 when unknown.
    pub line: u64,
}

impl Origin {
    /// An origin for objects built in code rather than read from a file.
    pub fn memory() -> Self {
        Origin {
            file: "<memory>".to_string(),
            line: 0,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.file)
        } else {
            write!(f, "{}:{}", self.file, self.line)
        }
    }
}

/// An object and where it came from, so later warnings can point at the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    /// The decoded object.
    pub object: T,
    /// Its file and line.
    pub origin: Origin,
}

impl<T> Sourced<T> {
    /// Wraps an object built in code.
    pub fn memory(object: T) -> Self {
        Sourced {
            object,
            origin: Origin::memory(),
        }
    }

    /// The same object behind an `Arc`, as [`Objects`] keeps it.
    pub fn shared(self) -> Sourced<Arc<T>> {
        Sourced {
            object: Arc::new(self.object),
            origin: self.origin,
        }
    }
}

/// Every object kube-proxy reads, in the order they were found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Objects {
    /// v1 Services (shared: the agent's snapshots come straight from its watch stores).
    pub services: Vec<Sourced<Arc<Service>>>,
    /// discovery.k8s.io/v1 EndpointSlices.
    pub endpoint_slices: Vec<Sourced<Arc<EndpointSlice>>>,
    /// v1 Nodes.
    pub nodes: Vec<Sourced<Arc<Node>>>,
}

impl Objects {
    /// Objects built in code (tests, benches), with no file origin.
    pub fn from_parts(
        services: Vec<Service>,
        endpoint_slices: Vec<EndpointSlice>,
        nodes: Vec<Node>,
    ) -> Self {
        Objects {
            services: services
                .into_iter()
                .map(|o| Sourced::memory(o).shared())
                .collect(),
            endpoint_slices: endpoint_slices
                .into_iter()
                .map(|o| Sourced::memory(o).shared())
                .collect(),
            nodes: nodes
                .into_iter()
                .map(|o| Sourced::memory(o).shared())
                .collect(),
        }
    }

    /// Objects already shared (a watch store's snapshot): no object is copied, which at
    /// 10,000 Services saves tens of megabytes on every sync.
    pub fn from_shared(
        services: Vec<Arc<Service>>,
        endpoint_slices: Vec<Arc<EndpointSlice>>,
        nodes: Vec<Arc<Node>>,
    ) -> Self {
        Objects {
            services: services.into_iter().map(Sourced::memory).collect(),
            endpoint_slices: endpoint_slices.into_iter().map(Sourced::memory).collect(),
            nodes: nodes.into_iter().map(Sourced::memory).collect(),
        }
    }
}

/// A file that could not be read or is not YAML: the whole run stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    /// The file.
    pub file: String,
    /// The 1-based line, when the problem has one.
    pub line: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.reason),
            None => write!(f, "{}: {}", self.file, self.reason),
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads every path (a file, or a directory's `*.yaml`/`*.yml`/`*.json` files in name order).
pub fn load_paths<P: AsRef<Path>>(
    paths: &[P],
    warnings: &mut Vec<Warning>,
) -> Result<Objects, LoadError> {
    let mut objects = Objects::default();
    for path in paths {
        load_path(path.as_ref(), &mut objects, warnings)?;
    }
    Ok(objects)
}

/// Reads one path into `objects`.
pub fn load_path(
    path: &Path,
    objects: &mut Objects,
    warnings: &mut Vec<Warning>,
) -> Result<(), LoadError> {
    let io_error = |e: std::io::Error| LoadError {
        file: path.display().to_string(),
        line: None,
        reason: e.to_string(),
    };
    if path.is_dir() {
        let files = directory_files(path).map_err(io_error)?;
        if files.is_empty() {
            warnings.push(Warning::warn(format!(
                "{}: directory has no *.yaml, *.yml or *.json files",
                path.display()
            )));
        }
        for file in files {
            load_file(&file, objects, warnings)?;
        }
        Ok(())
    } else {
        load_file(path, objects, warnings)
    }
}

/// The object files directly inside `dir`, sorted by name so the run does not depend on the
/// directory's order. Hidden files are skipped: editors and ConfigMap mounts leave them behind.
fn directory_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(
    path: &Path,
    objects: &mut Objects,
    warnings: &mut Vec<Warning>,
) -> Result<(), LoadError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| LoadError {
        file: file.clone(),
        line: None,
        reason: e.to_string(),
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64
            + 1;
        LoadError {
            file: file.clone(),
            line: Some(line),
            reason: "not valid UTF-8".to_string(),
        }
    })?;
    parse_str(text, &file, objects, warnings)
}

/// Reads the objects in YAML/JSON `text` (one or many documents) into `objects`; `file` names
/// the source in diagnostics.
pub fn parse_str(
    text: &str,
    file: &str,
    objects: &mut Objects,
    warnings: &mut Vec<Warning>,
) -> Result<(), LoadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for doc in documents::split(text) {
        if doc.is_empty() {
            continue;
        }
        kinds::read_document(&doc, file, objects, warnings)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
