//! `proxier` against the kernel, inside network namespaces the tests create: iptables restores
//! and syncs, conntrack, the dummy interface, ipsets; and the IPVS syncer against its in-memory
//! fake peer — one test binary, linking the kit once.

mod conntrack;
mod interface;
mod ipset;
mod iptables;
mod ipvs_fake;
