//! Encapsulated DSR end to end (`--forward ipip`, then `--forward gue`),
//! with real sockets (root; CI is root; without it the test fails, loudly).
//!
//! The endpoint is in another L3 domain: lp-far, behind the router lp-rt
//! (`testbed::behind`), where L2 `dsr` cannot reach. It holds the service
//! addresses on its loopback and answers clients directly through the
//! router, never through limpet. The link between router and endpoint has
//! a 1400-byte MTU.
//!
//! What must hold, IPv4 and IPv6, for each tunnel:
//! - HTTP requests from many client addresses are answered by the endpoint;
//! - a 200 kB upload completes: the client starts with segments that fit
//!   its own link but not the tunnel, limpet answers "fragmentation needed"
//!   / "packet too big" with the room the tunnel leaves (1380 / 1360 for
//!   IP in IP, 1372 / 1352 for GUE), and the client's route learns it.
//!   A first `ipip` run tells limpet the tunnel's MTU (`--tunnel-mtu
//!   1400`); the `gue` run and a second `ipip` one do not, so the router's
//!   errors about limpet's outer packets, addressed to limpet and steered
//!   to the worker holding the connection, must become the client's.
//!
//! This machine's kernel has no IPIP, ip6tnl or FOU modules, so lp-far
//! decapsulates with `pktgen decap`: an `AF_PACKET` sink that unwraps what
//! is addressed to it and hands the inner packets to lp-far's own stack
//! over a veth pair, where the real servers answer them (the kernel's
//! tunnel devices do the same). Where the kernel can make those devices,
//! the test uses them instead and says so.

mod testbed;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use testbed::behind::{Behind, FAR, FAR6, ROUTER, ROUTER6, ethtool_off, in_ns, upload_completes};
use testbed::story::{Config, Io, Limpet};
use testbed::{Testbed, http, must_be_root, pktgen, repo};

const IPIP4: &str = "192.0.2.40";
const IPIP6: &str = "2001:db8:5::40";
const GUE4: &str = "192.0.2.41";
const GUE6: &str = "2001:db8:5::41";
const TUNNEL_MTU: u16 = 1400;
const UPLOAD_BYTES: usize = 200_000;

/// Two dual-stack Services (one per tunnel run, so the client learns each
/// path's MTU afresh), each with an HTTP port and an upload port, their
/// one endpoint lp-far. DSR keeps the port: target ports are the same.
fn manifest() -> String {
    let mut out = String::new();
    for (name, v4, v6) in [("ipip", IPIP4, IPIP6), ("gue", GUE4, GUE6)] {
        write!(
            out,
            r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {v4}
  clusterIPs: [{v4}, "{v6}"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  sessionAffinity: ClientIP
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 80
  - name: upload
    port: 81
    protocol: TCP
    targetPort: 81
---
"#
        )
        .expect("writing to a String");
        for (family, suffix, far) in [("IPv4", "v4", FAR), ("IPv6", "v6", FAR6)] {
            write!(
                out,
                r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-{suffix}
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
addressType: {family}
endpoints:
- addresses: ["{far}"]
  conditions:
    ready: true
ports:
- name: http
  port: 80
  protocol: TCP
- name: upload
  port: 81
  protocol: TCP
---
"#
            )
            .expect("writing to a String");
        }
    }
    out
}

/// lp-far as a DSR endpoint: the service addresses on its loopback, no
/// reverse-path filter (the decapsulated packets arrive from clients on a
/// device no route to them uses), and the router sends replies straight
/// to the clients' segment rather than back through limpet.
fn endpoint_setup() {
    for vip in [IPIP4, GUE4] {
        in_ns(
            "lp-far",
            &["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"],
        );
    }
    for vip in [IPIP6, GUE6] {
        in_ns(
            "lp-far",
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{vip}/128"),
                "dev",
                "lo",
                "nodad",
            ],
        );
    }
    for kv in [
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.eth0.rp_filter=0",
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ] {
        in_ns("lp-far", &["sysctl", "-qw", kv]);
    }
    for route in [
        "route add 198.51.100.0/24 dev rt0",
        "route add 198.18.0.0/22 via 198.51.100.2 dev rt0 onlink",
        "-6 route add 2001:db8:100::/64 dev rt0",
        "-6 route add 2001:db8:c1::/64 via 2001:db8:100::2 dev rt0 onlink",
    ] {
        let mut args = vec!["ip"];
        args.extend(route.split_whitespace());
        in_ns("lp-rt", &args);
    }
}

/// How lp-far decapsulates.
enum Decap {
    /// The kernel's own ipip / ip6tnl devices and FOU ports.
    Kernel,
    /// `pktgen decap`, reporting to this file when stopped.
    Sink(PathBuf),
}

/// The kernel's tunnel devices in lp-far, if it can make them; leaves
/// nothing behind if it cannot.
fn kernel_decap() -> bool {
    let run = |args: &str| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "lp-far", "ip"])
            .args(args.split_whitespace());
        cmd.output().is_ok_and(|o| o.status.success())
    };
    let steps = [
        format!("link add name lt4 type ipip local {FAR}"),
        "link set lt4 up".to_owned(),
        format!("-6 link add name lt6 type ip6tnl mode ip6ip6 local {FAR6}"),
        "link set lt6 up".to_owned(),
        "fou add port 6080 gue".to_owned(),
        "-6 fou add port 6080 gue".to_owned(),
    ];
    if steps.iter().all(|s| run(s)) {
        in_ns(
            "lp-far",
            &["sysctl", "-qw", "net.ipv4.conf.lt4.rp_filter=0"],
        );
        return true;
    }
    for undo in [
        "link del lt4",
        "link del lt6",
        "fou del port 6080",
        "-6 fou del port 6080",
    ] {
        run(undo);
    }
    false
}

/// `pktgen decap` in lp-far: a veth pair (dcap0, ours; dcap1, the
/// kernel's), and the kernel kept from answering the tunnelled packets it
/// also sees on eth0 (it has no handler for them and would send "protocol
/// unreachable" / "port unreachable" back).
fn sink_decap(behind: &mut Behind) -> PathBuf {
    in_ns(
        "lp-far",
        &[
            "ip", "link", "add", "dcap0", "type", "veth", "peer", "name", "dcap1",
        ],
    );
    for dev in ["dcap0", "dcap1"] {
        in_ns("lp-far", &["ip", "link", "set", dev, "up"]);
        ethtool_off("lp-far", dev);
    }
    in_ns(
        "lp-far",
        &["sysctl", "-qw", "net.ipv4.conf.dcap1.rp_filter=0"],
    );
    for rule in [
        "add table inet limpet_decap",
        "add chain inet limpet_decap input { type filter hook input priority 0 ; }",
        "add rule inet limpet_decap input meta l4proto { 4, 41 } drop",
        "add rule inet limpet_decap input udp dport 6080 drop",
    ] {
        let mut args = vec!["nft"];
        args.extend(rule.split_whitespace());
        in_ns("lp-far", &args);
    }
    let report = std::env::temp_dir().join(format!("limpet-decap-{}.json", std::process::id()));
    let pktgen = pktgen();
    let pktgen = pktgen.to_str().expect("pktgen path");
    let report_arg = report.to_str().expect("report path").to_owned();
    behind.run(&[
        pktgen,
        "decap",
        "--on",
        "eth0",
        "--address",
        FAR,
        "--address",
        FAR6,
        "--into",
        "dcap0",
        "--peer",
        "dcap1",
        "--json",
        &report_arg,
    ]);
    report
}

/// A 200 kB upload to `vip`'s upload port completes, and the client's
/// route to it learnt `mtu` (limpet's answer: the tunnel's room).
fn upload_learns(limpet: &Limpet, vip: &str, mtu: u16) {
    let (_, route) = upload_completes(limpet, (vip, 81), UPLOAD_BYTES, "through the tunnel");
    assert!(
        route.contains(&format!("mtu {mtu}")),
        "the client's route to {vip} should have learnt mtu {mtu}: {route}"
    );
}

/// One limpet with `--forward forward`, told the tunnel's MTU or not
/// (`told`): then its own answers only cover the interface's MTU and the
/// router's errors about outer packets, addressed to limpet, must reach
/// the client translated.
fn tunnel_run(
    (config, io): (&Config, Io),
    forward: &str,
    told: bool,
    vips: (&str, &str),
    mtus: (u16, u16),
) {
    let mut args = io.args(&["lb0"], 2);
    args.extend(
        [
            "--address",
            "203.0.113.1/24",
            "--address",
            "2001:db8:be::1/64",
            "--gateway",
            ROUTER,
            "--gateway",
            ROUTER6,
            "--forward",
            forward,
            "--workers",
            "2",
        ]
        .map(str::to_owned),
    );
    if told {
        args.extend(["--tunnel-mtu".to_owned(), TUNNEL_MTU.to_string()]);
    }
    // What the client learnt in an earlier run is forgotten.
    in_ns("lp-client", &["ip", "route", "flush", "cache"]);
    in_ns("lp-client", &["ip", "-6", "route", "flush", "cache"]);
    let limpet = Limpet::start_with(config, &args);
    for (vip, first) in [(vips.0, "198.18.0.1"), (vips.1, "2001:db8:c1::1")] {
        let answers = http(vip, first, 16, 2);
        let failed: Vec<_> = answers
            .results
            .iter()
            .filter(|(_, r)| r.iter().any(|b| b.as_deref() != Some("lp-far")))
            .collect();
        assert!(
            failed.is_empty(),
            "{forward}: requests to {vip} not answered by the endpoint: {failed:?}\n{}",
            limpet.log_text()
        );
    }
    upload_learns(&limpet, vips.0, mtus.0);
    upload_learns(&limpet, vips.1, mtus.1);
    let tunnelled = limpet.metric("limpet_tunnelled_packets_total");
    let too_big = limpet.metric("limpet_icmp_too_big_total");
    let translated = limpet.metric("limpet_icmp_errors_to_client_total");
    eprintln!(
        "{forward}: {tunnelled} packets tunnelled, {too_big} too-big answers, \
         {translated} router errors translated"
    );
    assert!(
        tunnelled >= 200.0,
        "{forward}: only {tunnelled} packets tunnelled"
    );
    assert!(too_big >= 2.0, "{forward}: only {too_big} too-big answers");
    if !told {
        assert!(
            translated >= 2.0,
            "{forward}: only {translated} router errors reached the clients"
        );
    }
    let replies = limpet.metric("limpet_replies_total");
    assert!(
        replies < 1.0,
        "{forward}: {replies} replies came back through limpet"
    );
}

#[test]
fn encapsulated_dsr_end_to_end() {
    tunnel_story(Io::AfPacket);
}

/// The same over DPDK's `net_af_packet` (two workers: router errors are
/// steered in software to the worker holding the connection). Run with
/// `--features dpdk` (scripts/test.sh's DPDK block).
#[cfg(feature = "dpdk")]
#[test]
fn encapsulated_dsr_end_to_end_over_dpdk_af_packet() {
    tunnel_story(Io::DpdkAfPacket);
}

fn tunnel_story(io: Io) {
    must_be_root();
    let testbed = Testbed::up_with(1, io.testbed_args());
    testbed.mode("nat");
    let mut behind = Behind::up(TUNNEL_MTU, io.offloads_on());
    endpoint_setup();
    let server = repo().join("scripts/testbed-http-server.py");
    let server = server.to_str().expect("server path");
    behind.serve(&["python3", server, "lp-far", "--port", "80"], 80);
    behind.serve(&["python3", "-c", testbed::COUNT_SERVER, "81"], 81);
    let decap = if kernel_decap() {
        eprintln!("lp-far decapsulates with the kernel's ipip, ip6tnl and fou");
        Decap::Kernel
    } else {
        eprintln!("no kernel tunnel devices here: lp-far decapsulates with pktgen decap");
        Decap::Sink(sink_decap(&mut behind))
    };
    let config = Config::new("tunnel");
    config.write(&manifest());

    // IP in IP, limpet told the tunnel's MTU: 20 bytes (IPv4) or 40
    // (IPv6) of the 1400 go to the outer header.
    tunnel_run((&config, io), "ipip", true, (IPIP4, IPIP6), (1380, 1360));
    // GUE, 8 more, limpet not told: the router's errors teach it.
    tunnel_run((&config, io), "gue", false, (GUE4, GUE6), (1372, 1352));
    // IP in IP, not told.
    tunnel_run((&config, io), "ipip", false, (IPIP4, IPIP6), (1380, 1360));

    drop(behind);
    if let Decap::Sink(report) = decap {
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        let _ = std::fs::remove_file(&report);
        eprintln!("pktgen decap: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("decap report");
        assert!(
            v["unwrapped"].as_u64().unwrap_or(0) >= 400,
            "the sink unwrapped too little: {text}"
        );
    }
}
