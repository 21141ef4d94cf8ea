//! One authenticated client connection, whatever its transport.
//!
//! A transport (`ws.rs`, `quic.rs`) reads and decodes frames and hands each to
//! [`Session::dispatch`]; the handlers in `handlers/` act on the session state
//! (joined channels) and queue replies on the control queue. A writer task owned
//! by the transport drains two queues: the small control queue (replies: never
//! dropped, the reader waits when it is full) and the bounded batch queue the
//! registry pushes into (dropped when full). Dropping the session leaves every
//! channel, so no exit path leaks registry entries.

use std::collections::HashSet;
use std::sync::Arc;

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, ProtoError, frame, pb};
use tokio::sync::mpsc;

use crate::Edge;
use crate::registry::{ConnId, Member, Outbound, Transport};

/// Replies queued before the reader waits for the writer.
pub(crate) const CONTROL_QUEUE: usize = 64;

/// What the writer task is told to send.
#[derive(Debug)]
pub(crate) enum Control {
    /// A reply frame (never a batch: those go through the batch queue).
    Frame(pb::ServerFrame),
    /// Close the connection after everything queued before.
    Close(CloseReason),
}

/// Why the edge ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The peer closed or went away.
    PeerClosed,
    /// Silent for 2.5 heartbeat intervals.
    Idle,
    /// A malformed frame (the error frame was queued first).
    BadFrame,
    /// Authentication failed (QUIC; WebSocket refuses before the upgrade).
    BadToken,
    /// The edge is shutting down.
    Shutdown,
    /// The peer stopped reading: replies could not be queued for an idle timeout.
    Stalled,
}

impl CloseReason {
    /// WebSocket close code (RFC 6455 §7.4.1).
    pub fn ws_code(self) -> u16 {
        match self {
            CloseReason::PeerClosed => 1000,
            CloseReason::Idle => 1000,
            CloseReason::BadFrame => 1002,
            CloseReason::BadToken => 1008,
            CloseReason::Shutdown => 1001,
            CloseReason::Stalled => 1008,
        }
    }

    /// QUIC application close code.
    pub fn quic_code(self) -> u32 {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Idle => 1,
            CloseReason::BadFrame => 2,
            CloseReason::BadToken => 3,
            CloseReason::Shutdown => 4,
            CloseReason::Stalled => 5,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "bye",
            CloseReason::Idle => "idle timeout",
            CloseReason::BadFrame => "malformed frame",
            CloseReason::BadToken => "bad token",
            CloseReason::Shutdown => "edge shutting down",
            CloseReason::Stalled => "peer stopped reading",
        }
    }
}

/// Whether the connection goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close(CloseReason),
}

pub(crate) struct Session {
    pub edge: Arc<Edge>,
    pub conn_id: ConnId,
    pub user: String,
    pub transport: Transport,
    pub joined: HashSet<ChannelName>,
    control: mpsc::Sender<Control>,
    batches: mpsc::Sender<Outbound>,
}

impl Session {
    pub fn new(
        edge: Arc<Edge>,
        conn_id: ConnId,
        user: String,
        transport: Transport,
        control: mpsc::Sender<Control>,
        batches: mpsc::Sender<Outbound>,
    ) -> Self {
        Session {
            edge,
            conn_id,
            user,
            transport,
            joined: HashSet::new(),
            control,
            batches,
        }
    }

    /// The registry handle of this connection.
    pub fn member(&self) -> Member {
        Member::new(self.transport, self.batches.clone())
    }

    /// Queues a reply. Waits if the writer is behind: replies are never dropped.
    /// A peer that does not read for an idle timeout is closed, so it cannot pin
    /// the reader (and the connection) forever.
    pub async fn reply(&self, body: Body) -> Flow {
        self.queue(frame::server(body)).await
    }

    /// Replies with an `Error` frame and keeps the connection.
    pub async fn reply_error(&self, code: &str, message: impl Into<String>) -> Flow {
        self.queue(frame::error(code, message)).await
    }

    async fn queue(&self, frame: pb::ServerFrame) -> Flow {
        let idle = self.edge.config.idle_timeout();
        match tokio::time::timeout(idle, self.control.send(Control::Frame(frame))).await {
            Ok(Ok(())) => Flow::Continue,
            Ok(Err(_)) => Flow::Close(CloseReason::PeerClosed),
            Err(_) => {
                tracing::info!(conn_id = self.conn_id, "peer stopped reading; closing");
                Flow::Close(CloseReason::Stalled)
            }
        }
    }

    /// A frame could not be decoded: count it, tell the peer why, and close.
    pub async fn reject(&self, err: &ProtoError) -> Flow {
        self.edge.metrics.bad_frame(err.code());
        tracing::info!(conn_id = self.conn_id, code = err.code(), error = %err, "malformed frame; closing");
        let _ = self.reply_error(err.code(), err.to_string()).await;
        Flow::Close(CloseReason::BadFrame)
    }

    /// Acts on one decoded frame.
    pub async fn dispatch(&mut self, frame: pb::ClientFrame) -> Flow {
        crate::handlers::dispatch(self, frame).await
    }

    /// Resolves when the writer task has gone (socket error): the reader stops.
    pub async fn writer_gone(&self) {
        self.control.closed().await
    }

    /// Tells the writer to close after what is queued, then leaves all channels.
    pub async fn close(mut self, reason: CloseReason) {
        self.leave_all();
        // A stalled writer cannot take more; the transport aborts it.
        let _ = self.control.try_send(Control::Close(reason));
    }

    fn leave_all(&mut self) {
        for channel in self.joined.drain() {
            self.edge.registry.leave(&channel, self.conn_id);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave_all();
    }
}

/// Keeps `danmaku_edge_connections{transport}` right however a connection ends.
pub(crate) struct ConnectionGauge(prometheus::IntGauge);

impl ConnectionGauge {
    pub fn open(edge: &Edge, transport: Transport) -> Self {
        let g = edge
            .metrics
            .connections
            .with_label_values(&[transport.label()]);
        g.inc();
        ConnectionGauge(g)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}
