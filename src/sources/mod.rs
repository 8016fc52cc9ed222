//! Where the objects come from: object files (`--objects`, re-read when they change) and the API
//! server's watchers, both as the same [`crate::objects::Objects`] the translation reads.

pub mod api;
pub mod client;
pub mod files;
pub mod ratelimit;
