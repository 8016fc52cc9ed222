//! Applies what `rulegen` renders to the node's kernel: each mode is a [`Dataplane`] the agent
//! hands its models to ([`IptablesDataplane`], [`IpvsDataplane`]), which decides how much to
//! send, renders, drives the kernel (the iptables tools, IPVS over netlink, ipsets,
//! `kube-ipvs0`) and removes its own leftovers ([`cleanup`]); it also picks the iptables back
//! end and paces syncs.
//!
//! Nothing here knows about Kubernetes objects: it takes a [`rulegen::Model`] (or a rendered
//! [`rulegen::Ruleset`]) and drives the tools, each started from an argument vector through a
//! [`Launcher`].

pub mod applier;
pub mod backend;
pub mod chain_listing;
pub mod cleanup;
pub mod command;
pub mod conntrack;
pub mod dataplane;
pub mod detect;
pub mod hooks;
pub mod interface;
pub mod ipset;
pub mod iptables;
pub mod iptables_dataplane;
pub mod ipvs;
pub mod ipvs_dataplane;
mod netlink;
pub mod restore;
pub mod runner;
pub mod sysctl;

pub use applier::{ApplyError, IptablesApplier, SyncKind, SyncReport};
pub use backend::{Backend, FamilyTools};
pub use cleanup::{CleanedTable, CleanupError, CleanupReport};
pub use command::{CommandError, Finished, Launcher};
pub use conntrack::{Conntrack, ConntrackError, ConntrackReport};
pub use dataplane::{
    Dataplane, FullSyncReason, NoObserver, NodeFacts, PartialRefusal, SyncError, SyncObserver,
};
pub use detect::{Detection, Evidence, detect_backend, detect_backend_within};
pub use hooks::{BuiltinRules, HookError, HookReport};
pub use interface::{DummyInterface, IPVS_INTERFACE, InterfaceError, local_addresses_except};
pub use ipset::{Ipset, IpsetError, IpsetReport, RefusedSet};
pub use iptables::{DEFAULT_TIMEOUT, Iptables};
pub use iptables_dataplane::{FULL_SYNC_PERIOD, IptablesDataplane, RESTORE_TIMEOUT};
pub use ipvs::{
    FakeIpvs, IpvsError, IpvsHandle, IpvsSocket, IpvsSyncConfig, IpvsSyncReport, IpvsSyncer,
};
pub use ipvs_dataplane::{IpvsDataplane, IpvsStepError, IpvsSyncSummary};
pub use restore::{FailedLine, Rejected, RestoreError};
pub use runner::{Runner, Trigger};
