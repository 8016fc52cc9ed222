//! What the binary prints: the golden render of every case, `explain`, `trace`, the README's
//! examples, the CLI contract, and the render's properties (names the API server would accept,
//! random models) — one test binary, linking the kit once.

mod cli;
mod explain;
mod golden;
mod proptest_render;
mod readme;
mod trace;
mod untrusted_names;
