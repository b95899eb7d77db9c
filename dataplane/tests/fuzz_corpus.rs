//! The fuzz targets' seed corpus (fuzz/corpus/wire, fuzz/corpus/pipeline)
//! is the fixture table's input frames; fuzz/corpus/gso holds super-frames
//! (TCP and UDP, IPv4 and IPv6, one VLAN-tagged) as the `gso` target reads
//! them: `[transport | room, segment size (2 bytes, LE), frame..]`. This test keeps the committed
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

/// A `gso` target input: a super-frame of `n` payload bytes to cut into
/// `size`-byte segments with room for a 1514-byte frame.
fn super_frame(
    name: &str,
    v6: bool,
    udp: bool,
    vlan: bool,
    n: usize,
    size: u16,
) -> (String, Vec<u8>) {
    use etherparse::PacketBuilder;
    let data: Vec<u8> = (0..n).map(|i| (i % 253) as u8).collect();
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0], [2, 0, 0, 0, 1, 0]);
    let mut frame = Vec::new();
    macro_rules! finish {
        ($ip:expr) => {
            if udp {
                $ip.udp(5353, 53).write(&mut frame, &data).unwrap()
            } else {
                $ip.tcp(40000, 80, 1, 64000)
                    .ack(1)
                    .psh()
                    .write(&mut frame, &data)
                    .unwrap()
            }
        };
    }
    let mut six = [0u8; 16];
    six[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    match (v6, vlan) {
        (false, false) => finish!(eth.ipv4([198, 51, 100, 2], [192, 0, 2, 10], 64)),
        (false, true) => finish!(eth.single_vlan(7u16.try_into().unwrap()).ipv4(
            [198, 51, 100, 2],
            [192, 0, 2, 10],
            64
        )),
        (true, _) => finish!(eth.ipv6(six, six, 64)),
    }
    // Room 64 + 16 * 122 = 2016 bytes: an AF_PACKET TX slot's.
    let mut input = vec![(122 << 1) | u8::from(udp)];
    input.extend_from_slice(&size.to_le_bytes());
    input.extend_from_slice(&frame);
    (name.to_owned(), input)
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
    for (name, input) in [
        super_frame("tcp-ipv4-3-segments", false, false, false, 4000, 1448),
        super_frame("tcp-ipv4-vlan-2-segments", false, false, true, 2000, 1000),
        super_frame("tcp-ipv6-5-segments", true, false, false, 6000, 1428),
        super_frame("udp-ipv6-3-segments", true, true, false, 3000, 1200),
        super_frame("udp-ipv4-1-segment", false, true, false, 500, 1472),
    ] {
        out.push(("gso", name, input));
    }
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
