//! Server-sent events: `GET /v1/sse?channel=…&token=…` (`text/event-stream`).
//!
//! One more transport next to `ws.rs` and `quic.rs`, not a second copy of the
//! edge: the handler checks the request (`fallback/mod.rs`), opens a
//! [`Session`] on [`Transport::Sse`] and runs the same connection task
//! ([`serve`]) with a [`Reader`] that has no socket to read. Its "frames" are
//! the joins (and resumes) the query asks for, then a tick every second that
//! turns what the writer handed to the socket into acks, and a heartbeat
//! comment every [`HEARTBEAT`]. The writer is the response body: it drains the
//! session's reply queue (first) and batch queue like the WebSocket writer.
//!
//! * **Batches** are the channel's JSON tick text, framed as an event once per
//!   tick for every SSE member (`channels.rs`, `sse_wire.rs`); a tick with
//!   reliable events carries `id: <channel>:<last seq>`. The batch queue is the
//!   WebSocket's (128 ticks): a viewer that does not read loses ticks, counted
//!   in `danmaku_edge_slow_consumer_drops_total`, and gets their reliable
//!   events again as single `reliable` events with their own `id:`.
//! * **Acks.** The stream is one way, so the edge acks for the client: each
//!   second, the highest `id:` per channel the writer handed to the socket
//!   becomes the lane's ack (`ack` frame semantics: resends stop, a group's
//!   offset is stored). Nothing is lost by acking early: an event the socket
//!   took but the client never read is on a stream that then breaks, and the
//!   browser reconnects with `Last-Event-ID` (the last id it *did* read), which
//!   resumes the lane from there.
//! * **Resume.** `Last-Event-ID: <channel>:<seq>` (sent by a browser's
//!   `EventSource` when it reconnects by itself) and `after=<channel>:<seq>`
//!   (repeatable: what an SDK that reconnects by itself sends, one per channel)
//!   become `resume{channel, after_seq}` right after the join.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_proto::json::JsonServerFrame;
use danmaku_proto::pb::client_frame::Body as ClientBody;
use danmaku_proto::{ChannelName, pb};
use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::{Pairs, authenticate, channels, refuse, values};
use crate::account::TokenFacts;
use crate::channels::Outbound;
use crate::connection::{ConnectionGauge, Reader, WakeQueue, dispatch, reliable, serve};
use crate::error::ApiError;
use crate::node::Edge;
use crate::session::{Flow, Reply, Session};
use crate::sse_wire::{self, MAX_EVENT_ID};
use crate::transport::Transport;

/// How often the stream carries a comment when nothing else is sent: below
/// the 30–60 s after which common proxies close a quiet response.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(15);

/// How often what the writer sent becomes the lane's ack: well inside the
/// 3 s after which the stall sweep would resend (`--retransmit-initial`).
const ACK_TICK: Duration = Duration::from_secs(1);

/// What a browser waits before reconnecting a broken stream (`retry:`).
const RETRY_MS: u64 = 1000;

/// `GET /v1/sse`.
pub(crate) async fn stream(
    State(edge): State<Arc<Edge>>,
    Query(pairs): Query<Pairs>,
    req: Request,
) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    match open(&edge, &pairs, req.headers(), ip) {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

fn open(
    edge: &Arc<Edge>,
    pairs: &Pairs,
    headers: &HeaderMap,
    ip: Option<std::net::IpAddr>,
) -> Result<Response, ApiError> {
    let claims = authenticate(edge, pairs)?;
    let channels = channels(edge, pairs, true)?;
    let resumes = resumes(edge, pairs, headers, &channels)?;
    let mut first: VecDeque<pb::ClientFrame> = channels
        .iter()
        .map(|c| {
            client_frame(ClientBody::Join(pb::Join {
                channel: c.to_string(),
            }))
        })
        .collect();
    first.extend(resumes.into_iter().map(|(channel, after_seq)| {
        client_frame(ClientBody::Resume(pb::Resume {
            channel: channel.to_string(),
            after_seq,
        }))
    }));
    let gauge = ConnectionGauge::open(edge, Transport::Sse);
    let (session, queues) = Session::open(Arc::clone(edge), claims.sub.clone(), Transport::Sse);
    tracing::debug!(conn_id = session.conn_id, user = %session.user, "sse connected");
    let written = Arc::new(Written::default());
    let body = Body::from_stream(writer(
        queues.replies,
        queues.batches,
        Arc::clone(&written),
        edge.metrics.egress(Transport::Sse).clone(),
    ));
    let reader = SseReader {
        first,
        written,
        ticker: tokio::time::interval_at(tokio::time::Instant::now() + ACK_TICK, ACK_TICK),
        ticks: 0,
    };
    let wakes = WakeQueue::new(queues.wakes, queues.overflow);
    tokio::spawn(
        serve(session, reader, wakes, ip, TokenFacts::from(&claims)).map(move |_| drop(gauge)),
    );
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // nginx and similar buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

fn client_frame(body: ClientBody) -> pb::ClientFrame {
    pb::ClientFrame {
        version: 1,
        body: Some(body),
    }
}

/// The resumes the request asks for: `Last-Event-ID` and every `after=`,
/// each `<channel>:<seq>` of a channel the stream joins. Later ones for the
/// same channel win (an SDK's `after=` is newer than the browser's id).
fn resumes(
    edge: &Edge,
    pairs: &Pairs,
    headers: &HeaderMap,
    joined: &[ChannelName],
) -> Result<Vec<(ChannelName, u64)>, ApiError> {
    let bad = |what: &str, message: String| {
        refuse(
            edge,
            StatusCode::BAD_REQUEST,
            "bad_last_event_id",
            format!("{what}: {message}"),
        )
    };
    let mut ids: Vec<(&str, String)> = Vec::new();
    if let Some(v) = headers.get("last-event-id") {
        let v = v
            .to_str()
            .map_err(|_| bad("Last-Event-ID", "not ASCII".into()))?;
        // A browser sends the id of the last event it read; the edge's ids
        // always carry one, but an empty one resets the stream (WHATWG).
        if !v.is_empty() {
            ids.push(("Last-Event-ID", v.to_owned()));
        }
    }
    ids.extend(values(pairs, "after").map(|v| ("after", v.to_owned())));
    let mut out: Vec<(ChannelName, u64)> = Vec::new();
    for (what, id) in &ids {
        if id.len() > MAX_EVENT_ID {
            return Err(bad(
                what,
                format!("{} bytes, at most {MAX_EVENT_ID}", id.len()),
            ));
        }
        let (channel, seq) = sse_wire::parse_id(id)
            .ok_or_else(|| bad(what, format!("{id:?} is not <channel>:<seq>")))?;
        let channel = ChannelName::parse(channel).map_err(|e| bad(what, e.to_string()))?;
        if !joined.contains(&channel) {
            return Err(bad(
                what,
                format!("{channel} is not a channel of this stream"),
            ));
        }
        match out.iter_mut().find(|(c, _)| *c == channel) {
            Some(slot) => slot.1 = seq,
            None => out.push((channel, seq)),
        }
    }
    Ok(out)
}

/// Per channel, the highest reliable seq the writer handed to the socket:
/// written by the response body, read by the connection's task once a second.
#[derive(Default)]
struct Written(Mutex<Vec<(String, u64)>>);

impl Written {
    fn record(&self, channel: &str, seq: u64) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match w.iter_mut().find(|(c, _)| c == channel) {
            Some(slot) => slot.1 = slot.1.max(seq),
            None => w.push((channel.to_owned(), seq)),
        }
    }

    fn take(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// What the SSE "reader" yields: a frame the query asked for, or a tick.
enum SseMessage {
    Frame(pb::ClientFrame),
    Tick,
}

struct SseReader {
    first: VecDeque<pb::ClientFrame>,
    written: Arc<Written>,
    ticker: tokio::time::Interval,
    ticks: u32,
}

impl Reader for SseReader {
    type Message = SseMessage;

    /// The query's joins and resumes, then a tick a second. Never ends: the
    /// stream ends when the writer fails (the peer went away) or the session
    /// closes. Cancel-safe (`Interval::tick` is).
    async fn next(&mut self) -> Option<SseMessage> {
        if let Some(f) = self.first.pop_front() {
            return Some(SseMessage::Frame(f));
        }
        self.ticker.tick().await;
        Some(SseMessage::Tick)
    }

    async fn on_message(&mut self, session: &mut Session, msg: SseMessage) -> Flow {
        match msg {
            SseMessage::Frame(f) => dispatch(session, f).await,
            SseMessage::Tick => {
                for (channel, seq) in self.written.take() {
                    let ack = pb::Ack { channel, seq };
                    if let flow @ Flow::Close(_) = reliable::on_ack(session, ack).await {
                        return flow;
                    }
                }
                self.ticks += 1;
                if self.ticks >= HEARTBEAT.as_secs() as u32 {
                    self.ticks = 0;
                    return session
                        .send_reply(Reply::Shared(sse_wire::comment("heartbeat")))
                        .await;
                }
                Flow::Continue
            }
        }
    }
}

/// The response body: replies first, then ticks, as the WebSocket writer
/// does; ends at the session's close (or when the session is gone). Each item
/// is a shared, prebuilt event, except replies built for this connection.
fn writer(
    replies: mpsc::Receiver<Reply>,
    batches: mpsc::Receiver<Outbound>,
    written: Arc<Written>,
    egress: prometheus::IntCounter,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send {
    struct State {
        replies: mpsc::Receiver<Reply>,
        batches: mpsc::Receiver<Outbound>,
        batches_open: bool,
        started: bool,
        written: Arc<Written>,
        egress: prometheus::IntCounter,
    }
    let state = State {
        replies,
        batches,
        batches_open: true,
        started: false,
        written,
        egress,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if !s.started {
            s.started = true;
            let first = sse_wire::retry(RETRY_MS).wire().clone();
            s.egress.inc_by(first.len() as u64);
            return Some((Ok(first), s));
        }
        let out = loop {
            tokio::select! {
                biased;
                r = s.replies.recv() => match r {
                    Some(Reply::Frame(f)) => break encode_reply(&f),
                    Some(Reply::Shared(o)) => break o,
                    Some(Reply::Close(_)) | None => return None,
                },
                b = s.batches.recv(), if s.batches_open => match b {
                    Some(o) => break o,
                    None => s.batches_open = false,
                },
            }
        };
        if let Some((channel, seq)) = sse_wire::written_id(out.wire()) {
            s.written.record(channel, seq);
        }
        let bytes = out.wire().clone();
        s.egress.inc_by(bytes.len() as u64);
        Some((Ok(bytes), s))
    })
}

/// A reply (answers, errors, notices, redirects) as one event with its JSON frame.
fn encode_reply(f: &pb::ServerFrame) -> Outbound {
    let text = match JsonServerFrame::from_pb(f, &danmaku_proto::Limits::default()) {
        Ok(j) => j.to_text(),
        // Only batches can fail to convert, and they never come this way.
        Err(e) => JsonServerFrame::Error {
            code: "internal".into(),
            message: e.to_string(),
        }
        .to_text(),
    };
    sse_wire::event(None, text.as_bytes())
}
