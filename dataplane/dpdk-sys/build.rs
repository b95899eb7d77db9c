//! Finds the system DPDK with pkg-config, generates a narrow binding with
//! bindgen (static inline functions wrapped by `wrap_static_fns`), and
//! compiles the generated C wrappers plus `src/shim.c` with the same flags.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The oldest DPDK whose API (the `RTE_ETH_*` names) this binding uses.
const MIN_VERSION: &str = "21.11";

fn pkg_config(args: &[&str]) -> Result<String, String> {
    let out = Command::new(env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into()))
        .args(args)
        .output()
        .map_err(|e| format!("could not run pkg-config: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn missing(why: &str) -> ! {
    panic!(
        "\n\nlimpet-dpdk-sys needs DPDK >= {MIN_VERSION} (pkg-config package `libdpdk`), \
         and it was not found: {why}\n\
         On Debian/Ubuntu: `apt-get install libdpdk-dev pkg-config libclang-dev clang` \
         (or run scripts/dpdk-setup). A DPDK installed elsewhere: set PKG_CONFIG_PATH \
         to the directory holding libdpdk.pc.\n\
         The default build of limpet does not need DPDK; only the `dpdk` feature does.\n\n"
    );
}

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");

    let version = pkg_config(&["--modversion", "libdpdk"]).unwrap_or_else(|e| missing(&e));
    if let Err(e) = pkg_config(&["--atleast-version", MIN_VERSION, "libdpdk"]) {
        missing(&format!(
            "found libdpdk {version}, older than {MIN_VERSION} {e}"
        ));
    }
    let cflags: Vec<String> = pkg_config(&["--cflags", "libdpdk"])
        .unwrap_or_else(|e| missing(&e))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let libs = pkg_config(&["--libs", "libdpdk"]).unwrap_or_else(|e| missing(&e));
    println!("cargo:rustc-env=LIMPET_DPDK_VERSION={version}");
    println!("cargo:version={version}");

    for flag in libs.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={lib}");
        }
        // -Wl,--as-needed and the like: rustc already links as needed.
    }
    // Not in libdpdk.pc's list, which names only the core libraries: the
    // ring PMD's constructor API (`rte_eth_from_rings`) and the vdev bus
    // (`rte_vdev_init`). Drivers themselves are loaded by EAL as plugins.
    println!("cargo:rustc-link-lib=rte_net_ring");
    println!("cargo:rustc-link-lib=rte_bus_vdev");

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let wrap_path = out.join("static_fns");

    let bindings = bindgen::Builder::default()
        .header(manifest.join("wrapper.h").to_string_lossy())
        .clang_args(&cflags)
        .clang_arg("-DALLOW_EXPERIMENTAL_API")
        .rust_target(bindgen::RustTarget::stable(85, 0).unwrap())
        .rust_edition(bindgen::RustEdition::Edition2024)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .allowlist_function(
            "rte_eal_(init|cleanup|process_type|has_hugepages|get_configuration)\
             |rte_lcore_.*|rte_get_main_lcore|rte_get_next_lcore|rte_socket_.*|rte_strerror\
             |rte_eal_(remote_launch|wait_lcore|mp_wait_lcore)\
             |rte_eth_(dev_.*|rx_burst|tx_burst|rx_queue_setup|tx_queue_setup|promiscuous_.*\
                |link_get.*|link_to_str|stats_.*|xstats_.*|macaddr_get|from_rings|from_ring\
                |find_next_owned_by|find_next|rx_queue_count|tx_done_cleanup)\
             |rte_pktmbuf_(pool_create|alloc|alloc_bulk|free|free_bulk|append|reset|mtod_offset)\
             |rte_mempool_(free|avail_count|in_use_count|lookup)\
             |rte_ring_(create|free|enqueue_burst|dequeue_burst|count|lookup)\
             |rte_vdev_(init|uninit)",
        )
        .allowlist_type(
            "rte_mbuf|rte_mempool|rte_ring|rte_eth_conf|rte_eth_dev_info|rte_eth_rss_conf\
             |rte_eth_rss_reta_entry64|rte_eth_stats|rte_eth_xstat|rte_eth_xstat_name\
             |rte_eth_link|rte_ether_addr|rte_eth_rxconf|rte_eth_txconf|rte_proc_type_t\
             |rte_eth_rx_mq_mode|rte_eth_tx_mq_mode",
        )
        .allowlist_var(
            "RTE_MAX_.*|RTE_ETH_LINK_.*|RTE_ETH_NAME_MAX_LEN|RTE_ETH_XSTATS_NAME_SIZE\
             |RTE_ETHER_.*|RTE_PKTMBUF_HEADROOM|RTE_MBUF_(DEFAULT_.*|F_.*|PRIV_ALIGN)\
             |RTE_MEMPOOL_CACHE_MAX_SIZE|RING_F_.*|SOCKET_ID_ANY|RTE_ETH_RSS_RETA_SIZE_.*\
             |RTE_ETH_RETA_GROUP_SIZE|RTE_ETH_SPEED_NUM_.*|RTE_ETH_DEV_NO_OWNER",
        )
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrap_path)
        .derive_default(true)
        .derive_debug(true)
        .impl_debug(false)
        .layout_tests(true)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .generate_comments(true)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen could not generate the DPDK binding: {e}"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");

    // The wrappers bindgen wrote for the static inline functions, and our
    // shim, compiled with the full DPDK cflags (-march, -include
    // rte_config.h): the inline bodies use ISA-dependent intrinsics.
    let mut cc = cc::Build::new();
    cc.file(wrap_path.with_extension("c"))
        .file(manifest.join("src/shim.c"))
        .include(&manifest)
        .define("ALLOW_EXPERIMENTAL_API", None)
        .warnings(false);
    for flag in &cflags {
        cc.flag(flag);
    }
    cc.compile("limpet_dpdk_shim");
}
