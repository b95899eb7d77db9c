//! Shared pieces of limpet's fuzz targets: a reference checksum written
//! independently of `limpet_dataplane::wire::checksum`, the small snapshot
//! the pipeline target runs against, and the structure-aware frame
//! generator (`arbitrary` descriptions turned into Ethernet frames).

pub mod frames;
pub mod refsum;
pub mod services;

/// The raw-mode encoding of the pipeline target's input, shared with the
/// seed-corpus generator (`dataplane/tests/fuzz_corpus.rs` writes the same
/// bytes without depending on this crate).
///
/// Byte 0 odd: raw mode. Then records of `[ctrl, len_lo, len_hi, frame..]`:
/// `ctrl & 0x80` starts a new burst before this frame, `ctrl & 0x40` swaps
/// the snapshot at that boundary, and `ctrl & 0x3f` is how many seconds the
/// clock advances there. Byte 0 even: structured mode (`arbitrary`).
pub mod raw {
    pub const NEW_BURST: u8 = 0x80;
    pub const SWAP: u8 = 0x40;
    pub const ADVANCE_MASK: u8 = 0x3f;

    /// One frame of a raw-mode input.
    #[derive(Debug)]
    pub struct Record<'a> {
        pub ctrl: u8,
        pub frame: &'a [u8],
    }

    /// Splits a raw-mode body (after byte 0) into records; a short last
    /// record takes what is left.
    pub fn records(mut body: &[u8]) -> Vec<Record<'_>> {
        let mut out = Vec::new();
        while let [ctrl, lo, hi, rest @ ..] = body {
            let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
            out.push(Record {
                ctrl: *ctrl,
                frame: &rest[..len],
            });
            body = &rest[len..];
        }
        out
    }

    /// Encodes frames, each its own burst one second after the last.
    pub fn encode(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![1u8];
        for f in frames {
            out.push(NEW_BURST | 1);
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }
}
