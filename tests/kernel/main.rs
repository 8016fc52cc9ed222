//! The rendered rules in a real kernel, inside network namespaces the tests create: the
//! iptables-save round trip, packets and Service semantics through the rules, trace's
//! predictions against where packets really went, `--cleanup` and the node setup — one test
//! binary, linking the kit once. Needs root (see `testkit::require_root`).

mod cleanup;
mod kernel_roundtrip;
mod nodesetup;
mod packets;
mod semantics;
mod trace_kernel;
