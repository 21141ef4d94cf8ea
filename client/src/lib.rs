//! The Rust client of danmaku: the reference SDK used by the tests, the load
//! generator and the examples.
//!
//! A [`Client`] is one long connection to an edge, over WebSocket (JSON or
//! protobuf, [`ws`]) or QUIC ([`quic`]). Each connection runs a few tasks:
//!
//! * a reader per inbound stream: reads the socket, decodes every frame within
//!   [`ClientConfig::limits`], converts it into a [`ServerEvent`] ([`event`]) and
//!   pushes it into a bounded queue that [`Client::next_event`] drains. A full
//!   queue stops the reader, so a slow consumer looks like a slow reader to the
//!   edge;
//! * a writer: frames queued by [`Client::join`], [`Client::ping`]… go out in order;
//! * a heartbeat: a `ping` every [`ClientConfig::heartbeat_interval`].
//!
//! A decode error or a transport error ends the connection (logged, never a
//! panic); `next_event` then returns `None`. Dropping the client closes it.
//!
//! Sending goes the other way, over HTTP to ingest: [`IngestClient`] (danmaku,
//! reliable posts, history, ack offsets, unread counts, group membership).
//!
//! The reliable lane: [`ResilientClient`] ([`resilient`]) keeps a connection
//! to one of several edges, reconnects and resumes when it is lost, and hands
//! out reliable events once each, in seq order, acking them; the bookkeeping is
//! the sans-IO [`ReliableTracker`] ([`reliable`]).

pub mod bind;
mod client;
pub mod config;
pub mod error;
pub mod event;
pub mod ingest;
pub mod quic;
pub mod reliable;
pub mod resilient;
pub mod scheduler;
mod session;
pub mod sse;
pub mod tls;
pub mod ws;

pub use client::Client;
pub use config::{ClientConfig, TokenRefresh, Transport};
pub use danmaku_proto::Limits;
pub use error::ClientError;
pub use event::{EdgeAddr, ServerEvent};
pub use ingest::{FetchedBlob, HistoryMessage, HistoryPage, IngestClient, PostOutcome, Unread};
pub use reliable::{ReliableTracker, Verdict};
pub use resilient::{EdgeTarget, ResilientClient};
pub use scheduler::SchedulerClient;
pub use sse::SseClient;
pub use tls::ServerTrust;
