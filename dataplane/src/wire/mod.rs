//! Zero-copy views over packet bytes, one module per protocol.
