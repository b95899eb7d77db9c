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

# The end-to-end and AF_PACKET tests build network namespaces (root, as CI
# runs) with iproute2 and drive HTTP clients and servers with python3; the
# harness smoke test (bench/tests/harness_smoke.rs) also configures
# kube-proxy's nftables peer (nft, conntrack) and pins processes (taskset).
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
command -v sysctl >/dev/null || need+=(procps)
command -v nft >/dev/null || need+=(nftables)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v taskset >/dev/null || need+=(util-linux)
# The AF_XDP backend's XDP program is compiled by dataplane/build.rs with
# clang against the kernel's UAPI headers (without clang limpet builds,
# and dataplane/tests/afxdp.rs fails saying so).
command -v clang >/dev/null || need+=(clang)
[ -e /usr/include/linux/bpf.h ] || need+=(linux-libc-dev)
# The DPDK stories turn a router's veth offloads off (testbed/behind.rs).
command -v ethtool >/dev/null || need+=(ethtool)
# The tier test (control/tests/e2e_tier.rs) runs BIRD 2 in its router and
# node namespaces; the package's own service in the host is not wanted.
new_bird=0
command -v bird >/dev/null || { need+=(bird2); new_bird=1; }
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq "${need[@]}"
        if [ "$new_bird" = 1 ]; then
            systemctl disable --now bird.service >/dev/null 2>&1 || true
        fi
    else
        echo "error: missing ${need[*]}; install them or run as root" >&2
        exit 1
    fi
fi
# A testbed left behind by an interrupted run would make the tests fail;
# one whose lock is held is in use (a test binary, the harness): leave it.
if [ "$(id -u)" = 0 ] && ip netns list 2>/dev/null | grep -q '^lp-'; then
    flock -n /run/lock/limpet-testbed.lock scripts/testbed down || true
fi

# cargo counts dataplane/dpdk-sys as a workspace member (a path dependency
# of a member), so every --workspace build below runs its build script,
# which needs libdpdk-dev and libclang: install them before anything builds.
scripts/dpdk-setup

# Each phase says how long the run has taken so far (CI must stay well
# under 30 minutes).
phase() { echo "== $* [$((SECONDS / 60))m$((SECONDS % 60))s]"; }
phase "format"
cargo fmt --all -- --check
phase "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "tests"
cargo test --workspace --locked
phase "DPDK backend (libdpdk-dev; --no-huge --no-pci, virtual devices)"
cargo clippy -p limpet-dataplane -p limpet-control --features dpdk --all-targets --locked -- -D warnings
cargo test -p limpet-dpdk-sys --locked
cargo test -p limpet-dataplane --features dpdk --test dpdk --locked
# limpet run --io dpdk:... on the testbed (net_af_packet, net_af_xdp) and
# between two limpets over memif and virtio_user/vhost-user (root).
cargo test -p limpet-control --features dpdk --test e2e_dpdk --test dpdk_vdevs --locked
# ICMP (path MTU across a 1280-byte router link, rejects, ping) over DPDK net_af_packet.
cargo test -p limpet-control --features dpdk --test e2e_icmp --locked -- over_dpdk
# Encapsulated DSR (ipip, gue) to an endpoint behind a router, over DPDK net_af_packet.
cargo test -p limpet-control --features dpdk --test e2e_tunnel --locked -- over_dpdk
# pktgen over DPDK ports: net_ring in process, and send -> sink as two
# processes over net_memif; the DPDK benchmark's smoke run (not asserted).
cargo clippy -p limpet-pktgen -p limpet-bench --features limpet-pktgen/dpdk,limpet-bench/dpdk \
    --all-targets --locked -- -D warnings
cargo test -p limpet-pktgen --features dpdk --lib --locked dpdk
cargo test -p limpet-pktgen --features dpdk --test dpdk_memif --locked
cargo run -p limpet-bench --features dpdk --bin limpet-dpdk-bench --locked -- --quick
phase "fuzzing (libFuzzer, 20 s a target from its seed corpus; fails on a crash)"
if command -v rustup >/dev/null; then
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
fi
scripts/fuzz all 20
if [ -f bench/src/main.rs ] && grep -q -- '--quick' bench/src/main.rs; then
    phase "benchmark smoke run (figures only, not asserted)"
    cargo run --release --locked -p limpet-bench -- --quick
fi
phase "done"
