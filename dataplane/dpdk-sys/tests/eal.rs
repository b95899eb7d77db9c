//! EAL start-up with virtual devices, without hugepages or PCI. Its own
//! test binary (and a single test): EAL initialises once per process.

use core::ffi::{CStr, c_char};
use limpet_dpdk_sys::*;

fn cstr(s: &str) -> *mut c_char {
    std::ffi::CString::new(s).unwrap().into_raw()
}

#[test]
fn eal_comes_up_with_net_null_and_net_ring_and_moves_a_packet() {
    let args = [
        "limpet-dpdk-sys-test",
        "--no-huge",
        "--no-pci",
        "-m",
        "256",
        "-l",
        "0",
        "--no-shconf",
        "--log-level=lib.eal:warning",
        "--vdev=net_null0",
        "--vdev=net_ring0",
    ];
    let mut argv: Vec<*mut c_char> = args.iter().map(|a| cstr(a)).collect();
    // SAFETY: argv holds argc valid NUL-terminated strings that outlive the
    // process (leaked); EAL may permute the array.
    let ret = unsafe { rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    assert!(ret >= 0, "rte_eal_init failed: errno {}", rte_errno());

    // SAFETY: EAL is up.
    let ports = unsafe { rte_eth_dev_count_avail() };
    assert_eq!(ports, 2, "net_null0 and net_ring0");

    // SAFETY: a fresh pool name; EAL is up.
    let pool = unsafe {
        rte_pktmbuf_pool_create(
            cstr("test_pool"),
            1023,
            0,
            0,
            RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            SOCKET_ID_ANY,
        )
    };
    assert!(!pool.is_null(), "pool: errno {}", rte_errno());

    for port in 0..ports {
        let mut info = rte_eth_dev_info::default();
        // SAFETY: port < count; info is a valid out-pointer.
        assert_eq!(unsafe { rte_eth_dev_info_get(port, &raw mut info) }, 0);
        // SAFETY: driver_name is a static C string owned by the driver.
        let driver = unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy();
        assert!(driver == "net_null" || driver == "net_ring", "{driver}");
        let conf = rte_eth_conf::default();
        // SAFETY: valid port and configuration.
        let ret = unsafe { rte_eth_dev_configure(port, 1, 1, &raw const conf) };
        assert_eq!(ret, 0);
        // SAFETY: queue 0 of a configured port; a valid pool.
        let ret = unsafe { rte_eth_rx_queue_setup(port, 0, 128, 0, core::ptr::null(), pool) };
        assert_eq!(ret, 0);
        // SAFETY: as above.
        let ret = unsafe { rte_eth_tx_queue_setup(port, 0, 128, 0, core::ptr::null()) };
        assert_eq!(ret, 0);
        // SAFETY: a configured port.
        assert_eq!(unsafe { rte_eth_dev_start(port) }, 0);
    }

    // net_ring0 in its default mode loops TX back to RX: a packet sent
    // comes back, byte for byte, through the wrapped inline functions.
    let ring = 1;
    // SAFETY: a valid pool.
    let m = unsafe { rte_pktmbuf_alloc(pool) };
    assert!(!m.is_null());
    // SAFETY: a fresh mbuf with room for 64 bytes.
    let data = unsafe { rte_pktmbuf_append(m, 64) }.cast::<u8>();
    assert!(!data.is_null());
    // SAFETY: 64 bytes were appended at `data`.
    unsafe { core::ptr::write_bytes(data, 0xab, 64) };
    let mut tx = [m];
    // SAFETY: a started port and queue; one valid mbuf.
    assert_eq!(unsafe { rte_eth_tx_burst(ring, 0, tx.as_mut_ptr(), 1) }, 1);
    let mut rx = [core::ptr::null_mut::<rte_mbuf>(); 4];
    // SAFETY: a started port and queue; room for 4 mbufs.
    let n = unsafe { rte_eth_rx_burst(ring, 0, rx.as_mut_ptr(), 4) };
    assert_eq!(n, 1);
    // SAFETY: a received mbuf.
    let (len, first) = unsafe { ((*rx[0]).data_len, *pktmbuf_mtod(rx[0])) };
    assert_eq!((len, first), (64, 0xab));
    // SAFETY: we own the mbuf.
    unsafe { rte_pktmbuf_free(rx[0]) };

    // net_null answers bursts with empty packets of its size (64 bytes).
    // SAFETY: a started port and queue; room for 4 mbufs.
    let n = unsafe { rte_eth_rx_burst(0, 0, rx.as_mut_ptr(), 4) };
    assert_eq!(n, 4);
    // SAFETY: the received mbufs are ours.
    unsafe { rte_pktmbuf_free_bulk(rx.as_mut_ptr(), 4) };

    let mut link = rte_eth_link::default();
    // SAFETY: a valid port and out-pointer.
    assert_eq!(unsafe { rte_eth_link_get_nowait(0, &raw mut link) }, 0);
    assert_eq!(link.link_status(), 1, "net_null reports link up");

    for port in 0..ports {
        // SAFETY: a started port.
        assert_eq!(unsafe { rte_eth_dev_stop(port) }, 0);
        // SAFETY: a stopped port.
        assert_eq!(unsafe { rte_eth_dev_close(port) }, 0);
    }
    // SAFETY: no mbuf of the pool is out; the ports are closed.
    unsafe { rte_mempool_free(pool) };
    // SAFETY: EAL is up; nothing uses it after this.
    assert_eq!(unsafe { rte_eal_cleanup() }, 0);
}
