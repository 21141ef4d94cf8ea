//! Long-poll: `GET /v1/poll?channel=…&token=…[&cursor=C][&wait=S]`.
//!
//! Without a cursor the edge answers at once with the current one; with one it
//! answers as soon as anything follows it, or with no events after `wait`
//! seconds (default 25, at most 30): `{"events":[…],"cursor":"…"}`. Each
//! element of `events` is a JSON server frame exactly as the WebSocket JSON
//! transport sends it (`batch`, `reliable`), so a client handles them with the
//! code it already has.
//!
//! No state per viewer waits between polls. Each polled room has ONE registry
//! member whose ticks a feed task keeps in the room's ring (`poll_rooms.rs`);
//! a poll reads the ring after its cursor. The cursor is
//! `<epoch>.<tick>.<seq>.<tag>`: the ring's life, the last tick the client has,
//! the last reliable seq it has, and a tag binding them to the ring and the user
//! (see [`Cursor`]). Danmaku is best effort: a cursor that fell
//! out of the ring gets what is left and `"gap":true`; one of another ring
//! (another edge, a room dropped while idle) gets the danmaku from now on and
//! `"gap":true`, and `0.0.<seq>` is how a client resumes from a seq alone. Reliable events are never lost:
//! whenever the room's reliable head is past the cursor's seq, the answer
//! starts with the `reliable` frames after it, from the channel's ring of
//! recent events or the store, in pages of [`RELIABLE_PAGE`] (a client behind
//! by more gets the next page at once on its next poll). A gift may thus come
//! twice, inside a `batch` and as a `reliable` frame: the client drops the
//! `seq`s it already has, as on every transport.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_proto::{ChannelName, now_ms};
use tokio::sync::mpsc;

use super::{Pairs, authenticate, channels, refuse, single};
use crate::channels::{ConnEvent, Member, Outbound, Waker};
use crate::error::ApiError;
use crate::node::Edge;
use crate::poll_rooms::{IDLE_AFTER, PollRoom};
use crate::reliable::lane::LaneShared;
use crate::reliable::ring::ReliableFrame;
use crate::transport::Transport;

/// `wait` when the query names none, and its maximum (seconds).
pub(crate) const DEFAULT_WAIT: u64 = 25;
pub(crate) const MAX_WAIT: u64 = 30;

/// Reliable frames per answer at most.
pub(crate) const RELIABLE_PAGE: usize = 200;

/// Ticks per answer at most (a client far behind gets the rest at once).
const TICKS_PAGE: usize = 128;

/// Longest cursor accepted (three u64s, a 16-digit tag and three dots fit in 80).
const MAX_CURSOR: usize = 80;

/// Where a client stands: the ring's epoch, its last tick and reliable seq,
/// and (in cursors the edge gives out) a tag binding the three to the ring
/// and the user: a ring's cursors cannot be made up, so a new group member
/// cannot page back into ticks from before their join with a forged tick.
/// `0.0.<seq>` (no tag, another ring) is how a client resumes from a seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub epoch: u64,
    pub tick: u64,
    pub seq: u64,
    pub tag: Option<u64>,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        if s.len() > MAX_CURSOR {
            return None;
        }
        let mut it = s.split('.');
        let epoch = u64::from_str_radix(it.next()?, 16).ok()?;
        let tick = it.next()?.parse().ok()?;
        let seq = it.next()?.parse().ok()?;
        let tag = match it.next() {
            None => None,
            Some(t) if t.len() == 16 => Some(u64::from_str_radix(t, 16).ok()?),
            Some(_) => return None,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Cursor {
            epoch,
            tick,
            seq,
            tag,
        })
    }

    /// A cursor of `room` for `user`, tagged.
    fn issue(room: &PollRoom, user: &str, tick: u64, seq: u64) -> Cursor {
        Cursor {
            epoch: room.epoch,
            tick,
            seq,
            tag: Some(room.tag(user, tick, seq)),
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}.{}.{}", self.epoch, self.tick, self.seq)?;
        if let Some(tag) = self.tag {
            write!(f, ".{tag:016x}")?;
        }
        Ok(())
    }
}

/// `GET /v1/poll`.
pub(crate) async fn poll(State(edge): State<Arc<Edge>>, Query(pairs): Query<Pairs>) -> Response {
    match answer(&edge, &pairs).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(edge: &Arc<Edge>, pairs: &Pairs) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let claims = authenticate(edge, pairs)?;
    let mut chans = channels(edge, pairs, false)?;
    if chans.len() != 1 {
        return Err(refuse(
            edge,
            StatusCode::BAD_REQUEST,
            "too_many_channels",
            "a poll names exactly one channel",
        ));
    }
    let channel = chans.remove(0);
    let wait = match single(edge, pairs, "wait")? {
        None => DEFAULT_WAIT,
        Some(w) => match w.parse::<u64>() {
            Ok(w) if w <= MAX_WAIT => w,
            _ => {
                return Err(refuse(
                    edge,
                    StatusCode::BAD_REQUEST,
                    "bad_wait",
                    format!("wait must be 0 to {MAX_WAIT} seconds, got {w:?}"),
                ));
            }
        },
    };
    let cursor = match single(edge, pairs, "cursor")? {
        None => None,
        Some(c) => Some(Cursor::parse(c).ok_or_else(|| {
            refuse(
                edge,
                StatusCode::BAD_REQUEST,
                "bad_cursor",
                format!("cursor {c:?} is not one this edge gave out (<epoch>.<tick>.<seq>)"),
            )
        })?),
    };
    // A group's member sees nothing from before their join.
    let floor = if channel.as_str().starts_with("group:") {
        match edge.store.is_member(channel.as_str(), &claims.sub).await {
            Ok(Some(joined)) => joined,
            Ok(None) => {
                return Err(refuse(
                    edge,
                    StatusCode::FORBIDDEN,
                    "not_member",
                    format!("{} is not a member of {channel}", claims.sub),
                ));
            }
            Err(e) => return Err(store_unavailable(edge, "is_member", &e)),
        }
    } else {
        0
    };
    let room = room(edge, &channel);
    room.touch(now_ms() as u64);
    let Some(cursor) = cursor else {
        // Registered before reading last_seq (as a join is): an event stored
        // after this read reaches the room's member, and so the ring.
        let last = edge
            .store
            .last_seq(channel.as_str())
            .await
            .map_err(|e| store_unavailable(edge, "last_seq", &e))?;
        let now = Cursor::issue(&room, &claims.sub, room.latest(), last.max(floor));
        edge.metrics.poll("now");
        return Ok(respond(edge, &[], &[], now, false));
    };
    if cursor.epoch == room.epoch
        && (cursor.tick > room.latest()
            || cursor.tag != Some(room.tag(&claims.sub, cursor.tick, cursor.seq)))
    {
        return Err(refuse(
            edge,
            StatusCode::BAD_REQUEST,
            "bad_cursor",
            "cursor was not given out by this edge for this user and channel",
        ));
    }
    // Another ring's cursor (another edge, a room dropped while idle, or a
    // client resuming with `0.0.<seq>`): its ticks mean nothing here. It is
    // answered at once, from now on for danmaku, with the reliable events
    // after its seq, and a cursor of this ring.
    let (from_tick, foreign) = if cursor.epoch == room.epoch {
        (cursor.tick, false)
    } else {
        (room.latest(), true)
    };
    let seq = cursor.seq.max(floor);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut latest = room.subscribe();
    loop {
        let ticks = room.after(from_tick, TICKS_PAGE);
        let reliable = reliable_after(edge, &room, &channel, seq).await?;
        if !ticks.ticks.is_empty() || !reliable.is_empty() || foreign {
            let next = Cursor::issue(
                &room,
                &claims.sub,
                ticks.upto,
                reliable.last().map_or(seq, |f| f.seq),
            );
            let gap = ticks.gap || (foreign && cursor.tick > 0);
            edge.metrics.poll(if gap { "gap" } else { "events" });
            edge.metrics
                .poll_wait
                .observe(started.elapsed().as_secs_f64());
            return Ok(respond(edge, &reliable, &ticks.ticks, next, gap));
        }
        let woke = tokio::select! {
            biased;
            _ = edge.shutdown.cancelled() => false,
            r = tokio::time::timeout_at(deadline, latest.wait_for(|t| *t > from_tick)) => {
                matches!(r, Ok(Ok(_)))
            }
        };
        if !woke {
            edge.metrics.poll("empty");
            return Ok(respond(edge, &[], &[], cursor, false));
        }
    }
}

fn store_unavailable(edge: &Edge, op: &str, e: &danmaku_store::StoreError) -> ApiError {
    edge.metrics.store_error(op);
    refuse(
        edge,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the store could not be read ({op}): {e}; poll again"),
    )
}

/// The reliable frames after `seq` when the room's head is past it: from the
/// channel's ring of recent events when it reaches back that far, else the
/// store. Nothing to read (the common case) costs one atomic load.
async fn reliable_after(
    edge: &Edge,
    room: &PollRoom,
    channel: &ChannelName,
    seq: u64,
) -> Result<Vec<Arc<ReliableFrame>>, ApiError> {
    if room.lane.live_upto() <= seq {
        return Ok(Vec::new());
    }
    let from_ring = edge
        .channels
        .get(channel.as_str())
        .and_then(|ch| ch.recent_after(seq, RELIABLE_PAGE));
    if let Some(frames) = from_ring {
        return Ok(frames);
    }
    let stored = edge
        .store
        .read_after(channel.as_str(), seq, RELIABLE_PAGE)
        .await
        .map_err(|e| store_unavailable(edge, "read_after", &e))?;
    edge.metrics.gap_fills.inc();
    Ok(stored
        .into_iter()
        .map(|m| ReliableFrame::build(channel.as_str(), &m.into_event()))
        .collect())
}

/// `{"events":[…],"cursor":"…"[,"gap":true]}`: the prebuilt JSON frames
/// joined, copied once into the answer.
fn respond(
    edge: &Edge,
    reliable: &[Arc<ReliableFrame>],
    ticks: &[Bytes],
    cursor: Cursor,
    gap: bool,
) -> Response {
    let frames: Vec<Bytes> = reliable
        .iter()
        .map(|f| f.json.payload())
        .chain(ticks.iter().cloned())
        .collect();
    let len: usize = frames.iter().map(|f| f.len() + 1).sum::<usize>() + 64;
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(b"{\"events\":[");
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(f);
    }
    let mut tail = String::new();
    let _ = write!(tail, "],\"cursor\":\"{cursor}\"");
    if gap {
        tail.push_str(",\"gap\":true");
    }
    tail.push('}');
    body.extend_from_slice(tail.as_bytes());
    edge.metrics
        .egress(Transport::Poll)
        .inc_by(body.len() as u64);
    let mut resp = Response::new(axum::body::Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The room of `channel`, started (one registry member and its feed task)
/// by the first poll.
fn room(edge: &Arc<Edge>, channel: &ChannelName) -> Arc<PollRoom> {
    if let Some(r) = edge.polls.get(channel) {
        return r;
    }
    let conn = edge.next_conn_id();
    let lane = Arc::new(LaneShared::new(0));
    let (queue, batches) = mpsc::channel(edge.config.send_queue_frames.max(1));
    let (waker, wakes, _overflow) = Waker::channel(edge.config.reliable.queue);
    let epoch = (now_ms() as u64) << 16 ^ (conn & 0xFFFF);
    let (room, made) = edge.polls.get_or_insert_with(channel, || {
        PollRoom::new(epoch, Arc::clone(&lane), now_ms() as u64)
    });
    if made {
        let member = Member::new(Transport::Poll, queue, waker, lane);
        edge.channels.join(channel, conn, member);
        tokio::spawn(feed(
            Arc::clone(edge),
            channel.clone(),
            Arc::clone(&room),
            conn,
            batches,
            wakes,
        ));
    }
    room
}

/// Moves the room's ticks from its member queue into its ring until nobody
/// polled for [`IDLE_AFTER`], then leaves the channel. Wakes of the member's
/// lane (a tick it could not take, a "stall": nobody acks for a room) are
/// dropped: polls read reliable events from the rings and the store by seq.
async fn feed(
    edge: Arc<Edge>,
    channel: ChannelName,
    room: Arc<PollRoom>,
    conn: u64,
    mut batches: mpsc::Receiver<Outbound>,
    mut wakes: mpsc::Receiver<ConnEvent>,
) {
    let mut idle_check = tokio::time::interval(IDLE_AFTER / 6);
    loop {
        tokio::select! {
            biased;
            _ = edge.shutdown.cancelled() => break,
            b = batches.recv() => match b {
                Some(tick) => room.push(tick.payload()),
                None => break,
            },
            w = wakes.recv() => if w.is_none() { break },
            _ = idle_check.tick() => {
                if room.idle_for(now_ms() as u64) >= IDLE_AFTER {
                    break;
                }
            }
        }
    }
    edge.polls.remove(&channel, room.epoch);
    edge.channels.leave(&channel, conn);
    tracing::debug!(channel = %channel, "poll room dropped");
}
