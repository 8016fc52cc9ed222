//! IPVS mode's kernel side (issue #6): our own client of the kernel's "IPVS" generic-netlink
//! family, an in-memory peer with the kernel's semantics for tests, and the syncer that makes
//! the kernel's table equal to [`rulegen::render::ipvs::IpvsTable`] by sending only the differences,
//! draining removed destinations gracefully as upstream does.
//!
//! - [`attrs`]: constants and attribute types (from `include/uapi/linux/ip_vs.h`);
//! - [`message`]: [`IpvsMessage`], the generic-netlink payload;
//! - [`entry`]: [`IpvsService`] and [`IpvsDest`], and their attribute encodings;
//! - [`socket`]: [`IpvsSocket`], the blocking netlink client;
//! - [`fake`]: [`FakeIpvs`], the in-memory peer;
//! - [`diff`] and [`sync`]: [`IpvsSyncer`].
//!
//! Nothing here runs without IPVS in the kernel: [`IpvsSocket::open`] says so with
//! [`IpvsError::Unavailable`].

pub mod attrs;
pub mod diff;
pub mod entry;
pub mod error;
pub mod fake;
pub mod handle;
pub mod message;
pub mod socket;
pub mod sync;

pub use attrs::{IpvsFlags, IpvsStats};
pub use entry::{IpvsDest, IpvsService, ServiceKey};
pub use error::{IpvsError, IpvsOp, Rejection};
pub use fake::{CallCounts, FakeFailure, FakeIpvs};
pub use handle::IpvsHandle;
pub use message::{IpvsCommand, IpvsMessage};
pub use socket::IpvsSocket;
pub use sync::{DEFAULT_GRACE_TIMEOUT, DRAIN_INTERVAL, IpvsSyncConfig, IpvsSyncReport, IpvsSyncer};

#[cfg(test)]
mod tests;
