//! limpet's own binding to the system DPDK (libdpdk >= 21.11, found with
//! pkg-config; Debian 12 ships 22.11).
//!
//! The crates that once bound DPDK for Rust (capsule, the old `dpdk-sys`)
//! need a DPDK from before 21.11 and do not build against 22.11, so limpet
//! carries this small one. `build.rs` runs bindgen over `wrapper.h` with a
//! narrow allowlist (EAL, lcores, ethdev, RSS/RETA, xstats, mbuf, mempool,
//! ring, the ring PMD's constructor and the vdev bus) and `wrap_static_fns`,
//! which emits a C wrapper (`<name>__extern`) for each `static inline`
//! function DPDK's fast path is made of (`rte_eth_rx_burst`,
//! `rte_eth_tx_burst`, `rte_pktmbuf_alloc`, `rte_pktmbuf_free`, ...). Those
//! wrappers and `src/shim.c` are compiled with the full
//! `pkg-config --cflags libdpdk` (`-march=...`, `-include rte_config.h`),
//! the same flags bindgen parsed the headers with, so the inline bodies see
//! the same configuration as the shared libraries.
//!
//! What bindgen cannot see is written by hand in [`consts`] (function-like
//! macros such as `RTE_BIT64`) and [`rte_errno`] (a per-lcore thread-local);
//! tests check both, and the layout of the structures limpet reads, against
//! C.
//!
//! Not a member of the root workspace (see `Cargo.toml`): the default build
//! of limpet needs no DPDK. Tests: `cargo test -p limpet-dpdk-sys`.

/// The generated binding. Its layout assertions (`const _: () = ...`)
/// fail the build if a generated size, alignment or offset is wrong.
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic,
    clippy::undocumented_unsafe_blocks,
    clippy::multiple_unsafe_ops_per_block
)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;
pub use consts::*;

/// The DPDK version found at build time (`pkg-config --modversion`).
pub const DPDK_VERSION: &str = env!("LIMPET_DPDK_VERSION");

/// Constants DPDK defines with `RTE_BIT64(n)`/`RTE_BIT32(n)` (or as
/// expressions over them), which bindgen cannot evaluate. Checked against
/// the C values by `tests/layout.rs`.
pub mod consts {
    pub const RTE_ETH_RSS_IPV4: u64 = 1 << 2;
    pub const RTE_ETH_RSS_FRAG_IPV4: u64 = 1 << 3;
    pub const RTE_ETH_RSS_NONFRAG_IPV4_TCP: u64 = 1 << 4;
    pub const RTE_ETH_RSS_NONFRAG_IPV4_UDP: u64 = 1 << 5;
    pub const RTE_ETH_RSS_NONFRAG_IPV4_OTHER: u64 = 1 << 7;
    pub const RTE_ETH_RSS_IPV6: u64 = 1 << 8;
    pub const RTE_ETH_RSS_FRAG_IPV6: u64 = 1 << 9;
    pub const RTE_ETH_RSS_NONFRAG_IPV6_TCP: u64 = 1 << 10;
    pub const RTE_ETH_RSS_NONFRAG_IPV6_UDP: u64 = 1 << 11;
    pub const RTE_ETH_RSS_NONFRAG_IPV6_OTHER: u64 = 1 << 13;
    pub const RTE_ETH_RSS_IPV6_EX: u64 = 1 << 15;
    /// Every IP flow type, hashed over the address pair only.
    pub const RTE_ETH_RSS_IP: u64 = RTE_ETH_RSS_IPV4
        | RTE_ETH_RSS_FRAG_IPV4
        | RTE_ETH_RSS_NONFRAG_IPV4_OTHER
        | RTE_ETH_RSS_IPV6
        | RTE_ETH_RSS_FRAG_IPV6
        | RTE_ETH_RSS_NONFRAG_IPV6_OTHER
        | RTE_ETH_RSS_IPV6_EX;
    pub const RTE_ETH_RSS_L3_SRC_ONLY: u64 = 1 << 63;
    pub const RTE_ETH_RSS_L3_DST_ONLY: u64 = 1 << 62;

    pub const RTE_ETH_RX_OFFLOAD_VLAN_STRIP: u64 = 1 << 0;
    pub const RTE_ETH_RX_OFFLOAD_IPV4_CKSUM: u64 = 1 << 1;
    pub const RTE_ETH_RX_OFFLOAD_UDP_CKSUM: u64 = 1 << 2;
    pub const RTE_ETH_RX_OFFLOAD_TCP_CKSUM: u64 = 1 << 3;
    pub const RTE_ETH_RX_OFFLOAD_RSS_HASH: u64 = 1 << 19;
    pub const RTE_ETH_TX_OFFLOAD_IPV4_CKSUM: u64 = 1 << 1;
    pub const RTE_ETH_TX_OFFLOAD_UDP_CKSUM: u64 = 1 << 2;
    pub const RTE_ETH_TX_OFFLOAD_TCP_CKSUM: u64 = 1 << 3;
    pub const RTE_ETH_TX_OFFLOAD_MULTI_SEGS: u64 = 1 << 15;
    pub const RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE: u64 = 1 << 16;

    /// `RTE_ETH_MQ_RX_RSS_FLAG` (`RTE_BIT32(0)`); `RTE_ETH_MQ_RX_RSS`
    /// itself comes from the generated enum.
    pub const RTE_ETH_MQ_RX_RSS_FLAG: u32 = 1 << 0;

    /// Every constant above (and a few generated ones), in the order of
    /// `limpet_c_constants` in `src/shim.c`, for the C comparison.
    pub const ALL: &[(&str, u64)] = &[
        ("RTE_ETH_RSS_IPV4", RTE_ETH_RSS_IPV4),
        ("RTE_ETH_RSS_FRAG_IPV4", RTE_ETH_RSS_FRAG_IPV4),
        ("RTE_ETH_RSS_NONFRAG_IPV4_TCP", RTE_ETH_RSS_NONFRAG_IPV4_TCP),
        ("RTE_ETH_RSS_NONFRAG_IPV4_UDP", RTE_ETH_RSS_NONFRAG_IPV4_UDP),
        (
            "RTE_ETH_RSS_NONFRAG_IPV4_OTHER",
            RTE_ETH_RSS_NONFRAG_IPV4_OTHER,
        ),
        ("RTE_ETH_RSS_IPV6", RTE_ETH_RSS_IPV6),
        ("RTE_ETH_RSS_FRAG_IPV6", RTE_ETH_RSS_FRAG_IPV6),
        ("RTE_ETH_RSS_NONFRAG_IPV6_TCP", RTE_ETH_RSS_NONFRAG_IPV6_TCP),
        ("RTE_ETH_RSS_NONFRAG_IPV6_UDP", RTE_ETH_RSS_NONFRAG_IPV6_UDP),
        (
            "RTE_ETH_RSS_NONFRAG_IPV6_OTHER",
            RTE_ETH_RSS_NONFRAG_IPV6_OTHER,
        ),
        ("RTE_ETH_RSS_IPV6_EX", RTE_ETH_RSS_IPV6_EX),
        ("RTE_ETH_RSS_IP", RTE_ETH_RSS_IP),
        ("RTE_ETH_RSS_L3_SRC_ONLY", RTE_ETH_RSS_L3_SRC_ONLY),
        ("RTE_ETH_RSS_L3_DST_ONLY", RTE_ETH_RSS_L3_DST_ONLY),
        (
            "RTE_ETH_RX_OFFLOAD_VLAN_STRIP",
            RTE_ETH_RX_OFFLOAD_VLAN_STRIP,
        ),
        (
            "RTE_ETH_RX_OFFLOAD_IPV4_CKSUM",
            RTE_ETH_RX_OFFLOAD_IPV4_CKSUM,
        ),
        ("RTE_ETH_RX_OFFLOAD_UDP_CKSUM", RTE_ETH_RX_OFFLOAD_UDP_CKSUM),
        ("RTE_ETH_RX_OFFLOAD_TCP_CKSUM", RTE_ETH_RX_OFFLOAD_TCP_CKSUM),
        ("RTE_ETH_RX_OFFLOAD_RSS_HASH", RTE_ETH_RX_OFFLOAD_RSS_HASH),
        (
            "RTE_ETH_TX_OFFLOAD_IPV4_CKSUM",
            RTE_ETH_TX_OFFLOAD_IPV4_CKSUM,
        ),
        ("RTE_ETH_TX_OFFLOAD_UDP_CKSUM", RTE_ETH_TX_OFFLOAD_UDP_CKSUM),
        ("RTE_ETH_TX_OFFLOAD_TCP_CKSUM", RTE_ETH_TX_OFFLOAD_TCP_CKSUM),
        (
            "RTE_ETH_TX_OFFLOAD_MULTI_SEGS",
            RTE_ETH_TX_OFFLOAD_MULTI_SEGS,
        ),
        (
            "RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE",
            RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE,
        ),
        ("RTE_ETH_MQ_RX_RSS_FLAG", RTE_ETH_MQ_RX_RSS_FLAG as u64),
        (
            "RTE_ETH_RSS_RETA_SIZE_64",
            super::bindings::RTE_ETH_RSS_RETA_SIZE_64 as u64,
        ),
        (
            "RTE_ETH_RETA_GROUP_SIZE",
            super::bindings::RTE_ETH_RETA_GROUP_SIZE as u64,
        ),
        (
            "RTE_MBUF_DEFAULT_BUF_SIZE",
            super::bindings::RTE_MBUF_DEFAULT_BUF_SIZE as u64,
        ),
        (
            "RTE_PKTMBUF_HEADROOM",
            super::bindings::RTE_PKTMBUF_HEADROOM as u64,
        ),
        ("RTE_MAX_ETHPORTS", super::bindings::RTE_MAX_ETHPORTS as u64),
        ("RTE_MAX_LCORE", super::bindings::RTE_MAX_LCORE as u64),
    ];
}

/// The C side of the tests: values and layouts as the C compiler sees
/// them (`src/shim.c`).
pub mod c_side {
    unsafe extern "C" {
        pub static limpet_c_constants: [u64; 0];
        pub static limpet_c_constants_len: usize;
        pub static limpet_c_layout: [usize; 0];
        pub static limpet_c_layout_len: usize;
    }

    /// `limpet_c_constants` as a slice.
    pub fn constants() -> &'static [u64] {
        // SAFETY: shim.c defines the array with `limpet_c_constants_len`
        // elements; both are immutable statics that live forever.
        unsafe {
            core::slice::from_raw_parts(
                core::ptr::addr_of!(limpet_c_constants).cast::<u64>(),
                limpet_c_constants_len,
            )
        }
    }

    /// `limpet_c_layout` as a slice.
    pub fn layout() -> &'static [usize] {
        // SAFETY: as for `constants`.
        unsafe {
            core::slice::from_raw_parts(
                core::ptr::addr_of!(limpet_c_layout).cast::<usize>(),
                limpet_c_layout_len,
            )
        }
    }
}

unsafe extern "C" {
    fn limpet_rte_errno() -> core::ffi::c_int;
}

/// The calling thread's `rte_errno` (a per-lcore thread-local in C, which
/// bindgen cannot bind).
pub fn rte_errno() -> i32 {
    // SAFETY: reads a thread-local int; no preconditions.
    unsafe { limpet_rte_errno() }
}

/// `rte_pktmbuf_mtod(m, uint8_t *)`: the first byte of the mbuf's data.
///
/// # Safety
///
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline(always)]
pub unsafe fn pktmbuf_mtod(m: *const rte_mbuf) -> *mut u8 {
    // SAFETY: the caller promises a valid mbuf; its data starts `data_off`
    // bytes into the buffer at `buf_addr`.
    unsafe { (*m).buf_addr.cast::<u8>().add(usize::from((*m).data_off)) }
}
