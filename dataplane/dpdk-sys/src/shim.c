/*
 * C helpers compiled with the same flags as the DPDK headers:
 *  - what bindgen cannot express (rte_errno is a per-lcore TLS variable);
 *  - the values of macros bindgen cannot evaluate (RTE_BIT64 flags) and the
 *    sizes and offsets the Rust side relies on, so tests can compare the
 *    hand-written Rust constants and the generated layouts with C.
 */
#include "wrapper.h"
#include <stddef.h>

int limpet_rte_errno(void) { return rte_errno; }

/* The order matches `constants::ALL` in src/lib.rs. */
const uint64_t limpet_c_constants[] = {
	RTE_ETH_RSS_IPV4,
	RTE_ETH_RSS_FRAG_IPV4,
	RTE_ETH_RSS_NONFRAG_IPV4_TCP,
	RTE_ETH_RSS_NONFRAG_IPV4_UDP,
	RTE_ETH_RSS_NONFRAG_IPV4_OTHER,
	RTE_ETH_RSS_IPV6,
	RTE_ETH_RSS_FRAG_IPV6,
	RTE_ETH_RSS_NONFRAG_IPV6_TCP,
	RTE_ETH_RSS_NONFRAG_IPV6_UDP,
	RTE_ETH_RSS_NONFRAG_IPV6_OTHER,
	RTE_ETH_RSS_IPV6_EX,
	RTE_ETH_RSS_IP,
	RTE_ETH_RSS_L3_SRC_ONLY,
	RTE_ETH_RSS_L3_DST_ONLY,
	RTE_ETH_RX_OFFLOAD_VLAN_STRIP,
	RTE_ETH_RX_OFFLOAD_IPV4_CKSUM,
	RTE_ETH_RX_OFFLOAD_UDP_CKSUM,
	RTE_ETH_RX_OFFLOAD_TCP_CKSUM,
	RTE_ETH_RX_OFFLOAD_RSS_HASH,
	RTE_ETH_TX_OFFLOAD_IPV4_CKSUM,
	RTE_ETH_TX_OFFLOAD_UDP_CKSUM,
	RTE_ETH_TX_OFFLOAD_TCP_CKSUM,
	RTE_ETH_TX_OFFLOAD_MULTI_SEGS,
	RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE,
	RTE_ETH_MQ_RX_RSS_FLAG,
	RTE_ETH_RSS_RETA_SIZE_64,
	RTE_ETH_RETA_GROUP_SIZE,
	RTE_MBUF_DEFAULT_BUF_SIZE,
	RTE_PKTMBUF_HEADROOM,
	RTE_MAX_ETHPORTS,
	RTE_MAX_LCORE,
};
const size_t limpet_c_constants_len = sizeof(limpet_c_constants) / sizeof(limpet_c_constants[0]);

/* The order matches `LAYOUT` in tests/layout.rs. */
const size_t limpet_c_layout[] = {
	sizeof(struct rte_mbuf),
	offsetof(struct rte_mbuf, buf_addr),
	offsetof(struct rte_mbuf, data_off),
	offsetof(struct rte_mbuf, port),
	offsetof(struct rte_mbuf, ol_flags),
	offsetof(struct rte_mbuf, pkt_len),
	offsetof(struct rte_mbuf, data_len),
	offsetof(struct rte_mbuf, pool),
	sizeof(struct rte_eth_conf),
	offsetof(struct rte_eth_conf, rxmode),
	offsetof(struct rte_eth_conf, txmode),
	offsetof(struct rte_eth_conf, rx_adv_conf),
	sizeof(struct rte_eth_dev_info),
	offsetof(struct rte_eth_dev_info, rx_offload_capa),
	offsetof(struct rte_eth_dev_info, tx_offload_capa),
	offsetof(struct rte_eth_dev_info, flow_type_rss_offloads),
	offsetof(struct rte_eth_dev_info, reta_size),
	offsetof(struct rte_eth_dev_info, max_rx_queues),
	sizeof(struct rte_eth_rss_conf),
	sizeof(struct rte_eth_rss_reta_entry64),
	sizeof(struct rte_eth_stats),
	sizeof(struct rte_eth_xstat),
	sizeof(struct rte_eth_xstat_name),
	sizeof(struct rte_eth_link),
	sizeof(struct rte_ether_addr),
};
const size_t limpet_c_layout_len = sizeof(limpet_c_layout) / sizeof(limpet_c_layout[0]);
