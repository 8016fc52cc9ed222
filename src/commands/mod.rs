//! The program's commands: the node agent (and `--init-only`), `--cleanup`, the dry run,
//! `explain` and `trace`. Each reads settings and objects and hands its output to [`crate::reports`]
//! or the dataplane.

pub mod agent;
pub mod cleanup;
pub mod dryrun;
pub mod explain;
pub mod nodesetup;
pub mod trace;
