//! Packet synthesis for limpet's tests and benchmarks.
