//! The task of one authenticated connection, for every transport.
//!
//! A transport (`ws.rs`, `quic.rs`) authenticates, opens the [`Session`]
//! (`session.rs`, state only) with its queues, spawns its writer and hands
//! [`serve`] a [`Reader`] that decodes its frames. [`serve`] admits the
//! connection (the caps of `limits.rs`), then races the peer's frames (with
//! the idle timeout) against the session's wake queue, shutdown and the
//! writer's end. A frame goes through the frame budget to its handler
//! (`handlers/`, one file per frame kind); a wake — a group removal, a tick
//! the connection missed, a stall the reliable sweep saw, a due ack-offset
//! write, the token's expiry — goes to the reliable lane's connection side (`reliable.rs`)
//! or the handler it concerns. Live ticks never wake this task: they go
//! straight to the writer. When the wake queue overflows (the peer stopped
//! reading, so this task waits on the reply queue) the session closes with
//! `reliable_backlog` at once, and the client resumes from its last ack.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{ChannelName, frame, pb};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::account::TokenFacts;
use crate::channels::ConnEvent;
use crate::node::Edge;
mod handlers;
pub(crate) mod reliable;
use crate::limits::Refusal;

use crate::session::{CloseReason, Flow, Session};
use crate::transport::Transport;

/// Something for the connection's task to act on besides a frame.
#[derive(Debug)]
pub(crate) enum Wake {
    /// A user was removed from a group, or banned from a channel, this
    /// connection may have joined.
    Removed(Arc<crate::channels::Removal>),
    /// A user was muted in a channel (the notice is for that user only).
    Muted(Arc<crate::channels::MuteNotice>),
    /// Reliable seqs of `channel` did not reach the connection live.
    Missed(ChannelName),
    /// No ack on `channel` through a whole sweep interval.
    Stalled(ChannelName),
    /// An ack-offset write may be due, or the token expires.
    Timer,
    /// The wake queue overflowed: an event is missing from it.
    Overflow,
}

/// The receiving end of a connection's wake queue and its overflow signal.
pub(crate) struct WakeQueue {
    rx: mpsc::Receiver<ConnEvent>,
    overflow: Arc<Notify>,
}

impl WakeQueue {
    pub fn new(rx: mpsc::Receiver<ConnEvent>, overflow: Arc<Notify>) -> Self {
        WakeQueue { rx, overflow }
    }

    /// Waits for the next wake, an overflow of the queue, or `deadline` (the
    /// session's next timer). Cancel-safe: [`serve`] races it against reading
    /// the socket (an overflow signal not consumed stays stored in the `Notify`).
    async fn next(&mut self, deadline: Instant) -> Wake {
        tokio::select! {
            biased;
            _ = self.overflow.notified() => Wake::Overflow,
            _ = tokio::time::sleep_until(deadline) => Wake::Timer,
            Some(e) = self.rx.recv() => match e {
                ConnEvent::Removed(r) => Wake::Removed(r),
                ConnEvent::Muted(n) => Wake::Muted(n),
                ConnEvent::Missed(c) => Wake::Missed(c),
                ConnEvent::Stalled(c) => Wake::Stalled(c),
            },
        }
    }
}

/// The reading half of a transport: frames from the peer, decoded.
pub(crate) trait Reader: Send {
    /// One thing read from the peer (a frame, or a decode error to act on).
    type Message: Send;

    /// The next message; `None` once the peer has closed or the connection
    /// failed. Cancel-safe: [`serve`] races it against the wake queue, so
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
/// (with the peer's `ip` and the token's expiry) and runs until something
/// closes it. Closes the session and returns why.
///
/// This future is what an idle viewer costs (with its writer's), so it is kept
/// small: not an `async fn`, whose arguments would be stored twice (as
/// arguments and as locals), one timer for the idle timeout, ack writes and
/// the token's expiry, and the handlers' futures boxed while they run
/// (inline, the largest of them — a join or resume reading the store — would
/// be part of every idle connection; see `ws.rs`'s size test).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn serve<R: Reader>(
    mut session: Session,
    mut reader: R,
    mut wakes: WakeQueue,
    ip: Option<IpAddr>,
    token: TokenFacts,
) -> impl Future<Output = CloseReason> + Send {
    async move {
        let mut flow = Box::pin(start(&mut session, ip, token)).await;
        let idle = session.edge.config.idle_timeout();
        // The peer must send something (a ping at least) before this.
        let mut idle_at = Instant::now() + idle;
        while flow == Flow::Continue {
            let wake_at = match next_deadline(&session) {
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
                wake = wakes.next(wake_at) => Err(wake),
                read = reader.next() => Ok(read),
            };
            flow = match next {
                Err(Wake::Timer) if Instant::now() >= idle_at => {
                    tracing::debug!(conn_id = session.conn_id, "idle timeout");
                    Flow::Close(CloseReason::Idle)
                }
                // Boxed: wakes are rare (never per tick), and inline the
                // largest of them (a catch-up reading the store) would be part
                // of every idle connection.
                Err(wake) => Box::pin(on_wake(&mut session, wake)).await,
                Ok(None) => Flow::Close(CloseReason::PeerClosed),
                Ok(Some(msg)) => {
                    idle_at = Instant::now() + idle;
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
        Box::pin(close(session, reason)).await;
        reason
    }
}

/// Admits the authenticated connection (connection caps of `limits.rs`),
/// indexes it for account changes (`account.rs`, which also refuses a revoked
/// token or a blocked user here) and answers `AuthOk`; a refused one gets an
/// `error` frame and is closed. `token.exp` is when the connection's token
/// expires (see `handlers/auth.rs`).
async fn start(session: &mut Session, ip: Option<IpAddr>, token: TokenFacts) -> Flow {
    session.token_exp = token.exp;
    let edge = Arc::clone(&session.edge);
    let admitted = session.limits.admit(
        &edge.limiter,
        &edge.config.client_limits,
        &session.user,
        ip,
        Instant::now(),
    );
    if let Err(refusal) = admitted {
        return refuse(session, refusal).await;
    }
    let registered = edge.account.register(
        &session.user,
        session.conn_id,
        &token,
        session.reply_sender(),
    );
    if let Err(refusal) = registered {
        return handlers::auth::refuse_account(session, refusal).await;
    }
    session
        .reply(Body::AuthOk(pb::AuthOk {
            user: session.user.clone(),
            ack_interval_ms: session.edge.config.reliable.client_ack_interval_ms(),
        }))
        .await
}

/// Acts on one decoded frame, once the frame budgets let it through.
pub(crate) async fn dispatch(session: &mut Session, frame: pb::ClientFrame) -> Flow {
    if let Err(refusal) = session.limits.check_frame(Instant::now()) {
        return refuse(session, refusal).await;
    }
    handlers::dispatch(session, frame).await
}

/// Counts a refusal, tells the client, and closes when the refusal says so.
async fn refuse(session: &Session, refusal: Refusal) -> Flow {
    session.edge.metrics.refused(refusal.code());
    tracing::debug!(conn_id = session.conn_id, user = %session.user, code = refusal.code(), "refused");
    let flow = session.reply_error(refusal.code(), refusal.message()).await;
    if refusal.closes() {
        return Flow::Close(CloseReason::Refused);
    }
    flow
}

/// When the session next needs [`on_wake`] without an event: a throttled
/// ack-offset write, or the token's expiry.
fn next_deadline(session: &Session) -> Option<Instant> {
    let expiry = handlers::auth::expiry_instant(session.token_exp);
    match (reliable::deadline(session), expiry) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn on_wake(session: &mut Session, wake: Wake) -> Flow {
    match wake {
        Wake::Removed(removal) => handlers::leave::removed(session, &removal).await,
        Wake::Muted(notice) => handlers::notice::muted(session, &notice).await,
        Wake::Missed(channel) => reliable::on_missed(session, &channel).await,
        Wake::Stalled(channel) => reliable::on_stalled(session, &channel).await,
        Wake::Overflow => Flow::Close(CloseReason::ReliableOverflow),
        Wake::Timer => {
            if handlers::auth::expired(session) {
                return handlers::auth::on_expired(session).await;
            }
            reliable::on_timer(session).await
        }
    }
}

/// Tells the writer to close after what is queued, writes the last ack
/// offsets, then leaves all channels.
async fn close(mut session: Session, reason: CloseReason) {
    if reason == CloseReason::ReliableOverflow {
        let m = &session.edge.metrics;
        m.reliable_queue_overflows.inc();
        m.reliable_backlog_closes.inc();
        m.error("reliable_backlog");
        tracing::info!(conn_id = session.conn_id, "wake queue overflow; closing");
        session.send_last_frame(frame::error(
            "reliable_backlog",
            "reliable events arrived faster than this connection took them; \
             reconnect and resume with after_seq",
        ));
    }
    reliable::persist_acks(&mut session, true).await;
    session.leave_all();
    session.send_close(reason);
}

/// Gives the writer `drain` to flush what the closed session queued last,
/// then drops the socket: a peer that does not read must not hold it.
pub(crate) async fn finish_writer(mut writer: tokio::task::JoinHandle<()>, drain: Duration) {
    if tokio::time::timeout(drain, &mut writer).await.is_err() {
        writer.abort();
    }
}

/// Keeps `danmaku_edge_connections{transport}` right however a connection ends.
pub(crate) struct ConnectionGauge(prometheus::IntGauge);

impl ConnectionGauge {
    pub fn open(edge: &Edge, transport: Transport) -> Self {
        edge.metrics
            .connections_accepted
            .with_label_values(&[transport.label()])
            .inc();
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
