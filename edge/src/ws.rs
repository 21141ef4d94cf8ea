//! WebSocket transport: `GET /v1/ws?token=…` with subprotocol `danmaku.v1.json`
//! (text) or `danmaku.v1.pb` (binary protobuf).
//!
//! The token and subprotocol are checked before the upgrade, so a refused client
//! gets a plain HTTP error with docs/PROTOCOL.md's JSON body. After the upgrade the socket
//! is split: the reader loop here decodes frames and dispatches them to the
//! session; a writer task owns the sink (see `session.rs` for the queues).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use danmaku_proto::json::JsonServerFrame;
use danmaku_proto::{Limits, ProtoError, frame, json, pb};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::Edge;
use crate::error::ApiError;
use crate::registry::{Outbound, Transport};
use crate::session::{
    CONTROL_QUEUE, CloseReason, ConnectionGauge, Control, Flow, Session, next_wake,
};

/// Subprotocol for JSON text frames (browsers, debugging).
pub const SUBPROTOCOL_JSON: &str = "danmaku.v1.json";
/// Subprotocol for binary protobuf frames.
pub const SUBPROTOCOL_PB: &str = "danmaku.v1.pb";

/// How long a closing connection may take to flush its last frames.
const WRITER_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

pub(crate) async fn upgrade(
    State(edge): State<Arc<Edge>>,
    Query(query): Query<WsQuery>,
    // Present when the server was started with connect info (per-IP caps).
    peer: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ip = peer.map(|axum::Extension(ConnectInfo(addr))| addr.ip());
    let token = query.token.unwrap_or_default();
    let claims = match edge.verify_token(&token) {
        Ok(c) => c,
        Err(e) => {
            edge.metrics.error("bad_token");
            return ApiError::new(StatusCode::UNAUTHORIZED, "bad_token", e.to_string())
                .into_response();
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            edge.metrics.error("not_websocket");
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "not_websocket",
                rejection.body_text(),
            )
            .into_response();
        }
    };
    let ws = ws.protocols([SUBPROTOCOL_PB, SUBPROTOCOL_JSON]);
    let transport = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(SUBPROTOCOL_PB) => Transport::WsPb,
        Some(SUBPROTOCOL_JSON) => Transport::WsJson,
        _ => {
            edge.metrics.error("bad_subprotocol");
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_subprotocol",
                format!("request subprotocol {SUBPROTOCOL_JSON} or {SUBPROTOCOL_PB}"),
            )
            .into_response();
        }
    };
    // Room for a frame a bit over the limit, so an oversize frame is answered
    // with a `frame_too_large` error frame rather than a bare protocol error.
    let max = edge
        .config
        .limits
        .max_frame_bytes
        .saturating_mul(2)
        .max(64 << 10);
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| run(edge, socket, transport, claims, ip))
}

async fn run(
    edge: Arc<Edge>,
    socket: WebSocket,
    transport: Transport,
    claims: danmaku_proto::token::Claims,
    ip: Option<std::net::IpAddr>,
) {
    let user = claims.sub;
    let conn_id = edge.next_conn_id();
    let _gauge = ConnectionGauge::open(&edge, transport);
    tracing::debug!(conn_id, user = %user, transport = transport.label(), "websocket connected");
    let (sink, mut stream) = socket.split();
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (reliable_tx, mut reliable_rx) = mpsc::unbounded_channel();
    let (batch_tx, batch_rx) = mpsc::channel(edge.config.send_queue_frames.max(1));
    let writer = tokio::spawn(write_loop(
        sink,
        control_rx,
        batch_rx,
        transport,
        edge.config.limits,
    ));
    let mut session = Session::new(
        Arc::clone(&edge),
        conn_id,
        user.clone(),
        transport,
        control_tx,
        batch_tx,
        reliable_tx,
    );
    let limits = edge.config.limits;
    let idle = edge.config.idle_timeout();
    let mut flow = session.start(ip, claims.exp).await;
    while flow == Flow::Continue {
        let deadline = session.reliable_deadline();
        let next = tokio::select! {
            biased;
            _ = edge.shutdown.cancelled() => { flow = Flow::Close(CloseReason::Shutdown); break; }
            _ = session.writer_gone() => { flow = Flow::Close(CloseReason::PeerClosed); break; }
            wake = next_wake(&mut reliable_rx, deadline) => Err(wake),
            next = tokio::time::timeout(idle, stream.next()) => Ok(next),
        };
        let next = match next {
            Ok(next) => next,
            Err(wake) => {
                flow = session.on_wake(wake).await;
                continue;
            }
        };
        let msg = match next {
            Err(_elapsed) => {
                tracing::debug!(conn_id, "idle timeout");
                flow = Flow::Close(CloseReason::Idle);
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // Protocol violations (e.g. a message far above the limit) end here
                // without an error frame: the stream is no longer usable.
                edge.metrics.bad_frame("websocket_protocol");
                tracing::debug!(conn_id, error = %e, "websocket read failed");
                flow = Flow::Close(CloseReason::PeerClosed);
                break;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        flow = match decode(transport, msg, &limits) {
            Decoded::Frame(f) => session.dispatch(f).await,
            Decoded::Skip => Flow::Continue,
            Decoded::Closed => break,
            Decoded::Bad(e) => session.reject(&e).await,
        };
    }
    let reason = match flow {
        Flow::Close(r) => r,
        Flow::Continue => CloseReason::PeerClosed,
    };
    tracing::debug!(conn_id, reason = reason.text(), "websocket closing");
    session.close(reason).await;
    let mut writer = writer;
    if tokio::time::timeout(WRITER_DRAIN, &mut writer)
        .await
        .is_err()
    {
        // The peer does not read: drop the socket rather than wait on it.
        writer.abort();
    }
}

enum Decoded {
    Frame(pb::ClientFrame),
    Skip,
    Closed,
    Bad(ProtoError),
}

fn decode(transport: Transport, msg: Message, limits: &Limits) -> Decoded {
    let res = match (transport, msg) {
        (Transport::WsPb, Message::Binary(b)) => frame::decode_client(&b, limits),
        (_, Message::Text(t)) if transport.is_json() => json::decode_client_json(&t, limits),
        // Control frames: tungstenite answers pings itself; they still count as activity.
        (_, Message::Ping(_) | Message::Pong(_)) => return Decoded::Skip,
        (_, Message::Close(_)) => return Decoded::Closed,
        (_, Message::Binary(_)) => Err(ProtoError::BadJson(format!(
            "binary message on a {SUBPROTOCOL_JSON} connection"
        ))),
        (_, Message::Text(_)) => Err(ProtoError::Malformed(format!(
            "text message on a {SUBPROTOCOL_PB} connection"
        ))),
    };
    match res {
        Ok(f) => Decoded::Frame(f),
        Err(e) => Decoded::Bad(e),
    }
}

/// Most frames written back to back before one flush.
const MAX_COALESCE: usize = 64;

/// What the writer does next.
enum Next {
    Send(Message),
    Close(CloseReason),
    End,
}

/// Owns the socket's sink. Replies first (biased), then batches. Frames that
/// are already queued are fed together and flushed once: the cost the edge
/// budgets is `send()` calls, not bytes (BENCHMARKS.md).
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut control: mpsc::Receiver<Control>,
    mut batches: mpsc::Receiver<Outbound>,
    transport: Transport,
    limits: Limits,
) {
    let mut batches_open = true;
    loop {
        let mut next = tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(c) => from_control(c, transport, &limits),
                None => Next::End,
            },
            b = batches.recv(), if batches_open => match b {
                Some(o) => Next::Send(from_outbound(o)),
                None => { batches_open = false; continue; }
            },
        };
        let mut fed = 0;
        loop {
            match next {
                Next::Send(msg) => {
                    if sink.feed(msg).await.is_err() {
                        return;
                    }
                }
                Next::Close(reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: reason.ws_code(),
                            reason: reason.text().into(),
                        })))
                        .await;
                    let _ = sink.close().await;
                    return;
                }
                Next::End => {
                    let _ = sink.close().await;
                    return;
                }
            }
            fed += 1;
            if fed >= MAX_COALESCE {
                break;
            }
            match try_next(
                &mut control,
                &mut batches,
                &mut batches_open,
                transport,
                &limits,
            ) {
                Some(n) => next = n,
                None => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// The next queued item without waiting, replies first.
fn try_next(
    control: &mut mpsc::Receiver<Control>,
    batches: &mut mpsc::Receiver<Outbound>,
    batches_open: &mut bool,
    transport: Transport,
    limits: &Limits,
) -> Option<Next> {
    match control.try_recv() {
        Ok(c) => return Some(from_control(c, transport, limits)),
        Err(mpsc::error::TryRecvError::Disconnected) => return Some(Next::End),
        Err(mpsc::error::TryRecvError::Empty) => {}
    }
    if *batches_open {
        match batches.try_recv() {
            Ok(o) => return Some(Next::Send(from_outbound(o))),
            Err(mpsc::error::TryRecvError::Disconnected) => *batches_open = false,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
    }
    None
}

fn from_control(c: Control, transport: Transport, limits: &Limits) -> Next {
    match c {
        Control::Frame(f) => Next::Send(encode_reply(&f, transport, limits)),
        Control::Shared(o) => Next::Send(from_outbound(o)),
        Control::Close(reason) => Next::Close(reason),
    }
}

fn from_outbound(o: Outbound) -> Message {
    match o {
        Outbound::Binary(bytes) => Message::Binary(bytes),
        Outbound::Text(text) => Message::Text(text),
    }
}

fn encode_reply(f: &pb::ServerFrame, transport: Transport, limits: &Limits) -> Message {
    if transport.is_json() {
        match JsonServerFrame::from_pb(f, limits) {
            Ok(j) => Message::Text(j.to_text().into()),
            // Only batches can fail to convert, and they never come this way.
            Err(e) => Message::Text(
                JsonServerFrame::Error {
                    code: "internal".into(),
                    message: e.to_string(),
                }
                .to_text()
                .into(),
            ),
        }
    } else {
        Message::Binary(frame::encode(f))
    }
}
