// The AF_XDP backend's XDP program (dataplane/src/io/afxdp.rs): steers the
// traffic limpet owns into its AF_XDP sockets and passes everything else to
// the kernel, so the host keeps its own traffic (SSH, routes, what it
// forwards) on the same interface.
//
// limpet's frames, redirected to the socket of the receiving queue
// (limpet_xsks[rx_queue_index]; a queue without one passes):
//   - unicast IPv4/IPv6 to an address limpet serves or holds (a service
//     address, an --address, a source-NAT address): limpet_addrs4/6 with
//     bit DST;
//   - unicast IPv4/IPv6 from an endpoint limpet balances to (the replies
//     of its NAT flows): bit SRC;
//   - ICMP/ICMPv6 errors quoting a packet to or from either (a router's
//     "fragmentation needed" about a flow limpet translated).
// Passed to the kernel: broadcast and multicast frames, ARP, IPv6
// neighbour discovery (limpet's neighbour thread reads those through its
// own packet socket, which sees what the kernel receives), and the rest.
//
// limpet_shed, the same classification in front of the AF_PACKET backend
// (dataplane/src/io/afpacket.rs): passes everything while limpet keeps up,
// and drops limpet's frames while a worker's receive ring is backed up
// (limpet_shed.pressured, written by the workers through a shared mapping,
// no system call). Dropped here, in the driver, a frame limpet could not
// take costs a few dozen nanoseconds; dropped at a full packet ring it has
// cost the whole receive path first, on the CPU the receive work runs on,
// which is how a flood starves the worker (receive livelock).
//
// Built by dataplane/build.rs with clang (-target bpf); needs only the
// kernel's UAPI headers (linux-libc-dev), not libbpf.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

#define DST 1
#define SRC 2

struct addr6 {
	__u32 w[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} limpet_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} limpet_addrs4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr6);
	__type(value, __u8);
} limpet_addrs6 SEC(".maps");

// limpet_shed's one entry, mapped into the process (BPF_F_MMAPABLE).
struct shed {
	__u32 pressured;	// workers whose receive ring is backed up
	__u32 pad;
	__u64 dropped;		// frames dropped while it was non-zero
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct shed);
} limpet_shed_state SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int has4(__u32 addr, __u8 bits)
{
	__u8 *v = bpf_map_lookup_elem(&limpet_addrs4, &addr);
	return v && (*v & bits);
}

static __always_inline int has6(const struct in6_addr *addr, __u8 bits)
{
	struct addr6 key;
	__builtin_memcpy(&key, addr, sizeof(key));
	__u8 *v = bpf_map_lookup_elem(&limpet_addrs6, &key);
	return v && (*v & bits);
}

// 1 if the frame is limpet's (see the top of the file), 0 if the kernel's.
static __always_inline int limpets(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || (eth->h_dest[0] & 1))
		return 0;
	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == __constant_htons(ETH_P_8021Q) || proto == __constant_htons(ETH_P_8021AD)) {
		struct vlan_hdr *tag = l3;
		if ((void *)(tag + 1) > end)
			return 0;
		proto = tag->proto;
		l3 = tag + 1;
	}
	if (proto == __constant_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return 0;
		if (has4(ip->daddr, DST) || has4(ip->saddr, SRC))
			return 1;
		if (ip->protocol != IPPROTO_ICMP || ip->ihl < 5)
			return 0;
		__u8 *icmp = l3 + ip->ihl * 4;
		if ((void *)(icmp + 8) > end)
			return 0;
		// Destination unreachable, time exceeded, parameter problem.
		if (icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12)
			return 0;
		struct iphdr *inner = (struct iphdr *)(icmp + 8);
		if ((void *)(inner + 1) > end)
			return 0;
		if (has4(inner->saddr, DST | SRC) || has4(inner->daddr, DST | SRC))
			return 1;
		return 0;
	}
	if (proto == __constant_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return 0;
		__u8 *icmp = (__u8 *)(ip6 + 1);
		int is_icmp = ip6->nexthdr == IPPROTO_ICMPV6 && (void *)(icmp + 8) <= end;
		// Router/neighbour solicitation and advertisement, redirect.
		if (is_icmp && icmp[0] >= 133 && icmp[0] <= 137)
			return 0;
		if (has6(&ip6->daddr, DST) || has6(&ip6->saddr, SRC))
			return 1;
		// Unreachable, packet too big, time exceeded, parameter problem.
		if (!is_icmp || icmp[0] < 1 || icmp[0] > 4)
			return 0;
		struct ipv6hdr *inner = (struct ipv6hdr *)(icmp + 8);
		if ((void *)(inner + 1) > end)
			return 0;
		if (has6(&inner->saddr, DST | SRC) || has6(&inner->daddr, DST | SRC))
			return 1;
		return 0;
	}
	return 0;
}

SEC("xdp")
int limpet_steer(struct xdp_md *ctx)
{
	if (!limpets(ctx))
		return XDP_PASS;
	return bpf_redirect_map(&limpet_xsks, ctx->rx_queue_index, XDP_PASS);
}

SEC("xdp")
int limpet_shed(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct shed *state = bpf_map_lookup_elem(&limpet_shed_state, &zero);
	if (!state || !state->pressured || !limpets(ctx))
		return XDP_PASS;
	__sync_fetch_and_add(&state->dropped, 1);
	return XDP_DROP;
}

char _license[] SEC("license") = "Dual BSD/GPL";
