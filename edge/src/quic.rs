//! QUIC transport (quinn), ALPN `danmaku/2` (dense batches with dictionary 1)
//! or `danmaku/1` (plain batches).
//!
//! A client opens one bidirectional control stream; its first frame must be
//! `Auth{token}` (answered `AuthOk`, or `Error` and close). Frames on streams are
//! varint length-prefixed. Replies and reliable frames go back on the control
//! stream; danmaku batches on one server-opened unidirectional stream. Same
//! session, handlers, registry and idle rule as WebSocket.
//!
//! **One ordered path for batches.** Batches used to go as datagrams when they
//! fit and on the stream otherwise; the two paths overtook each other (a small
//! batch arrived before the big one flushed before it, breaking each sender's
//! order), and quinn drops the oldest queued datagrams silently when its send
//! buffer is full, so a slow QUIC viewer lost batches that no metric counted.
//! On the stream, batches arrive in flush order, QUIC flow control reaches
//! the writer, and a viewer that cannot keep up fills its batch queue, where
//! drops are counted in `danmaku_edge_slow_consumer_drops_total` exactly as
//! for WebSocket. Danmaku stay separate from the control stream, so a lost
//! packet of a batch never holds up a gift.
//!
//! **What a peer can make the edge hold.** quinn's defaults suit a general
//! server: 100 bidirectional + 100 unidirectional peer streams with ~1.25 MB
//! receive windows each and a ~1.25 MB buffer of received datagrams nobody
//! reads — some 250 MB one unauthenticated peer could pin. The protocol needs
//! far less, so [`transport_config`] grants exactly that: one bidirectional
//! stream (control), no peer unidirectional streams, no datagrams from the
//! peer, 64 KiB of receive window (client frames are acks, joins and pings),
//! and a bounded send window (`EdgeConfig::quic_send_window`). Until the `auth` frame arrives a frame may be at
//! most [`AUTH_FRAME_MAX`] bytes, and the QUIC handshake, the control stream
//! and the `auth` frame together must arrive within
//! `ClientLimits::handshake_timeout`, else the connection is closed with
//! `handshake_timeout` (counted in `danmaku_edge_refused_total`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use danmaku_proto::framing::{FrameReader, encode_prefixed};
use danmaku_proto::pb::client_frame;
use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{Layout, Limits, ProtoError, frame, pb};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;

use crate::account::TokenFacts;
use crate::channels::Outbound;
use crate::connection::{ConnectionGauge, Reader, WakeQueue, dispatch, finish_writer, serve};
use crate::node::Edge;
use crate::session::{CloseReason, Flow, Reply, Session};
use crate::transport::Transport;

/// How long closing waits for the peer to acknowledge the last control frames.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long closing waits, after the peer acknowledged the last frames, for
/// the peer to read them and close the connection itself.
const READ_GRACE: Duration = Duration::from_secs(1);
/// Largest chunk read from the control stream at once.
const READ_CHUNK: usize = 64 << 10;

/// Peer-opened streams: the control stream only. The edge opens its own
/// unidirectional batch stream, which these limits do not count.
const MAX_PEER_BIDI_STREAMS: u32 = 1;
const MAX_PEER_UNI_STREAMS: u32 = 0;
/// Bytes a peer may send ahead of the edge's reads, per stream and per
/// connection. Client frames are small; a large one (up to the frame limit)
/// still passes, in steps of this as the edge reads it.
const RECEIVE_WINDOW: u32 = 64 << 10;
/// Largest frame before the peer has authenticated: an `auth` frame is a token
/// of a few hundred bytes, so a peer that has not authenticated cannot make the
/// edge buffer a full-size frame.
pub(crate) const AUTH_FRAME_MAX: usize = 16 << 10;

/// The transport settings of every QUIC connection (see the module doc).
pub(crate) fn transport_config(config: &crate::config::EdgeConfig) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The transport must not time out before the edge's own heartbeat rule.
    let idle = config.idle_timeout() + Duration::from_secs(5);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_PEER_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_PEER_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(config.quic_send_window)
        // No datagrams either way: the edge never reads them, and batches go
        // on a stream (see the module doc). Not advertising them makes the
        // peer unable to send any (quinn also disables sending with this).
        .datagram_receive_buffer_size(None);
    t
}

/// Accepts connections until shutdown, then closes the endpoint.
pub(crate) async fn accept_loop(edge: Arc<Edge>, endpoint: quinn::Endpoint) {
    loop {
        let incoming = tokio::select! {
            biased;
            _ = edge.shutdown.cancelled() => break,
            i = endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { break };
        tokio::spawn(handle(Arc::clone(&edge), incoming));
    }
    endpoint.close(
        VarInt::from_u32(CloseReason::Shutdown.quic_code()),
        CloseReason::Shutdown.text().as_bytes(),
    );
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
}

/// Why reading the next frame stopped.
enum ReadEnd {
    /// Stream finished or connection lost.
    Closed,
    Bad(ProtoError),
}

async fn next_frame(
    recv: &mut RecvStream,
    reader: &mut FrameReader,
    limits: &Limits,
) -> Result<pb::ClientFrame, ReadEnd> {
    loop {
        match reader.next_frame() {
            Ok(Some(buf)) => return frame::decode_client(&buf, limits).map_err(ReadEnd::Bad),
            Ok(None) => {}
            Err(e) => return Err(ReadEnd::Bad(e)),
        }
        match recv.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) | Err(_) => return Err(ReadEnd::Closed),
        }
    }
}

/// One connection, from the first packet to the close.
///
/// This future lives as long as the connection, and a future is as large as
/// its largest state, so the handshake with its auth frame — much state for a
/// short time — runs boxed (allocated while it runs, freed after), and the
/// stages are combinators, so the long-lived part is only [`serve`] and a few
/// handles.
///
/// Not an `async fn`: its arguments would stay in the future for its whole
/// life, and a `quinn::Incoming` is some 400 bytes that only the handshake needs.
fn handle(edge: Arc<Edge>, incoming: quinn::Incoming) -> impl Future<Output = ()> + Send {
    use futures_util::FutureExt;
    Box::pin(handshake(Arc::clone(&edge), incoming)).then(move |authed| match authed {
        Some(authed) => run(edge, authed).left_future(),
        None => std::future::ready(()).right_future(),
    })
}

/// The batch layout the ALPN the handshake agreed on stands for.
fn batch_layout(conn: &quinn::Connection) -> Layout {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    match alpn.as_deref() {
        Some(crate::tls::ALPN_DENSE) => Layout::Dense,
        _ => Layout::Plain,
    }
}

/// The connection after [`handshake`] until it closes: the session, its
/// writer and [`serve`], which admits it and runs it.
fn run(edge: Arc<Edge>, authed: Authed) -> impl Future<Output = ()> + Send {
    use futures_util::FutureExt;
    let Authed {
        conn,
        send,
        recv,
        mut reader,
        user,
        token,
    } = authed;
    let limits = edge.config.limits;
    reader.set_max_frame(limits.max_frame_bytes);

    if edge.is_draining() {
        let f = frame::error(
            "draining",
            "this edge is draining: ask the scheduler for another",
        );
        let refusing = async move {
            refuse(&edge, &conn, send, &f, CloseReason::Shutdown).await;
        };
        return Box::pin(refusing).left_future();
    }
    let gauge = ConnectionGauge::open(&edge, Transport::Quic);
    let (mut session, queues) = Session::open(Arc::clone(&edge), user, Transport::Quic);
    session.batch_layout = batch_layout(&conn);
    tracing::debug!(conn_id = session.conn_id, user = %session.user, remote = %conn.remote_address(), "QUIC connected");
    let writer = tokio::spawn(write_loop(
        send,
        conn.clone(),
        queues.replies,
        queues.batches,
        edge.metrics.egress(Transport::Quic).clone(),
    ));
    let ip = Some(conn.remote_address().ip());
    let reader = QuicReader {
        recv,
        reader,
        limits,
    };
    // A combinator, not `async { serve(…).await; … }`: awaiting a captured
    // future moves it into a second slot of the same size.
    let wakes = WakeQueue::new(queues.wakes, queues.overflow);
    serve(session, reader, wakes, ip, token)
        .then(move |_| async move {
            finish_writer(writer, CLOSE_LINGER * 2).await;
            drop((gauge, conn));
        })
        .right_future()
}

/// A connection whose peer opened the control stream and sent a valid `auth`.
struct Authed {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    /// Holds what the peer sent after the `auth` frame.
    reader: FrameReader,
    user: String,
    token: TokenFacts,
}

/// The QUIC handshake, the control stream and the `auth` frame, within one
/// deadline. `None` when the connection was refused (and closed) or lost.
async fn handshake(edge: Arc<Edge>, incoming: quinn::Incoming) -> Option<Authed> {
    let handshake = edge.config.client_limits.handshake_timeout;
    // One deadline for the QUIC handshake, the control stream and the auth frame.
    let deadline = tokio::time::Instant::now() + handshake;
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            return None;
        }
        Err(_) => {
            // Dropping the connecting future abandons the handshake.
            edge.metrics.refused("handshake_timeout");
            return None;
        }
    };
    let limits = edge.config.limits;
    let (send, mut recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        other => {
            if other.is_err() {
                edge.metrics.refused("handshake_timeout");
            }
            conn.close(
                VarInt::from_u32(CloseReason::Idle.quic_code()),
                b"no control stream",
            );
            return None;
        }
    };
    let mut reader = FrameReader::new(limits.max_frame_bytes.min(AUTH_FRAME_MAX));

    // Authenticate before anything else is accepted or registered.
    let first =
        tokio::time::timeout_at(deadline, next_frame(&mut recv, &mut reader, &limits)).await;
    let (f, reason) = match first {
        Ok(Ok(pb::ClientFrame {
            body: Some(client_frame::Body::Auth(auth)),
            ..
        })) => match edge.verify_token(&auth.token) {
            Ok(claims) => {
                return Some(Authed {
                    conn,
                    send,
                    recv,
                    reader,
                    // The account policy is checked when the session starts
                    // (`connection/mod.rs`), for both transports.
                    token: TokenFacts::from(&claims),
                    user: claims.sub,
                });
            }
            Err(e) => (
                frame::error("bad_token", e.to_string()),
                CloseReason::BadToken,
            ),
        },
        Ok(Ok(_)) => (
            frame::error("auth_required", "the first frame must be auth"),
            CloseReason::BadToken,
        ),
        Ok(Err(ReadEnd::Bad(e))) => {
            edge.metrics.bad_frame(e.code());
            (frame::error(e.code(), e.to_string()), CloseReason::BadFrame)
        }
        Ok(Err(ReadEnd::Closed)) => return None,
        Err(_elapsed) => {
            edge.metrics.refused("handshake_timeout");
            let f = frame::error(
                "handshake_timeout",
                format!("no auth frame within {} s", handshake.as_secs()),
            );
            (f, CloseReason::Idle)
        }
    };
    refuse(&edge, &conn, send, &f, reason).await;
    None
}

/// The reading half of a QUIC connection: the control stream through the
/// length-prefix framing.
struct QuicReader {
    recv: RecvStream,
    reader: FrameReader,
    limits: Limits,
}

impl Reader for QuicReader {
    type Message = Result<pb::ClientFrame, ProtoError>;

    async fn next(&mut self) -> Option<Self::Message> {
        match next_frame(&mut self.recv, &mut self.reader, &self.limits).await {
            Ok(f) => Some(Ok(f)),
            Err(ReadEnd::Bad(e)) => Some(Err(e)),
            Err(ReadEnd::Closed) => None,
        }
    }

    async fn on_message(&mut self, session: &mut Session, msg: Self::Message) -> Flow {
        match msg {
            // Boxed: dispatching (a join, a gift) needs far more state than
            // the idle connection that waits here most of its life.
            Ok(f) => Box::pin(dispatch(session, f)).await,
            Err(e) => Box::pin(session.reject(&e)).await,
        }
    }
}

/// Sends one error frame (counted in `errors_total{code}`) on the control
/// stream, then closes the connection.
async fn refuse(
    edge: &Edge,
    conn: &Connection,
    mut send: SendStream,
    f: &pb::ServerFrame,
    reason: CloseReason,
) {
    if let Some(Body::Error(e)) = &f.body {
        edge.metrics.error(&e.code);
    }
    let _ = send.write_all(&encode_prefixed(&frame::encode(f))).await;
    close(conn, send, reason).await;
}

/// Finishes the control stream, waits (bounded) until the peer acknowledged
/// it — closing at once would discard frames still in flight — then closes.
/// Acknowledged is not read: the peer's QUIC stack drops stream data its
/// application has not read yet when the connection closes, so a last
/// `error` frame (why it ends: `token_revoked`, `too_many_connections`, …)
/// could be lost on a busy client. The peer gets [`READ_GRACE`] to read it
/// and close the connection itself (the SDKs do on such an error).
async fn close(conn: &Connection, mut send: SendStream, reason: CloseReason) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
        let _ = tokio::time::timeout(READ_GRACE, conn.closed()).await;
    }
    conn.close(
        VarInt::from_u32(reason.quic_code()),
        reason.text().as_bytes(),
    );
}

/// Owns the control send stream and the batch path. Replies first, then batches.
/// Shared frames are prebuilt WebSocket frames; QUIC sends their payload, a
/// slice of the same buffer (JSON frames never reach a QUIC member).
async fn write_loop(
    mut send: SendStream,
    conn: Connection,
    mut control: mpsc::Receiver<Reply>,
    mut batches: mpsc::Receiver<Outbound>,
    egress: prometheus::IntCounter,
) {
    let mut batch_stream: Option<SendStream> = None;
    let mut batches_open = true;
    loop {
        tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Reply::Frame(f)) => {
                    let bytes = encode_prefixed(&frame::encode(&f));
                    if send.write_all(&bytes).await.is_err() {
                        return;
                    }
                    egress.inc_by(bytes.len() as u64);
                }
                Some(Reply::Shared(prepared)) => {
                    let bytes = encode_prefixed(&prepared.payload());
                    if send.write_all(&bytes).await.is_err() {
                        return;
                    }
                    egress.inc_by(bytes.len() as u64);
                }
                Some(Reply::Close(reason)) => {
                    close(&conn, send, reason).await;
                    return;
                }
                None => {
                    close(&conn, send, CloseReason::PeerClosed).await;
                    return;
                }
            },
            b = batches.recv(), if batches_open => match b {
                Some(prepared) => match send_batch(&conn, &mut batch_stream, prepared.payload()).await {
                    Ok(n) => egress.inc_by(n as u64),
                    Err(()) => return,
                },
                None => batches_open = false,
            },
        }
    }
}

/// A batch, length-prefixed, on the batch stream (opened on first use).
/// Returns the bytes handed to QUIC. The payload is the shared `Bytes` of the
/// channel's frame: QUIC keeps a reference, not a copy.
async fn send_batch(
    conn: &Connection,
    stream: &mut Option<SendStream>,
    bytes: Bytes,
) -> Result<usize, ()> {
    let len = bytes.len();
    let s = match stream {
        Some(s) => s,
        None => stream.insert(conn.open_uni().await.map_err(|_| ())?),
    };
    let mut prefix = BytesMut::with_capacity(10);
    prost::encoding::encode_varint(len as u64, &mut prefix);
    let prefix_len = prefix.len();
    s.write_all_chunks(&mut [prefix.freeze(), bytes])
        .await
        .map_err(|_| ())?;
    Ok(prefix_len + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Size of the future `f` returns for arguments of types `A`, `B`.
    fn future_size2<A, B, F>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size5<A, B, C, D, E, F>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds its `handle` future for life (~2.5 KB in a
    /// release build; BENCHMARKS.md, "Edge cost per QUIC connection"). Its
    /// big states are boxed or kept out, so it is `serve` plus a few
    /// pointers: no `Incoming` argument, no second copy of the session,
    /// no dispatch state inline.
    #[test]
    fn the_per_connection_future_is_serve_plus_a_little() {
        let handle = future_size2::<Arc<Edge>, quinn::Incoming, _>(handle);
        let serve = future_size5::<
            Session,
            QuicReader,
            WakeQueue,
            Option<std::net::IpAddr>,
            TokenFacts,
            _,
        >(serve::<QuicReader>);
        let on_message =
            future_size2::<&'static mut QuicReader, &'static mut Session, _>(|r, s| {
                r.on_message(s, Ok(pb::ClientFrame::default()))
            });
        let dispatch = future_size2::<&'static mut Session, pb::ClientFrame, _>(dispatch);
        eprintln!("future sizes: handle {handle} B, serve {serve} B, on_message {on_message} B");
        assert!(
            handle <= serve + 256,
            "handle {handle} B vs serve {serve} B"
        );
        assert!(
            on_message < dispatch,
            "on_message {on_message} B, dispatch {dispatch} B"
        );
    }
}
