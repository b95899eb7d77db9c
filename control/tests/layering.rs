//! The packet I/O backends sit below the run loop: `run.rs` chooses one,
//! and a backend (`backend.rs`, `afpacket.rs`, `dpdk.rs`) never reaches up
//! into `run.rs`, so adding a backend touches its own file and one arm of
//! `run::IoBackend`.

use std::path::Path;

#[test]
fn backends_never_import_the_run_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in ["backend.rs", "afpacket.rs", "dpdk.rs"] {
        let text = std::fs::read_to_string(src.join(file)).unwrap();
        let upward: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| l.contains("crate::run") || l.contains("super::run"))
            .collect();
        assert!(upward.is_empty(), "{file} reaches into run.rs: {upward:?}");
    }
}
