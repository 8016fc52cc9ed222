//! The node agent: keeps a model of the cluster (from the API server or from files), renders it
//! and applies it to this node's kernel, paced like upstream's bounded-frequency runner.

pub mod api;
pub mod duration;
pub mod files;
pub mod ipvs;
pub mod logging;
pub mod ratelimit;
pub mod run;

pub use run::run;
