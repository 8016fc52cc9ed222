//! Tests of the IPVS module: the codec against byte fixtures derived from the kernel's C layout,
//! the fake peer's kernel semantics, and the syncer against the fake.

mod codec;
mod fake_peer;
mod live;
mod syncer;
