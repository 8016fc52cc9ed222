//! IPVS mode in a kernel that has IPVS: each test boots Debian's kernel under qemu (this
//! machine's has none), one VM at a time (`testkit::vm`). Slow: minutes under TCG.

mod ipvs_vm;
mod trace_ipvs_vm;
