#!/usr/bin/env bash
# Every test limpet has, on a fresh machine: installs what the tests need,
# then runs formatting and lint checks, the whole test suite, and a short
# smoke run of the benchmark binary (figures are printed, never asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust stable (rustup) first" >&2
    exit 1
fi
if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
fi

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
cargo test --workspace --locked
if [ -f bench/src/main.rs ] && grep -q -- '--quick' bench/src/main.rs; then
    echo "== benchmark smoke run (figures only, not asserted)"
    cargo run --release --locked -p limpet-bench -- --quick
fi
