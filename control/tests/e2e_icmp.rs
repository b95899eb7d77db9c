//! ICMP through limpet on the network-namespace testbed, with real sockets
//! (root; CI is root; without it the test fails, loudly):
//!
//! - path MTU discovery across limpet's `nat`: a backend behind a router
//!   whose link to it has a 1280-byte MTU (the backend advertising a
//!   1460-byte MSS), a 200 kB upload from a client with a 1500-byte MTU
//!   (TCP with DF, as Linux sends it). The router's "fragmentation needed"
//!   only reaches the client's socket if limpet translates it back to the
//!   service address;
//! - kube-proxy's reject: TCP and UDP to a service port without endpoints
//!   and to a port the service address does not define fail at once with
//!   "connection refused" (IPv4 and IPv6);
//! - ping of a service address (IPv4 and IPv6);
//! - the same path MTU discovery through `fullnat`, two workers: the
//!   router's error is addressed to limpet's source address and must be
//!   steered, by the port it quotes, to the worker owning the connection.
//!
//! The router (`lp-rt`) and the far backend (`lp-far`) are
//! `testbed::behind`'s, on top of `scripts/testbed`. Runs over `AF_PACKET`
//! and, built with `--features dpdk`, over DPDK's `net_af_packet`.

mod testbed;

use serde_json::Value;
use std::process::Command;
use testbed::behind::{Behind, ROUTER, ROUTER6, in_ns, upload_completes};
use testbed::story::{Config, Io, Limpet};
use testbed::{Testbed, must_be_root, sh};

const UPLOAD_VIP: &str = "192.0.2.20";
const UPLOAD_VIP6: &str = "2001:db8:5::20";
const EMPTY_VIP4: &str = "192.0.2.21";
/// The far backend again, for the `fullnat` upload: an address the client
/// has learnt no path MTU for yet.
const FULLNAT_VIP: &str = "192.0.2.22";
const EMPTY_VIP6: &str = "2001:db8:5::21";
const UPLOAD_BYTES: usize = 200_000;

/// The upload Services (IPv4 and IPv6, each with its one endpoint behind
/// the router, 198.19.0.2 and `2001:db8:f0::2`) and a dual-stack Service
/// whose ports have no endpoints.
const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: upload6
  namespace: default
spec:
  type: ClusterIP
  clusterIP: "2001:db8:5::20"
  clusterIPs: ["2001:db8:5::20"]
  ipFamilies: [IPv6]
  ports:
  - port: 80
    protocol: TCP
    targetPort: 9376
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: upload6-v6
  namespace: default
  labels:
    kubernetes.io/service-name: upload6
addressType: IPv6
endpoints:
- addresses: ["2001:db8:f0::2"]
  conditions:
    ready: true
ports:
- name: ""
  port: 9376
  protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: upload
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 192.0.2.20
  clusterIPs: [192.0.2.20]
  ports:
  - port: 80
    protocol: TCP
    targetPort: 9376
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: upload-v4
  namespace: default
  labels:
    kubernetes.io/service-name: upload
addressType: IPv4
endpoints:
- addresses: ["198.19.0.2"]
  conditions:
    ready: true
ports:
- name: ""
  port: 9376
  protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: upload-full
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 192.0.2.22
  clusterIPs: [192.0.2.22]
  ports:
  - port: 80
    protocol: TCP
    targetPort: 9376
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: upload-full-v4
  namespace: default
  labels:
    kubernetes.io/service-name: upload-full
addressType: IPv4
endpoints:
- addresses: ["198.19.0.2"]
  conditions:
    ready: true
ports:
- name: ""
  port: 9376
  protocol: TCP
---
apiVersion: v1
kind: Service
metadata:
  name: empty
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 192.0.2.21
  clusterIPs: [192.0.2.21, "2001:db8:5::21"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 9376
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 5353
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: empty-v4
  namespace: default
  labels:
    kubernetes.io/service-name: empty
addressType: IPv4
endpoints: []
ports:
- name: http
  port: 9376
  protocol: TCP
- name: dns
  port: 5353
  protocol: UDP
"#;

/// In lp-client: TCP connects and connected UDP exchanges, each with a
/// 3 s timeout; what each got and how long it took.
const PROBES: &str = r#"
import json, socket, sys, time
def tcp(addr, port):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(3)
    t = time.time()
    try:
        s.connect((addr, port))
        r = "connected"
    except ConnectionRefusedError:
        r = "refused"
    except socket.timeout:
        r = "timeout"
    except OSError as e:
        r = repr(e)
    return r, time.time() - t
def udp(addr, port):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((addr, port))
    t = time.time()
    try:
        s.send(b"query")
        s.recv(100)
        r = "answered"
    except ConnectionRefusedError:
        r = "refused"
    except socket.timeout:
        r = "timeout"
    except OSError as e:
        r = repr(e)
    return r, time.time() - t
def ping(addr):
    v6 = ":" in addr
    if v6:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        req = bytes([128, 0, 0, 0, 0x4c, 0x50, 0, 1]) + b"limpet"
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        body = bytes([8, 0, 0, 0, 0x4c, 0x50, 0, 1]) + b"limpet"
        c = sum(int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body), 2))
        c = (c & 0xffff) + (c >> 16)
        c = ~((c & 0xffff) + (c >> 16)) & 0xffff
        req = body[:2] + c.to_bytes(2, "big") + body[4:]
    s.settimeout(3)
    t = time.time()
    s.sendto(req, (addr, 0))
    try:
        while True:
            data, _ = s.recvfrom(2000)
            msg = data if v6 else data[(data[0] & 15) * 4:]
            if msg[0] == (129 if v6 else 0) and msg[4:6] == b"\x4c\x50":
                return "reply", time.time() - t
    except socket.timeout:
        return "timeout", time.time() - t
out = {}
for spec in sys.argv[1:]:
    kind, addr, port = spec.split(",")
    if kind == "tcp":
        out[spec] = tcp(addr, int(port))
    elif kind == "udp":
        out[spec] = udp(addr, int(port))
    else:
        out[spec] = ping(addr)
print(json.dumps(out))
"#;

/// A 200 kB upload to `vip`: it completes, the client started with
/// segments too big for the backend's link and learnt the path's MTU, and
/// limpet translated at least `errors` ICMP errors to the client.
fn upload_through_small_link(limpet: &Limpet, vip: &str, errors: f64) {
    let (upload, route) =
        upload_completes(limpet, (vip, 80), UPLOAD_BYTES, "through a 1280-byte link");
    let mss_before = upload["mss_before"].as_u64().unwrap_or(0);
    let headers = if vip.contains(':') { 60 } else { 40 };
    assert!(
        mss_before + headers > 1280,
        "the client should start with segments the 1280-byte link cannot carry (MSS {mss_before})"
    );
    assert!(
        route.contains("mtu 1280"),
        "the client never learnt the path MTU to {vip}: {route}"
    );
    assert!(
        metric("icmp_errors_to_client_total") >= errors,
        "no ICMP error was translated to the client"
    );
}

fn metric(name: &str) -> f64 {
    let text = in_ns(
        "lp-lb",
        &[
            "python3",
            "-c",
            "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9901/metrics').read().decode())",
        ],
    );
    text.lines()
        .filter(|l| l.starts_with(&format!("limpet_{name}")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn icmp_through_limpet_end_to_end() {
    icmp_story(Io::AfPacket, 2);
}

/// The same over DPDK's `net_af_packet` (two workers: errors from behind
/// limpet are steered to the worker owning their client, as replies are).
/// Run with `--features dpdk` (scripts/test.sh's DPDK block).
#[cfg(feature = "dpdk")]
#[test]
fn icmp_through_limpet_end_to_end_over_dpdk_af_packet() {
    icmp_story(Io::DpdkAfPacket, 2);
}

fn icmp_story(io: Io, workers: u16) {
    must_be_root();
    let testbed = Testbed::up_with(1, io.testbed_args());
    testbed.mode("nat");
    let mut behind = Behind::up(1280, io.offloads_on());
    behind.serve(&["python3", "-c", testbed::COUNT_SERVER, "9376"], 9376);
    let config = Config::new("icmp");
    config.write(MANIFEST);
    let mut args = io.args(&["lb0"], workers);
    args.extend(
        [
            "--address",
            "203.0.113.1/24",
            "--address",
            "2001:db8:be::1/64",
            "--gateway",
            ROUTER,
            "--forward",
            "nat",
        ]
        .map(str::to_owned),
    );
    args.extend(["--workers".to_owned(), workers.to_string()]);
    let limpet = Limpet::start_with(&config, &args);

    // Path MTU discovery across limpet, IPv4 (the router's address is
    // this link's gateway); then IPv6 (a link has one gateway: limpet again
    // with the router's IPv6 address as its gateway).
    upload_through_small_link(&limpet, UPLOAD_VIP, 1.0);
    drop(limpet);
    let gateway = args.iter().position(|a| a == ROUTER).unwrap();
    ROUTER6.clone_into(&mut args[gateway]);
    let limpet = Limpet::start_with(&config, &args);
    upload_through_small_link(&limpet, UPLOAD_VIP6, 1.0);

    // Rejects, and ping of service addresses.
    let probes = [
        format!("tcp,{EMPTY_VIP4},80"),
        format!("tcp,{UPLOAD_VIP},81"),
        format!("udp,{EMPTY_VIP4},53"),
        format!("udp,{UPLOAD_VIP},53"),
        format!("tcp,{EMPTY_VIP6},80"),
        format!("tcp,{EMPTY_VIP6},81"),
        format!("udp,{EMPTY_VIP6},53"),
        format!("ping,{UPLOAD_VIP},0"),
        format!("ping,{EMPTY_VIP6},0"),
    ];
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", "lp-client", "python3", "-c", PROBES])
        .args(&probes);
    let results: Value = serde_json::from_str(&sh(&mut cmd)).expect("probe JSON");
    eprintln!("probes: {results}");
    for p in &probes {
        let (what, secs) = (&results[p][0], results[p][1].as_f64().unwrap());
        let want = if p.starts_with("ping") {
            "reply"
        } else {
            "refused"
        };
        assert_eq!(what, want, "{p}: {what} after {secs:.3} s");
        assert!(secs < 1.0, "{p}: {what} only after {secs:.3} s");
    }
    assert!(metric("icmp_rejects_total") >= 6.0);
    assert!(metric("icmp_echo_replies_total") >= 2.0);
    drop(limpet);

    // `fullnat`: the far backend sees limpet's address as the client, the
    // router's fragmentation-needed goes to that address, and with two
    // workers it is steered by the port it quotes to the connection's.
    ROUTER.clone_into(&mut args[gateway]);
    let forward = args.iter().position(|a| a == "--forward").unwrap() + 1;
    "fullnat".clone_into(&mut args[forward]);
    let limpet = Limpet::start_with(&config, &args);
    upload_through_small_link(&limpet, FULLNAT_VIP, 1.0);
    drop(limpet);
}
