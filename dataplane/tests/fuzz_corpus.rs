//! The fuzz targets' seed corpus (fuzz/corpus/wire, fuzz/corpus/pipeline)
//! is the fixture table's input frames. This test keeps the committed
//! files equal to what the table gives today; with
//! `LIMPET_WRITE_FUZZ_CORPUS=1` it writes them instead.
//!
//! The pipeline target's raw mode (see `limpet_fuzz::raw` in fuzz/src):
//! byte 0 = 1, then `[ctrl, len_lo, len_hi, frame..]` records, `ctrl` =
//! 0x80 (new burst) | seconds the clock advances.

mod common;

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn slug(description: &str) -> String {
    let mut s: String = description
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').chars().take(60).collect()
}

/// Raw-mode pipeline input: each frame its own burst, a second apart, or
/// all of them in one burst.
fn raw(frames: &[&[u8]], one_burst: bool) -> Vec<u8> {
    let mut out = vec![1u8];
    for (i, f) in frames.iter().enumerate() {
        let ctrl = if one_burst && i > 0 { 0 } else { 0x80 | 1 };
        out.push(ctrl);
        out.extend_from_slice(&u16::try_from(f.len()).unwrap().to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let fixtures = common::fixtures::fixtures();
    let mut out = Vec::new();
    for (i, f) in fixtures.iter().enumerate() {
        let name = format!("{i:02}-{}", slug(f.description));
        out.push(("wire", name.clone(), f.input.clone()));
        out.push(("pipeline", name, raw(&[&f.input], false)));
    }
    let frames: Vec<&[u8]> = fixtures.iter().map(|f| f.input.as_slice()).collect();
    out.push(("pipeline", "table-in-order".to_owned(), raw(&frames, false)));
    out.push((
        "pipeline",
        "table-in-one-burst".to_owned(),
        raw(&frames, true),
    ));
    out
}

#[test]
fn fuzz_seed_corpus_matches_the_fixture_table() {
    let write = std::env::var_os("LIMPET_WRITE_FUZZ_CORPUS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        let path = corpus_dir(target).join(&name);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed corpus out of date (LIMPET_WRITE_FUZZ_CORPUS=1 cargo test -p limpet-dataplane --test fuzz_corpus):\n{}",
        stale.join("\n")
    );
}
