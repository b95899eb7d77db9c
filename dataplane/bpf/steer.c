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

SEC("xdp")
int limpet_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || (eth->h_dest[0] & 1))
		return XDP_PASS;
	__be16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == __constant_htons(ETH_P_8021Q) || proto == __constant_htons(ETH_P_8021AD)) {
		struct vlan_hdr *tag = l3;
		if ((void *)(tag + 1) > end)
			return XDP_PASS;
		proto = tag->proto;
		l3 = tag + 1;
	}
	if (proto == __constant_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end)
			return XDP_PASS;
		if (has4(ip->daddr, DST) || has4(ip->saddr, SRC))
			goto limpet;
		if (ip->protocol != IPPROTO_ICMP || ip->ihl < 5)
			return XDP_PASS;
		__u8 *icmp = l3 + ip->ihl * 4;
		if ((void *)(icmp + 8) > end)
			return XDP_PASS;
		// Destination unreachable, time exceeded, parameter problem.
		if (icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12)
			return XDP_PASS;
		struct iphdr *inner = (struct iphdr *)(icmp + 8);
		if ((void *)(inner + 1) > end)
			return XDP_PASS;
		if (has4(inner->saddr, DST | SRC) || has4(inner->daddr, DST | SRC))
			goto limpet;
		return XDP_PASS;
	}
	if (proto == __constant_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		__u8 *icmp = (__u8 *)(ip6 + 1);
		int is_icmp = ip6->nexthdr == IPPROTO_ICMPV6 && (void *)(icmp + 8) <= end;
		// Router/neighbour solicitation and advertisement, redirect.
		if (is_icmp && icmp[0] >= 133 && icmp[0] <= 137)
			return XDP_PASS;
		if (has6(&ip6->daddr, DST) || has6(&ip6->saddr, SRC))
			goto limpet;
		// Unreachable, packet too big, time exceeded, parameter problem.
		if (!is_icmp || icmp[0] < 1 || icmp[0] > 4)
			return XDP_PASS;
		struct ipv6hdr *inner = (struct ipv6hdr *)(icmp + 8);
		if ((void *)(inner + 1) > end)
			return XDP_PASS;
		if (has6(&inner->saddr, DST | SRC) || has6(&inner->daddr, DST | SRC))
			goto limpet;
		return XDP_PASS;
	}
	return XDP_PASS;
limpet:
	return bpf_redirect_map(&limpet_xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
