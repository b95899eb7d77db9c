//! Classic BPF programs for `AF_PACKET` sockets: the fanout selector that
//! keeps both directions of a connection on one worker, and the
//! neighbour-resolution socket filter.
//!
//! Loads in the fanout program are relative to the link-layer header
//! (`SKF_LL_OFF`): the kernel runs fanout programs with `skb->data` at the
//! network header for received frames, but at the MAC header for others,
//! and an `SKF_LL_OFF` load means "from the Ethernet header" in both cases.

use libc::sock_filter;
use std::net::IpAddr;

/// The kernel's limit on a classic BPF program (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const LD_H_ABS: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_H_IND: u16 = (libc::BPF_LD | libc::BPF_H | libc::BPF_IND) as u16;
/// `X = 4 * (byte at k & 0xf)`: an IPv4 header's length.
const LDX_B_MSH: u16 = (libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH) as u16;
const LD_B_IND: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_IND) as u16;
const LD_W_IND: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_IND) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const LSH_K: u16 = (libc::BPF_ALU | libc::BPF_LSH | libc::BPF_K) as u16;
const ADD_X: u16 = (libc::BPF_ALU | libc::BPF_ADD | libc::BPF_X) as u16;
const TAX: u16 = (libc::BPF_MISC | libc::BPF_TAX) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;

/// `k` of a load `off` bytes into the Ethernet header.
const fn ll(off: u32) -> u32 {
    libc::SKF_LL_OFF.cast_unsigned().wrapping_add(off)
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// A tiny assembler: conditional jumps are short (skip counts); long jumps
/// go through `ja` to a label, resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<sock_filter>,
    /// (instruction index, label) of each `ja` to patch.
    fixups: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }

    fn op(&mut self, code: u16, jt: u8, jf: u8, k: u32) {
        self.insns.push(insn(code, jt, jf, k));
    }

    fn ja(&mut self, label: usize) {
        self.fixups.push((self.insns.len(), label));
        self.op(JA, 0, 0, 0);
    }

    fn finish(mut self) -> Vec<sock_filter> {
        for (at, label) in self.fixups {
            let target = self.labels[label].expect("label bound");
            self.insns[at].k = (target - at - 1) as u32;
        }
        self.insns
    }
}

/// The program is too long for the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    pub insns: usize,
}

/// The fanout selector: returns the low 32 bits of the connection's
/// *client* address, which the kernel takes modulo the group size.
///
/// If the destination is one of `frontends` (a service address) the packet
/// is client -> service and the client is the source; otherwise it is a
/// reply (backend -> client, or service -> client under DSR-less NAT) and
/// the client is the destination. So a connection and its replies land on
/// the same socket, that is the same worker. One optional 802.1Q / 802.1ad
/// tag is skipped; IPv4 and IPv6 are handled; anything else returns 0.
///
/// A packet to one of `sources` (the addresses source-translated
/// connections leave from, see [`crate::snat`]) is a reply of such a
/// connection: the program returns its destination port, which the worker
/// owning the connection allocated so that it lands there; for an ICMP
/// error, the source port of the packet it quotes (the same port, as
/// limpet sent it). An error quoting one of limpet's IP-in-IP packets (see
/// [`crate::encap`]; its outer source is limpet's address) returns the
/// client, the inner packet's source; a GUE one needs nothing more, since
/// limpet picks a GUE source port that its client's worker owns.
///
/// Size: 95 instructions plus 2 per IPv4 and 9 per IPv6 address, twice
/// over (with and without a tag); more than [`MAX_INSNS`] is an error
/// (about 1000 IPv4 or 225 IPv6 frontends).
pub fn fanout_client_program(
    frontends: &[IpAddr],
    sources: &[IpAddr],
) -> Result<Vec<sock_filter>, TooLong> {
    let (v4, v6) = words(frontends);
    let (src4, src6) = words(sources);
    // Exactly what is emitted below: 95 fixed, 2 per IPv4 and 9 per IPv6
    // address, all twice.
    let estimate = 95 + 4 * (v4.len() + src4.len()) + 18 * (v6.len() + src6.len());
    if estimate > MAX_INSNS {
        return Err(TooLong { insns: estimate });
    }

    let mut asm = Asm::default();
    let tagged = asm.label();
    let v4_14 = asm.label();
    let v6_14 = asm.label();
    let v4_18 = asm.label();
    let v6_18 = asm.label();

    asm.op(LD_H_ABS, 0, 0, ll(12));
    asm.op(JEQ_K, 1, 0, 0x8100);
    asm.op(JEQ_K, 0, 1, 0x88a8);
    asm.ja(tagged);
    dispatch(&mut asm, v4_14, v6_14);
    asm.bind(tagged);
    asm.op(LD_H_ABS, 0, 0, ll(16));
    dispatch(&mut asm, v4_18, v6_18);
    asm.bind(v4_14);
    ipv4(&mut asm, 14, &v4, &src4);
    asm.bind(v6_14);
    ipv6(&mut asm, 14, &v6, &src6);
    asm.bind(v4_18);
    ipv4(&mut asm, 18, &v4, &src4);
    asm.bind(v6_18);
    ipv6(&mut asm, 18, &v6, &src6);
    let program = asm.finish();
    debug_assert_eq!(program.len(), estimate, "the size estimate is exact");
    if program.len() > MAX_INSNS {
        return Err(TooLong {
            insns: program.len(),
        });
    }
    Ok(program)
}

/// The IPv4 addresses of `addrs` as words, and the IPv6 ones as four.
fn words(addrs: &[IpAddr]) -> (Vec<u32>, Vec<[u32; 4]>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in addrs {
        match a {
            IpAddr::V4(a) => v4.push(u32::from(*a)),
            IpAddr::V6(a) => {
                let o = a.octets();
                v6.push(std::array::from_fn(|i| {
                    u32::from_be_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                }));
            }
        }
    }
    (v4, v6)
}

/// With the ethertype in A: to `v4` or `v6`, or return 0.
fn dispatch(asm: &mut Asm, v4: usize, v6: usize) {
    asm.op(JEQ_K, 0, 1, 0x0800);
    asm.ja(v4);
    asm.op(JEQ_K, 0, 1, 0x86dd);
    asm.ja(v6);
    asm.op(RET_K, 0, 0, 0);
}

/// IPv4 header at `base`: source at +12, destination at +16; the
/// transport header's destination port at +IHL+2.
fn ipv4(asm: &mut Asm, base: u32, frontends: &[u32], sources: &[u32]) {
    let from_client = asm.label();
    let by_port = asm.label();
    asm.op(LD_W_ABS, 0, 0, ll(base + 16));
    for &f in frontends {
        asm.op(JEQ_K, 0, 1, f);
        asm.ja(from_client);
    }
    for &s in sources {
        asm.op(JEQ_K, 0, 1, s);
        asm.ja(by_port);
    }
    // A reply: the client is the destination, still in A.
    asm.op(RET_A, 0, 0, 0);
    asm.bind(from_client);
    asm.op(LD_W_ABS, 0, 0, ll(base + 12));
    asm.op(RET_A, 0, 0, 0);
    asm.bind(by_port);
    asm.op(LD_B_ABS, 0, 0, ll(base + 9));
    asm.op(JEQ_K, 3, 0, u32::from(crate::wire::IpProtocol::ICMP));
    asm.op(LDX_B_MSH, 0, 0, ll(base));
    asm.op(LD_H_IND, 0, 0, ll(base + 2));
    asm.op(RET_A, 0, 0, 0);
    // ICMP: X = the outer header's length; the quote starts 8 bytes into
    // the message. Quoting IP in IP, the client is the inner source.
    asm.op(LDX_B_MSH, 0, 0, ll(base));
    asm.op(LD_B_IND, 0, 0, ll(base + 8 + 9));
    asm.op(JEQ_K, 7, 0, u32::from(crate::wire::IpProtocol::IPIP));
    // X plus the quoted header's length: the quoted transport header.
    for (i, last) in [(0, LD_H_IND), (1, LD_W_IND)] {
        asm.op(LD_B_IND, 0, 0, ll(base + 8));
        asm.op(AND_K, 0, 0, 0x0f);
        asm.op(LSH_K, 0, 0, 2);
        asm.op(ADD_X, 0, 0, 0);
        asm.op(TAX, 0, 0, 0);
        // Its source port, or (IP in IP) the inner header's source.
        asm.op(last, 0, 0, ll(base + 8 + 12 * i));
        asm.op(RET_A, 0, 0, 0);
    }
}

/// IPv6 header at `base`: source at +8..+24, destination at +24..+40; the
/// transport header's destination port at +42 (no extension headers).
fn ipv6(asm: &mut Asm, base: u32, frontends: &[[u32; 4]], sources: &[[u32; 4]]) {
    let from_client = asm.label();
    let by_port = asm.label();
    for (list, to) in [(frontends, from_client), (sources, by_port)] {
        for f in list {
            // Nine instructions; a mismatch skips to the next address.
            for (i, &word) in f.iter().enumerate() {
                asm.op(LD_W_ABS, 0, 0, ll(base + 24 + 4 * i as u32));
                asm.op(JEQ_K, 0, (7 - 2 * i) as u8, word);
            }
            asm.ja(to);
        }
    }
    asm.op(LD_W_ABS, 0, 0, ll(base + 36));
    asm.op(RET_A, 0, 0, 0);
    asm.bind(from_client);
    asm.op(LD_W_ABS, 0, 0, ll(base + 20));
    asm.op(RET_A, 0, 0, 0);
    asm.bind(by_port);
    asm.op(LD_B_ABS, 0, 0, ll(base + 6));
    asm.op(JEQ_K, 2, 0, u32::from(crate::wire::IpProtocol::ICMPV6));
    asm.op(LD_H_ABS, 0, 0, ll(base + 42));
    asm.op(RET_A, 0, 0, 0);
    // `ICMPv6`: the quoted packet's source port, past two fixed headers;
    // quoting IPv6 in IPv6, the low word of the inner source (the client).
    asm.op(LD_B_ABS, 0, 0, ll(base + 40 + 8 + 6));
    asm.op(JEQ_K, 2, 0, u32::from(crate::wire::IpProtocol::IPV6));
    asm.op(LD_H_ABS, 0, 0, ll(base + 40 + 8 + 40));
    asm.op(RET_A, 0, 0, 0);
    asm.op(LD_W_ABS, 0, 0, ll(base + 40 + 8 + 40 + 20));
    asm.op(RET_A, 0, 0, 0);
}

/// The neighbour-resolution socket filter: accepts ARP and `ICMPv6` neighbour
/// solicitations and advertisements (types 135 and 136, no extension
/// headers), drops everything else. Socket filters see the frame from its
/// Ethernet header at offset 0 (the kernel has already moved any VLAN tag
/// out of the frame).
pub fn neighbour_filter() -> Vec<sock_filter> {
    vec![
        insn(LD_H_ABS, 0, 0, 12),
        insn(JEQ_K, 6, 0, 0x0806),      // ARP -> accept
        insn(JEQ_K, 0, 6, 0x86dd),      // not IPv6 -> drop
        insn(LD_B_ABS, 0, 0, 20),       // next header
        insn(JEQ_K, 0, 4, 58),          // not ICMPv6 -> drop
        insn(LD_B_ABS, 0, 0, 54),       // ICMPv6 type
        insn(JGE_K, 0, 2, 135),         // < 135 -> drop
        insn(JGT_K, 1, 0, 136),         // > 136 -> drop
        insn(RET_K, 0, 0, 0x0004_0000), // accept
        insn(RET_K, 0, 0, 0),           // drop
    ]
}

#[cfg(test)]
pub(crate) mod interp {
    //! A classic BPF interpreter for the subset these programs use, to test
    //! them without a kernel. `ll` loads read the frame from offset 0.

    use super::{
        ADD_X, AND_K, JA, JEQ_K, JGE_K, JGT_K, LD_B_ABS, LD_B_IND, LD_H_ABS, LD_H_IND, LD_W_ABS,
        LD_W_IND, LDX_B_MSH, LSH_K, RET_A, RET_K, TAX, sock_filter,
    };

    /// Runs `program` over `frame`; `None` is an aborted program (a load
    /// out of bounds), which the kernel treats as returning 0.
    pub fn run(program: &[sock_filter], frame: &[u8]) -> Option<u32> {
        let mut a: u32 = 0;
        let mut x: u32 = 0;
        let mut pc = 0usize;
        let load = |k: u32, n: usize| -> Option<u32> {
            let off = if k >= libc::SKF_LL_OFF.cast_unsigned() {
                k.wrapping_sub(libc::SKF_LL_OFF.cast_unsigned()) as usize
            } else {
                k as usize
            };
            let bytes = frame.get(off..off + n)?;
            Some(bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        };
        for _ in 0..100_000 {
            let i = program.get(pc)?;
            pc += 1;
            match i.code {
                LD_W_ABS => a = load(i.k, 4)?,
                LD_H_ABS => a = load(i.k, 2)?,
                LD_B_ABS => a = load(i.k, 1)?,
                LD_H_IND => a = load(i.k.wrapping_add(x), 2)?,
                LD_B_IND => a = load(i.k.wrapping_add(x), 1)?,
                LD_W_IND => a = load(i.k.wrapping_add(x), 4)?,
                AND_K => a &= i.k,
                LSH_K => a <<= i.k,
                ADD_X => a = a.wrapping_add(x),
                TAX => x = a,
                LDX_B_MSH => x = 4 * (load(i.k, 1)? & 0xf),
                JA => pc += i.k as usize,
                JEQ_K | JGE_K | JGT_K => {
                    let taken = match i.code {
                        JEQ_K => a == i.k,
                        JGE_K => a >= i.k,
                        _ => a > i.k,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET_K => return Some(i.k),
                RET_A => return Some(a),
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        panic!("program did not terminate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4_frame(src: Ipv4Addr, dst: Ipv4Addr, vlan: bool) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0; 20]);
        f
    }

    fn v6_frame(src: Ipv6Addr, dst: Ipv6Addr, next: u8, icmp_type: u8) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[6] = next;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        f.push(icmp_type);
        f.extend_from_slice(&[0; 23]);
        f
    }

    fn low32(a: IpAddr) -> u32 {
        match a {
            IpAddr::V4(a) => u32::from(a),
            IpAddr::V6(a) => u128::from(a) as u32,
        }
    }

    #[test]
    fn fanout_program_selects_the_client() {
        let vip4 = Ipv4Addr::new(192, 0, 2, 10);
        let vip6: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let other6: Ipv6Addr = "2001:db8:0:1::10".parse().unwrap();
        let frontends = [
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11)),
            IpAddr::V4(vip4),
            IpAddr::V6(other6),
            IpAddr::V6(vip6),
        ];
        let prog = fanout_client_program(&frontends, &[]).unwrap();
        let backend = Ipv4Addr::new(198, 51, 100, 7);
        for c in 0..50u8 {
            let client = Ipv4Addr::new(203, 0, 113, c);
            for vlan in [false, true] {
                let fwd = interp::run(&prog, &v4_frame(client, vip4, vlan));
                let reply = interp::run(&prog, &v4_frame(backend, client, vlan));
                let reply_vip = interp::run(&prog, &v4_frame(vip4, client, vlan));
                assert_eq!(fwd, Some(u32::from(client)));
                assert_eq!(reply, fwd);
                assert_eq!(reply_vip, fwd);
            }
            let client6: Ipv6Addr = format!("2001:db8:ff::{c:x}").parse().unwrap();
            let back6: Ipv6Addr = "2001:db8:1::7".parse().unwrap();
            let fwd = interp::run(&prog, &v6_frame(client6, vip6, 6, 0));
            assert_eq!(fwd, Some(low32(IpAddr::V6(client6))));
            assert_eq!(interp::run(&prog, &v6_frame(back6, client6, 6, 0)), fwd);
            // Same low word as a frontend but a different prefix: a reply.
            let near: Ipv6Addr = "2001:db8:0:2::10".parse().unwrap();
            assert_eq!(
                interp::run(&prog, &v6_frame(client6, near, 6, 0)),
                Some(low32(IpAddr::V6(near)))
            );
        }
        // ARP and truncated frames go to socket 0.
        let mut arp = vec![0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(interp::run(&prog, &arp), Some(0));
        assert_eq!(
            interp::run(&prog, &v4_frame(backend, vip4, false)[..20]).unwrap_or(0),
            0
        );
    }

    #[test]
    fn fanout_program_is_bounded() {
        let many: Vec<IpAddr> = (0..1000u32)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i)))
            .collect();
        let prog = fanout_client_program(&many, &[]).unwrap();
        assert!(prog.len() <= MAX_INSNS);
        let too_many: Vec<IpAddr> = (0..300u128)
            .map(|i| IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) + i)))
            .collect();
        assert!(fanout_client_program(&too_many, &[]).is_err());
        // Far jumps go through `ja`, so the last frontend still matches.
        let last = many[999];
        let client = Ipv4Addr::new(203, 0, 113, 9);
        let IpAddr::V4(last) = last else {
            unreachable!()
        };
        assert_eq!(
            interp::run(&prog, &v4_frame(client, last, true)),
            Some(u32::from(client))
        );
    }

    #[test]
    fn neighbour_filter_passes_arp_and_nd_only() {
        let prog = neighbour_filter();
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_ne!(interp::run(&prog, &arp), Some(0));
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        for (next, ty, pass) in [
            (58, 135, true),
            (58, 136, true),
            (58, 128, false),
            (58, 134, false),
            (58, 137, false),
            (6, 135, false),
        ] {
            let got = interp::run(&prog, &v6_frame(a, a, next, ty)).unwrap_or(0);
            assert_eq!(got != 0, pass, "next {next} type {ty}");
        }
        let ip4 = v4_frame(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, false);
        assert_eq!(interp::run(&prog, &ip4), Some(0));
    }
}
