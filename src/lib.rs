//! The `danmaku` binary's library half: how the service crates are put
//! together into processes.
//!
//! * [`standalone`] — ingest + edge + scheduler + demo page + `/metrics` on one
//!   address over the memory bus: what `danmaku standalone` runs and what the
//!   end-to-end tests start in-process.
//! * [`server`] — the pieces every process shares: binding the TCP and UDP
//!   sockets of one `--listen` address, `/metrics`, `/healthz`, shutdown.
//!
//! `src/main.rs` only maps the command line onto these.

pub mod server;
pub mod standalone;
