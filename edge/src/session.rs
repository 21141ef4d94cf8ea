//! One authenticated client connection's state, whatever its transport: who
//! it is, the channels it joined with their reliable lanes, its budgets, and
//! the two queues its writer drains. No loop and no handler lives here: the
//! connection's task (`connection/`) owns the loop and dispatches frames to
//! `handlers/`, which act on this state through the methods below.
//!
//! The writer (owned by the transport, `ws.rs` / `quic.rs`) drains two queues:
//! the small **reply queue** ([`Reply`]: answers, error frames and the single
//! reliable frames of a catch-up — never dropped; whoever queues waits when it
//! is full) and the bounded **batch queue** the registry pushes tick frames
//! into (dropped when full, counted). Two reply-queue slots are reserved at
//! start for the last `error` frame and the close, so they are queued even
//! when the peer has stopped reading. Dropping the session leaves every
//! channel, so no exit path leaks registry entries.

use std::sync::Arc;

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, Layout, ProtoError, frame, pb};
use tokio::sync::{Notify, mpsc};

use crate::channels::{ConnEvent, ConnId, Member, Outbound, Waker};
use crate::direct::DirectSink;
use crate::limits::ConnLimits;
use crate::node::Edge;
use crate::reliable::lane::LaneState;
use crate::reliable::ring::ReliableFrame;
pub(crate) use crate::reply::{CloseReason, Reply};
use crate::transport::Transport;

/// Replies queued before whoever queues waits for the writer.
pub(crate) const REPLY_QUEUE: usize = 64;

/// Whether the connection goes on after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close(CloseReason),
}

/// The receiving ends of a new session's queues: `replies` and `batches` for
/// the transport's writer, `wakes` (and its overflow signal) for the
/// connection's task.
pub(crate) struct Queues {
    pub replies: mpsc::Receiver<Reply>,
    pub batches: mpsc::Receiver<Outbound>,
    pub wakes: mpsc::Receiver<ConnEvent>,
    pub overflow: Arc<Notify>,
}

pub(crate) struct Session {
    pub edge: Arc<Edge>,
    pub conn_id: ConnId,
    pub user: String,
    pub transport: Transport,
    /// The protobuf batch layout the client asked for (`danmaku.v2.pb` and
    /// `danmaku.v3.pb`, `ws.rs`).
    pub batch_layout: Layout,
    /// The socket, for a plain-TCP WebSocket: its members' ticks are written
    /// into it directly when nothing waits (`direct.rs`).
    pub direct: Option<Arc<DirectSink>>,
    /// The joined channels with their reliable lanes (`reliable/`).
    pub joined: Joined,
    /// When the token expires (unix seconds); a fresh `auth` frame moves it.
    pub token_exp: u64,
    /// Per-connection and per-user frame budgets (see `limits.rs`).
    pub limits: ConnLimits,
    replies: mpsc::Sender<Reply>,
    batches: mpsc::Sender<Outbound>,
    wake: Waker,
    /// Raised when the wake queue is full (see [`Waker`]).
    overflow: Arc<Notify>,
    /// Reply-queue slots reserved at start for the last `error` frame and the
    /// close: a peer that stopped reading still gets both queued (and sees
    /// them if it reads again within the writer's drain time).
    last_frame: Option<mpsc::OwnedPermit<Reply>>,
    last_close: Option<mpsc::OwnedPermit<Reply>>,
}

/// The channels a connection joined, each with its reliable lane.
///
/// A list, not a map: a viewer joins one or two channels (at most
/// `max_channels_per_conn`), and a hash map allocates room for four entries
/// of ~170 bytes at its first insert — paid by every idle viewer.
#[derive(Default)]
pub(crate) struct Joined(Vec<(ChannelName, LaneState)>);

impl Joined {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn contains(&self, channel: &ChannelName) -> bool {
        self.get(channel).is_some()
    }

    pub fn get(&self, channel: &ChannelName) -> Option<&LaneState> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, l)| l)
    }

    pub fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut LaneState> {
        self.0
            .iter_mut()
            .find(|(c, _)| c == channel)
            .map(|(_, l)| l)
    }

    /// Adds (or replaces) `channel`'s lane; grows by exactly one entry.
    pub fn insert(&mut self, channel: ChannelName, lane: LaneState) {
        match self.get_mut(&channel) {
            Some(l) => *l = lane,
            None => {
                self.0.reserve_exact(1);
                self.0.push((channel, lane));
            }
        }
    }

    pub fn remove(&mut self, channel: &ChannelName) -> Option<LaneState> {
        let i = self.0.iter().position(|(c, _)| c == channel)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ChannelName, &mut LaneState)> {
        self.0.iter_mut().map(|(c, l)| (&*c, l))
    }

    pub fn values(&self) -> impl Iterator<Item = &LaneState> {
        self.0.iter().map(|(_, l)| l)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (ChannelName, LaneState)> + '_ {
        self.0.drain(..)
    }
}

impl Session {
    /// A session of `user` on `transport` and the receiving ends of its
    /// queues: replies ([`REPLY_QUEUE`]), batches
    /// (`EdgeConfig::send_queue_frames`) and wakes (`ReliableConfig::queue`).
    pub fn open(edge: Arc<Edge>, user: String, transport: Transport) -> (Self, Queues) {
        let conn_id = edge.next_conn_id();
        let (replies, replies_rx) = mpsc::channel(REPLY_QUEUE);
        let (batches, batches_rx) = mpsc::channel(edge.config.send_queue_frames.max(1));
        let (wake, wakes_rx, overflow) = Waker::channel(edge.config.reliable.queue);
        edge.control
            .conn_opened(conn_id, transport, replies.clone());
        let limits = ConnLimits::new(&edge.config.client_limits);
        // The queue is new and empty: both reservations succeed.
        let last_frame = replies.clone().try_reserve_owned().ok();
        let last_close = replies.clone().try_reserve_owned().ok();
        let session = Session {
            edge,
            conn_id,
            user,
            transport,
            batch_layout: Layout::Plain,
            direct: None,
            joined: Joined::default(),
            token_exp: u64::MAX,
            limits,
            replies,
            batches,
            wake,
            overflow: Arc::clone(&overflow),
            last_frame,
            last_close,
        };
        let queues = Queues {
            replies: replies_rx,
            batches: batches_rx,
            wakes: wakes_rx,
            overflow,
        };
        (session, queues)
    }

    /// The registry handle of this connection in a channel whose lane is `lane`.
    pub fn member(&self, lane: &LaneState) -> Member {
        Member::new(
            self.transport,
            self.batches.clone(),
            self.wake.clone(),
            Arc::clone(lane.shared()),
        )
        .layout(self.batch_layout)
        .direct(self.direct.clone())
    }

    /// Whether tick frames wait in the batch queue for the socket.
    pub fn ticks_queued(&self) -> bool {
        self.batches.capacity() < self.batches.max_capacity()
            || self.direct.as_ref().is_some_and(|d| d.pending() > 0)
    }

    /// Queues a shared prebuilt frame on the reply queue (never dropped).
    pub async fn send_shared(&self, frame: &ReliableFrame) -> Flow {
        self.send_reply(Reply::Shared(frame.outbound(self.transport)))
            .await
    }

    /// Queues a reply. Waits if the writer is behind: replies are never dropped.
    /// A peer that does not read for an idle timeout is closed, so it cannot pin
    /// the reader (and the connection) forever.
    pub async fn reply(&self, body: Body) -> Flow {
        self.queue(frame::server(body)).await
    }

    /// Replies with an `Error` frame (counted in `errors_total{code}`) and keeps
    /// the connection.
    pub async fn reply_error(&self, code: &str, message: impl Into<String>) -> Flow {
        self.edge.metrics.error(code);
        self.queue(frame::error(code, message)).await
    }

    async fn queue(&self, frame: pb::ServerFrame) -> Flow {
        self.send_reply(Reply::Frame(Box::new(frame))).await
    }

    pub(crate) async fn send_reply(&self, item: Reply) -> Flow {
        let idle = self.edge.config.idle_timeout();
        tokio::select! {
            biased;
            sent = tokio::time::timeout(idle, self.replies.send(item)) => match sent {
                Ok(Ok(())) => Flow::Continue,
                Ok(Err(_)) => Flow::Close(CloseReason::PeerClosed),
                Err(_) => {
                    tracing::info!(conn_id = self.conn_id, "peer stopped reading; closing");
                    Flow::Close(CloseReason::Stalled)
                }
            },
            // Waiting on a peer that does not read while the wake queue
            // overflows: close now rather than at the idle timeout.
            _ = self.overflow.notified() => Flow::Close(CloseReason::ReliableOverflow),
        }
    }

    /// A frame could not be decoded: count it, tell the peer why, and close.
    pub async fn reject(&self, err: &ProtoError) -> Flow {
        self.edge.metrics.bad_frame(err.code());
        tracing::info!(conn_id = self.conn_id, code = err.code(), error = %err, "malformed frame; closing");
        let _ = self.reply_error(err.code(), err.to_string()).await;
        Flow::Close(CloseReason::BadFrame)
    }

    /// A sender on the reply queue, for closing the connection from outside
    /// its task (`account.rs`).
    pub fn reply_sender(&self) -> mpsc::Sender<Reply> {
        self.replies.clone()
    }

    /// Resolves when the writer task has gone (socket error): the reader stops.
    pub async fn writer_gone(&self) {
        self.replies.closed().await
    }

    /// Queues `frame` in the slot reserved for the last error frame.
    pub fn send_last_frame(&mut self, frame: pb::ServerFrame) {
        if let Some(permit) = self.last_frame.take() {
            permit.send(Reply::Frame(Box::new(frame)));
        }
    }

    /// Queues the close (in its reserved slot: even when the writer is
    /// stalled; the transport aborts a writer that does not drain in time).
    pub fn send_close(&mut self, reason: CloseReason) {
        match self.last_close.take() {
            Some(permit) => {
                permit.send(Reply::Close(reason));
            }
            None => {
                let _ = self.replies.try_send(Reply::Close(reason));
            }
        }
    }

    /// Leaves every joined channel in the registry.
    pub fn leave_all(&mut self) {
        for (channel, _) in self.joined.drain() {
            self.edge.channels.leave(&channel, self.conn_id);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave_all();
        self.edge.control.conn_closed(self.conn_id);
        self.edge.account.unregister(&self.user, self.conn_id);
    }
}
