//! The hand-written constants and the layout of the structures limpet
//! reads, compared with what the C compiler makes of DPDK's headers.

use core::mem::{offset_of, size_of};
use limpet_dpdk_sys::*;

#[test]
fn hand_written_constants_match_c() {
    let c = c_side::constants();
    assert_eq!(
        c.len(),
        ALL.len(),
        "shim.c and consts::ALL list differ in length"
    );
    let wrong: Vec<String> = ALL
        .iter()
        .zip(c)
        .filter(|((_, rust), c)| rust != *c)
        .map(|((name, rust), c)| format!("{name}: Rust {rust:#x}, C {c:#x}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn generated_enums_match_their_flags() {
    assert_eq!(RTE_ETH_MQ_RX_RSS, RTE_ETH_MQ_RX_RSS_FLAG);
}

#[test]
fn struct_layouts_match_c() {
    // In the order of `limpet_c_layout` in src/shim.c.
    let rust: &[(&str, usize)] = &[
        ("sizeof rte_mbuf", size_of::<rte_mbuf>()),
        ("rte_mbuf.buf_addr", offset_of!(rte_mbuf, buf_addr)),
        ("rte_mbuf.data_off", offset_of!(rte_mbuf, data_off)),
        ("rte_mbuf.port", offset_of!(rte_mbuf, port)),
        ("rte_mbuf.ol_flags", offset_of!(rte_mbuf, ol_flags)),
        ("rte_mbuf.pkt_len", offset_of!(rte_mbuf, pkt_len)),
        ("rte_mbuf.data_len", offset_of!(rte_mbuf, data_len)),
        ("rte_mbuf.pool", offset_of!(rte_mbuf, pool)),
        ("sizeof rte_eth_conf", size_of::<rte_eth_conf>()),
        ("rte_eth_conf.rxmode", offset_of!(rte_eth_conf, rxmode)),
        ("rte_eth_conf.txmode", offset_of!(rte_eth_conf, txmode)),
        (
            "rte_eth_conf.rx_adv_conf",
            offset_of!(rte_eth_conf, rx_adv_conf),
        ),
        ("sizeof rte_eth_dev_info", size_of::<rte_eth_dev_info>()),
        (
            "rte_eth_dev_info.rx_offload_capa",
            offset_of!(rte_eth_dev_info, rx_offload_capa),
        ),
        (
            "rte_eth_dev_info.tx_offload_capa",
            offset_of!(rte_eth_dev_info, tx_offload_capa),
        ),
        (
            "rte_eth_dev_info.flow_type_rss_offloads",
            offset_of!(rte_eth_dev_info, flow_type_rss_offloads),
        ),
        (
            "rte_eth_dev_info.reta_size",
            offset_of!(rte_eth_dev_info, reta_size),
        ),
        (
            "rte_eth_dev_info.max_rx_queues",
            offset_of!(rte_eth_dev_info, max_rx_queues),
        ),
        ("sizeof rte_eth_rss_conf", size_of::<rte_eth_rss_conf>()),
        (
            "sizeof rte_eth_rss_reta_entry64",
            size_of::<rte_eth_rss_reta_entry64>(),
        ),
        ("sizeof rte_eth_stats", size_of::<rte_eth_stats>()),
        ("sizeof rte_eth_xstat", size_of::<rte_eth_xstat>()),
        ("sizeof rte_eth_xstat_name", size_of::<rte_eth_xstat_name>()),
        ("sizeof rte_eth_link", size_of::<rte_eth_link>()),
        ("sizeof rte_ether_addr", size_of::<rte_ether_addr>()),
    ];
    let c = c_side::layout();
    assert_eq!(
        c.len(),
        rust.len(),
        "shim.c and this table differ in length"
    );
    let wrong: Vec<String> = rust
        .iter()
        .zip(c)
        .filter(|((_, r), c)| r != *c)
        .map(|((name, r), c)| format!("{name}: Rust {r}, C {c}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(size_of::<rte_mbuf>(), 128, "two cache lines");
}

#[test]
fn version_is_at_least_21_11() {
    let mut parts = DPDK_VERSION
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap_or(0));
    assert!((major, minor) >= (21, 11), "{DPDK_VERSION}");
}
