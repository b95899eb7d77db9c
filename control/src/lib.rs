//! limpet's control plane: sources of service state, their translation into
//! the dataplane's snapshots, and the `limpet` command.

pub mod admin;
pub mod afpacket;
pub mod afxdp;
pub mod announce;
pub mod backend;
pub mod checkpoint;
pub mod client;
pub mod compile;
pub mod config;
pub mod debounce;
pub mod demo;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod drain;
pub mod health;
pub mod ids;
pub mod kube_source;
pub mod manifest;
pub mod manifest_cache;
pub mod run;
pub mod state;
pub mod translate;
