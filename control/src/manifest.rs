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
//!
//! # Limits
//!
//! A manifest directory may be written by anyone who can write to it, so the
//! loader bounds what one file can cost before it costs it: the
//! [`Limits`] below, sized for the largest clusters (a `kubectl get -o yaml`
//! export of 10,000 Services with 100,000 endpoints, 44 MB and about 4 M
//! nodes, uses a quarter of each or less) and far below what would exhaust
//! memory or stack. A file over a limit,
//! or one that tries to amplify itself (an alias bomb: anchors referring to
//! anchors, "billion laughs"), fails the load with [`LoadError::Limit`],
//! which names the file and the limit; a reload keeps the running
//! configuration.

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

/// What one load may cost; [`Limits::DEFAULT`] is what `limpet run` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes in one file.
    pub file_bytes: u64,
    /// Bytes in all the files of a directory together.
    pub total_bytes: u64,
    /// YAML documents (`---`) in one file.
    pub documents: usize,
    /// YAML nodes (mappings, sequences, scalars) in one file.
    pub nodes: usize,
    /// Nesting of mappings and sequences (a Service is 6 deep, a
    /// `kind: List` of them 8).
    pub depth: usize,
    /// Bytes of one scalar (the API server refuses objects over 1.5 MiB,
    /// so no field of a real object comes near).
    pub scalar_bytes: usize,
    /// Nodes that aliases (`*anchor`) may expand to in one file.
    pub alias_expansion: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        file_bytes: 256 << 20,
        total_bytes: 1 << 30,
        documents: 100_000,
        nodes: 16_000_000,
        depth: 64,
        scalar_bytes: 2 << 20,
        alias_expansion: 1_000_000,
    };

    /// serde-saphyr's options enforcing these limits while it parses.
    fn parser_options(&self) -> serde_saphyr::Options {
        serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_documents: self.documents,
                max_nodes: self.nodes,
                // Every node is one event, every mapping and sequence one
                // more at its end.
                max_events: self.nodes.saturating_mul(2),
                max_depth: self.depth,
                flow_nesting_limit: self.depth,
                // Tags and scalars of a file are in the file.
                max_total_scalar_bytes: usize::try_from(self.file_bytes).unwrap_or(usize::MAX),
                max_aliases: self.alias_expansion,
                max_recorded_anchor_events: self.alias_expansion,
            },
            alias_limits: serde_saphyr::alias_limits! {
                max_total_replayed_events: self.alias_expansion,
            },
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which of the [`Limits`] a file breached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    FileBytes,
    TotalBytes,
    Documents,
    Nodes,
    Depth,
    ScalarBytes,
    /// Aliases expand to too much, or nest too deeply.
    AliasExpansion,
}

impl Limit {
    /// The limit's value in `limits`, in words.
    fn describe(self, limits: &Limits) -> String {
        match self {
            Limit::FileBytes => format!("{} bytes in one file", limits.file_bytes),
            Limit::TotalBytes => format!("{} bytes in all files together", limits.total_bytes),
            Limit::Documents => format!("{} YAML documents in one file", limits.documents),
            Limit::Nodes => format!("{} YAML nodes in one file", limits.nodes),
            Limit::Depth => format!("nesting {} deep", limits.depth),
            Limit::ScalarBytes => format!("{} bytes in one scalar", limits.scalar_bytes),
            Limit::AliasExpansion => format!(
                "{} nodes expanded from aliases in one file",
                limits.alias_expansion
            ),
        }
    }
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
    /// The file is over one of the [`Limits`] (or tries to amplify itself
    /// past one): it is refused unread, or unfinished.
    #[error("{}: refused: {what}; the limit is {limit_text}", file.display())]
    Limit {
        file: PathBuf,
        limit: Limit,
        /// What the file has (or tried), as far as it was read.
        what: String,
        /// The limit's value, in words.
        limit_text: String,
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
            LoadError::Syntax { file, .. }
            | LoadError::Decode { file, .. }
            | LoadError::Limit { file, .. } => file,
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

/// Loads a manifest file, or every manifest file in a directory, within
/// [`Limits::DEFAULT`].
pub fn load_path(path: &Path) -> Result<Manifests, LoadError> {
    load_path_with(path, &Limits::DEFAULT)
}

/// [`load_path`] within `limits`.
pub fn load_path_with(path: &Path, limits: &Limits) -> Result<Manifests, LoadError> {
    let mut manifests = Manifests::default();
    let mut total = 0u64;
    let listed = path.is_dir();
    for file in manifest_files(path)? {
        let Some(text) = read_listed(&file, listed, limits, &mut total)? else {
            continue;
        };
        load_str_into(&text, Some(&file), limits, &mut manifests)?;
        manifests.files.push(file);
    }
    Ok(manifests)
}

/// The manifest files under `path`, in the order they are loaded.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
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
    Ok(files)
}

/// [`read_limited`] of a file that [`manifest_files`] found by `listed`
/// (`true`) a directory: `None` if it was deleted since. The deletion is
/// the newer state (its own change event follows), not a broken
/// configuration.
pub fn read_listed(
    file: &Path,
    listed: bool,
    limits: &Limits,
    total: &mut u64,
) -> Result<Option<String>, LoadError> {
    match read_limited(file, limits, total) {
        Err(LoadError::Io { source, .. })
            if listed && source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        read => read.map(Some),
    }
}

/// Reads `file` as text if it and the files read before it (`total`
/// bytes) are within `limits`; never reads more than the limit, even if
/// the file grows while it is read.
pub fn read_limited(file: &Path, limits: &Limits, total: &mut u64) -> Result<String, LoadError> {
    use std::io::Read as _;
    let io = |source| LoadError::Io {
        path: file.to_owned(),
        source,
    };
    let over = |limit: Limit, size: u64| LoadError::Limit {
        file: file.to_owned(),
        limit,
        what: match limit {
            Limit::TotalBytes => format!("the files read so far hold {size} bytes"),
            _ => format!("{size} bytes"),
        },
        limit_text: limit.describe(limits),
    };
    let f = std::fs::File::open(file).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len > limits.file_bytes {
        return Err(over(Limit::FileBytes, len));
    }
    if total.saturating_add(len) > limits.total_bytes {
        return Err(over(Limit::TotalBytes, total.saturating_add(len)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    f.take(limits.file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let read = bytes.len() as u64;
    if read > limits.file_bytes {
        return Err(over(Limit::FileBytes, read));
    }
    *total = total.saturating_add(read);
    if *total > limits.total_bytes {
        return Err(over(Limit::TotalBytes, *total));
    }
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

/// Loads the objects in `text` (one file's contents) within
/// [`Limits::DEFAULT`]; `file` names it in errors and in the returned
/// objects.
pub fn load_str(text: &str, file: Option<&Path>) -> Result<Manifests, LoadError> {
    load_str_with(text, file, &Limits::DEFAULT)
}

/// [`load_str`] within `limits`.
pub fn load_str_with(
    text: &str,
    file: Option<&Path>,
    limits: &Limits,
) -> Result<Manifests, LoadError> {
    let mut manifests = Manifests::default();
    if text.len() as u64 > limits.file_bytes {
        return Err(LoadError::Limit {
            file: file.map_or_else(|| PathBuf::from("<input>"), Path::to_path_buf),
            limit: Limit::FileBytes,
            what: format!("{} bytes", text.len()),
            limit_text: Limit::FileBytes.describe(limits),
        });
    }
    load_str_into(text, file, limits, &mut manifests)?;
    Ok(manifests)
}

/// The limit a parser error reports, with what the input had or tried.
fn breached_limit(mut e: &serde_saphyr::Error) -> Option<(Limit, String)> {
    use serde_saphyr::Error as E;
    use serde_saphyr::ExternalMessageSource as Source;
    use serde_saphyr::budget::BudgetBreach as B;
    // The breach itself, under the locations and snippets it is wrapped in.
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = e {
        e = error;
    }
    Some(match e {
        E::Budget { breach, .. } => match breach {
            B::Documents { documents } => (Limit::Documents, format!("{documents} documents")),
            B::Nodes { nodes } => (Limit::Nodes, format!("{nodes} nodes")),
            B::Events { events } => (Limit::Nodes, format!("{events} YAML events")),
            B::Depth { depth } => (Limit::Depth, format!("nesting {depth} deep")),
            B::ScalarBytes { total_scalar_bytes } => (
                Limit::FileBytes,
                format!("{total_scalar_bytes} bytes of scalars"),
            ),
            B::Aliases { aliases } => (Limit::AliasExpansion, format!("{aliases} aliases")),
            B::Anchors { anchors } => (Limit::AliasExpansion, format!("{anchors} anchors")),
            B::AliasAnchorRatio { aliases, anchors } => (
                Limit::AliasExpansion,
                format!("{aliases} aliases of {anchors} anchors (an alias bomb)"),
            ),
            B::RecordedAnchorEvents {
                recorded_anchor_events,
            } => (
                Limit::AliasExpansion,
                format!("{recorded_anchor_events} nodes recorded for anchors"),
            ),
            B::RecordedAnchorBytes {
                recorded_anchor_bytes,
            } => (
                Limit::AliasExpansion,
                format!("{recorded_anchor_bytes} bytes recorded for anchors"),
            ),
            _ => return None,
        },
        E::AliasReplayLimitExceeded {
            total_replayed_events,
            ..
        } => (
            Limit::AliasExpansion,
            format!("aliases expanding to more than {total_replayed_events} nodes (an alias bomb)"),
        ),
        E::AliasReplayStackDepthExceeded { depth, .. } => (
            Limit::AliasExpansion,
            format!("aliases nested {depth} deep (an alias bomb)"),
        ),
        // Flow collections (`[[[...`): the scanner counts them ahead of
        // the budget.
        E::ExternalMessage { source, .. }
            if matches!(&**source, Source::Parser(scan)
                if matches!(scan.kind(), serde_saphyr::granit_parser::ErrorKind::RecursionLimitExceeded)) =>
        {
            (Limit::Depth, "flow collections nested deeper".to_owned())
        }
        _ => return None,
    })
}

fn load_str_into(
    text: &str,
    file: Option<&Path>,
    limits: &Limits,
    out: &mut Manifests,
) -> Result<(), LoadError> {
    let file_name = file.map_or_else(|| PathBuf::from("<input>"), Path::to_path_buf);
    let json = file.is_some_and(|f| f.extension().is_some_and(|e| e == "json"));
    let docs = if json {
        json_documents(text, &file_name, limits)?
    } else {
        yaml_documents(text, &file_name, limits)?
    };
    for (document, doc) in docs.iter().enumerate() {
        if let Some(len) = longest_scalar_over(doc, limits.scalar_bytes) {
            return Err(LoadError::Limit {
                file: file_name.clone(),
                limit: Limit::ScalarBytes,
                what: format!("a scalar of {len} bytes in document {document}"),
                limit_text: Limit::ScalarBytes.describe(limits),
            });
        }
    }
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

/// The length of a string (key or value) in `doc` longer than `max`, if
/// any. Iterative: depth is bounded by the parser, but this owes nothing
/// to that.
/// The documents of a YAML file, under `limits` as serde-saphyr applies
/// them while it parses.
fn yaml_documents(text: &str, file_name: &Path, limits: &Limits) -> Result<Vec<Value>, LoadError> {
    serde_saphyr::from_multiple_with_options(text, limits.parser_options()).map_err(|e| {
        if let Some((limit, what)) = breached_limit(&e) {
            return LoadError::Limit {
                file: file_name.to_path_buf(),
                limit,
                what,
                limit_text: limit.describe(limits),
            };
        }
        let loc = e.location();
        LoadError::Syntax {
            file: file_name.to_path_buf(),
            line: loc.map(|l| l.line()).filter(|&l| l > 0),
            column: loc.map(|l| l.column()).filter(|&c| c > 0),
            message: e.without_snippet().to_string(),
        }
    })
}

/// The values of a `.json` file (`kubectl get -o json`; one value, or
/// several one after another), under the same limits. JSON is YAML, but
/// `serde_json` reads it many times faster than the YAML parser (a
/// 10k-service export: see `benches/manifest.rs`), which is what lets a
/// reload of one big export publish within a second. It has no aliases to
/// expand; nesting past `serde_json`'s own 128 levels is refused as the depth
/// limit too.
fn json_documents(text: &str, file_name: &Path, limits: &Limits) -> Result<Vec<Value>, LoadError> {
    let over = |limit: Limit, what: String| LoadError::Limit {
        file: file_name.to_path_buf(),
        limit,
        what,
        limit_text: limit.describe(limits),
    };
    let mut docs = Vec::new();
    for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let doc = doc.map_err(|e| {
            if e.to_string().starts_with("recursion limit exceeded") {
                return over(Limit::Depth, "values nested deeper".to_owned());
            }
            LoadError::Syntax {
                file: file_name.to_path_buf(),
                line: Some(e.line() as u64).filter(|&l| l > 0),
                column: Some(e.column() as u64).filter(|&c| c > 0),
                message: e.to_string(),
            }
        })?;
        docs.push(doc);
        if docs.len() > limits.documents {
            return Err(over(
                Limit::Documents,
                format!("more than {} values", limits.documents),
            ));
        }
    }
    // Nodes as YAML counts them (every value), depth as it does (arrays
    // and objects inside one another).
    let mut nodes = 0usize;
    let mut stack: Vec<(&Value, usize)> = docs.iter().map(|d| (d, 1)).collect();
    while let Some((v, depth)) = stack.pop() {
        nodes += 1;
        if nodes > limits.nodes {
            return Err(over(
                Limit::Nodes,
                format!("more than {} values", limits.nodes),
            ));
        }
        if matches!(v, Value::Array(_) | Value::Object(_)) && depth > limits.depth {
            return Err(over(Limit::Depth, format!("values nested {depth} deep")));
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|c| (c, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|c| (c, depth + 1))),
            _ => {}
        }
    }
    Ok(docs)
}

fn longest_scalar_over(doc: &Value, max: usize) -> Option<usize> {
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.len() > max => return Some(s.len()),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (k, v) in map {
                    if k.len() > max {
                        return Some(k.len());
                    }
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    None
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
