//! Compiles the `AF_XDP` backend's XDP program (`bpf/steer.c`) with clang
//! for the BPF target; `io::afxdp` embeds the object. Without clang the
//! build still succeeds, with a warning, and the backend refuses to start,
//! saying why (`scripts/test.sh` installs clang, so CI never builds
//! without it).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/steer.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("steer.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    // The kernel's UAPI headers include <asm/types.h>, which lives under
    // the multiarch directory on Debian-like systems.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    let result = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(multiarch)
        .args(["-c", "bpf/steer.c", "-o"])
        .arg(&out)
        .output();
    match result {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            println!(
                "cargo:warning=the AF_XDP program did not compile ({clang}): {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            );
            std::fs::write(&out, b"").expect("write an empty object");
        }
        Err(e) => {
            println!(
                "cargo:warning=no clang ({clang}: {e}): limpet is built without the AF_XDP backend's program"
            );
            std::fs::write(&out, b"").expect("write an empty object");
        }
    }
}
