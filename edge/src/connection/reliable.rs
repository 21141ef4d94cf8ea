//! The reliable lane of one connection: `Ack`, `Resume`, ticks it missed,
//! stalls the sweep saw, and the ack offsets of groups.
//!
//! Live reliable events reach the connection inside its channels' tick frames
//! without this task running at all. It acts only when the client speaks
//! (`Ack`, `Resume`) or the registry wakes it (`Missed`, `Stalled`). All four
//! end in one catch-up per lane ([`LaneState::next_read`]): read the channel's
//! ring, else the store, from one position, and send single `Reliable` frames
//! on the control queue (never dropped), while the seqs sent and not yet acked
//! leave room; each ack continues it. Store errors are logged and counted; a
//! missed tick that cannot be filled closes the connection with
//! `reliable_backlog` so the client resumes.

use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::{ChannelName, pb};
use danmaku_store::{StoreError, StoredMessage};
use tokio::time::Instant;

use crate::reliable::lane::{Backlog, CatchUpReason, LaneState, ResendLimits, Stalled};
use crate::reliable::ring::ReliableFrame;
use crate::session::{CloseReason, Flow, Session};

/// Frames one catch-up read asks for.
const REPLAY_PAGE: usize = 500;

/// Longest a store write of ack offsets may hold up a closing connection.
const ACK_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The lane of a channel this connection is joining (`joined_seq`: a group
/// member's join point, else 0); the join sets its start once it read the
/// channel's last seq ([`LaneState::start_at`]).
pub(crate) fn joining_lane(group: bool, joined_seq: u64, patience: u8) -> LaneState {
    LaneState::joining(group, joined_seq, patience)
}

pub(crate) async fn on_ack(session: &mut Session, ack: pb::Ack) -> Flow {
    session.edge.metrics.ack_frames.inc();
    let channel = match ChannelName::parse(&ack.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    let Some(lane) = session.joined.get_mut(&channel) else {
        tracing::debug!(conn_id = session.conn_id, channel = %channel, "ack on a channel not joined");
        return Flow::Continue;
    };
    let newly = lane.on_ack(ack.seq);
    let catching_up = lane.catch_up().is_some();
    session.edge.metrics.reliable_acked.inc_by(newly);
    persist_acks(session, false).await;
    if catching_up {
        return catch_up_or_close(session, &channel).await;
    }
    Flow::Continue
}

pub(crate) async fn on_resume(session: &mut Session, resume: pb::Resume) -> Flow {
    let channel = match ChannelName::parse(&resume.channel) {
        Ok(c) => c,
        Err(e) => return session.reply_error(e.code(), e.to_string()).await,
    };
    let Some(lane) = session.joined.get_mut(&channel) else {
        return session
            .reply_error("not_joined", format!("join {channel} before resuming it"))
            .await;
    };
    let newly = lane.on_resume(resume.after_seq);
    session.edge.metrics.resumes.inc();
    session.edge.metrics.reliable_acked.inc_by(newly);
    match catch_up(session, &channel).await {
        Ok(flow) => flow,
        Err(e) => {
            if let Some(lane) = session.joined.get_mut(&channel) {
                // The client's next gap or reconnect asks again.
                lane.abandon_catch_up();
            }
            session
                .reply_error("store_unavailable", format!("cannot resume {channel}: {e}"))
                .await
        }
    }
}

/// A tick of `channel` did not reach this connection (see `channels.rs`).
pub(crate) async fn on_missed(session: &mut Session, channel: &ChannelName) -> Flow {
    let Some(lane) = session.joined.get_mut(channel) else {
        return Flow::Continue; // left meanwhile
    };
    let Some(from) = lane.shared().take_missed() else {
        return Flow::Continue;
    };
    lane.on_missed(from);
    session.edge.metrics.gap_fills.inc();
    catch_up_or_close(session, channel).await
}

/// The sweep saw no ack on `channel` for two whole intervals (see `sweep.rs`).
pub(crate) async fn on_stalled(session: &mut Session, channel: &ChannelName) -> Flow {
    let limits = ResendLimits::from(&session.edge.config.reliable);
    let writer_busy = session.ticks_queued();
    let Some(lane) = session.joined.get_mut(channel) else {
        return Flow::Continue;
    };
    match lane.on_stalled(Instant::now().into_std(), &limits, writer_busy) {
        Stalled::Nothing | Stalled::Wait => Flow::Continue,
        Stalled::Resend => catch_up_or_close(session, channel).await,
        Stalled::Backlog(b) => backlog(session, b).await,
    }
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
        let frame = ReliableFrame::build(channel.as_str(), &msg.into_event());
        if let Flow::Close(r) = send(session, &frame).await {
            return Flow::Close(r);
        }
    }
    Flow::Continue
}

/// When [`on_timer`] must run next: the earliest throttled ack-offset write.
pub(crate) fn deadline(session: &Session) -> Option<Instant> {
    let interval = session.edge.config.reliable.ack_persist_interval;
    let now = Instant::now().into_std();
    session
        .joined
        .values()
        .filter_map(|lane| lane.ack_write_at(interval, now))
        .min()
        .map(Instant::from_std)
}

/// Writes the throttled ack offsets that are due.
pub(crate) async fn on_timer(session: &mut Session) -> Flow {
    persist_acks(session, false).await;
    Flow::Continue
}

/// Writes pending ack offsets of groups to the store: all of them when `force`
/// (leave, disconnect), else those not written within `ack_persist_interval`.
pub(crate) async fn persist_acks(session: &mut Session, force: bool) {
    let now = Instant::now().into_std();
    let interval = session.edge.config.reliable.ack_persist_interval;
    let mut writes = Vec::new();
    for (channel, lane) in session.joined.iter_mut() {
        if let Some(seq) = lane.take_ack_write(now, interval, force) {
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

/// Sends one reliable frame on the control queue (never dropped).
async fn send(session: &Session, frame: &ReliableFrame) -> Flow {
    let flow = session.send_shared(frame).await;
    if flow == Flow::Continue {
        session.edge.metrics.reliable_sent.inc();
    }
    flow
}

/// Reads from the lane's catch-up position (the ring when it holds enough,
/// else the store) and sends what it finds, while the window has room.
async fn catch_up(session: &mut Session, channel: &ChannelName) -> Result<Flow, StoreError> {
    let max = session.edge.config.reliable.max_unacked;
    loop {
        let Some(lane) = session.joined.get(channel) else {
            return Ok(Flow::Continue);
        };
        let (Some((after, room)), Some(c)) = (lane.next_read(max), lane.catch_up()) else {
            return Ok(Flow::Continue);
        };
        let want = room.min(REPLAY_PAGE);
        let live = lane.shared().live_upto();
        // The ring serves a read it can complete: `want` frames, or all up to
        // what the live ticks brought. Else the store (it may hold seqs the
        // bus has not brought yet, or ones the ring no longer holds).
        let from_ring = session
            .edge
            .channels
            .get(channel.as_str())
            .and_then(|ch| ch.recent_after(after, want))
            .filter(|f| f.len() == want || f.last().map_or(after, |l| l.seq) >= live);
        let frames = match from_ring {
            Some(f) => f,
            None => read_page(session, channel, after, want)
                .await?
                .into_iter()
                .map(|m| ReliableFrame::build(channel.as_str(), &m.into_event()))
                .collect(),
        };
        let got = frames.len();
        let last = frames.last().map(|f| f.seq);
        let counter = match c.reason {
            CatchUpReason::Resume => &session.edge.metrics.resume_replayed,
            CatchUpReason::Resend => &session.edge.metrics.reliable_retransmits,
            CatchUpReason::Missed => &session.edge.metrics.reliable_missed_sent,
        };
        counter.inc_by(got as u64);
        for frame in &frames {
            if let Flow::Close(r) = send(session, frame).await {
                return Ok(Flow::Close(r));
            }
        }
        let Some(lane) = session.joined.get_mut(channel) else {
            return Ok(Flow::Continue);
        };
        if lane.on_read(last, got, want) {
            return Ok(Flow::Continue);
        }
    }
}

/// [`catch_up`] where a store failure closes the connection with a resume
/// hint (this connection would otherwise miss seqs).
async fn catch_up_or_close(session: &mut Session, channel: &ChannelName) -> Flow {
    match catch_up(session, channel).await {
        Ok(flow) => flow,
        Err(e) => {
            let after = session.joined.get(channel).map_or(0, |l| l.acked());
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
    let group = session.joined.get(channel).is_some_and(|l| l.is_group());
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
        Backlog::TooManyUnacked(n) => format!("{n} reliable events unacked"),
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
