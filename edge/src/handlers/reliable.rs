//! The reliable lane of one connection: `Ack`, `Resume`, live reliable events
//! from the fan-out, retransmission timers and ack-offset persistence.
//!
//! Per joined channel the session keeps a [`Lane`]: `sent_upto` (the highest
//! seq sent here) and an [`UnackedWindow`](crate::reliable::UnackedWindow). A
//! live event at or below `sent_upto` is a duplicate and skipped; one beyond
//! `sent_upto + 1` means this connection missed some, so the gap is read from
//! the store first, here in the connection's task, never in the fan-out path.
//! `Resume` and gaps share one catch-up: read the store from `sent_upto` while
//! the unacked window has room, skip live events meanwhile (the store has them),
//! continue on acks, and go live again at the channel's head — so a resume from
//! far back is paced by the client's acks instead of overflowing the window.
//! Store errors are logged and counted; a gap that cannot be filled closes the
//! connection with `reliable_backlog` so the client resumes.

use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::{ChannelName, pb};
use danmaku_store::{StoreError, StoredMessage};
use tokio::time::Instant;

use crate::registry::{ReliableDelivery, ReliableFrame, ReliableTick};
use crate::reliable::Backlog;
use crate::reliable_fanout::event_from_stored;
use crate::session::{CatchUp, CloseReason, Flow, Lane, Session};

/// Messages read from the store per call when replaying.
const REPLAY_PAGE: usize = 500;

/// Longest a store write of ack offsets may hold up a closing connection.
const ACK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// A new lane for a channel this connection just joined.
pub(crate) fn new_lane(session: &Session, group: bool, sent_upto: u64) -> Lane {
    Lane {
        group,
        sent_upto,
        window: crate::reliable::UnackedWindow::new(session.edge.config.reliable.window_limits()),
        ack_pending: None,
        ack_written_at: None,
        catching_up: None,
        live_skipped_upto: 0,
    }
}

pub(crate) async fn ack(session: &mut Session, ack: pb::Ack) -> Flow {
    let channel = match ChannelName::parse(&ack.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    let Some(lane) = session.joined.get_mut(&channel) else {
        tracing::debug!(conn_id = session.conn_id, channel = %channel, "ack on a channel not joined");
        return Flow::Continue;
    };
    let removed = lane.window.on_ack(Instant::now().into_std(), ack.seq);
    session.edge.metrics.reliable_acked.inc_by(removed as u64);
    if lane.group && ack.seq > 0 {
        lane.ack_pending = Some(lane.ack_pending.unwrap_or(0).max(ack.seq));
    }
    let catching_up = lane.catching_up.is_some();
    persist_acks(session, false).await;
    if catching_up {
        return catch_up_or_close(session, &channel).await;
    }
    Flow::Continue
}

pub(crate) async fn resume(session: &mut Session, resume: pb::Resume) -> Flow {
    let channel = match ChannelName::parse(&resume.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    let Some(lane) = session.joined.get_mut(&channel) else {
        return session
            .reply_error("not_joined", format!("join {channel} before resuming it"))
            .await;
    };
    session.edge.metrics.resumes.inc();
    // The client holds everything up to after_seq: those need no resend.
    let removed = lane
        .window
        .on_ack(Instant::now().into_std(), resume.after_seq);
    session.edge.metrics.reliable_acked.inc_by(removed as u64);
    lane.sent_upto = resume.after_seq;
    lane.catching_up = Some(CatchUp::Resume);
    match catch_up(session, &channel).await {
        Ok(flow) => flow,
        Err(e) => {
            if let Some(lane) = session.joined.get_mut(&channel) {
                // The next live event finds the gap and tries again.
                lane.catching_up = None;
            }
            session
                .reply_error("store_unavailable", format!("cannot resume {channel}: {e}"))
                .await
        }
    }
}

/// A channel's flush: its reliable events in seq order, then its batch. All are
/// queued before the writer runs, so they leave in one vectored write.
pub(crate) async fn on_tick(session: &mut Session, tick: Arc<ReliableTick>) -> Flow {
    let mut flow = Flow::Continue;
    for frame in tick.frames.iter() {
        let delivery = ReliableDelivery {
            channel: tick.channel.clone(),
            frame: Arc::clone(frame),
        };
        flow = on_live(session, delivery).await;
        if flow != Flow::Continue {
            break;
        }
    }
    if let Some(batch) = tick.batch_for(session.transport) {
        // Even when closing: it keeps the in-flight count true.
        session.push_batch(batch);
    }
    flow
}

/// A live reliable event from the fan-out.
pub(crate) async fn on_live(session: &mut Session, delivery: ReliableDelivery) -> Flow {
    let Some(lane) = session.joined.get_mut(&delivery.channel) else {
        return Flow::Continue; // left meanwhile
    };
    if lane.catching_up.is_some() {
        // The store read will reach it (it reads again if it ends below this).
        lane.live_skipped_upto = lane.live_skipped_upto.max(delivery.frame.seq);
        return Flow::Continue;
    }
    let seq = delivery.frame.seq;
    if seq <= lane.sent_upto {
        return Flow::Continue;
    }
    if seq > lane.sent_upto + 1 {
        session.edge.metrics.gap_fills.inc();
        if let Some(lane) = session.joined.get_mut(&delivery.channel) {
            lane.catching_up = Some(CatchUp::Gap);
        }
        let flow = catch_up_or_close(session, &delivery.channel).await;
        if flow != Flow::Continue {
            return flow;
        }
        // Caught up past it (the store had it), or still reading: skip it.
        match session.joined.get(&delivery.channel) {
            Some(l) if l.catching_up.is_none() && seq == l.sent_upto + 1 => {}
            _ => return Flow::Continue,
        }
    }
    send(session, &delivery.channel, delivery.frame).await
}

/// Joining a group: push the newest page of what the member missed (after
/// `max(acked, joined_seq)`, at most `missed_page`), oldest first.
pub(crate) async fn push_missed(
    session: &mut Session,
    channel: &ChannelName,
    joined_seq: u64,
    last_seq: u64,
) -> Flow {
    let store = Arc::clone(&session.edge.store);
    let acked = match store.acked(&session.user, channel.as_str()).await {
        Ok(a) => a,
        Err(e) => {
            store_failed(session, "acked", channel, &e);
            0
        }
    };
    let page = session.edge.config.reliable.missed_page;
    let after = acked
        .max(joined_seq)
        .max(last_seq.saturating_sub(page as u64));
    if after >= last_seq {
        return Flow::Continue;
    }
    let msgs = match read_page(session, channel, after, page).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(conn_id = session.conn_id, channel = %channel, error = %e, "cannot push missed messages");
            return Flow::Continue;
        }
    };
    for msg in msgs {
        let frame = ReliableFrame::build(channel.as_str(), event_from_stored(msg));
        if let Flow::Close(r) = send(session, channel, frame).await {
            return Flow::Close(r);
        }
    }
    Flow::Continue
}

/// When [`on_timer`] must run next: the earliest retransmission or throttled ack write.
pub(crate) fn deadline(session: &Session) -> Option<Instant> {
    let interval = session.edge.config.reliable.ack_persist_interval;
    session
        .joined
        .values()
        .flat_map(|lane| {
            let resend = lane.window.deadline().map(Instant::from_std);
            let ack = match (lane.ack_pending, lane.ack_written_at) {
                (Some(_), Some(at)) => Some(at + interval),
                (Some(_), None) => Some(Instant::now()),
                _ => None,
            };
            [resend, ack]
        })
        .flatten()
        .min()
}

/// Resends what is due and writes throttled ack offsets.
pub(crate) async fn on_timer(session: &mut Session) -> Flow {
    let now = Instant::now().into_std();
    let mut resend = Vec::new();
    let mut over = None;
    for lane in session.joined.values_mut() {
        match lane.window.due(now) {
            Ok(frames) => resend.extend(frames.into_iter().map(|(_, f)| f)),
            Err(b) => {
                over = Some(b);
                break;
            }
        }
    }
    if let Some(b) = over {
        return backlog(session, b).await;
    }
    for frame in resend {
        session.edge.metrics.reliable_retransmits.inc();
        if let Flow::Close(r) = session.send_shared(&frame).await {
            return Flow::Close(r);
        }
    }
    persist_acks(session, false).await;
    Flow::Continue
}

/// Writes pending ack offsets of groups to the store: all of them when `force`
/// (leave, disconnect), else those not written within `ack_persist_interval`.
pub(crate) async fn persist_acks(session: &mut Session, force: bool) {
    let now = Instant::now();
    let interval = session.edge.config.reliable.ack_persist_interval;
    let mut writes = Vec::new();
    for (channel, lane) in session.joined.iter_mut() {
        let Some(seq) = lane.ack_pending else {
            continue;
        };
        let due = force || lane.ack_written_at.is_none_or(|at| now >= at + interval);
        if due {
            lane.ack_pending = None;
            lane.ack_written_at = Some(now);
            writes.push((channel.clone(), seq));
        }
    }
    let store = Arc::clone(&session.edge.store);
    for (channel, seq) in writes {
        let res = tokio::time::timeout(
            ACK_WRITE_TIMEOUT,
            store.ack(&session.user, channel.as_str(), seq),
        )
        .await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => store_failed(session, "ack", &channel, &e),
            Err(_) => {
                session.edge.metrics.store_error("ack");
                tracing::warn!(conn_id = session.conn_id, channel = %channel, "ack write timed out");
            }
        }
    }
}

/// Sends `frame` on this connection's lane of `channel` and tracks it until acked.
async fn send(session: &mut Session, channel: &ChannelName, frame: Arc<ReliableFrame>) -> Flow {
    if let Flow::Close(r) = session.send_shared(&frame).await {
        return Flow::Close(r);
    }
    let Some(lane) = session.joined.get_mut(channel) else {
        return Flow::Continue;
    };
    lane.sent_upto = lane.sent_upto.max(frame.seq);
    session.edge.metrics.reliable_sent.inc();
    let now = Instant::now().into_std();
    match lane.window.on_send(now, frame.seq, frame) {
        Ok(()) => Flow::Continue,
        Err(b) => backlog(session, b).await,
    }
}

/// Reads the store from the lane's `sent_upto` and sends what it finds, while
/// the unacked window has room. Ends the catch-up at the channel's head; with
/// the window full it waits for acks (each ack calls it again).
async fn catch_up(session: &mut Session, channel: &ChannelName) -> Result<Flow, StoreError> {
    /// Bound on extra reads for skipped live events (each finds at least one
    /// new seq unless the store lags the bus; then the next live event fills it).
    const MAX_REREADS: u32 = 3;
    let max = session.edge.config.reliable.max_unacked;
    let mut rereads = 0;
    loop {
        let Some(lane) = session.joined.get(channel) else {
            return Ok(Flow::Continue);
        };
        let Some(reason) = lane.catching_up else {
            return Ok(Flow::Continue);
        };
        let room = max.saturating_sub(lane.window.len()).min(REPLAY_PAGE);
        if room == 0 {
            return Ok(Flow::Continue);
        }
        let after = lane.sent_upto;
        let page = read_page(session, channel, after, room).await?;
        let n = page.len();
        for msg in page {
            if reason == CatchUp::Resume {
                session.edge.metrics.resume_replayed.inc();
            }
            let frame = ReliableFrame::build(channel.as_str(), event_from_stored(msg));
            if let Flow::Close(r) = send(session, channel, frame).await {
                return Ok(Flow::Close(r));
            }
        }
        if n < room {
            if let Some(lane) = session.joined.get_mut(channel) {
                if lane.sent_upto < lane.live_skipped_upto && rereads < MAX_REREADS {
                    // A live event skipped during this read is past what it saw.
                    rereads += 1;
                    continue;
                }
                lane.catching_up = None;
            }
            return Ok(Flow::Continue);
        }
    }
}

/// [`catch_up`] where a store failure closes the connection with a resume hint
/// (this connection would otherwise skip seqs).
async fn catch_up_or_close(session: &mut Session, channel: &ChannelName) -> Flow {
    match catch_up(session, channel).await {
        Ok(flow) => flow,
        Err(e) => {
            let after = session.joined.get(channel).map_or(0, |l| l.sent_upto);
            tracing::warn!(conn_id = session.conn_id, channel = %channel, error = %e, "cannot read missed seqs; closing for resume");
            session.edge.metrics.reliable_backlog_closes.inc();
            let _ = session
                .reply_error(
                    "reliable_backlog",
                    format!(
                        "missed {channel} after seq {after}; reconnect and resume with after_seq"
                    ),
                )
                .await;
            Flow::Close(CloseReason::ReliableBacklog)
        }
    }
}

/// One page after `after`, as this connection's user may see it.
async fn read_page(
    session: &Session,
    channel: &ChannelName,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let group = session.joined.get(channel).is_some_and(|l| l.group);
    let store = &session.edge.store;
    let res = if group {
        store
            .read_after_for_member(channel.as_str(), &session.user, after, limit)
            .await
    } else {
        store.read_after(channel.as_str(), after, limit).await
    };
    if let Err(e) = &res {
        store_failed(session, "read_after", channel, e);
    }
    res
}

fn store_failed(session: &Session, op: &str, channel: &ChannelName, e: &StoreError) {
    session.edge.metrics.store_error(op);
    tracing::warn!(conn_id = session.conn_id, channel = %channel, op, error = %e, "store call failed");
}

async fn backlog(session: &Session, b: Backlog) -> Flow {
    session.edge.metrics.reliable_backlog_closes.inc();
    tracing::info!(conn_id = session.conn_id, backlog = ?b, "reliable lane backlog; closing");
    let why = match b {
        Backlog::TooManyUnacked(n) => format!("{n} reliable frames unacked"),
        Backlog::TooManyAttempts { seq, attempts } => {
            format!("seq {seq} sent {attempts} times without an ack")
        }
    };
    let _ = session
        .reply_error(
            "reliable_backlog",
            format!("{why}; reconnect and resume with after_seq"),
        )
        .await;
    Flow::Close(CloseReason::ReliableBacklog)
}
