//! What the tasks of one connection share: the event queue towards
//! `next_event`, the outgoing frame queue towards the writer, the cancellation
//! token that ends them all, and the heartbeat task.

use std::time::Duration;

use danmaku_proto::frame;
use danmaku_proto::pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Transport;
use crate::event::ServerEvent;

/// Capacity of the outgoing frame queue (join, leave, ack, ping...).
const OUTGOING_BUFFER: usize = 256;

/// A transport-level connection whose tasks are running.
pub(crate) struct Connected {
    pub transport: Transport,
    pub outgoing: mpsc::Sender<pb::ClientFrame>,
    pub events: mpsc::Receiver<ServerEvent>,
    pub cancel: CancellationToken,
}

/// Both ends of both queues plus the token, handed to a transport module.
pub(crate) struct Wiring {
    pub events_tx: mpsc::Sender<ServerEvent>,
    pub events_rx: mpsc::Receiver<ServerEvent>,
    pub out_tx: mpsc::Sender<pb::ClientFrame>,
    pub out_rx: mpsc::Receiver<pb::ClientFrame>,
    pub cancel: CancellationToken,
}

impl Wiring {
    pub fn new(event_buffer: usize) -> Self {
        let (events_tx, events_rx) = mpsc::channel(event_buffer.max(1));
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_BUFFER);
        Wiring {
            events_tx,
            events_rx,
            out_tx,
            out_rx,
            cancel: CancellationToken::new(),
        }
    }
}

/// Pushes the events of one frame to the consumer, waiting while the queue is
/// full. Returns false when the connection is over (consumer gone or
/// cancelled).
pub(crate) async fn deliver(
    tx: &mpsc::Sender<ServerEvent>,
    cancel: &CancellationToken,
    frame_events: Vec<ServerEvent>,
) -> bool {
    // A tick's gifts come out as `Reliable` events (see `event::split_tick`).
    for ev in frame_events.into_iter().flat_map(crate::event::split_tick) {
        let sent = tokio::select! {
            _ = cancel.cancelled() => false,
            r = tx.send(ev) => r.is_ok(),
        };
        if !sent {
            return false;
        }
    }
    true
}

/// A ping frame stamped with the current time.
pub(crate) fn ping_frame() -> pb::ClientFrame {
    frame::client(pb::client_frame::Body::Ping(pb::Ping {
        ts_ms: danmaku_proto::now_ms(),
    }))
}

/// While the connection lives, sends a fresh token from `refresh` as an `auth`
/// frame `before` ahead of each token's expiry (read from the token itself).
pub(crate) fn spawn_token_refresh(
    outgoing: mpsc::Sender<pb::ClientFrame>,
    cancel: CancellationToken,
    refresh: crate::config::TokenRefresh,
    before: Duration,
    token: String,
) {
    tokio::spawn(async move {
        let mut exp = danmaku_proto::token::unverified_exp(&token);
        loop {
            let Some(e) = exp else { return };
            let left = e.saturating_sub(danmaku_proto::token::now_secs());
            let wait = Duration::from_secs(left).saturating_sub(before);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(fresh) = refresh.fetch().await else {
                tracing::warn!(
                    "token refresh callback gave no token; the edge will close at expiry"
                );
                return;
            };
            let next = danmaku_proto::token::unverified_exp(&fresh);
            let auth = frame::client(pb::client_frame::Body::Auth(pb::Auth { token: fresh }));
            if outgoing.send(auth).await.is_err() {
                return;
            }
            if next <= exp {
                // Not fresher than the last one: asking again at once would spin.
                tracing::warn!("token refresh callback returned a token that expires no later");
                return;
            }
            exp = next;
        }
    });
}

/// Sends a ping every `interval` until the connection ends.
pub(crate) fn spawn_heartbeat(
    outgoing: mpsc::Sender<pb::ClientFrame>,
    cancel: CancellationToken,
    interval: Duration,
) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {
                    if outgoing.send(ping_frame()).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}
