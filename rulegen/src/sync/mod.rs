//! What to send to the kernel for a render: partial payloads (diffs against per-chain
//! fingerprints), the full restore and its chunks, cleanup payloads, and stale conntrack flows.

pub mod cleanup;
pub mod conntrack;
pub mod partial;
pub mod payload;
pub mod restore;
pub mod retain;
