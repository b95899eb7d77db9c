//! limpet over `AF_PACKET` on veths whose offloads are what the kernel
//! sets, as on an ordinary host. Needs root (CI is root); without it the
//! tests fail, loudly.
//!
//! - Transmit checksum offload alone (`scripts/testbed up --offloads
//!   checksum`): every client's and backend's TCP checksum reaches limpet's
//!   ring partial (`TP_STATUS_CSUMNOTREADY`). `nat` and `dsr`, IPv4 and
//!   IPv6: every request is answered, every client sticks, and limpet
//!   counts the checksums it completed.
//! - Everything on (the testbed's default: TSO, GSO, checksum offload):
//!   bulk uploads and downloads through limpet arrive as 64 KiB
//!   super-frames, which limpet cuts into segments (`rx_gso_segments`);
//!   every byte arrives intact both ways, `nat` and `dsr`, IPv4 and IPv6.

mod testbed;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testbed::story::{Config, Io, Limpet, ep, manifest};
use testbed::{Testbed, VIP4, VIP6, clientip_sticks, must_be_root, sh};

#[test]
fn checksum_offload_left_on_end_to_end() {
    must_be_root();
    let testbed = Testbed::up_with(3, &["--offloads", "checksum"]);
    let config = Config::new("offloads");
    config.write(&manifest(Some(10_800), &[ep(1), ep(2), ep(3)]));
    // AF_PACKET flags the partial checksums; AF_XDP (copy mode on a veth)
    // cannot, and limpet finds them by their field.
    for (io, first) in [(Io::AfPacket, 0), (Io::AfXdp, 2)] {
        testbed.mode("nat");
        let limpet = Limpet::start(&config, io, "nat", 1);
        clientip_sticks(VIP4, &format!("198.18.{first}.10"), 100);
        clientip_sticks(VIP6, &format!("2001:db8:c1::{first}10"), 30);
        let completed = limpet.metric("limpet_checksums_completed_total");
        eprintln!("{io:?} nat: {completed} checksums completed");
        // Each request's client segments and the backend's replies.
        assert!(
            completed >= 1000.0,
            "{io:?} nat: only {completed} checksums completed for ~2000 connections"
        );
        drop(limpet);

        testbed.mode("dsr");
        let limpet = Limpet::start(&config, io, "dsr", 1);
        clientip_sticks(VIP4, &format!("198.18.{}.10", first + 1), 100);
        clientip_sticks(VIP6, &format!("2001:db8:c1::{}00", first + 1), 30);
        let completed = limpet.metric("limpet_checksums_completed_total");
        eprintln!("{io:?} dsr: {completed} checksums completed");
        assert!(
            completed >= 1000.0,
            "{io:?} dsr: only {completed} checksums completed"
        );
    }
}

/// In a backend (`python3 -c`, the port its argument): reads a connection
/// to its end, then answers `"<bytes> <sha256>\n"` and as many bytes back
/// (byte `i` is `i % 251`), so both directions carry bulk data.
const BULK_SERVER: &str = r#"
import hashlib, socket, sys, threading
def serve(c):
    h, n = hashlib.sha256(), 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        h.update(b)
        n += len(b)
    c.sendall(f"{n} {h.hexdigest()}\n".encode())
    block = bytes(i % 251 for i in range(251 * 64))
    left = n
    while left:
        k = min(left, len(block))
        c.sendall(block[:k])
        left -= k
    c.close()
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// In lp-client: sends `argv[3]` bytes to `argv[1]:argv[2]`, shuts its
/// side, and checks the answer: the server's count and hash of what it
/// got, then that many bytes of the server's pattern. JSON out.
const BULK_CLIENT: &str = r#"
import hashlib, json, socket, sys, time
n = int(sys.argv[3])
data = hashlib.sha256(b"limpet").digest() * (n // 32 + 1)
data = data[:n]
t = time.time()
out = {}
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        got += b
    head, _, body = got.partition(b"\n")
    count, digest = head.decode().split()
    out["upload_ok"] = int(count) == n and digest == hashlib.sha256(data).hexdigest()
    pattern = bytes(i % 251 for i in range(251 * 64))
    want = (pattern * (n // len(pattern) + 1))[:n]
    out["download_ok"] = body == want
    out["download_bytes"] = len(body)
except OSError as e:
    out["error"] = repr(e)
out["secs"] = time.time() - t
print(json.dumps(out))
"#;

const BULK_PORT: u16 = 81;
const BULK_BYTES: usize = 4 << 20;

/// The story's manifest with a second service port, 81 to the backends'
/// 81 (the same port, so `dsr`'s untranslated packets find the server too).
fn bulk_manifest() -> String {
    manifest(Some(10_800), &[ep(1), ep(2), ep(3)])
        .replace(
            "  - port: 80\n    protocol: TCP\n    targetPort: 9376\n",
            "  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 9376\n  - name: bulk\n    port: 81\n    protocol: TCP\n    targetPort: 81\n",
        )
        .replace(
            "ports:\n- name: \"\"\n  port: 9376\n  protocol: TCP\n",
            "ports:\n- name: http\n  port: 9376\n  protocol: TCP\n- name: bulk\n  port: 81\n  protocol: TCP\n",
        )
}

struct Servers(Vec<Child>);

impl Servers {
    fn start(backends: u8) -> Servers {
        let mut children = Vec::new();
        for n in 1..=backends {
            let ns = format!("lp-be{n}");
            children.push(
                Command::new("ip")
                    .args(["netns", "exec", &ns, "python3", "-c", BULK_SERVER])
                    .arg(BULK_PORT.to_string())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("starting the bulk server"),
            );
            let ready = Instant::now() + Duration::from_secs(10);
            let filter = format!("sport = :{BULK_PORT}");
            while !sh(Command::new("ip").args(["netns", "exec", &ns, "ss", "-Hltn", &filter]))
                .contains(&format!(":{BULK_PORT}"))
            {
                assert!(
                    Instant::now() < ready,
                    "the bulk server in {ns} did not listen"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Servers(children)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            testbed::stop(c);
        }
    }
}

fn bulk(vip: &str) -> serde_json::Value {
    let out = sh(Command::new("ip")
        .args(["netns", "exec", "lp-client", "python3", "-c"])
        .args([
            BULK_CLIENT,
            vip,
            &BULK_PORT.to_string(),
            &BULK_BYTES.to_string(),
        ]));
    serde_json::from_str(&out).expect("bulk client JSON")
}

#[test]
fn segmentation_offloads_left_on_end_to_end() {
    must_be_root();
    let testbed = Testbed::up(3);
    let _servers = Servers::start(3);
    let config = Config::new("offloads-on");
    let manifest = bulk_manifest();
    assert_eq!(manifest.matches("name: bulk").count(), 3, "{manifest}");
    config.write(&manifest);
    // The veth peer of an interface with a native XDP program segments
    // before sending (the kernel turns its GSO off): under AF_XDP, and
    // under AF_PACKET with its overload-shedding program (the default),
    // which GRO on lb0 may merge back. AF_PACKET without the program sees
    // the senders' super-frames; all must carry every byte.
    for (first, (io, forward, shed)) in [
        (Io::AfPacket, "nat", "off"),
        (Io::AfPacket, "dsr", "off"),
        (Io::AfPacket, "nat", "auto"),
        (Io::AfXdp, "nat", ""),
        (Io::AfXdp, "dsr", ""),
    ]
    .into_iter()
    .enumerate()
    {
        testbed.mode(forward);
        let shed_args = ["--shed", shed];
        let extra: &[&str] = if shed.is_empty() { &[] } else { &shed_args };
        let limpet = Limpet::start_extra(&config, io, forward, 1, extra);
        for vip in [VIP4, VIP6] {
            let report = bulk(vip);
            eprintln!("{io:?} {forward} {vip}: {report}");
            assert_eq!(
                report["upload_ok"], true,
                "{io:?} {forward} {vip}: {report}"
            );
            assert_eq!(
                report["download_ok"], true,
                "{io:?} {forward} {vip}: {report}"
            );
        }
        // The ordinary story still holds on the same offloads (fresh
        // clients each round, inside the testbed's 198.18.0.0/22).
        clientip_sticks(
            VIP4,
            &format!("198.18.{}.{}", first % 4, 10 + 60 * (first / 4)),
            50,
        );
        if io == Io::AfXdp || shed != "off" {
            continue;
        }
        let frames = limpet.io_counter("rx_gso_frames");
        let segments = limpet.io_counter("rx_gso_segments");
        let refused = limpet.io_counter("rx_gso_refused");
        let oversized = limpet.metric_with("limpet_drops_total", "reason=\"oversized\"");
        eprintln!(
            "{forward}: {frames} super-frames cut into {segments} segments, {refused} refused, {oversized} oversized"
        );
        // 4 MiB up per family, as 1448-byte segments: ~5800. Some arrive
        // as super-frames whatever the timing (the first window alone is
        // ten segments in one).
        assert!(frames >= 10.0, "{forward}: only {frames} super-frames");
        assert!(segments >= 2.0 * frames, "{forward}: {segments} segments");
        assert!(refused < 0.5, "{forward}: {refused} super-frames refused");
        assert!(
            oversized < 0.5,
            "{forward}: {oversized} dropped as oversized"
        );
    }
}
