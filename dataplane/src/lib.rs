//! limpet's packet path.
//!
//! Everything a worker touches per packet lives here: zero-copy wire views,
//! the service snapshot, the flow and affinity tables with their timer wheel,
//! Maglev selection, the run-to-completion pipeline and the I/O backends.
//! The crate denies `unsafe` except in [`io`], the hardware-facing boundary.

pub mod affinity;
pub mod clock;
pub mod command;
pub mod encap;
pub mod family;
pub mod flow;
pub mod gso;
pub mod hash;
pub mod icmp;
pub mod io;
pub mod maglev;
pub mod nat;
pub mod neighbour;
pub mod pipeline;
pub mod snapshot;
pub mod snat;
pub mod state;
pub mod stats;
pub mod table;
pub mod timer_wheel;
pub mod wire;
