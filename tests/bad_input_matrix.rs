//! The bad-input matrix: one table of inputs over HTTP, WebSocket (JSON and
//! protobuf) and QUIC, each with the status or `error` code it must get and the
//! metric that must count it. After every case a bystander (connected before the
//! first case, on its own user) must still be served: a ping answered on its
//! WebSocket and, at the end, a gift posted and delivered to it.
//!
//! Everything is real: an in-process standalone server on loopback sockets (a
//! second one in dev-token mode for the dev endpoint), raw tungstenite and
//! quinn clients for bytes the SDK would never send, the SDK for the rest.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use danmaku::standalone::Running;
use danmaku_client::{Client, ClientConfig, ServerEvent, Transport};
use danmaku_proto::framing::{FrameReader, encode_prefixed};
use danmaku_proto::pb::client_frame::Body as C;
use danmaku_proto::token::{Claims, TokenKey, now_secs};
use danmaku_proto::{Limits, frame, pb};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

/// How long a connection gets to close after an error frame before it counts as
/// kept open.
const CLOSE_WAIT: Duration = Duration::from_millis(2500);

/// A secret the server accepts besides `common::SECRET` (key rotation).
const OLD_SECRET: &str = "matrix-old-secret";

struct Ctx {
    srv: Running,
    base: String,
    quic: SocketAddr,
    cert: Vec<u8>,
    /// A standalone without `--auth-secret` (dev tokens on, app tokens off).
    dev_base: String,
}

impl Ctx {
    fn token(&self, user: &str) -> String {
        common::token(&self.srv, user)
    }
    fn token_exp(&self, user: &str, ttl: u64) -> String {
        self.srv.tokens.mint(user, "user", now_secs(), ttl)
    }
    fn app(&self) -> String {
        self.srv.tokens.mint("backend", "app", now_secs(), 3600)
    }
}

/// What a case observed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// HTTP status and `error.code` (empty for a success).
    Http(u16, String),
    /// The `error` frame's code; `closed`: the server then closed the connection.
    Frame { code: String, closed: bool },
    /// A `left` frame: its channel and reason, as the server sent them.
    Left { channel: String, reason: String },
}

fn http(status: u16, code: &str) -> Seen {
    Seen::Http(status, code.to_owned())
}
fn frame_kept(code: &str) -> Seen {
    Seen::Frame {
        code: code.to_owned(),
        closed: false,
    }
}
fn frame_closed(code: &str) -> Seen {
    Seen::Frame {
        code: code.to_owned(),
        closed: true,
    }
}

type Run = for<'a> fn(&'a Ctx) -> Pin<Box<dyn Future<Output = Seen> + Send + 'a>>;

struct Case {
    name: &'static str,
    transport: &'static str,
    expect: Seen,
    /// The metric (name, labels) that must grow by at least one.
    metric: (&'static str, &'static [(&'static str, &'static str)]),
    run: Run,
}

macro_rules! case {
    ($name:expr, $transport:expr, $expect:expr, $metric:expr, $labels:expr, |$ctx:ident| $body:expr) => {
        Case {
            name: $name,
            transport: $transport,
            expect: $expect,
            metric: ($metric, $labels),
            run: |$ctx| Box::pin(async move { $body }),
        }
    };
}

// ------------------------------------------------------------------ HTTP helpers

async fn http_call(method: &str, url: String, token: Option<String>, body: Option<String>) -> Seen {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    if !code.is_empty() {
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without a message: {body}"
        );
    }
    Seen::Http(status, code)
}

async fn post(ctx: &Ctx, token: Option<String>, channel: &str, body: Value) -> Seen {
    http_call(
        "POST",
        format!("{}/v1/channels/{channel}/messages", ctx.base),
        token,
        Some(body.to_string()),
    )
    .await
}

async fn post_raw(ctx: &Ctx, token: Option<String>, channel: &str, body: String) -> Seen {
    http_call(
        "POST",
        format!("{}/v1/channels/{channel}/messages", ctx.base),
        token,
        Some(body),
    )
    .await
}

fn danmaku(text: &str) -> Value {
    json!({"kind": "danmaku", "text": text})
}

// ------------------------------------------------------------- socket helpers

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_ws(base: &str, token: &str, protocol: &str) -> Ws {
    let url = format!("{}/v1/ws?token={token}", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws upgrade");
    ws
}

/// The HTTP answer to a WebSocket upgrade the edge refuses.
async fn ws_refused(base: &str, token: &str, protocol: &str) -> Seen {
    let url = format!("{}/v1/ws?token={token}", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let status = resp.status().as_u16();
            let body: Value = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Seen::Http(status, body["error"]["code"].as_str().unwrap_or("").into())
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade accepted"),
    }
}

/// Reads a raw socket until an `error` frame; then whether it closes within 3 s.
async fn raw_ws_error(ws: &mut Ws, json: bool) -> Seen {
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) if !json => {
                    if let Ok(pb::ServerFrame {
                        body: Some(pb::server_frame::Body::Error(e)),
                        ..
                    }) = frame::decode_server(&b, &Limits::default())
                    {
                        return e.code;
                    }
                }
                Ok(Message::Text(t)) if json => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "error" {
                        return v["code"].as_str().unwrap().to_owned();
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("closed before an error frame");
    })
    .await
    .expect("an error frame within 10 s");
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok();
    Seen::Frame { code, closed }
}

async fn sdk(ctx: &Ctx, transport: Transport, token: &str) -> Client {
    let config = ClientConfig::default();
    match transport {
        Transport::Quic => Client::connect_quic(ctx.quic, Some(ctx.cert.clone()), token, config)
            .await
            .expect("quic connect"),
        t => Client::connect_ws(&ctx.base, token, t, config)
            .await
            .expect("ws connect"),
    }
}

/// Reads SDK events until an `error` (or a server-sent `left`); then
/// whether the connection ends within 3 s.
async fn sdk_error(client: &mut Client) -> Seen {
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = client.next_event().await {
            match ev {
                ServerEvent::Error { code, .. } => return Ok(code),
                // An empty reason answers the client's own `leave` (floods send
                // them); any other is the server removing it, reported as sent.
                ServerEvent::Left { channel, reason } if !reason.is_empty() => {
                    return Err(Seen::Left { channel, reason });
                }
                _ => {}
            }
        }
        panic!("connection ended before an error frame");
    })
    .await
    .expect("an error frame within 10 s");
    let code = match seen {
        Ok(code) => code,
        Err(left) => return left,
    };
    let closed = tokio::time::timeout(CLOSE_WAIT, async {
        while client.next_event().await.is_some() {}
    })
    .await
    .is_ok();
    Seen::Frame { code, closed }
}

/// A session whose token expires 2–3 s after connecting: it works before (a
/// joined room and a ping answered), then gets `token_expired` and is closed.
async fn token_expires_mid_session(ctx: &Ctx, transport: Transport, user: &str) -> Seen {
    let mut client = sdk(ctx, transport, &ctx.token_exp(user, 3)).await;
    client.join("room:expiry").await.unwrap();
    common::wait_joined(&mut client, "room:expiry").await;
    client.ping().await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(ev) = client.next_event().await {
            match ev {
                ServerEvent::Pong => return,
                ServerEvent::Error { code, .. } => panic!("{user}: {code} before expiry"),
                _ => {}
            }
        }
        panic!("{user}: closed before expiry");
    })
    .await
    .expect("a pong before the token expires");
    sdk_error(&mut client).await
}

/// Sends `frames` on a fresh SDK connection of a user of its own (named after
/// `user`, so per-user caps of earlier cases never interfere) and reports the
/// first error.
async fn sdk_frames(ctx: &Ctx, transport: Transport, user: &str, frames: Vec<C>) -> Seen {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut client = sdk(ctx, transport, &ctx.token(&format!("{user}-{n}"))).await;
    for f in frames {
        client.send_raw(frame::client(f)).await.unwrap();
    }
    sdk_error(&mut client).await
}

fn join(channel: &str) -> C {
    C::Join(pb::Join {
        channel: channel.into(),
    })
}

// ---------------------------------------------------------------- raw QUIC

async fn quic_conn(ctx: &Ctx) -> quinn::Connection {
    let tls = danmaku_client::quic::tls_config(Some(ctx.cert.clone())).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
        .connect(ctx.quic, "localhost")
        .unwrap()
        .await
        .expect("quic handshake")
}

/// Opens the control stream, writes `bytes`, and reads until an `error` frame.
async fn quic_raw(ctx: &Ctx, bytes: Vec<u8>) -> Seen {
    let conn = quic_conn(ctx).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&bytes).await.unwrap();
    quic_read_error(&conn, &mut recv).await
}

async fn quic_read_error(conn: &quinn::Connection, recv: &mut quinn::RecvStream) -> Seen {
    let mut reader = FrameReader::new(1 << 20);
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(buf) = reader.next_frame().unwrap() {
                if let Ok(pb::ServerFrame {
                    body: Some(pb::server_frame::Body::Error(e)),
                    ..
                }) = frame::decode_server(&buf, &Limits::default())
                {
                    return e.code;
                }
            }
            match recv.read_chunk(64 << 10, true).await {
                Ok(Some(c)) => reader.push(&c.bytes),
                _ => panic!("stream ended before an error frame"),
            }
        }
    })
    .await
    .expect("an error frame within 10 s");
    let closed = tokio::time::timeout(CLOSE_WAIT, conn.closed())
        .await
        .is_ok();
    Seen::Frame { code, closed }
}

fn prefixed(body: C) -> Vec<u8> {
    encode_prefixed(&frame::encode(&frame::client(body))).to_vec()
}

// ------------------------------------------------------------------ the table

fn cases() -> Vec<Case> {
    const REJ: &str = "danmaku_ingest_rejected_total";
    const ERR: &str = "danmaku_edge_errors_total";
    const REFUSED: &str = "danmaku_edge_refused_total";
    const BAD: &str = "danmaku_edge_bad_frames_total";
    vec![
        // ---- HTTP: tokens
        case!(
            "post without a token",
            "http",
            http(401, "missing_token"),
            REJ,
            &[("code", "missing_token")],
            |c| post(c, None, "room:m", danmaku("hi")).await
        ),
        case!(
            "garbage token",
            "http",
            http(401, "bad_token"),
            REJ,
            &[("code", "bad_token")],
            |c| post(c, Some("nope.nope".into()), "room:m", danmaku("hi")).await
        ),
        case!(
            "expired token",
            "http",
            http(401, "token_expired"),
            REJ,
            &[("code", "token_expired")],
            |c| post(
                c,
                Some(c.srv.tokens.mint("alice", "user", now_secs() - 100, 10)),
                "room:m",
                danmaku("hi")
            )
            .await
        ),
        case!(
            "token of an unknown secret",
            "http",
            http(401, "bad_token"),
            REJ,
            &[("code", "bad_token")],
            |c| post(
                c,
                Some(TokenKey::new("someone-else").mint("alice", "user", now_secs(), 60)),
                "room:m",
                danmaku("hi")
            )
            .await
        ),
        case!(
            "token naming an unknown key id",
            "http",
            http(401, "bad_token"),
            REJ,
            &[("code", "bad_token")],
            |c| {
                let t = TokenKey::new(common::SECRET).sign(&Claims {
                    sub: "alice".into(),
                    exp: now_secs() + 60,
                    role: "user".into(),
                    kid: Some("ffffffff".into()),
                    jti: None,
                    iat: None,
                });
                post(c, Some(t), "room:m", danmaku("hi")).await
            }
        ),
        case!(
            "token of the rotated-out (still accepted) secret",
            "http",
            http(202, ""),
            "danmaku_ingest_requests_total",
            &[("kind", "danmaku"), ("status", "202")],
            |c| post(
                c,
                Some(TokenKey::new(OLD_SECRET).mint("olduser", "user", now_secs(), 60)),
                "room:m",
                danmaku("hi")
            )
            .await
        ),
        // ---- HTTP: bodies and channels
        case!(
            "unknown channel kind",
            "http",
            http(400, "bad_channel"),
            REJ,
            &[("code", "bad_channel")],
            |c| post(c, Some(c.token("alice")), "lobby:1", danmaku("hi")).await
        ),
        case!(
            "channel id with a space",
            "http",
            http(400, "bad_channel"),
            REJ,
            &[("code", "bad_channel")],
            |c| post(c, Some(c.token("alice")), "room:a%20b", danmaku("hi")).await
        ),
        case!(
            "body is not JSON",
            "http",
            http(400, "bad_json"),
            REJ,
            &[("code", "bad_json")],
            |c| post_raw(c, Some(c.token("alice")), "room:m", "{not json".into()).await
        ),
        case!(
            "unknown kind",
            "http",
            http(400, "bad_kind"),
            REJ,
            &[("code", "bad_kind")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                json!({"kind": "like", "text": "x"})
            )
            .await
        ),
        case!(
            "empty text",
            "http",
            http(400, "empty_text"),
            REJ,
            &[("code", "empty_text")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                json!({"kind": "danmaku", "text": "  "})
            )
            .await
        ),
        case!(
            "text over 200 characters",
            "http",
            http(400, "text_too_long"),
            REJ,
            &[("code", "text_too_long")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                danmaku(&"长".repeat(201))
            )
            .await
        ),
        case!(
            "payload not an object",
            "http",
            http(400, "bad_payload"),
            REJ,
            &[("code", "bad_payload")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                json!({"kind": "gift", "text": "x", "payload": [1]})
            )
            .await
        ),
        case!(
            "blob that is not a blob id",
            "http",
            http(400, "bad_blob"),
            REJ,
            &[("code", "bad_blob")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                json!({"kind": "gift", "text": "x", "blob": "../../etc/passwd"})
            )
            .await
        ),
        case!(
            "blob never uploaded",
            "http",
            http(400, "unknown_blob"),
            REJ,
            &[("code", "unknown_blob")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                json!({"kind": "danmaku", "text": "x", "blob": "0".repeat(64)})
            )
            .await
        ),
        case!(
            "client_msg_id over 64 characters",
            "http",
            http(400, "bad_client_msg_id"),
            REJ,
            &[("code", "bad_client_msg_id")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                json!({"kind": "gift", "text": "x", "client_msg_id": "x".repeat(65)})
            )
            .await
        ),
        case!(
            "body over 8 KiB",
            "http",
            http(413, "body_too_large"),
            REJ,
            &[("code", "body_too_large")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                danmaku(&"x".repeat(9000))
            )
            .await
        ),
        case!(
            "chat outside a group",
            "http",
            http(400, "chat_needs_group"),
            REJ,
            &[("code", "chat_needs_group")],
            |c| post(
                c,
                Some(c.token("alice")),
                "room:m",
                json!({"kind": "chat", "text": "x"})
            )
            .await
        ),
        case!(
            "post to a group by a non-member",
            "http",
            http(403, "not_member"),
            REJ,
            &[("code", "not_member")],
            |c| post(
                c,
                Some(c.token("mallory")),
                "group:m",
                json!({"kind": "chat", "text": "x"})
            )
            .await
        ),
        // ---- HTTP: idempotency (item 1)
        case!(
            "reused client_msg_id with another body",
            "http",
            http(409, "idempotency_conflict"),
            REJ,
            &[("code", "idempotency_conflict")],
            |c| {
                let first = post(
                    c,
                    Some(c.token("alice")),
                    "room:gifts",
                    json!({"kind": "gift", "text": "rocket", "client_msg_id": "x"}),
                )
                .await;
                assert_eq!(first, http(200, ""));
                post(
                    c,
                    Some(c.token("alice")),
                    "room:gifts",
                    json!({"kind": "gift", "text": "castle", "client_msg_id": "x"}),
                )
                .await
            }
        ),
        case!(
            "another sender's gift with the same client_msg_id is stored",
            "http",
            http(200, ""),
            "danmaku_ingest_reliable_persisted_total",
            &[("kind", "gift")],
            |c| post(
                c,
                Some(c.token("bob")),
                "room:gifts",
                json!({"kind": "gift", "text": "castle", "client_msg_id": "x"})
            )
            .await
        ),
        // ---- HTTP: the rest of the API
        // ---- HTTP: moderation (nothing of a refused call is applied)
        case!(
            "word list with a word of invisible characters only",
            "http",
            http(400, "bad_wordlist"),
            REJ,
            &[("code", "bad_wordlist")],
            |c| http_call(
                "PUT",
                format!("{}/v1/channels/room:gifts/wordlist", c.base),
                Some(c.app()),
                Some(r#"{"block":["ok","\u200b\u00ad"]}"#.into())
            )
            .await
        ),
        case!(
            "global word list with a user token",
            "http",
            http(403, "forbidden"),
            REJ,
            &[("code", "forbidden")],
            |c| http_call(
                "PUT",
                format!("{}/v1/wordlist", c.base),
                Some(c.token("mallory")),
                Some(r#"{"block":["x"]}"#.into())
            )
            .await
        ),
        case!(
            "mute with negative seconds",
            "http",
            http(400, "bad_seconds"),
            REJ,
            &[("code", "bad_seconds")],
            |c| http_call(
                "PUT",
                format!("{}/v1/channels/room:gifts/mutes/bob", c.base),
                Some(c.app()),
                Some(r#"{"seconds":-60}"#.into())
            )
            .await
        ),
        case!(
            "mute by a user who moderates nothing",
            "http",
            http(403, "forbidden"),
            REJ,
            &[("code", "forbidden")],
            |c| http_call(
                "PUT",
                format!("{}/v1/channels/room:gifts/mutes/bob", c.base),
                Some(c.token("mallory")),
                Some(r#"{"seconds":60}"#.into())
            )
            .await
        ),
        case!(
            "room settings with an unknown field",
            "http",
            http(400, "bad_json"),
            REJ,
            &[("code", "bad_json")],
            |c| http_call(
                "PUT",
                format!("{}/v1/channels/room:gifts/settings", c.base),
                Some(c.app()),
                Some(r#"{"slow_mode_secs":5,"slowmode":1}"#.into())
            )
            .await
        ),
        case!(
            "ack of a made-up room",
            "http",
            http(404, "unknown_channel"),
            REJ,
            &[("code", "unknown_channel")],
            |c| http_call(
                "POST",
                format!("{}/v1/channels/room:made-up/ack", c.base),
                Some(c.token("alice")),
                Some(r#"{"seq":5}"#.into())
            )
            .await
        ),
        case!(
            "ack of a group by a non-member",
            "http",
            http(403, "not_member"),
            REJ,
            &[("code", "not_member")],
            |c| http_call(
                "POST",
                format!("{}/v1/channels/group:m/ack", c.base),
                Some(c.token("mallory")),
                Some(r#"{"seq":5}"#.into())
            )
            .await
        ),
        case!(
            "ack with a negative seq",
            "http",
            http(400, "bad_json"),
            REJ,
            &[("code", "bad_json")],
            |c| http_call(
                "POST",
                format!("{}/v1/channels/room:gifts/ack", c.base),
                Some(c.token("alice")),
                Some(r#"{"seq":-1}"#.into())
            )
            .await
        ),
        case!(
            "history with a bad limit",
            "http",
            http(400, "bad_query"),
            REJ,
            &[("code", "bad_query")],
            |c| http_call(
                "GET",
                format!("{}/v1/channels/room:gifts/messages?limit=0", c.base),
                Some(c.token("alice")),
                None
            )
            .await
        ),
        case!(
            "membership change with a user token",
            "http",
            http(403, "forbidden"),
            REJ,
            &[("code", "forbidden")],
            |c| http_call(
                "PUT",
                format!("{}/v1/groups/group:m/members/mallory", c.base),
                Some(c.token("mallory")),
                None
            )
            .await
        ),
        case!(
            "membership of a bad user id",
            "http",
            http(400, "bad_user"),
            REJ,
            &[("code", "bad_user")],
            |c| http_call(
                "PUT",
                format!("{}/v1/groups/group:m/members/a:b", c.base),
                Some(c.app()),
                None
            )
            .await
        ),
        case!(
            "history of a group by a non-member",
            "http",
            http(403, "not_member"),
            REJ,
            &[("code", "not_member")],
            |c| http_call(
                "GET",
                format!("{}/v1/channels/group:m/messages", c.base),
                Some(c.token("mallory")),
                None
            )
            .await
        ),
        case!(
            "ack body without seq",
            "http",
            http(400, "bad_json"),
            REJ,
            &[("code", "bad_json")],
            |c| http_call(
                "POST",
                format!("{}/v1/channels/room:gifts/ack", c.base),
                Some(c.token("alice")),
                Some(r#"{"sq":1}"#.into())
            )
            .await
        ),
        // ---- HTTP: dev tokens (item 6), on the dev-mode server
        case!(
            "dev app token without --dev-app-tokens",
            "http",
            http(403, "role_not_allowed"),
            REJ,
            &[("code", "role_not_allowed")],
            |c| http_call(
                "POST",
                format!("{}/v1/dev/token", c.dev_base),
                None,
                Some(r#"{"user":"mallory","role":"app"}"#.into())
            )
            .await
        ),
        case!(
            "dev token for a bad user id",
            "http",
            http(400, "bad_user"),
            REJ,
            &[("code", "bad_user")],
            |c| http_call(
                "POST",
                format!("{}/v1/dev/token", c.dev_base),
                None,
                Some(r#"{"user":"a b"}"#.into())
            )
            .await
        ),
        case!(
            "dev token of an unknown role",
            "http",
            http(400, "bad_role"),
            REJ,
            &[("code", "bad_role")],
            |c| http_call(
                "POST",
                format!("{}/v1/dev/token", c.dev_base),
                None,
                Some(r#"{"user":"a","role":"root"}"#.into())
            )
            .await
        ),
        case!(
            "token endpoint on a server with --auth-secret",
            "http",
            http(404, "not_found"),
            REJ,
            &[("code", "not_found")],
            |c| http_call(
                "POST",
                format!("{}/v1/dev/token", c.base),
                None,
                Some(r#"{"user":"a"}"#.into())
            )
            .await
        ),
        // ---- WebSocket upgrade
        case!(
            "ws upgrade with a bad token",
            "ws",
            http(401, "bad_token"),
            ERR,
            &[("code", "bad_token")],
            |c| ws_refused(&c.base, "nope", "danmaku.v1.pb").await
        ),
        case!(
            "ws upgrade with an unknown subprotocol",
            "ws",
            http(400, "bad_subprotocol"),
            ERR,
            &[("code", "bad_subprotocol")],
            |c| ws_refused(&c.base, &c.token("alice"), "danmaku.v9").await
        ),
        // ---- WebSocket protobuf
        case!(
            "pb: garbage bytes",
            "ws_pb",
            frame_closed("malformed_frame"),
            BAD,
            &[("code", "malformed_frame")],
            |c| {
                let mut ws = raw_ws(&c.base, &c.token("mallory"), "danmaku.v1.pb").await;
                ws.send(Message::Binary(vec![0xff, 0xff, 0xff].into()))
                    .await
                    .unwrap();
                raw_ws_error(&mut ws, false).await
            }
        ),
        case!(
            "pb: text message",
            "ws_pb",
            frame_closed("malformed_frame"),
            BAD,
            &[("code", "malformed_frame")],
            |c| {
                let mut ws = raw_ws(&c.base, &c.token("mallory"), "danmaku.v1.pb").await;
                ws.send(Message::Text("{}".into())).await.unwrap();
                raw_ws_error(&mut ws, false).await
            }
        ),
        case!(
            "pb: join of a bad channel",
            "ws_pb",
            frame_kept("bad_channel"),
            ERR,
            &[("code", "bad_channel")],
            |c| sdk_frames(c, Transport::WsPb, "mallory", vec![join("lobby:1")]).await
        ),
        case!(
            "pb: join of a group as a non-member",
            "ws_pb",
            frame_kept("not_member"),
            ERR,
            &[("code", "not_member")],
            |c| sdk_frames(c, Transport::WsPb, "mallory", vec![join("group:m")]).await
        ),
        case!(
            "pb: resume before join",
            "ws_pb",
            frame_kept("not_joined"),
            ERR,
            &[("code", "not_joined")],
            |c| sdk_frames(
                c,
                Transport::WsPb,
                "mallory",
                vec![C::Resume(pb::Resume {
                    channel: "room:m".into(),
                    after_seq: 0
                })]
            )
            .await
        ),
        case!(
            "pb: more channels than allowed",
            "ws_pb",
            frame_kept("too_many_channels"),
            ERR,
            &[("code", "too_many_channels")],
            |c| sdk_frames(
                c,
                Transport::WsPb,
                "mallory",
                (0..5).map(|i| join(&format!("room:c{i}"))).collect()
            )
            .await
        ),
        case!(
            "pb: auth frame with another user's token",
            "ws_pb",
            frame_kept("user_mismatch"),
            ERR,
            &[("code", "user_mismatch")],
            |c| sdk_frames(
                c,
                Transport::WsPb,
                "mallory",
                vec![C::Auth(pb::Auth {
                    token: c.token("alice")
                })]
            )
            .await
        ),
        case!(
            "pb: auth frame with a bad token",
            "ws_pb",
            frame_kept("bad_token"),
            ERR,
            &[("code", "bad_token")],
            |c| sdk_frames(
                c,
                Transport::WsPb,
                "mallory",
                vec![C::Auth(pb::Auth {
                    token: "x.y".into()
                })]
            )
            .await
        ),
        case!(
            "pb: join/leave flood over the connection budget",
            "ws_pb",
            frame_kept("rate_limited"),
            REFUSED,
            &[("code", "rate_limited")],
            |c| sdk_frames(
                c,
                Transport::WsPb,
                "flooder",
                (0..120)
                    .map(|i| if i % 2 == 0 {
                        join("room:f")
                    } else {
                        C::Leave(pb::Leave {
                            channel: "room:f".into(),
                        })
                    })
                    .collect()
            )
            .await
        ),
        case!(
            "pb: ack(u64::MAX) flood",
            "ws_pb",
            frame_kept("rate_limited"),
            REFUSED,
            &[("code", "rate_limited")],
            |c| sdk_frames(
                c,
                Transport::WsPb,
                "acker",
                std::iter::once(join("room:gifts"))
                    .chain((0..120).map(|_| C::Ack(pb::Ack {
                        channel: "room:gifts".into(),
                        seq: u64::MAX
                    })))
                    .collect()
            )
            .await
        ),
        case!(
            "pb: one connection more than the per-user cap",
            "ws_pb",
            frame_closed("too_many_connections"),
            REFUSED,
            &[("code", "too_many_connections")],
            |c| {
                let mut keep = Vec::new();
                for _ in 0..3 {
                    keep.push(sdk(c, Transport::WsPb, &c.token("many")).await);
                }
                let url = format!(
                    "{}/v1/ws?token={}",
                    c.base.replacen("http", "ws", 1),
                    c.token("many")
                );
                let mut req = url.into_client_request().unwrap();
                req.headers_mut()
                    .insert("sec-websocket-protocol", "danmaku.v1.pb".parse().unwrap());
                let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
                let seen = raw_ws_error(&mut ws, false).await;
                drop(keep);
                seen
            }
        ),
        case!(
            "pb: token expires during the session",
            "ws_pb",
            frame_closed("token_expired"),
            REFUSED,
            &[("code", "token_expired")],
            |c| token_expires_mid_session(c, Transport::WsPb, "shortlived").await
        ),
        // ---- WebSocket JSON
        case!(
            "json: malformed JSON",
            "ws_json",
            frame_closed("malformed_json"),
            BAD,
            &[("code", "malformed_json")],
            |c| {
                let mut ws = raw_ws(&c.base, &c.token("mallory"), "danmaku.v1.json").await;
                ws.send(Message::Text("{\"type\":\"join\",".into()))
                    .await
                    .unwrap();
                raw_ws_error(&mut ws, true).await
            }
        ),
        case!(
            "json: unknown frame type",
            "ws_json",
            frame_closed("malformed_json"),
            BAD,
            &[("code", "malformed_json")],
            |c| {
                let mut ws = raw_ws(&c.base, &c.token("mallory"), "danmaku.v1.json").await;
                ws.send(Message::Text(
                    r#"{"type":"shout","channel":"room:m"}"#.into(),
                ))
                .await
                .unwrap();
                raw_ws_error(&mut ws, true).await
            }
        ),
        case!(
            "json: binary message",
            "ws_json",
            frame_closed("malformed_json"),
            BAD,
            &[("code", "malformed_json")],
            |c| {
                let mut ws = raw_ws(&c.base, &c.token("mallory"), "danmaku.v1.json").await;
                ws.send(Message::Binary(vec![1, 2, 3].into()))
                    .await
                    .unwrap();
                raw_ws_error(&mut ws, true).await
            }
        ),
        case!(
            "json: token expires during the session",
            "ws_json",
            frame_closed("token_expired"),
            REFUSED,
            &[("code", "token_expired")],
            |c| token_expires_mid_session(c, Transport::WsJson, "shortlived-json").await
        ),
        case!(
            "json: join of a bad channel",
            "ws_json",
            frame_kept("bad_channel"),
            ERR,
            &[("code", "bad_channel")],
            |c| sdk_frames(c, Transport::WsJson, "mallory", vec![join("room:")]).await
        ),
        case!(
            "json: removed from a group while joined (item 5)",
            "ws_json",
            Seen::Left {
                channel: "group:r".into(),
                reason: "removed".into()
            },
            "danmaku_edge_members_removed_total",
            &[],
            |c| {
                let put = http_call(
                    "PUT",
                    format!("{}/v1/groups/group:r/members/leaver", c.base),
                    Some(c.app()),
                    None,
                )
                .await;
                assert_eq!(put, http(200, ""));
                let mut client = sdk(c, Transport::WsJson, &c.token("leaver")).await;
                client.join("group:r").await.unwrap();
                common::wait_joined(&mut client, "group:r").await;
                let del = http_call(
                    "DELETE",
                    format!("{}/v1/groups/group:r/members/leaver", c.base),
                    Some(c.app()),
                    None,
                )
                .await;
                assert_eq!(del, http(200, ""));
                let seen = sdk_error(&mut client).await;
                // Nothing of the group reaches the removed member afterwards.
                let put = http_call(
                    "PUT",
                    format!("{}/v1/groups/group:r/members/stayer", c.base),
                    Some(c.app()),
                    None,
                )
                .await;
                assert_eq!(put, http(200, ""));
                let chat = post(
                    c,
                    Some(c.token("stayer")),
                    "group:r",
                    json!({"kind": "chat", "text": "after"}),
                )
                .await;
                assert_eq!(chat, http(200, ""));
                let leaked = tokio::time::timeout(Duration::from_millis(800), async {
                    while let Some(ev) = client.next_event().await {
                        if let ServerEvent::Reliable { channel, .. }
                        | ServerEvent::Batch { channel, .. } = &ev
                            && channel == "group:r"
                        {
                            return ev;
                        }
                    }
                    std::future::pending().await
                })
                .await;
                assert!(
                    leaked.is_err(),
                    "a removed member still received {leaked:?}"
                );
                seen
            }
        ),
        // ---- QUIC
        case!(
            "quic: first frame is not auth",
            "quic",
            frame_closed("auth_required"),
            ERR,
            &[("code", "auth_required")],
            |c| quic_raw(c, prefixed(join("room:m"))).await
        ),
        case!(
            "quic: bad token",
            "quic",
            frame_closed("bad_token"),
            ERR,
            &[("code", "bad_token")],
            |c| quic_raw(
                c,
                prefixed(C::Auth(pb::Auth {
                    token: "x.y".into()
                }))
            )
            .await
        ),
        case!(
            "quic: garbage after auth",
            "quic",
            frame_closed("malformed_frame"),
            BAD,
            &[("code", "malformed_frame")],
            |c| {
                let mut bytes = prefixed(C::Auth(pb::Auth {
                    token: c.token("mallory"),
                }));
                bytes.extend_from_slice(&[3, 0xff, 0xff, 0xff]);
                quic_raw(c, bytes).await
            }
        ),
        case!(
            "quic: no auth within the handshake deadline",
            "quic",
            frame_closed("handshake_timeout"),
            REFUSED,
            &[("code", "handshake_timeout")],
            |c| {
                let conn = quic_conn(c).await;
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                // The start of a length prefix (a 5-byte frame) and nothing more:
                // the server sees the stream but never a whole first frame.
                send.write_all(&[5]).await.unwrap();
                quic_read_error(&conn, &mut recv).await
            }
        ),
        case!(
            "quic: token expires during the session",
            "quic",
            frame_closed("token_expired"),
            REFUSED,
            &[("code", "token_expired")],
            |c| token_expires_mid_session(c, Transport::Quic, "shortlived-quic").await
        ),
        case!(
            "quic: join of a bad channel",
            "quic",
            frame_kept("bad_channel"),
            ERR,
            &[("code", "bad_channel")],
            |c| sdk_frames(c, Transport::Quic, "mallory", vec![join("room:a b")]).await
        ),
        case!(
            "quic: resume before join",
            "quic",
            frame_kept("not_joined"),
            ERR,
            &[("code", "not_joined")],
            |c| sdk_frames(
                c,
                Transport::Quic,
                "mallory",
                vec![C::Resume(pb::Resume {
                    channel: "room:m".into(),
                    after_seq: 9
                })]
            )
            .await
        ),
        case!(
            "quic: auth frame with another user's token",
            "quic",
            frame_kept("user_mismatch"),
            ERR,
            &[("code", "user_mismatch")],
            |c| sdk_frames(
                c,
                Transport::Quic,
                "mallory",
                vec![C::Auth(pb::Auth {
                    token: c.token("alice")
                })]
            )
            .await
        ),
        case!(
            "quic: resume flood over the connection budget",
            "quic",
            frame_kept("rate_limited"),
            REFUSED,
            &[("code", "rate_limited")],
            |c| sdk_frames(
                c,
                Transport::Quic,
                "flooder2",
                std::iter::once(join("room:gifts"))
                    .chain((0..120).map(|_| C::Resume(pb::Resume {
                        channel: "room:gifts".into(),
                        after_seq: 0
                    })))
                    .collect()
            )
            .await
        ),
    ]
}

async fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = common::metrics_text(base).await;
    danmaku_testkit::metric_value(&text, name, labels).unwrap_or(0.0)
}

/// The bystander still gets answers: a ping, answered with a pong. It acks the
/// reliable events it gets on the way, as a client must (or the edge would close
/// it for `reliable_backlog`).
async fn bystander_alive(bystander: &mut Client, after: &str) {
    bystander
        .ping()
        .await
        .unwrap_or_else(|e| panic!("bystander cannot send after {after:?}: {e}"));
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = bystander.next_event().await {
            match ev {
                ServerEvent::Pong => return,
                ServerEvent::Reliable { channel, seq, .. } => {
                    bystander.ack(&channel, seq).await.unwrap();
                }
                ServerEvent::Error { code, message } => {
                    panic!("bystander got {code} after {after:?}: {message}")
                }
                _ => {}
            }
        }
        panic!("bystander connection closed after {after:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("bystander not served after {after:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_matrix() {
    let srv = common::start(|c| {
        c.extra_auth_secrets = vec![OLD_SECRET.into()];
        c.edge.max_channels_per_conn = 4;
        c.edge.client_limits = danmaku_edge::ClientLimits {
            conn_frames_per_sec: 20.0,
            conn_frame_burst: 60,
            max_conns_per_user: 3,
            handshake_timeout: Duration::from_secs(1),
            ..danmaku_edge::ClientLimits::default()
        };
    })
    .await;
    let dev = common::start(|c| {
        c.auth_secret = None;
        c.data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-matrix-dev"));
    })
    .await;
    let base = srv.base_url();
    let cert = srv.edge.cert_der().to_vec();
    let ctx = Ctx {
        quic: srv.quic_addr,
        base: base.clone(),
        cert,
        dev_base: dev.base_url(),
        srv,
    };
    // group:m exists (with a member) so non-members are refused, not unknown.
    assert_eq!(
        http_call(
            "PUT",
            format!("{base}/v1/groups/group:m/members/alice"),
            Some(ctx.app()),
            None
        )
        .await,
        http(200, "")
    );

    let mut bystander = sdk(&ctx, Transport::WsPb, &ctx.token("bystander")).await;
    bystander.join("room:gifts").await.unwrap();
    common::wait_joined(&mut bystander, "room:gifts").await;

    let cases = cases();
    assert!(cases.len() >= 40, "the matrix has {} cases", cases.len());
    let mut by_transport = std::collections::BTreeMap::<&str, usize>::new();
    for case in &cases {
        *by_transport.entry(case.transport).or_default() += 1;
        let metric_base = if case.name.starts_with("dev ") {
            &ctx.dev_base
        } else {
            &base
        };
        let before = metric(metric_base, case.metric.0, case.metric.1).await;
        let seen = (case.run)(&ctx).await;
        assert_eq!(
            seen, case.expect,
            "case {:?} ({})",
            case.name, case.transport
        );
        let after = metric(metric_base, case.metric.0, case.metric.1).await;
        assert!(
            after >= before + 1.0,
            "case {:?}: {}{:?} went {before} -> {after}",
            case.name,
            case.metric.0,
            case.metric.1
        );
        bystander_alive(&mut bystander, case.name).await;
    }
    eprintln!("bad-input matrix: {} cases {by_transport:?}", cases.len());
    for t in ["http", "ws", "ws_pb", "ws_json", "quic"] {
        assert!(by_transport.get(t).is_some_and(|n| *n >= 1), "no {t} case");
    }

    // The bystander still receives the lane it joined: a gift arrives exactly once.
    let posted = post(
        &ctx,
        Some(ctx.token("giver")),
        "room:gifts",
        json!({"kind": "gift", "text": "final", "client_msg_id": "final"}),
    )
    .await;
    assert_eq!(posted, http(200, ""), "the final gift");
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = bystander.next_event().await {
            if let ServerEvent::Reliable { event, .. } = &ev
                && event.text == "final"
            {
                return;
            }
        }
        panic!("bystander closed");
    })
    .await
    .expect("the bystander receives the final gift");
    ctx.srv.stop().await;
    dev.stop().await;
}

/// Item 5's other half: a client that refreshes its token keeps its session past
/// the first token's expiry (the SDK sends `auth` from its refresh callback), on
/// every transport: protobuf and JSON WebSocket, and QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_token_refresh_keeps_the_session_past_expiry() {
    let srv = common::start(|c| {
        c.data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-refresh"));
    })
    .await;
    let cert = srv.edge.cert_der().to_vec();
    let mut tasks = Vec::new();
    for transport in [Transport::WsPb, Transport::WsJson, Transport::Quic] {
        let user = format!("refresher-{transport:?}").to_lowercase();
        let tokens = srv.tokens.clone();
        let refresh_user = user.clone();
        let config = ClientConfig {
            token_refresh: Some(danmaku_client::TokenRefresh::new(move || {
                let t = tokens.mint(&refresh_user, "user", now_secs(), 3600);
                async move { Some(t) }
            })),
            token_refresh_before: Duration::from_secs(2),
            ..ClientConfig::default()
        };
        let short = srv.tokens.mint(&user, "user", now_secs(), 3);
        let expires = std::time::Instant::now() + Duration::from_secs(3);
        let (base, quic, cert) = (srv.base_url(), srv.quic_addr, cert.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = match transport {
                Transport::Quic => Client::connect_quic(quic, Some(cert), &short, config).await,
                t => Client::connect_ws(&base, &short, t, config).await,
            }
            .unwrap();
            // The refresh arrives as a second AuthOk.
            tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(ev) = client.next_event().await {
                    match ev {
                        ServerEvent::AuthOk { user: u, .. } => return assert_eq!(u, user),
                        ServerEvent::Error { code, .. } => panic!("{transport:?}: error {code}"),
                        _ => {}
                    }
                }
                panic!("{transport:?}: closed");
            })
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: a refreshed AuthOk"));
            // Past the first token's expiry (and a second beyond the edge's
            // check) the connection still answers.
            tokio::time::sleep_until((expires + Duration::from_secs(1)).into()).await;
            client.ping().await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(ev) = client.next_event().await {
                    match ev {
                        ServerEvent::Pong => return,
                        ServerEvent::Error { code, .. } => panic!("{transport:?}: error {code}"),
                        _ => {}
                    }
                }
                panic!("{transport:?}: closed after the first token expired");
            })
            .await
            .unwrap_or_else(|_| panic!("{transport:?}: pong after expiry"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    srv.stop().await;
}
