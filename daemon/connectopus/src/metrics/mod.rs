//! Prometheus metrics: the node's status report rendered in the text exposition format
//! (version 0.0.4), and a tiny HTTP/1.1 server that serves it at `/metrics`.
//!
//! The main loop renders a snapshot about once a second ([`Snapshot::publish`]); the HTTP
//! thread only copies the latest one out, so a scrape never waits for the loop and a slow or
//! malformed client never touches it. The server takes one connection at a time, with a
//! deadline for the whole request, a cap on its size and a write timeout.
//!
//! Names follow the Prometheus conventions: `connectopus_` prefix, `_total` for counters,
//! base units (bytes, seconds). Every family has `# HELP` and `# TYPE`.

mod render;
mod server;

pub use render::render;
pub use server::{Snapshot, spawn_server};
