#!/usr/bin/env bash
# limpet's main job. As root: builds limpet, brings up the network-namespace
# testbed (scripts/testbed), runs limpet on it with an example Service
# (ClientIP, timeoutSeconds 600) and its EndpointSlice, sends real HTTP
# requests from 200 client addresses, prints which backend answered each
# client, removes one endpoint, shows that only its clients moved, and
# cleans up. Without root it runs the same story in memory (`limpet demo`).
#
# Usage: scripts/demo.sh [--io afpacket|afxdp]   (default afpacket; afxdp
# runs it over AF_XDP sockets behind limpet's XDP program)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust stable (rustup) first" >&2
    exit 1
fi
io=afpacket
if [ "${1:-}" = --io ]; then
    case ${2:-} in
        afpacket|afxdp) io=$2; shift 2 ;;
        *) echo "demo: --io takes afpacket or afxdp" >&2; exit 2 ;;
    esac
fi
if [ "$(id -u)" != 0 ]; then
    echo "demo: not root, so no network namespaces: running the in-memory demo instead" >&2
    cargo build --release --locked -p limpet-control --bin limpet
    exec ./target/release/limpet demo "$@"
fi
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi

# LIMPET_BIN: a limpet binary already built (the test command's), instead
# of building the release one.
if [ -n "${LIMPET_BIN:-}" ]; then
    limpet=$LIMPET_BIN
else
    cargo build --release --locked -p limpet-control --bin limpet
    limpet="$repo/target/release/limpet"
fi
work=$(mktemp -d /tmp/limpet-demo.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    scripts/testbed down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# The example Service with its EndpointSlice; endpoints given as arguments.
manifest() {
    cat <<YAML
apiVersion: v1
kind: Service
metadata:
  name: hostnames
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 192.0.2.10
  clusterIPs: [192.0.2.10]
  ports:
  - port: 80
    protocol: TCP
    targetPort: 9376
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 600
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hostnames-abcde
  namespace: default
  labels:
    kubernetes.io/service-name: hostnames
addressType: IPv4
ports:
- name: ""
  port: 9376
  protocol: TCP
endpoints:
YAML
    for a in "$@"; do
        printf -- '- addresses: ["%s"]\n  conditions: {ready: true, serving: true, terminating: false}\n' "$a"
    done
}
write_config() {
    manifest "$@" >"$work/config/.hostnames.yaml.tmp"
    mv "$work/config/.hostnames.yaml.tmp" "$work/config/hostnames.yaml"
}
published() { grep -c "published snapshot" "$work/limpet.log" || true; }

mkdir -p "$work/config"
write_config 203.0.113.11 203.0.113.12 203.0.113.13
echo "== testbed: clients in lp-client, limpet in lp-lb, backends lp-be1..3 answering their name"
scripts/testbed up --backends 3 >/dev/null
echo "== limpet run --io $io:lb0 (ClientIP, timeoutSeconds 600, nat)"
ip netns exec lp-lb "$limpet" run --config "$work/config" --io "$io:lb0" \
    --address 203.0.113.1/24 --address 2001:db8:be::1/64 --idle wait \
    --flow-capacity 65536 --affinity-capacity 65536 >"$work/limpet.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    if [ "$(published)" -ge 1 ] && ip netns exec lp-lb "$limpet" affinity list >/dev/null 2>&1; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then cat "$work/limpet.log"; exit 1; fi
    sleep 0.2
done

client() {
    ip netns exec lp-client python3 scripts/testbed-client.py --vip 192.0.2.10 \
        --first 198.18.0.10 --clients 200 --requests "$1" --timeout 3
}
echo "== 200 clients x 8 new HTTP connections each to http://192.0.2.10/"
client 8 >"$work/before.json"
python3 - "$work/before.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
res = d["results"]
print(f"{'client':<16} {'backend':<8} answers")
for i, (c, r) in enumerate(res.items()):
    if i < 15 or i == len(res) - 1:
        print(f"{c:<16} {'/'.join(sorted(set(x or 'FAILED' for x in r))):<8} {len(r)}")
    elif i == 15:
        print("...")
s = d["summary"]
print(f"clients: {s['clients']}, sticky (one backend for all their connections): {s['clients_single_backend']}, "
      f"split: {s['clients_multi_backend']}, failed requests: {s['failed']}")
print("clients per backend:", {b: n // 8 for b, n in sorted(s["by_backend"].items())})
PY
echo
echo "== limpet affinity list (first lines)"
ip netns exec lp-lb "$limpet" affinity list | head -6
echo "..."
echo
echo "== removing endpoint 203.0.113.12 (lp-be2) from the EndpointSlice"
n=$(published)
write_config 203.0.113.11 203.0.113.13
for _ in $(seq 50); do [ "$(published)" -gt "$n" ] && break; sleep 0.1; done
client 4 >"$work/after.json"
python3 - "$work/before.json" "$work/after.json" <<'PY'
import json, sys
before = json.load(open(sys.argv[1]))["results"]
after = json.load(open(sys.argv[2]))["results"]
def one(r):
    s = set(x for x in r if x)
    return s.pop() if len(s) == 1 else "/".join(sorted(s)) or "FAILED"
moved_own = moved_other = on_removed = 0
for c in before:
    b, a = one(before[c]), one(after[c])
    if b == "lp-be2":
        on_removed += 1
        moved_own += a != b
    elif a != b:
        moved_other += 1
        print(f"  {c}: {b} -> {a}  (should not have moved)")
print(f"clients that were on lp-be2: {on_removed}, of which moved: {moved_own}")
print(f"other clients that moved: {moved_other}")
sys.exit(0 if moved_other == 0 and moved_own == on_removed else 1)
PY
echo
echo "== done; cleaning up"
