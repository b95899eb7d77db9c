//! limpet's control plane.
