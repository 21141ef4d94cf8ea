//! WebSocket transport: `GET /v1/ws?token=…` with subprotocol `danmaku.v1.json`
//! (text) or `danmaku.v1.pb` (binary protobuf).
//!
//! The edge owns the WebSocket here rather than using a general library, for
//! two costs that decide how many viewers one process holds:
//!
//! * **Memory per connection.** A general library keeps a read buffer (128 KiB in
//!   tungstenite) and a write buffer per connection. Here nothing is buffered
//!   while a connection is idle: reads go through a stack buffer into the
//!   [`Decoder`], which only holds the bytes of an unfinished client frame
//!   (client frames are tiny), and writes go straight from the shared frames.
//! * **Work per frame.** A server→client frame is unmasked, so the complete frame
//!   is the same for every member: the batcher frames it once ([`Prepared`]) and
//!   each connection writes those shared bytes, several queued frames in one
//!   vectored write, instead of copying header and payload into its own buffer.
//!
//! * **Wake-ups per tick.** On plain TCP the socket comes back from hyper
//!   (`listener.rs` serves HTTP/1.1 so it can) and the batcher writes ticks into
//!   it directly while nothing is queued (`direct.rs`); the writer task only
//!   wakes for replies, and for ticks when the socket was full.
//!
//! The token and the upgrade request are checked before the upgrade (hyper's, as
//! axum's extractor does it), so a refused client gets a plain HTTP error with
//! the JSON error body. After the upgrade the reader loop here decodes frames
//! and dispatches them to the session; a writer task owns the write half (see
//! `session.rs` for the queues).

use std::future::{Future, poll_fn};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use danmaku_proto::json::JsonServerFrame;
use danmaku_proto::wsframe::{Decoder, Message, OpCode, Prepared, WsError};
use danmaku_proto::{Layout, Limits, ProtoError, frame, json, pb};
use serde::Deserialize;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;

use crate::account::TokenFacts;
use crate::channels::Outbound;
use crate::connection::{ConnectionGauge, Reader, WakeQueue, dispatch, finish_writer, serve};
use crate::direct::DirectSink;
use crate::error::ApiError;
use crate::node::Edge;
use crate::session::{CloseReason, Flow, Reply, Session};
use crate::transport::Transport;

/// Subprotocol for JSON text frames (browsers, debugging).
pub const SUBPROTOCOL_JSON: &str = "danmaku.v1.json";
/// Subprotocol for binary protobuf frames.
pub const SUBPROTOCOL_PB: &str = "danmaku.v1.pb";
/// Protobuf frames whose batches may use the compact layout (`Batch.encoding`
/// 1). Chosen over `danmaku.v1.pb` when offered.
pub const SUBPROTOCOL_PB_COMPACT: &str = "danmaku.v2.pb";
/// Protobuf frames whose batches may use the dense layout (`Batch.encoding`
/// 2) and zstd dictionary 1: what the SDKs offer first, chosen over the others.
pub const SUBPROTOCOL_PB_DENSE: &str = "danmaku.v3.pb";

/// What the upgrade agreed on: the transport and the protobuf batch layout
/// (`Layout::Plain` for JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Negotiated {
    transport: Transport,
    layout: Layout,
}

/// How long a closing connection may take to flush its last frames.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

/// Bytes read from the socket per read call. A stack buffer: it exists only
/// while a read is being polled, so an idle connection holds no read buffer.
const READ_CHUNK: usize = 4096;

/// Most frames written in one vectored write.
const MAX_COALESCE: usize = 64;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

pub(crate) async fn upgrade(
    State(edge): State<Arc<Edge>>,
    Query(query): Query<WsQuery>,
    mut req: Request,
) -> Response {
    // Present when the server was started with connect info (per-IP caps).
    let ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let token = query.token.unwrap_or_default();
    let claims = match edge.verify_token(&token) {
        Ok(c) => c,
        Err(e) => {
            edge.metrics.error("bad_token");
            return ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", e.to_string())
                .into_response();
        }
    };
    let not_websocket = |message: &str| {
        edge.metrics.error("not_websocket");
        ApiError::new(StatusCode::BAD_REQUEST, "not_websocket", message)
    };
    let accept = match check_upgrade(req.method(), req.version(), req.headers()) {
        Ok(accept) => accept,
        Err(message) => return not_websocket(message).into_response(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return not_websocket("this connection cannot be upgraded").into_response();
    };
    let negotiated = match select_subprotocol(req.headers()) {
        Some(n) => n,
        None => {
            edge.metrics.error("bad_subprotocol");
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_subprotocol",
                format!(
                    "request subprotocol {SUBPROTOCOL_JSON}, {SUBPROTOCOL_PB}, {SUBPROTOCOL_PB_COMPACT} or {SUBPROTOCOL_PB_DENSE}"
                ),
            )
            .into_response();
        }
    };
    tokio::spawn(connection(
        Arc::clone(&edge),
        on_upgrade,
        negotiated,
        TokenFacts::from(&claims),
        claims.sub,
        ip,
    ));
    let protocol = match (negotiated.transport.is_json(), negotiated.layout) {
        (true, _) => SUBPROTOCOL_JSON,
        (false, Layout::Dense) => SUBPROTOCOL_PB_DENSE,
        (false, Layout::Compact) => SUBPROTOCOL_PB_COMPACT,
        (false, Layout::Plain) => SUBPROTOCOL_PB,
    };
    let mut resp = Response::new(HttpBody::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    resp
}

/// Checks an HTTP/1.1 upgrade request (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value, or why the request is not a WebSocket upgrade.
fn check_upgrade(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<HeaderValue, &'static str> {
    if version != Version::HTTP_11 {
        return Err("WebSocket needs an HTTP/1.1 upgrade request");
    }
    if method != Method::GET {
        return Err("request method must be `GET`");
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err("`Connection` header did not include 'upgrade'");
    }
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err("`Upgrade` header did not include 'websocket'");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("`Sec-WebSocket-Version` header did not include '13'");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err("`Sec-WebSocket-Key` header missing");
    };
    Ok(accept_key(key.as_bytes()))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    let b64 = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    HeaderValue::from_str(&b64).expect("base64 is a valid header value")
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The subprotocol the edge speaks with this client: protobuf with dense,
/// compact or plain batches, then JSON, in that order of preference among
/// those offered.
fn select_subprotocol(headers: &HeaderMap) -> Option<Negotiated> {
    let offered = |name: &str| {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|p| p.trim_ascii() == name.as_bytes())
    };
    let (transport, layout) = if offered(SUBPROTOCOL_PB_DENSE) {
        (Transport::WsPb, Layout::Dense)
    } else if offered(SUBPROTOCOL_PB_COMPACT) {
        (Transport::WsPb, Layout::Compact)
    } else if offered(SUBPROTOCOL_PB) {
        (Transport::WsPb, Layout::Plain)
    } else if offered(SUBPROTOCOL_JSON) {
        (Transport::WsJson, Layout::Plain)
    } else {
        return None;
    };
    Some(Negotiated { transport, layout })
}

/// The task of one WebSocket connection, from the upgrade until it closes.
/// It lives as long as the viewer, so its future is what every idle viewer
/// costs (with its writer's): the stages are combinators, so the upgrade's
/// arguments and the connection's state overlap instead of adding up.
fn connection(
    edge: Arc<Edge>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    negotiated: Negotiated,
    token: TokenFacts,
    user: String,
    ip: Option<std::net::IpAddr>,
) -> impl Future<Output = ()> + Send {
    use futures_util::FutureExt;
    use hyper_util::rt::TokioIo;
    on_upgrade.then(move |upgraded| match upgraded {
        // Plain TCP (the edge's own HTTP/1.1 listener, `listener.rs`): the
        // socket itself, shared by the reader, the writer and the batcher
        // shards that write ticks into it directly (`direct.rs`).
        Ok(upgraded) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
            Ok(parts) => {
                let sink = Arc::new(DirectSink::new(parts.io.into_inner()));
                let halves = Halves {
                    rd: SinkIo(Arc::clone(&sink)),
                    wr: SinkIo(Arc::clone(&sink)),
                    read_ahead: parts.read_buf,
                    direct: Some(sink),
                };
                run(edge, halves, negotiated, token, user, ip)
                    .left_future()
                    .left_future()
            }
            // TLS, or a server that wrapped the socket: hyper's upgraded IO,
            // split in two; ticks go through the queue.
            Err(upgraded) => {
                let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
                let halves = Halves {
                    rd,
                    wr,
                    read_ahead: Bytes::new(),
                    direct: None,
                };
                run(edge, halves, negotiated, token, user, ip)
                    .right_future()
                    .left_future()
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            std::future::ready(()).right_future()
        }
    })
}

/// An upgraded connection's two halves.
struct Halves<R, W> {
    rd: R,
    wr: W,
    /// What the HTTP server read past the upgrade request (a client may send
    /// its first frame without waiting for the `101`).
    read_ahead: Bytes,
    /// The socket, when the batcher may write ticks into it directly.
    direct: Option<Arc<DirectSink>>,
}

/// The shared socket of a plain-TCP WebSocket as a reader or writer half.
/// Every call goes to the socket (no lock, no buffer); writes by the batcher
/// shards are kept apart from the writer's by [`DirectSink`]'s state.
struct SinkIo(Arc<DirectSink>);

impl AsyncRead for SinkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let stream = self.0.stream();
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SinkIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let stream = self.0.stream();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let stream = self.0.stream();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let sock = socket2::SockRef::from(self.0.stream());
        Poll::Ready(sock.shutdown(std::net::Shutdown::Write))
    }
}

/// Opens the session on the socket's halves, spawns its writer and returns the
/// connection's loop followed by the writer's drain. Not `async`: what it
/// builds moves into the loop's future once (an async fn would keep a slot for
/// each local too).
fn run<R, W>(
    edge: Arc<Edge>,
    Halves {
        rd,
        wr,
        read_ahead,
        direct,
    }: Halves<R, W>,
    negotiated: Negotiated,
    token: TokenFacts,
    user: String,
    ip: Option<std::net::IpAddr>,
) -> impl Future<Output = ()> + Send
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    use futures_util::FutureExt;
    let transport = negotiated.transport;
    let gauge = ConnectionGauge::open(&edge, transport);
    let (mut session, queues) = Session::open(Arc::clone(&edge), user, transport);
    session.batch_layout = negotiated.layout;
    session.direct = direct.clone();
    tracing::debug!(conn_id = session.conn_id, user = %session.user, transport = transport.label(), "websocket connected");
    let writer = tokio::spawn(write_loop(
        wr,
        direct,
        queues.replies,
        queues.batches,
        transport,
        edge.config.limits,
        edge.metrics.egress(transport).clone(),
    ));
    let limits = edge.config.limits;
    // Limit = max_frame_bytes: a larger message is refused from its header
    // with a `frame_too_large` error frame, before any of it is buffered.
    let mut decoder = Decoder::server(limits.max_frame_bytes);
    decoder.push(&read_ahead);
    let reader = WsReader {
        rd,
        decoder,
        transport,
        limits,
    };
    // A combinator, not `async { serve(…).await; … }`: awaiting a captured
    // future moves it into a second slot of the same size.
    let wakes = WakeQueue::new(queues.wakes, queues.overflow);
    serve(session, reader, wakes, ip, token).then(move |_| async move {
        finish_writer(writer, WRITER_DRAIN).await;
        drop(gauge);
    })
}

/// The reading half of a WebSocket: socket bytes through the frame decoder.
struct WsReader<R> {
    rd: R,
    decoder: Decoder,
    transport: Transport,
    limits: Limits,
}

impl<R: AsyncRead + Unpin + Send> Reader for WsReader<R> {
    type Message = Result<Message, WsError>;

    /// Messages already buffered first, then the socket.
    async fn next(&mut self) -> Option<Self::Message> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(msg)) => return Some(Ok(msg)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match read_some(&mut self.rd, &mut self.decoder).await {
                // End of stream or a read error: the peer is gone.
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn on_message(&mut self, session: &mut Session, msg: Self::Message) -> Flow {
        match msg {
            Ok(msg) => on_message(session, self.transport, msg, &self.limits).await,
            Err(WsError::TooLarge { size, limit }) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                session
                    .reject(&ProtoError::FrameTooLarge { size, limit })
                    .await
            }
            Err(e @ WsError::Protocol(_)) => {
                // The stream cannot be trusted any further: no error frame.
                session.edge.metrics.bad_frame("websocket_protocol");
                tracing::debug!(conn_id = session.conn_id, error = %e, "websocket protocol violation");
                Flow::Close(CloseReason::BadFrame)
            }
        }
    }
}

/// Reads what the socket has (up to [`READ_CHUNK`]) into the decoder. The read
/// buffer is on the stack of one poll, never part of the connection's state.
/// Cancel-safe: bytes are either read and pushed in one poll, or not read.
async fn read_some<R: AsyncRead + Unpin>(
    rd: &mut R,
    decoder: &mut Decoder,
) -> std::io::Result<usize> {
    poll_fn(|cx| {
        let mut stack = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut stack);
        ready!(Pin::new(&mut *rd).poll_read(cx, &mut buf))?;
        decoder.push(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    })
    .await
}

/// Acts on one client message.
async fn on_message(
    session: &mut Session,
    transport: Transport,
    msg: Message,
    limits: &Limits,
) -> Flow {
    let res = match (transport, msg) {
        (Transport::WsPb, Message::Binary(b)) => frame::decode_client(&b, limits),
        (_, Message::Text(t)) if transport.is_json() => match std::str::from_utf8(&t) {
            Ok(text) => json::decode_client_json(text, limits),
            Err(_) => Err(ProtoError::BadJson("text message is not UTF-8".into())),
        },
        // A ping is answered; both count as activity (the idle timer restarts).
        (_, Message::Ping(p)) => {
            return session.send_reply(Reply::Shared(Prepared::pong(&p))).await;
        }
        (_, Message::Pong(_)) => return Flow::Continue,
        (_, Message::Close { .. }) => return Flow::Close(CloseReason::PeerClosed),
        (_, Message::Binary(_)) => Err(ProtoError::BadJson(format!(
            "binary message on a {SUBPROTOCOL_JSON} connection"
        ))),
        (_, Message::Text(_)) => Err(ProtoError::Malformed(format!(
            "text message on a {SUBPROTOCOL_PB} connection"
        ))),
    };
    match res {
        Ok(f) => dispatch(session, f).await,
        Err(e) => session.reject(&e).await,
    }
}

/// What the writer does next.
enum Next {
    /// A frame; `true` for a tick from the batch queue (counted pending by a
    /// [`DirectSink`]), `false` for a reply.
    Send(Outbound, bool),
    /// A batcher shard left the end of a partial direct write.
    Tail,
    Close(CloseReason),
    End,
}

/// Stops direct writes however the writer ends (its socket is done).
struct ClosesSink(Option<Arc<DirectSink>>);

impl Drop for ClosesSink {
    fn drop(&mut self) {
        if let Some(sink) = &self.0 {
            sink.close();
        }
    }
}

/// Owns the write half. Replies first (biased), then batches. Frames already
/// queued are written together in one vectored write: the cost the edge budgets
/// is write calls, not bytes. Every frame is a shared, prebuilt WebSocket frame;
/// nothing is copied per connection. With a [`DirectSink`], most ticks never
/// come here (a shard wrote them); the writer takes the socket from the shards
/// for each write and writes a tail they left first.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    direct: Option<Arc<DirectSink>>,
    mut control: mpsc::Receiver<Reply>,
    mut batches: mpsc::Receiver<Outbound>,
    transport: Transport,
    limits: Limits,
    egress: prometheus::IntCounter,
) {
    let sink = ClosesSink(direct);
    let sink = sink.0.as_deref();
    let mut batches_open = true;
    loop {
        let mut next = tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(c) => from_reply(c, transport, &limits),
                None => Next::End,
            },
            () = tail_left(sink) => Next::Tail,
            b = batches.recv(), if batches_open => match b {
                Some(o) => Next::Send(o, true),
                None => { batches_open = false; continue; }
            },
        };
        if let Next::Tail = next {
            match write_out(&mut wr, sink, &[], 0).await {
                Ok(n) => egress.inc_by(n as u64),
                Err(_) => return,
            }
            continue;
        }
        // The live path: one tick frame queued, nothing behind it. Written
        // straight away: no yield, no allocation (a member's tick costs one
        // wake-up and one write).
        let mut after = try_next(
            &mut control,
            &mut batches,
            &mut batches_open,
            transport,
            &limits,
        );
        if after.is_none()
            && let Next::Send(f, tick) = &next
        {
            match write_out(&mut wr, sink, std::slice::from_ref(f), u32::from(*tick)).await {
                Ok(n) => egress.inc_by(n as u64),
                Err(_) => return,
            }
            continue;
        }
        // More is queued (a catch-up, replies behind a tick, a writer that fell
        // behind): everything queued goes out in one vectored write.
        // Allocated per wake-up (sized to what is queued), never kept while idle.
        let queued = control.len() + batches.len() + 2;
        let mut frames: Vec<Outbound> = Vec::with_capacity(queued.min(MAX_COALESCE));
        let mut ticks = 0u32;
        let end = loop {
            match next {
                Next::Send(f, tick) => {
                    frames.push(f);
                    ticks += u32::from(tick);
                }
                // Written with the frames: the writer takes any tail first.
                Next::Tail => {}
                end => break Some(end),
            }
            if frames.len() >= MAX_COALESCE {
                break None;
            }
            match after.take().or_else(|| {
                try_next(
                    &mut control,
                    &mut batches,
                    &mut batches_open,
                    transport,
                    &limits,
                )
            }) {
                Some(n) => next = n,
                None => break None,
            }
        };
        match write_out(&mut wr, sink, &frames, ticks).await {
            Ok(n) => egress.inc_by(n as u64),
            Err(_) => return,
        }
        drop(frames);
        let reason = match end {
            None => continue,
            Some(Next::Close(reason)) => reason,
            Some(_) => CloseReason::PeerClosed,
        };
        // No tick may follow the close frame: stop the shards' direct writes first.
        if let Some(sink) = sink {
            sink.close();
        }
        let close = Prepared::close(reason.ws_code(), reason.text());
        if let Ok(n) = write_out(&mut wr, sink, std::slice::from_ref(&close), 0).await {
            egress.inc_by(n as u64);
        }
        let _ = wr.shutdown().await;
        return;
    }
}

/// Resolves when a shard left a tail for the writer; never without a sink.
async fn tail_left(sink: Option<&DirectSink>) {
    match sink {
        Some(s) => s.tail_left().await,
        None => std::future::pending().await,
    }
}

/// Writes `frames` (of which `ticks` came from the batch queue), first taking
/// the socket from the batcher shards and writing the tail of a partial direct
/// write, if one was left. Returns the bytes written.
async fn write_out<W: AsyncWrite + Unpin>(
    wr: &mut W,
    sink: Option<&DirectSink>,
    frames: &[Outbound],
    ticks: u32,
) -> std::io::Result<usize> {
    let Some(sink) = sink else {
        return write_frames(wr, frames).await;
    };
    sink.lock_writer().await;
    let tail = sink.take_tail();
    let res = async {
        let mut n = 0;
        if let Some(tail) = &tail {
            wr.write_all(tail).await?;
            n += tail.len();
        }
        Ok(n + write_frames(wr, frames).await?)
    }
    .await;
    sink.unlock_writer(ticks + u32::from(tail.is_some()));
    res
}

/// Writes every frame completely, as few `writev` calls as the socket allows.
/// Returns the bytes written.
async fn write_frames<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frames: &[Outbound],
) -> std::io::Result<usize> {
    let total: usize = frames.iter().map(|f| f.wire().len()).sum();
    let (mut first, mut offset) = (0usize, 0usize);
    while first < frames.len() {
        let n = poll_fn(|cx| {
            // Built per poll on the stack: borrowing the shared frames, copying nothing.
            let mut slices = [IoSlice::new(&[]); MAX_COALESCE];
            let mut k = 0;
            for (i, f) in frames[first..].iter().take(MAX_COALESCE).enumerate() {
                let skip = if i == 0 { offset } else { 0 };
                slices[k] = IoSlice::new(&f.wire()[skip..]);
                k += 1;
            }
            Pin::new(&mut *wr).poll_write_vectored(cx, &slices[..k])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 {
            let left = frames[first].wire().len() - offset;
            if n >= left {
                n -= left;
                first += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        // Empty frames cannot occur (a header is at least 2 bytes), but never spin.
        while first < frames.len() && frames[first].wire().len() == offset {
            first += 1;
            offset = 0;
        }
    }
    poll_fn(|cx| Pin::new(&mut *wr).poll_flush(cx)).await?;
    Ok(total)
}

/// The next queued item without waiting, replies first.
fn try_next(
    control: &mut mpsc::Receiver<Reply>,
    batches: &mut mpsc::Receiver<Outbound>,
    batches_open: &mut bool,
    transport: Transport,
    limits: &Limits,
) -> Option<Next> {
    match control.try_recv() {
        Ok(c) => return Some(from_reply(c, transport, limits)),
        Err(mpsc::error::TryRecvError::Disconnected) => return Some(Next::End),
        Err(mpsc::error::TryRecvError::Empty) => {}
    }
    if *batches_open {
        match batches.try_recv() {
            Ok(o) => return Some(Next::Send(o, true)),
            Err(mpsc::error::TryRecvError::Disconnected) => *batches_open = false,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
    }
    None
}

fn from_reply(c: Reply, transport: Transport, limits: &Limits) -> Next {
    match c {
        Reply::Frame(f) => Next::Send(encode_reply(&f, transport, limits), false),
        Reply::Shared(o) => Next::Send(o, false),
        Reply::Close(reason) => Next::Close(reason),
    }
}

/// Frames a reply for this connection (replies are per connection: built here).
fn encode_reply(f: &pb::ServerFrame, transport: Transport, limits: &Limits) -> Outbound {
    if transport.is_json() {
        let text = match JsonServerFrame::from_pb(f, limits) {
            Ok(j) => j.to_text(),
            // Only batches can fail to convert, and they never come this way.
            Err(e) => JsonServerFrame::Error {
                code: "internal".into(),
                message: e.to_string(),
            }
            .to_text(),
        };
        Prepared::new(OpCode::Text, text.as_bytes())
    } else {
        Prepared::encode(OpCode::Binary, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An edge on the memory bus and an embedded store, for tests that need
    /// a real [`Edge`] without a listener.
    async fn test_edge(dir: &std::path::Path) -> Arc<Edge> {
        let bus = Arc::new(danmaku_bus::MemoryBus::new(Default::default()));
        let store = danmaku_store::connect(&format!("embedded:{}", dir.join("e.db").display()))
            .await
            .unwrap();
        Edge::start(
            crate::config::EdgeConfig::default(),
            bus,
            store,
            danmaku_proto::token::TokenKey::new("s"),
            &prometheus::Registry::new(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    /// Every connection keeps its two tasks' futures for its whole life, so
    /// their size is paid per idle viewer: the paths that run rarely (frame
    /// handling, reliable wake-ups, close) are boxed while they run instead of
    /// being part of the resident state. This guards the idle-memory budget.
    #[tokio::test]
    async fn the_per_connection_tasks_stay_small() {
        let dir = tempfile::tempdir().unwrap();
        let edge = test_edge(dir.path()).await;
        let upgrade = hyper::upgrade::on(axum::http::Request::new(()));
        let conn = connection(
            Arc::clone(&edge),
            upgrade,
            Negotiated {
                transport: Transport::WsPb,
                layout: Layout::Dense,
            },
            TokenFacts::default(),
            "u".into(),
            None,
        );
        let conn_size = std::mem::size_of_val(&conn);
        let (_io2, peer2) = tokio::io::duplex(64);
        let (_c, control) = mpsc::channel::<Reply>(1);
        let (_b, batches) = mpsc::channel::<Outbound>(1);
        let writer = write_loop(
            peer2,
            None,
            control,
            batches,
            Transport::WsPb,
            edge.config.limits,
            edge.metrics.egress(Transport::WsPb).clone(),
        );
        let writer_size = std::mem::size_of_val(&writer);
        eprintln!("connection task {conn_size} B, writer task {writer_size} B");
        assert!(conn_size <= 1280, "connection task state is {conn_size} B");
        assert!(writer_size <= 1024, "writer task state is {writer_size} B");
    }

    #[test]
    fn accept_key_matches_rfc_6455() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn upgrade_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    #[test]
    fn upgrade_requests_are_checked_header_by_header() {
        let h = upgrade_headers();
        assert!(check_upgrade(&Method::GET, Version::HTTP_11, &h).is_ok());
        assert!(check_upgrade(&Method::POST, Version::HTTP_11, &h).is_err());
        assert!(check_upgrade(&Method::GET, Version::HTTP_2, &h).is_err());
        for (name, bad) in [
            (header::CONNECTION, "keep-alive"),
            (header::UPGRADE, "h2c"),
            (header::SEC_WEBSOCKET_VERSION, "8"),
        ] {
            let mut h = upgrade_headers();
            h.insert(name.clone(), HeaderValue::from_static(bad));
            assert!(
                check_upgrade(&Method::GET, Version::HTTP_11, &h).is_err(),
                "{name}: {bad}"
            );
        }
        let mut h = upgrade_headers();
        h.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(
            check_upgrade(&Method::GET, Version::HTTP_11, &h),
            Err("`Sec-WebSocket-Key` header missing")
        );
    }

    #[test]
    fn protobuf_is_preferred_when_both_subprotocols_are_offered() {
        let pick = |transport, layout| Some(Negotiated { transport, layout });
        let mut h = HeaderMap::new();
        assert_eq!(select_subprotocol(&h), None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, danmaku.v1.json"),
        );
        assert_eq!(
            select_subprotocol(&h),
            pick(Transport::WsJson, Layout::Plain)
        );
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("danmaku.v1.pb"),
        );
        assert_eq!(select_subprotocol(&h), pick(Transport::WsPb, Layout::Plain));
        // The compact batch layout wins wherever it is in the list, the
        // dense one over it.
        h.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("danmaku.v2.pb"),
        );
        assert_eq!(
            select_subprotocol(&h),
            pick(Transport::WsPb, Layout::Compact)
        );
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("danmaku.v3.pb, danmaku.v2.pb, danmaku.v1.pb"),
        );
        assert_eq!(select_subprotocol(&h), pick(Transport::WsPb, Layout::Dense));
    }

    /// A socket that accepts at most `step` bytes per write, to exercise partial
    /// vectored writes.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut left = self.step;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn partial_vectored_writes_still_write_every_frame_once_in_order() {
        let frames: Vec<Outbound> = (0..100u8)
            .map(|i| Prepared::new(OpCode::Binary, &vec![i; usize::from(i) * 3]))
            .collect();
        let want: Vec<u8> = frames.iter().flat_map(|f| f.wire().to_vec()).collect();
        for step in [1, 7, 300, usize::MAX] {
            let mut sock = Trickle {
                out: Vec::new(),
                step,
            };
            let n = write_frames(&mut sock, &frames).await.unwrap();
            assert_eq!(n, want.len());
            assert_eq!(sock.out, want, "step {step}");
        }
    }
}
