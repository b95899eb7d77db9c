#!/usr/bin/env bash
# limpet's main job on the built-in default: builds limpet and runs the
# in-memory demo (clients sticking to backends; one endpoint removed).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust stable (rustup) first" >&2
    exit 1
fi
cargo build --release --locked -p limpet-control --bin limpet
exec ./target/release/limpet demo "$@"
