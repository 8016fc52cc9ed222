//! The agent end to end: from object files and from the kit's test API server, inside lab
//! namespaces; its health and metrics servers, conntrack cleanup, restarts and takeovers, the
//! deploy manifests, and the test API server's own checks — one test binary, linking the kit
//! once.

mod agent_api;
mod agent_conntrack;
mod agent_files;
mod agent_restart;
mod agent_scale;
mod agent_takeover;
mod api_sources;
mod apiserver_selftest;
mod deploy;
mod health;
mod metrics;
