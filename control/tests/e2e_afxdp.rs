//! The session-affinity story (`testbed::story`) with limpet over its own
//! `AF_XDP` backend (`--io afxdp:lb0`): the steering XDP program on lb0,
//! one socket per worker, offloads left on. Needs root (CI is root);
//! without it the test fails, loudly.

mod testbed;

use testbed::story::{Io, session_affinity};

#[test]
fn session_affinity_end_to_end_over_af_xdp() {
    session_affinity(Io::AfXdp);
}
