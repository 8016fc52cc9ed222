//! Applies what `rulegen` renders to the node's kernel: picks the iptables back end, restores a
//! full ruleset with `iptables-restore --noflush`, ensures the hook rules, and paces syncs.
//!
//! Nothing here knows about Kubernetes: it takes a [`rulegen::Ruleset`] and drives the iptables
//! tools, each started from an argument vector through a [`Launcher`].

#![warn(missing_docs)]

pub mod applier;
pub mod backend;
pub mod chain_listing;
pub mod command;
pub mod conntrack;
pub mod detect;
pub mod hooks;
pub mod interface;
pub mod ipset;
pub mod iptables;
pub mod ipvs;
mod netlink;
pub mod restore;
pub mod runner;
pub mod sysctl;

pub use applier::{ApplyError, IptablesApplier, SyncKind, SyncReport};
pub use backend::{Backend, FamilyTools};
pub use command::{CommandError, Finished, Launcher};
pub use conntrack::{Conntrack, ConntrackError, ConntrackReport};
pub use detect::{Detection, Evidence, detect_backend, detect_backend_within};
pub use hooks::{BuiltinRules, HookError, HookReport};
pub use interface::{DummyInterface, IPVS_INTERFACE, InterfaceError, local_addresses_except};
pub use ipset::{Ipset, IpsetError, IpsetReport, RefusedSet};
pub use iptables::{DEFAULT_TIMEOUT, Iptables};
pub use ipvs::{
    FakeIpvs, IpvsError, IpvsHandle, IpvsSocket, IpvsSyncConfig, IpvsSyncReport, IpvsSyncer,
};
pub use restore::{FailedLine, Rejected, RestoreError};
pub use runner::{Runner, Trigger};
