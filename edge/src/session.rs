//! One authenticated client connection, whatever its transport.
//!
//! A transport (`ws.rs`, `quic.rs`) authenticates, opens the session with its
//! queues ([`Session::open`], the one place their bounds are set), spawns its
//! writer and hands [`serve`] a [`Reader`] that decodes its frames. [`serve`]
//! is the one connection loop of both transports: it races the peer's frames
//! (with the idle timeout) against the reliable lane, shutdown and the
//! writer's end, and dispatches frames to the handlers in `handlers/`, which
//! act on the session state
//! (joined channels) and queue replies on the control queue. A writer task owned
//! by the transport drains two queues: the small control queue (replies: never
//! dropped, the reader waits when it is full) and the bounded batch queue the
//! registry pushes into (dropped when full). Reliable frames come from the
//! fan-out on a bounded queue the transport races against the socket
//! ([`next_wake`]); the session tracks and sends them on the control queue, so
//! they are never dropped. When that queue overflows (the peer stopped reading,
//! so the session waits on the control queue) the session closes with
//! `reliable_backlog` at once — it does not wait for the idle timeout — and the
//! client resumes from its last ack. Two control-queue slots are reserved at
//! start for the last `error` frame and the close, so they are queued even when
//! the peer has stopped reading. Dropping the session leaves every channel, so
//! no exit path leaks registry entries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, ProtoError, frame, pb};
use tokio::sync::{Notify, mpsc};

use crate::Edge;
use crate::registry::{
    ConnEvent, ConnId, Member, Outbound, ReliableFrame, ReliableLane, ReliableSender, ReliableTick,
    Transport,
};
use crate::reliable::UnackedWindow;

/// Replies queued before the reader waits for the writer.
pub(crate) const CONTROL_QUEUE: usize = 64;

/// What the writer task is told to send.
#[derive(Debug)]
pub(crate) enum Control {
    /// A reply frame (never a batch: those go through the batch queue). Boxed:
    /// the queue's slots are allocated per connection, so they are kept small.
    Frame(Box<pb::ServerFrame>),
    /// A prebuilt frame shared with other connections (reliable events): sent
    /// on the control path, so it is never dropped.
    Shared(Outbound),
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
    /// The peer cannot keep up with the reliable lane (too many unacked frames
    /// or too many resends); it should reconnect and resume.
    ReliableBacklog,
    /// The connection's live reliable queue overflowed (its task could not
    /// keep up, usually because the peer stopped reading): `reliable_backlog`
    /// to the client, which reconnects and resumes.
    ReliableOverflow,
    /// The token expired and no fresh `auth` frame arrived in time.
    TokenExpired,
    /// A limit refused the connection (see `limits.rs`; the error frame says which).
    Refused,
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
            CloseReason::ReliableBacklog | CloseReason::ReliableOverflow => 1008,
            CloseReason::TokenExpired => 1008,
            CloseReason::Refused => 1008,
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
            CloseReason::ReliableBacklog | CloseReason::ReliableOverflow => 6,
            CloseReason::TokenExpired => 7,
            CloseReason::Refused => 8,
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
            CloseReason::ReliableBacklog | CloseReason::ReliableOverflow => {
                "reliable backlog; resume with after_seq"
            }
            CloseReason::TokenExpired => "token expired",
            CloseReason::Refused => "refused by a limit",
        }
    }
}

/// Something for the reliable lane of a connection to act on.
#[derive(Debug)]
pub(crate) enum Wake {
    /// Live reliable events from a channel's flush (with its batch, if any).
    Live(Arc<ReliableTick>),
    /// A user was removed from a group this connection joined.
    Removed {
        channel: ChannelName,
        user: Arc<str>,
    },
    /// A retransmission or ack write may be due, or the token expires.
    Timer,
    /// The live reliable queue overflowed: an event is missing from it.
    Overflow,
}

/// The receiving end of a connection's live reliable queue and its overflow
/// signal (see [`ReliableSender`]).
pub(crate) struct ReliableQueue {
    rx: mpsc::Receiver<ConnEvent>,
    overflow: Arc<Notify>,
}

impl ReliableQueue {
    /// Waits for the next live reliable event, an overflow of the queue, or
    /// `deadline` (the session's next timer: idle timeout or reliable lane). Cancel-safe: [`serve`] races it against reading the socket
    /// (an overflow signal not consumed stays stored in the `Notify`).
    async fn next(&mut self, deadline: tokio::time::Instant) -> Wake {
        tokio::select! {
            biased;
            _ = self.overflow.notified() => Wake::Overflow,
            _ = tokio::time::sleep_until(deadline) => Wake::Timer,
            Some(e) = self.rx.recv() => match e {
                ConnEvent::Reliable(d) => Wake::Live(d),
                ConnEvent::Removed(r) => Wake::Removed {
                    channel: r.channel.clone(),
                    user: Arc::clone(&r.user),
                },
            },
        }
    }
}

/// The receiving ends of a new session's queues: `control` and `batches` for
/// the transport's writer, `reliable` for [`serve`].
pub(crate) struct Queues {
    pub control: mpsc::Receiver<Control>,
    pub batches: mpsc::Receiver<Outbound>,
    pub reliable: ReliableQueue,
}

/// The reading half of a transport: frames from the peer, decoded.
pub(crate) trait Reader: Send {
    /// One thing read from the peer (a frame, or a decode error to act on).
    type Message: Send;

    /// The next message; `None` once the peer has closed or the connection
    /// failed. Cancel-safe: [`serve`] races it against the reliable lane, so
    /// bytes read must be kept (in the reader's buffer) when it is dropped.
    fn next(&mut self) -> impl Future<Output = Option<Self::Message>> + Send;

    /// Acts on one message (dispatches a frame, or refuses a bad one).
    fn on_message(
        &mut self,
        session: &mut Session,
        msg: Self::Message,
    ) -> impl Future<Output = Flow> + Send;
}

/// The loop of one authenticated connection, for every transport: admits it
/// ([`Session::start`] with the peer's `ip` and the token's expiry) and runs
/// until something closes it. Closes the session and returns why.
///
/// This future is what an idle viewer costs (with its writer's), so it is kept
/// small: not an `async fn`, whose arguments would be stored twice (as
/// arguments and as locals), one timer for both the idle timeout and the
/// reliable lane's deadlines, and the handlers' futures boxed while they run
/// (inline, the largest of them — a join or resume reading the store — would
/// be part of every idle connection; see `ws.rs`'s size test).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn serve<R: Reader>(
    mut session: Session,
    mut reader: R,
    mut reliable: ReliableQueue,
    ip: Option<std::net::IpAddr>,
    token_exp: u64,
) -> impl Future<Output = CloseReason> + Send {
    async move {
        let mut flow = Box::pin(session.start(ip, token_exp)).await;
        let idle = session.edge.config.idle_timeout();
        // The peer must send something (a ping at least) before this.
        let mut idle_at = tokio::time::Instant::now() + idle;
        while flow == Flow::Continue {
            let wake_at = match session.reliable_deadline() {
                Some(at) => at.min(idle_at),
                None => idle_at,
            };
            let next = tokio::select! {
                biased;
                _ = session.edge.shutdown.cancelled() => {
                    flow = Flow::Close(CloseReason::Shutdown);
                    break;
                }
                _ = session.writer_gone() => { flow = Flow::Close(CloseReason::PeerClosed); break; }
                wake = reliable.next(wake_at) => Err(wake),
                read = reader.next() => Ok(read),
            };
            flow = match next {
                Err(Wake::Timer) if tokio::time::Instant::now() >= idle_at => {
                    tracing::debug!(conn_id = session.conn_id, "idle timeout");
                    Flow::Close(CloseReason::Idle)
                }
                // Boxed even for live ticks (at most one per flush per member):
                // inline, `on_tick` alone would add ~770 B to every idle
                // connection, against one short-lived allocation per tick next
                // to a wake-up and a socket write.
                Err(wake) => Box::pin(session.on_wake(wake)).await,
                Ok(None) => Flow::Close(CloseReason::PeerClosed),
                Ok(Some(msg)) => {
                    idle_at = tokio::time::Instant::now() + idle;
                    Box::pin(reader.on_message(&mut session, msg)).await
                }
            };
        }
        let reason = match flow {
            Flow::Close(r) => r,
            Flow::Continue => CloseReason::PeerClosed,
        };
        tracing::debug!(
            conn_id = session.conn_id,
            transport = session.transport.label(),
            reason = reason.text(),
            "closing"
        );
        Box::pin(session.close(reason)).await;
        reason
    }
}

/// Gives the writer `drain` to flush what the closed session queued last,
/// then drops the socket: a peer that does not read must not hold it.
pub(crate) async fn finish_writer(mut writer: tokio::task::JoinHandle<()>, drain: Duration) {
    if tokio::time::timeout(drain, &mut writer).await.is_err() {
        writer.abort();
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
    /// The joined channels with their reliable-lane state (see
    /// `handlers/reliable.rs`).
    pub joined: Joined,
    /// When the token expires (unix seconds); a fresh `auth` frame moves it.
    pub token_exp: u64,
    /// Per-connection and per-user frame budgets (see `limits.rs`).
    pub limits: crate::limits::ConnLimits,
    control: mpsc::Sender<Control>,
    batches: mpsc::Sender<Outbound>,
    reliable: ReliableSender,
    /// Batches the fan-out handed this task and it has not queued yet (see
    /// [`ReliableLane`]).
    batches_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Raised by the fan-out when `reliable` is full (see [`ReliableSender`]).
    overflow: Arc<Notify>,
    /// Control-queue slots reserved at start for the last `error` frame and
    /// the close: a peer that stopped reading still gets both queued (and
    /// sees them if it reads again within the writer's drain time).
    last_frame: Option<mpsc::OwnedPermit<Control>>,
    last_close: Option<mpsc::OwnedPermit<Control>>,
}

/// The channels a connection joined, each with its reliable lane.
///
/// A list, not a map: a viewer joins one or two channels (at most
/// `max_channels_per_conn`), and a hash map allocates room for four entries
/// of ~170 bytes at its first insert — paid by every idle viewer.
#[derive(Default)]
pub(crate) struct Joined(Vec<(ChannelName, Lane)>);

impl Joined {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn contains(&self, channel: &ChannelName) -> bool {
        self.get(channel).is_some()
    }

    pub fn get(&self, channel: &ChannelName) -> Option<&Lane> {
        self.0.iter().find(|(c, _)| c == channel).map(|(_, l)| l)
    }

    pub fn get_mut(&mut self, channel: &ChannelName) -> Option<&mut Lane> {
        self.0
            .iter_mut()
            .find(|(c, _)| c == channel)
            .map(|(_, l)| l)
    }

    /// Adds (or replaces) `channel`'s lane; grows by exactly one entry.
    pub fn insert(&mut self, channel: ChannelName, lane: Lane) {
        match self.get_mut(&channel) {
            Some(l) => *l = lane,
            None => {
                self.0.reserve_exact(1);
                self.0.push((channel, lane));
            }
        }
    }

    pub fn remove(&mut self, channel: &ChannelName) -> Option<Lane> {
        let i = self.0.iter().position(|(c, _)| c == channel)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ChannelName, &mut Lane)> {
        self.0.iter_mut().map(|(c, l)| (&*c, l))
    }

    pub fn values(&self) -> impl Iterator<Item = &Lane> {
        self.0.iter().map(|(_, l)| l)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Lane> {
        self.0.iter_mut().map(|(_, l)| l)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (ChannelName, Lane)> + '_ {
        self.0.drain(..)
    }
}

/// One connection's reliable lane on one channel.
pub(crate) struct Lane {
    /// `group:` channel: reads go through membership, acks are persisted.
    pub group: bool,
    /// The highest seq sent on this connection; live events at or below it are skipped.
    pub sent_upto: u64,
    pub window: UnackedWindow<Arc<ReliableFrame>>,
    /// The highest ack not yet written to the store.
    pub ack_pending: Option<u64>,
    /// When the ack offset was last written (throttles the writes).
    pub ack_written_at: Option<tokio::time::Instant>,
    /// Set while this connection reads the store from `sent_upto` towards the
    /// channel's head (resume, or a gap seen on a live event). Live events are
    /// skipped meanwhile (the store has them); acks make room and continue it.
    pub catching_up: Option<CatchUp>,
    /// The highest live seq skipped while catching up: a store read that ends
    /// below it reads again (the event was persisted before it was published),
    /// or it would be lost until the next live event revealed the gap.
    pub live_skipped_upto: u64,
}

/// Why a lane reads the store (the metric its frames count towards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUp {
    Resume,
    Gap,
}

impl Session {
    /// A session of `user` on `transport` and the receiving ends of its
    /// queues: replies ([`CONTROL_QUEUE`]), batches
    /// (`EdgeConfig::send_queue_frames`) and live reliable events
    /// (`ReliableConfig::queue`).
    pub fn open(edge: Arc<Edge>, user: String, transport: Transport) -> (Self, Queues) {
        let conn_id = edge.next_conn_id();
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (batches, batches_rx) = mpsc::channel(edge.config.send_queue_frames.max(1));
        let (reliable, reliable_rx, overflow) = ReliableSender::channel(edge.config.reliable.queue);
        edge.control
            .conn_opened(conn_id, transport, control.clone());
        let limits = crate::limits::ConnLimits::new(&edge, &user);
        // The queue is new and empty: both reservations succeed.
        let last_frame = control.clone().try_reserve_owned().ok();
        let last_close = control.clone().try_reserve_owned().ok();
        let session = Session {
            edge,
            conn_id,
            user,
            transport,
            joined: Joined::default(),
            token_exp: u64::MAX,
            limits,
            control,
            batches,
            reliable,
            batches_in_flight: Arc::default(),
            overflow: Arc::clone(&overflow),
            last_frame,
            last_close,
        };
        let queues = Queues {
            control: control_rx,
            batches: batches_rx,
            reliable: ReliableQueue {
                rx: reliable_rx,
                overflow,
            },
        };
        (session, queues)
    }

    /// Admits the authenticated connection (connection caps of `limits.rs`) and
    /// answers `AuthOk`; a refused one gets an `error` frame and is closed.
    /// `ip` is the peer's address when the transport knows it; `token_exp` is
    /// when the connection's token expires (see `handlers/auth.rs`).
    pub async fn start(&mut self, ip: Option<std::net::IpAddr>, token_exp: u64) -> Flow {
        self.token_exp = token_exp;
        if let Err(refusal) = crate::limits::admit(self, ip) {
            return crate::limits::refuse(self, refusal).await;
        }
        self.reply(Body::AuthOk(pb::AuthOk {
            user: self.user.clone(),
        }))
        .await
    }

    /// The registry handle of this connection.
    pub fn member(&self) -> Member {
        Member::new(self.transport, self.batches.clone()).with_reliable(ReliableLane::new(
            self.reliable.clone(),
            Arc::clone(&self.batches_in_flight),
        ))
    }

    /// Queues a danmaku batch the fan-out handed this task (with reliable
    /// frames, or behind such a batch): dropped (and counted) when the batch
    /// queue is full, like any slow consumer's batch.
    pub fn push_batch(&self, batch: Outbound) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.batches.try_send(batch) {
            self.edge.metrics.slow_consumer_drops.inc();
        }
        self.batches_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Queues a shared prebuilt frame on the control path (never dropped).
    pub async fn send_shared(&self, frame: &ReliableFrame) -> Flow {
        self.send_control(Control::Shared(frame.outbound(self.transport)))
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
        self.send_control(Control::Frame(Box::new(frame))).await
    }

    pub(crate) async fn send_control(&self, item: Control) -> Flow {
        let idle = self.edge.config.idle_timeout();
        tokio::select! {
            biased;
            sent = tokio::time::timeout(idle, self.control.send(item)) => match sent {
                Ok(Ok(())) => Flow::Continue,
                Ok(Err(_)) => Flow::Close(CloseReason::PeerClosed),
                Err(_) => {
                    tracing::info!(conn_id = self.conn_id, "peer stopped reading; closing");
                    Flow::Close(CloseReason::Stalled)
                }
            },
            // Waiting on a peer that does not read while the reliable queue
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

    /// When the session next needs [`Session::on_wake`] without a new event: the
    /// reliable lane's timers, or the token's expiry.
    pub fn reliable_deadline(&self) -> Option<tokio::time::Instant> {
        let expiry = crate::handlers::auth::expiry_instant(self.token_exp);
        match (crate::handlers::reliable::deadline(self), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Acts on a live reliable event, a membership change or an expired timer.
    pub async fn on_wake(&mut self, wake: Wake) -> Flow {
        match wake {
            Wake::Live(tick) => crate::handlers::reliable::on_tick(self, tick).await,
            Wake::Removed { channel, user } => {
                crate::handlers::leave::removed(self, channel, &user).await
            }
            Wake::Overflow => Flow::Close(CloseReason::ReliableOverflow),
            Wake::Timer => {
                if crate::handlers::auth::expired(self) {
                    return crate::handlers::auth::on_expired(self).await;
                }
                crate::handlers::reliable::on_timer(self).await
            }
        }
    }

    /// Acts on one decoded frame, once the limits let it through.
    pub async fn dispatch(&mut self, frame: pb::ClientFrame) -> Flow {
        if let Err(refusal) = self.limits.check_frame(&frame, tokio::time::Instant::now()) {
            return crate::limits::refuse(self, refusal).await;
        }
        crate::handlers::dispatch(self, frame).await
    }

    /// Resolves when the writer task has gone (socket error): the reader stops.
    pub async fn writer_gone(&self) {
        self.control.closed().await
    }

    /// Tells the writer to close after what is queued, then leaves all channels.
    pub async fn close(mut self, reason: CloseReason) {
        if reason == CloseReason::ReliableOverflow {
            self.edge.metrics.reliable_queue_overflows.inc();
            self.edge.metrics.reliable_backlog_closes.inc();
            self.edge.metrics.error("reliable_backlog");
            tracing::info!(conn_id = self.conn_id, "reliable queue overflow; closing");
            let f = frame::error(
                "reliable_backlog",
                "reliable events arrived faster than this connection took them; \
                 reconnect and resume with after_seq",
            );
            if let Some(permit) = self.last_frame.take() {
                permit.send(Control::Frame(Box::new(f)));
            }
        }
        crate::handlers::reliable::persist_acks(&mut self, true).await;
        self.leave_all();
        // The reserved slot: queued even when the writer is stalled (the
        // transport aborts a writer that does not drain in time).
        match self.last_close.take() {
            Some(permit) => {
                permit.send(Control::Close(reason));
            }
            None => {
                let _ = self.control.try_send(Control::Close(reason));
            }
        }
    }

    fn leave_all(&mut self) {
        for (channel, _) in self.joined.drain() {
            self.edge.registry.leave(&channel, self.conn_id);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave_all();
        self.edge.control.conn_closed(self.conn_id);
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
