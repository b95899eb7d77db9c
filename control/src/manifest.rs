//! Loading Kubernetes objects from manifest files.
//!
//! A path is a YAML/JSON file or a directory of them (`*.yaml`, `*.yml`,
//! `*.json`, read in name order, not recursively). Files hold objects exactly
//! as `kubectl get -o yaml` prints them: several documents separated by
//! `---`, and `kind: List` (or `ServiceList`, `EndpointSliceList`) with
//! `items`. `v1/Service` and `discovery.k8s.io/v1/EndpointSlice` are kept;
//! every other kind is ignored with a note.
//!
//! Loading is strict about syntax: a file that does not parse, or an object
//! that does not decode into its type, fails the whole load (a half-read
//! directory would publish a wrong service set; a reload keeps the previous
//! one). Semantic checks (ranges, addresses, affinity) happen later in
//! [`translate`](crate::translate), object by object.
//!
//! JSON is YAML, so `.json` files go through the same parser.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// An object and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    /// The file it was read from (`None` for objects from the API server).
    pub file: Option<PathBuf>,
    /// Its document's index in the file (0-based, empty documents not
    /// counted); for an item of a list, the list's document.
    pub document: usize,
    pub object: T,
}

impl<T> Sourced<T> {
    /// An object that did not come from a file.
    pub fn unfiled(object: T) -> Self {
        Self {
            file: None,
            document: 0,
            object,
        }
    }
}

/// Every Service and `EndpointSlice` found under a path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    pub services: Vec<Sourced<Service>>,
    pub slices: Vec<Sourced<EndpointSlice>>,
    /// Objects of other kinds that were ignored, one line each.
    pub notes: Vec<String>,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// Why a path could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML (or JSON).
    #[error("{}{}: {message}", file.display(), Position(*line, *column))]
    Syntax {
        file: PathBuf,
        /// 1-based, when the parser knows it.
        line: Option<u64>,
        column: Option<u64>,
        message: String,
    },
    /// A document parsed but is not a well-formed object of its kind.
    #[error("{} (document {document}): {what}: {message}", file.display())]
    Decode {
        file: PathBuf,
        document: usize,
        /// `Service default/hostnames`, or as much of it as is known.
        what: String,
        message: String,
    },
}

impl LoadError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            LoadError::Io { path, .. } => path,
            LoadError::Syntax { file, .. } | LoadError::Decode { file, .. } => file,
        }
    }
}

struct Position(Option<u64>, Option<u64>);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(l), Some(c)) => write!(f, ":{l}:{c}"),
            (Some(l), None) => write!(f, ":{l}"),
            _ => Ok(()),
        }
    }
}

/// Loads a manifest file, or every manifest file in a directory.
pub fn load_path(path: &Path) -> Result<Manifests, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io)? {
            let entry = entry.map_err(io)?;
            let p = entry.path();
            let is_manifest = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if is_manifest && !hidden && entry.file_type().map_err(io)?.is_file() {
                files.push(p);
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut manifests = Manifests::default();
    let listed = meta.is_dir();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            // Deleted between listing the directory and reading it: the
            // deletion is the newer state (and its own change event
            // follows), not a broken configuration.
            Err(e) if listed && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(LoadError::Io {
                    path: file.clone(),
                    source,
                });
            }
        };
        load_str_into(&text, Some(&file), &mut manifests)?;
        manifests.files.push(file);
    }
    Ok(manifests)
}

/// Loads the objects in `text` (one file's contents); `file` names it in
/// errors and in the returned objects.
pub fn load_str(text: &str, file: Option<&Path>) -> Result<Manifests, LoadError> {
    let mut manifests = Manifests::default();
    load_str_into(text, file, &mut manifests)?;
    Ok(manifests)
}

fn load_str_into(text: &str, file: Option<&Path>, out: &mut Manifests) -> Result<(), LoadError> {
    let file_name = file.map_or_else(|| PathBuf::from("<input>"), Path::to_path_buf);
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let loc = e.location();
        LoadError::Syntax {
            file: file_name.clone(),
            line: loc.map(|l| l.line()).filter(|&l| l > 0),
            column: loc.map(|l| l.column()).filter(|&c| c > 0),
            message: e.without_snippet().to_string(),
        }
    })?;
    for (document, doc) in docs.into_iter().enumerate() {
        let mut cx = DocContext {
            file,
            file_name: &file_name,
            document,
            out,
        };
        cx.object(doc, None)?;
    }
    Ok(())
}

struct DocContext<'a> {
    file: Option<&'a Path>,
    file_name: &'a Path,
    document: usize,
    out: &'a mut Manifests,
}

impl DocContext<'_> {
    /// Files one object. `list_kind` is the kind its items default to when
    /// it is an item of a typed list (`ServiceList` items carry no kind when
    /// the API server wrote them).
    fn object(&mut self, mut doc: Value, list_kind: Option<(&str, &str)>) -> Result<(), LoadError> {
        if doc.is_null() {
            return Ok(());
        }
        let Some(map) = doc.as_object_mut() else {
            return Err(self.decode_error(
                "document".to_owned(),
                "expected a Kubernetes object (a mapping)".to_owned(),
            ));
        };
        if let Some((api_version, kind)) = list_kind {
            map.entry("apiVersion")
                .or_insert_with(|| Value::from(api_version));
            map.entry("kind").or_insert_with(|| Value::from(kind));
        }
        let api_version = map
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let what = describe(&kind, map);
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                let object = serde_json::from_value(doc)
                    .map_err(|e| self.decode_error(what, e.to_string()))?;
                self.out.services.push(self.sourced(object));
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let object = serde_json::from_value(doc)
                    .map_err(|e| self.decode_error(what, e.to_string()))?;
                self.out.slices.push(self.sourced(object));
            }
            (_, "") => {
                return Err(self.decode_error(what, "missing field `kind`".to_owned()));
            }
            (_, k) if k.ends_with("List") => {
                let item_kind = match k {
                    "ServiceList" => Some(("v1", "Service")),
                    "EndpointSliceList" => Some(("discovery.k8s.io/v1", "EndpointSlice")),
                    _ => None,
                };
                let items = match map.remove("items") {
                    Some(Value::Array(items)) => items,
                    None | Some(Value::Null) => Vec::new(),
                    Some(_) => {
                        return Err(self.decode_error(what, "`items` must be a list".to_owned()));
                    }
                };
                for item in items {
                    self.object(item, item_kind)?;
                }
            }
            _ => {
                let note = format!(
                    "{}{}: ignoring {what} ({})",
                    self.file_name.display(),
                    self.doc_suffix(),
                    if api_version.is_empty() {
                        "no apiVersion"
                    } else {
                        &api_version
                    }
                );
                self.out.notes.push(note);
            }
        }
        Ok(())
    }

    fn doc_suffix(&self) -> String {
        format!(" (document {})", self.document)
    }

    fn sourced<T>(&self, object: T) -> Sourced<T> {
        Sourced {
            file: self.file.map(Path::to_path_buf),
            document: self.document,
            object,
        }
    }

    fn decode_error(&self, what: String, message: String) -> LoadError {
        LoadError::Decode {
            file: self.file_name.to_owned(),
            document: self.document,
            what,
            message,
        }
    }
}

/// `Kind namespace/name` from whatever metadata the document has.
fn describe(kind: &str, map: &serde_json::Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    let kind = if kind.is_empty() { "object" } else { kind };
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        _ => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_decodes_from_yaml_directly() {
        // serde-saphyr drives k8s-openapi's own Deserialize impls.
        let svc: Service = serde_saphyr::from_str(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\n\
             spec:\n  clusterIP: 192.0.2.1\n  ports:\n  - port: 80\n    targetPort: http\n",
        )
        .unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(spec.ports.unwrap()[0].port, 80);
    }

    #[test]
    fn syntax_error_has_line() {
        let err = load_str(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: [a\n",
            Some(Path::new("bad.yaml")),
        )
        .unwrap_err();
        let LoadError::Syntax { line, .. } = &err else {
            panic!("{err}")
        };
        assert!(line.is_some(), "{err}");
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    }

    #[test]
    fn decode_error_names_object() {
        let err = load_str(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: ns}\nspec:\n  ports: [{port: eighty}]\n",
            Some(Path::new("x.yaml")),
        )
        .unwrap_err();
        let s = err.to_string();
        assert!(s.contains("x.yaml (document 0): Service ns/a:"), "{s}");
    }

    #[test]
    fn other_kinds_are_noted() {
        let m = load_str(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: ns}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
            None,
        )
        .unwrap();
        assert!(m.services.is_empty());
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
        assert!(m.notes[0].contains("Deployment ns/d"), "{:?}", m.notes);
    }

    #[test]
    fn typed_list_items_without_kind() {
        let m = load_str(
            r#"{"apiVersion":"v1","kind":"ServiceList","items":[{"metadata":{"name":"a","namespace":"ns"},"spec":{"clusterIP":"192.0.2.1","ports":[{"port":80}]}}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(m.services.len(), 1);
    }
}
