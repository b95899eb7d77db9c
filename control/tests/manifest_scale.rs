//! Manifests at cluster scale: the largest clusters' exports load, hostile
//! files are refused with a message naming the file and the limit.

mod export;

use export::Export;
use limpet_control::ids::IdAllocator;
use limpet_control::manifest::{
    Limit, Limits, LoadError, load_path, load_path_with, load_str, load_str_with,
};
use limpet_control::translate::TranslateContext;
use std::fmt::Write as _;
use std::path::Path;

fn refused(err: &LoadError) -> Limit {
    match err {
        LoadError::Limit { limit, .. } => *limit,
        other => panic!("not refused by a limit: {other}"),
    }
}

#[test]
fn a_10k_service_100k_endpoint_export_loads() {
    let cluster = Export::uniform(10_000, 10);
    let text = cluster.list();
    let m = load_str(&text, Some(Path::new("export.yaml"))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.services.len(), 10_000);
    assert_eq!(m.slices.len(), 10_000);
    let t = m.translate(&TranslateContext::default(), &mut IdAllocator::new());
    assert!(t.errors.is_empty(), "{:?}", t.errors.first());
    let backends: usize = t.specs.iter().map(|s| s.backends.len()).sum();
    assert_eq!((t.specs.len(), backends), (10_000, 100_000));
}

#[test]
fn an_export_as_many_documents_and_many_files_loads() {
    // One object a document, as `kubectl get -o yaml` of each object
    // concatenated with `---` gives: 4,000 documents, past the parser's
    // default of 1,024.
    let cluster = Export::uniform(2_000, 3);
    let docs = cluster.documents(0..2_000);
    let m = load_str(&docs, Some(Path::new("docs.yaml"))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m.services.len(), m.slices.len()), (2_000, 2_000));

    let dir = tempfile::tempdir().unwrap();
    cluster.write_dir(dir.path(), 250);
    let m = load_path(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.files.len(), 250);
    assert_eq!((m.services.len(), m.slices.len()), (2_000, 2_000));
}

#[test]
fn an_alias_bomb_is_refused_naming_file_and_limit() {
    // "Billion laughs": nine levels of ten aliases each, 10^9 nodes from a
    // few hundred bytes.
    let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\ndata:\n");
    bomb.push_str("  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 10].join(", ");
        let _ = writeln!(bomb, "  {}: &{} [{refs}]", pair[1], pair[1]);
    }
    let err = load_str(&bomb, Some(Path::new("lol.yaml"))).unwrap_err();
    assert_eq!(refused(&err), Limit::AliasExpansion, "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("lol.yaml: refused: "), "{msg}");
    assert!(
        msg.contains("the limit is 1000000 nodes expanded from aliases"),
        "{msg}"
    );
    assert_eq!(err.file(), Path::new("lol.yaml"));
}

#[test]
fn anchors_used_as_people_use_them_are_fine() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: default}
  spec:
    clusterIP: 192.0.2.1
    ports: &ports [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
- apiVersion: v1
  kind: Service
  metadata: {name: b, namespace: default}
  spec: {clusterIP: 192.0.2.2, ports: *ports}
";
    let m = load_str(text, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.services.len(), 2);
    let ports = |i: usize| m.services[i].object.spec.as_ref().unwrap().ports.clone();
    assert_eq!(ports(0), ports(1));
}

#[test]
fn absurd_nesting_is_refused_naming_file_and_limit() {
    for (shape, text) in [
        (
            "flow",
            format!("a: {}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        (
            "block",
            (0..200).fold(String::new(), |mut s, d| {
                let _ = writeln!(s, "{}k{d}:", " ".repeat(d));
                s
            }),
        ),
    ] {
        let err = load_str(&text, Some(Path::new("deep.yaml"))).unwrap_err();
        assert_eq!(refused(&err), Limit::Depth, "{shape}: {err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("deep.yaml: refused: ")
                && msg.ends_with("the limit is nesting 64 deep"),
            "{shape}: {msg}"
        );
    }
}

#[test]
fn a_huge_scalar_is_refused_naming_file_and_limit() {
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  annotations:\n    x: \"{}\"\n",
        "x".repeat(3 << 20)
    );
    let err = load_str(&text, Some(Path::new("big.yaml"))).unwrap_err();
    assert_eq!(refused(&err), Limit::ScalarBytes, "{err}");
    assert!(
        err.to_string()
            .ends_with("the limit is 2097152 bytes in one scalar"),
        "{err}"
    );
}

#[test]
fn files_over_a_limit_are_refused_naming_file_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Export::uniform(40, 2);
    cluster.write_dir(dir.path(), 4);
    let one = dir.path().join("export-000.yaml");
    let size = std::fs::metadata(&one).unwrap().len();
    let limits = |f: fn(&mut Limits)| {
        let mut l = Limits::DEFAULT;
        f(&mut l);
        l
    };
    // Within the defaults, the directory loads.
    load_path(dir.path()).unwrap_or_else(|e| panic!("{e}"));

    let small = Limits {
        file_bytes: size - 1,
        ..Limits::DEFAULT
    };
    let err = load_path_with(dir.path(), &small).unwrap_err();
    assert_eq!(refused(&err), Limit::FileBytes);
    assert_eq!(err.file(), one);
    assert_eq!(
        err.to_string(),
        format!(
            "{}: refused: {size} bytes; the limit is {} bytes in one file",
            one.display(),
            size - 1
        )
    );

    let err = load_path_with(
        dir.path(),
        &Limits {
            total_bytes: size * 2,
            ..Limits::DEFAULT
        },
    )
    .unwrap_err();
    assert_eq!(refused(&err), Limit::TotalBytes, "{err}");
    assert!(
        err.to_string().contains("bytes in all files together"),
        "{err}"
    );

    let err = load_path_with(&one, &limits(|l| l.nodes = 100)).unwrap_err();
    assert_eq!(refused(&err), Limit::Nodes, "{err}");
    assert!(
        err.to_string()
            .ends_with("the limit is 100 YAML nodes in one file"),
        "{err}"
    );

    let docs = "---\napiVersion: v1\nkind: List\n".repeat(11);
    let err = load_str_with(&docs, None, &limits(|l| l.documents = 10)).unwrap_err();
    assert_eq!(refused(&err), Limit::Documents, "{err}");
    assert!(
        err.to_string()
            .starts_with("<input>: refused: 11 documents; the limit is 10 YAML documents"),
        "{err}"
    );
}

/// The export as `kubectl get -o json` prints it: `.json` files are read by
/// `serde_json`, to the same objects as the YAML, under the same limits.
#[test]
fn a_json_export_loads_as_its_yaml_does_and_keeps_the_limits() {
    let cluster = Export::uniform(2_000, 3);
    let yaml = load_str(&cluster.list(), Some(Path::new("export.yaml"))).unwrap();
    let items: Vec<serde_json::Value> = yaml
        .services
        .iter()
        .map(|s| serde_json::to_value(&s.object).unwrap())
        .chain(
            yaml.slices
                .iter()
                .map(|s| serde_json::to_value(&s.object).unwrap()),
        )
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let text = serde_json::to_string_pretty(&list).unwrap();
    let json = load_str(&text, Some(Path::new("export.json"))).unwrap_or_else(|e| panic!("{e}"));
    let objects = |m: &limpet_control::manifest::Manifests| {
        (
            m.services
                .iter()
                .map(|s| s.object.clone())
                .collect::<Vec<_>>(),
            m.slices
                .iter()
                .map(|s| s.object.clone())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(objects(&json), objects(&yaml));

    // Several values one after another, as a stream of `kubectl get -o
    // json` outputs.
    let one = serde_json::to_string(&list["items"][0]).unwrap();
    let m = load_str(&format!("{one}\n{one}"), Some(Path::new("two.json"))).unwrap();
    assert_eq!(m.services.len(), 2);

    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let err = load_str(&deep, Some(Path::new("deep.json"))).unwrap_err();
    assert_eq!(refused(&err), Limit::Depth, "{err}");
    assert!(
        err.to_string().ends_with("the limit is nesting 64 deep"),
        "{err}"
    );
    let deeper = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_eq!(
        refused(&load_str(&deeper, Some(Path::new("deeper.json"))).unwrap_err()),
        Limit::Depth
    );

    let err = load_str(
        "{\"kind\": \"Service\",\n \"metadata\": }",
        Some(Path::new("bad.json")),
    )
    .unwrap_err();
    assert!(
        matches!(err, LoadError::Syntax { line: Some(2), .. }),
        "no line for a JSON syntax error: {err:?}"
    );
    assert!(err.to_string().starts_with("bad.json:2:"), "{err}");
}
