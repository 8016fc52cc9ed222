//! How results are shown to a person or a tool: `explain`'s and `trace`'s text and JSON.

pub mod explain;
pub mod trace;
