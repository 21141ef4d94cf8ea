//! The edge on real sockets: a MemoryBus, an axum server on a free port, QUIC on
//! a free UDP port, and real clients (tokio-tungstenite, quinn). Events are
//! published straight onto the bus, as ingest would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use danmaku_bus::{Bus, MemoryBus, MemoryBusConfig};
use danmaku_edge::{BatchConfig, Edge, EdgeConfig, ReliableConfig};
use danmaku_proto::framing::{FrameReader, encode_prefixed};
use danmaku_proto::json::{JsonEvent, JsonServerFrame, decode_server_json};
use danmaku_proto::pb::{client_frame, server_frame};
use danmaku_proto::token::TokenKey;
use danmaku_proto::{Limits, frame, pb};
use danmaku_store::{NewMessage, Store};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Nothing in these tests should take long; a hang fails instead of blocking CI.
const STEP: Duration = Duration::from_secs(10);

struct TestEdge {
    edge: Arc<Edge>,
    http: SocketAddr,
    quic: SocketAddr,
    bus: Arc<MemoryBus>,
    store: Arc<dyn Store>,
    _store_dir: tempfile::TempDir,
    key: TokenKey,
    metrics: prometheus::Registry,
    shutdown: CancellationToken,
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: EdgeConfig) -> Result<TestEdge> {
    let bus = Arc::new(MemoryBus::new(MemoryBusConfig::default()));
    let key = TokenKey::new("test-secret");
    let metrics = prometheus::Registry::new();
    let shutdown = CancellationToken::new();
    let store_dir = tempfile::tempdir()?;
    let store = danmaku_store::connect(&format!(
        "embedded:{}",
        store_dir.path().join("edge.db").display()
    ))
    .await?;
    let edge = Edge::start(
        config,
        bus.clone() as Arc<dyn Bus>,
        Arc::clone(&store),
        key.clone(),
        &metrics,
        shutdown.clone(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    let app = edge.router();
    let stop = shutdown.clone();
    let tuned = Arc::clone(&edge);
    tokio::spawn(danmaku_edge::serve_http1(
        listener,
        app,
        move |tcp| tuned.tune_tcp(tcp),
        stop,
    ));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let quic = udp.local_addr()?;
    edge.serve_quic(udp)?;
    Ok(TestEdge {
        edge,
        http,
        quic,
        bus,
        store,
        _store_dir: store_dir,
        key,
        metrics,
        shutdown,
    })
}

fn config() -> EdgeConfig {
    EdgeConfig {
        batch: BatchConfig {
            // Long enough that events published back to back share a batch.
            min_window: Duration::from_millis(200),
            ..BatchConfig::default()
        },
        ..EdgeConfig::default()
    }
}

impl TestEdge {
    fn token(&self, user: &str) -> String {
        self.key
            .mint(user, "user", danmaku_proto::token::now_secs(), 3600)
    }

    async fn ws(&self, user: &str, subprotocol: Option<&str>) -> Result<Ws> {
        let url = format!("ws://{}/v1/ws?token={}", self.http, self.token(user));
        self.ws_url(&url, subprotocol).await
    }

    async fn ws_url(&self, url: &str, subprotocol: Option<&str>) -> Result<Ws> {
        let mut req = url.into_client_request()?;
        if let Some(p) = subprotocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p)?);
        }
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(req)).await??;
        Ok(ws)
    }

    async fn publish(&self, channel: &str, sender: &str, text: &str) -> Result<()> {
        let ev = pb::BusEvent {
            version: 1,
            channel: channel.into(),
            event: Some(pb::Event {
                kind: pb::Kind::Danmaku as i32,
                sender: sender.into(),
                text: text.into(),
                ts_ms: danmaku_proto::now_ms(),
                ..Default::default()
            }),
            origin: "test".into(),
            membership: None,
            account: None,
            moderation: None,
            room_max_rate: 0,
        };
        self.bus
            .publish(Bytes::from(channel.to_owned()), frame::encode(&ev))
            .await?;
        Ok(())
    }

    /// Persists a gift as ingest would (text `gift N` for seq N when appended in order).
    async fn append(&self, channel: &str, text: &str) -> Result<u64> {
        let appended = self
            .store
            .append(NewMessage {
                channel: channel.into(),
                client_msg_id: None,
                sender: "bob".into(),
                kind: "gift".into(),
                text: text.into(),
                payload_json: Some(r#"{"gift":"rocket"}"#.into()),
                blob: None,
                ts_ms: danmaku_proto::now_ms(),
            })
            .await?;
        Ok(appended.seq)
    }

    /// Appends `n` gifts `gift <seq>` to `channel`.
    async fn append_n(&self, channel: &str, n: u64) -> Result<()> {
        for _ in 0..n {
            let next = self.store.last_seq(channel).await? + 1;
            self.append(channel, &format!("gift {next}")).await?;
        }
        Ok(())
    }

    /// Publishes the reliable event of `seq` on the bus (as ingest does after append).
    async fn publish_seq(&self, channel: &str, seq: u64) -> Result<()> {
        let ev = pb::BusEvent {
            version: 1,
            channel: channel.into(),
            event: Some(pb::Event {
                kind: pb::Kind::Gift as i32,
                sender: "bob".into(),
                text: format!("gift {seq}"),
                // Older than the edge: reliable events are never dropped as stale.
                ts_ms: 1,
                seq,
                payload_json: r#"{"gift":"rocket"}"#.into(),
                ..Default::default()
            }),
            origin: "test".into(),
            membership: None,
            account: None,
            moderation: None,
            room_max_rate: 0,
        };
        self.bus
            .publish(Bytes::from(channel.to_owned()), frame::encode(&ev))
            .await?;
        Ok(())
    }

    /// The value of `series` once `ok` holds for it, else its value after
    /// [`STEP`]. The batcher counts a tick after handing it to the members, on
    /// the edge's delivery thread, so a client can read a frame before its
    /// count moves.
    async fn metric_when(&self, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let v = self.metric(series);
            if ok(v) || tokio::time::Instant::now() >= deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The value of one sample in the registry's text exposition, 0 if absent.
    fn metric(&self, series: &str) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.metrics.gather())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

async fn next_msg(ws: &mut Ws) -> Result<Message> {
    loop {
        let msg = tokio::time::timeout(STEP, ws.next())
            .await
            .context("timed out waiting for a message")?
            .context("stream ended")??;
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return Ok(msg);
        }
    }
}

async fn next_json(ws: &mut Ws) -> Result<JsonServerFrame> {
    match next_msg(ws).await? {
        Message::Text(t) => Ok(decode_server_json(&t, &Limits::default())?),
        other => bail!("expected text, got {other:?}"),
    }
}

async fn next_pb(ws: &mut Ws) -> Result<pb::ServerFrame> {
    match next_msg(ws).await? {
        Message::Binary(b) => Ok(frame::decode_server(&b, &Limits::default())?),
        other => bail!("expected binary, got {other:?}"),
    }
}

async fn send_pb(ws: &mut Ws, body: client_frame::Body) -> Result<()> {
    ws.send(Message::Binary(frame::encode(&frame::client(body))))
        .await?;
    Ok(())
}

fn join(channel: &str) -> client_frame::Body {
    client_frame::Body::Join(pb::Join {
        channel: channel.into(),
    })
}

/// Expects the stream to end (close frame or EOF) before any data frame.
async fn expect_closed(ws: &mut Ws) -> Result<()> {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await? {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => bail!("expected close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ws_json_batches_several_events_into_fewer_frames() -> Result<()> {
    let t = start(config()).await?;
    let mut ws = t.ws("alice", Some("danmaku.v1.json")).await?;
    assert_eq!(
        next_json(&mut ws).await?,
        JsonServerFrame::AuthOk {
            user: "alice".into(),
            ack_interval_ms: 1000,
        }
    );
    ws.send(Message::Text(
        r#"{"type":"join","channel":"room:42"}"#.into(),
    ))
    .await?;
    assert_eq!(
        next_json(&mut ws).await?,
        JsonServerFrame::Joined {
            channel: "room:42".into(),
            last_seq: 0,
            // Rooms are acked at the slower room pace (`room_ack_interval`).
            ack_interval_ms: 5_000,
        }
    );
    for i in 0..20 {
        t.publish("room:42", "bob", &format!("hello {i}")).await?;
    }
    // Another room's events must not show up here.
    t.publish("room:other", "eve", "elsewhere").await?;
    let mut events: Vec<JsonEvent> = Vec::new();
    let mut frames = 0;
    while events.len() < 20 {
        match next_json(&mut ws).await? {
            JsonServerFrame::Batch {
                channel, events: e, ..
            } => {
                assert_eq!(channel, "room:42");
                frames += 1;
                events.extend(e);
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(events.len(), 20);
    let texts: Vec<_> = events.iter().map(|e| e.text.as_str()).collect();
    let want: Vec<String> = (0..20).map(|i| format!("hello {i}")).collect();
    assert_eq!(texts, want, "one sender's order is kept");
    assert!(
        events
            .iter()
            .all(|e| e.kind == "danmaku" && e.sender == "bob")
    );
    assert!(frames < 20, "20 events came in {frames} frames");
    assert_eq!(
        t.metric_when("danmaku_edge_events_delivered_total", |v| v >= 20.0)
            .await,
        20.0
    );
    assert!(t.metric("danmaku_edge_batches_total") >= 1.0);
    assert_eq!(
        t.metric("danmaku_edge_connections{transport=\"ws_json\"}"),
        1.0
    );
    assert!(t.metric("danmaku_edge_frames_pushed_total{transport=\"ws_json\"}") >= 1.0);
    assert_eq!(
        t.metric("danmaku_edge_bus_events_total{result=\"no_local_members\"}"),
        1.0
    );

    // Ping → pong; leave → left.
    ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await?;
    assert_eq!(next_json(&mut ws).await?, JsonServerFrame::Pong);
    ws.send(Message::Text(
        r#"{"type":"leave","channel":"room:42"}"#.into(),
    ))
    .await?;
    assert_eq!(
        next_json(&mut ws).await?,
        JsonServerFrame::Left {
            channel: "room:42".into(),
            reason: String::new(),
        }
    );
    assert_eq!(t.edge.channel_count(), 0);
    Ok(())
}

#[tokio::test]
async fn ws_pb_receives_zstd_batches_that_decode_to_the_events() -> Result<()> {
    let t = start(config()).await?;
    let mut ws = t.ws("carol", Some("danmaku.v1.pb")).await?;
    match next_pb(&mut ws).await?.body {
        Some(server_frame::Body::AuthOk(a)) => assert_eq!(a.user, "carol"),
        other => bail!("expected auth_ok, got {other:?}"),
    }
    send_pb(&mut ws, join("room:7")).await?;
    assert!(matches!(
        next_pb(&mut ws).await?.body,
        Some(server_frame::Body::Joined(j)) if j.channel == "room:7"
    ));
    let texts: Vec<String> = danmaku_proto::sample::CommentGenerator::new(1)
        .events(60, 0)
        .into_iter()
        .map(|e| e.text)
        .collect();
    for text in &texts {
        t.publish("room:7", "dave", text).await?;
    }
    let mut got = Vec::new();
    let mut saw_zstd = false;
    while got.len() < texts.len() {
        match next_pb(&mut ws).await?.body {
            Some(server_frame::Body::Batch(b)) => {
                assert_eq!(b.channel, "room:7");
                saw_zstd |= b.codec == pb::Codec::Zstd as i32;
                got.extend(danmaku_proto::decode_batch(&b, &Limits::default())?);
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    let got_texts: Vec<String> = got.into_iter().map(|e| e.text).collect();
    assert_eq!(got_texts, texts);
    assert!(saw_zstd, "a 60-event batch is compressed");
    let raw = t
        .metric_when("danmaku_edge_batch_raw_bytes_total", |v| v > 0.0)
        .await;
    assert!(t.metric("danmaku_edge_batch_compressed_bytes_total") < raw);
    Ok(())
}

#[tokio::test]
async fn two_subprotocols_in_one_channel_get_the_same_events() -> Result<()> {
    let t = start(config()).await?;
    // A group channel needs membership in the store.
    t.store.join_group("group:g1", "j").await?;
    t.store.join_group("group:g1", "b").await?;
    let mut js = t.ws("j", Some("danmaku.v1.json")).await?;
    let mut bin = t.ws("b", Some("danmaku.v1.pb")).await?;
    next_json(&mut js).await?;
    next_pb(&mut bin).await?;
    js.send(Message::Text(
        r#"{"type":"join","channel":"group:g1"}"#.into(),
    ))
    .await?;
    next_json(&mut js).await?;
    send_pb(&mut bin, join("group:g1")).await?;
    next_pb(&mut bin).await?;
    t.publish("group:g1", "x", "same for all").await?;
    match next_json(&mut js).await? {
        JsonServerFrame::Batch { events, .. } => assert_eq!(events[0].text, "same for all"),
        other => bail!("unexpected {other:?}"),
    }
    match next_pb(&mut bin).await?.body {
        Some(server_frame::Body::Batch(b)) => {
            let evs = danmaku_proto::decode_batch(&b, &Limits::default())?;
            assert_eq!(evs[0].text, "same for all");
        }
        other => bail!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn each_client_gets_the_batch_layout_it_offered_and_reads_the_same() -> Result<()> {
    let t = start(config()).await?;
    // A v3 client (offering all three, as the SDKs do), a v2 client (an SDK
    // from before v3) and a v1 client, one room.
    let mut v3 = t
        .ws("m", Some("danmaku.v3.pb, danmaku.v2.pb, danmaku.v1.pb"))
        .await?;
    let mut v2 = t.ws("n", Some("danmaku.v2.pb, danmaku.v1.pb")).await?;
    let mut v1 = t.ws("o", Some("danmaku.v1.pb")).await?;
    for ws in [&mut v3, &mut v2, &mut v1] {
        next_pb(ws).await?;
        send_pb(ws, join("room:c")).await?;
        next_pb(ws).await?;
    }
    // Danmaku as ingest publishes them: ids of time, node tag and counter.
    let ts = danmaku_proto::now_ms();
    let sent: Vec<pb::Event> = (0..30)
        .map(|i| pb::Event {
            kind: pb::Kind::Danmaku as i32,
            sender: format!("s{}", i % 3),
            text: format!("comment {i}"),
            ts_ms: ts + i,
            id: format!("{:011x}{:08x}{i:08x}", ts + i, 0xabcdu32),
            ..Default::default()
        })
        .collect();
    for ev in &sent {
        let bus = pb::BusEvent {
            version: 1,
            channel: "room:c".into(),
            event: Some(ev.clone()),
            origin: "test".into(),
            ..Default::default()
        };
        t.bus
            .publish(Bytes::from("room:c"), frame::encode(&bus))
            .await?;
    }
    let mut got = Vec::new();
    for (ws, encoding, dict) in [(&mut v3, 2, 1), (&mut v2, 1, 0), (&mut v1, 0, 0)] {
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut ticks = 0;
        while events.len() < sent.len() {
            match next_pb(ws).await?.body {
                Some(server_frame::Body::Batch(b)) => {
                    assert_eq!((b.encoding, b.dict_id), (encoding, dict));
                    bytes += b.payload.len();
                    ticks += 1;
                    events.extend(danmaku_proto::decode_batch(&b, &Limits::default())?);
                }
                other => bail!("unexpected {other:?}"),
            }
        }
        got.push((events, bytes, ticks));
    }
    for (events, _, ticks) in &got {
        assert_eq!(events, &sent);
        assert_eq!(*ticks, got[0].2, "one room: the same ticks");
    }
    // Each layout is smaller than the one before it (same ticks: the three
    // members are in one room).
    assert!(
        got[0].1 < got[1].1 && got[1].1 < got[2].1,
        "{:?}",
        got.iter().map(|g| g.1).collect::<Vec<_>>()
    );
    // Every tick was built once per layout its readers asked for, no JSON.
    // A tick is counted after it is written: wait for the last one's count.
    let built = |layout: &str| {
        t.metric(&format!(
            "danmaku_edge_tick_frames_built_total{{layout=\"{layout}\"}}"
        ))
    };
    let ticks = f64::from(got[0].2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while built("plain") < ticks && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for layout in ["dense", "compact", "plain"] {
        assert_eq!(built(layout), ticks, "{layout}");
    }
    assert_eq!(built("json"), 0.0);
    Ok(())
}

#[tokio::test]
async fn bad_token_is_401_and_missing_subprotocol_is_400() -> Result<()> {
    let t = start(config()).await?;
    for url in [
        format!("ws://{}/v1/ws?token=forged.token", t.http),
        format!("ws://{}/v1/ws", t.http),
    ] {
        let err = t
            .ws_url(&url, Some("danmaku.v1.json"))
            .await
            .expect_err("refused");
        let (status, body) = http_error(err)?;
        assert_eq!(status, 401);
        assert_eq!(body["error"]["code"], "bad_token");
    }
    let err = t.ws("alice", None).await.expect_err("refused");
    let (status, body) = http_error(err)?;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_subprotocol");
    let err = t.ws("alice", Some("chat")).await.expect_err("refused");
    assert_eq!(http_error(err)?.0, 400);
    Ok(())
}

fn http_error(err: anyhow::Error) -> Result<(u16, serde_json::Value)> {
    use tokio_tungstenite::tungstenite::Error;
    match err.downcast::<Error>()? {
        Error::Http(resp) => {
            let body = resp.body().clone().unwrap_or_default();
            Ok((resp.status().as_u16(), serde_json::from_slice(&body)?))
        }
        other => bail!("expected an HTTP error, got {other}"),
    }
}

#[tokio::test]
async fn malformed_frame_closes_only_that_connection() -> Result<()> {
    let t = start(config()).await?;
    let mut bad = t.ws("mallory", Some("danmaku.v1.pb")).await?;
    let mut good = t.ws("alice", Some("danmaku.v1.pb")).await?;
    next_pb(&mut bad).await?;
    next_pb(&mut good).await?;
    send_pb(&mut bad, join("room:1")).await?;
    next_pb(&mut bad).await?;
    send_pb(&mut good, join("room:1")).await?;
    next_pb(&mut good).await?;

    bad.send(Message::Binary(Bytes::from_static(&[0xff, 0xff, 0xff])))
        .await?;
    match next_pb(&mut bad).await?.body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, "malformed_frame"),
        other => bail!("expected an error frame, got {other:?}"),
    }
    expect_closed(&mut bad).await?;
    assert_eq!(
        t.metric("danmaku_edge_bad_frames_total{code=\"malformed_frame\"}"),
        1.0
    );

    // The other connection, in the same channel, goes on.
    send_pb(&mut good, client_frame::Body::Ping(pb::Ping { ts_ms: 5 })).await?;
    assert!(matches!(
        next_pb(&mut good).await?.body,
        Some(server_frame::Body::Pong(p)) if p.ts_ms == 5
    ));
    t.publish("room:1", "x", "still here").await?;
    assert!(matches!(
        next_pb(&mut good).await?.body,
        Some(server_frame::Body::Batch(_))
    ));
    Ok(())
}

#[tokio::test]
async fn json_garbage_and_wrong_message_type_close_with_an_error() -> Result<()> {
    let t = start(config()).await?;
    let mut ws = t.ws("a", Some("danmaku.v1.json")).await?;
    next_json(&mut ws).await?;
    ws.send(Message::Text("{not json".into())).await?;
    match next_json(&mut ws).await? {
        JsonServerFrame::Error { code, .. } => assert_eq!(code, "malformed_json"),
        other => bail!("unexpected {other:?}"),
    }
    expect_closed(&mut ws).await?;

    let mut ws = t.ws("a", Some("danmaku.v1.pb")).await?;
    next_pb(&mut ws).await?;
    ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await?;
    match next_pb(&mut ws).await?.body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, "malformed_frame"),
        other => bail!("unexpected {other:?}"),
    }
    expect_closed(&mut ws).await?;
    Ok(())
}

#[tokio::test]
async fn oversize_frame_is_refused_with_frame_too_large() -> Result<()> {
    let mut cfg = config();
    cfg.limits.max_frame_bytes = 1024;
    let t = start(cfg).await?;
    let mut ws = t.ws("a", Some("danmaku.v1.pb")).await?;
    next_pb(&mut ws).await?;
    ws.send(Message::Binary(Bytes::from(vec![0u8; 2000])))
        .await?;
    match next_pb(&mut ws).await?.body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, "frame_too_large"),
        other => bail!("unexpected {other:?}"),
    }
    expect_closed(&mut ws).await?;
    Ok(())
}

#[tokio::test]
async fn bad_channel_reliable_and_group_errors_keep_the_connection() -> Result<()> {
    let mut cfg = config();
    cfg.max_channels_per_conn = 1;
    let t = start(cfg).await?;
    let mut ws = t.ws("a", Some("danmaku.v1.json")).await?;
    next_json(&mut ws).await?;
    let expect_error = |f: JsonServerFrame, want: &str| match f {
        JsonServerFrame::Error { code, .. } if code == want => Ok(()),
        other => bail!("expected error {want}, got {other:?}"),
    };
    ws.send(Message::Text(r#"{"type":"join","channel":"lobby"}"#.into()))
        .await?;
    expect_error(next_json(&mut ws).await?, "bad_channel")?;
    // An ack on a channel not joined is ignored; resume needs a join first;
    // a group needs membership.
    ws.send(Message::Text(
        r#"{"type":"ack","channel":"group:7","seq":1}"#.into(),
    ))
    .await?;
    ws.send(Message::Text(
        r#"{"type":"resume","channel":"group:7","after_seq":1}"#.into(),
    ))
    .await?;
    expect_error(next_json(&mut ws).await?, "not_joined")?;
    ws.send(Message::Text(
        r#"{"type":"join","channel":"group:7"}"#.into(),
    ))
    .await?;
    expect_error(next_json(&mut ws).await?, "not_member")?;
    ws.send(Message::Text(
        r#"{"type":"join","channel":"room:1"}"#.into(),
    ))
    .await?;
    assert!(matches!(
        next_json(&mut ws).await?,
        JsonServerFrame::Joined { .. }
    ));
    ws.send(Message::Text(
        r#"{"type":"join","channel":"room:2"}"#.into(),
    ))
    .await?;
    expect_error(next_json(&mut ws).await?, "too_many_channels")?;
    ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await?;
    assert_eq!(next_json(&mut ws).await?, JsonServerFrame::Pong);
    assert_eq!(
        t.metric("danmaku_edge_bad_frames_total{code=\"bad_channel\"}"),
        0.0
    );
    Ok(())
}

/// The bus consumer runs on the edge's delivery thread, not among the
/// connection tasks: with every worker of the server's runtime busy (here:
/// blocked outright), events are still read off the bus and routed. On the
/// shared runtime the consumer waited behind every task a big room's tick had
/// woken, and the bus hop grew to seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_keeps_reading_while_the_runtime_is_busy() -> Result<()> {
    let t = Arc::new(start(config()).await?);
    let busy = Duration::from_secs(3);
    let ready = Arc::new(std::sync::Barrier::new(3));
    for _ in 0..2 {
        let ready = Arc::clone(&ready);
        tokio::spawn(async move {
            ready.wait();
            std::thread::sleep(busy);
        });
    }
    // Both workers hold a task that blocks them; nothing else runs there now.
    ready.wait();
    let blocked_at = std::time::Instant::now();
    let publisher = {
        let t = Arc::clone(&t);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                for i in 0..20 {
                    t.publish("room:nobody-here", "u", &format!("m{i}")).await?;
                }
                anyhow::Ok(())
            })
        })
    };
    publisher.join().expect("publisher thread")?;
    let routed = r#"danmaku_edge_bus_events_total{result="no_local_members"}"#;
    while t.metric(routed) < 20.0 && blocked_at.elapsed() < busy {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = t.metric(routed);
    let elapsed = blocked_at.elapsed();
    assert_eq!(seen, 20.0, "events routed while the runtime was blocked");
    assert!(
        elapsed < busy,
        "routed after the workers were free again ({elapsed:?})"
    );
    Ok(())
}

/// A client may send its first frames in the same packet as the upgrade
/// request, without waiting for the `101`: what the HTTP server read past the
/// request must reach the WebSocket decoder (the edge takes the bare socket
/// back from the HTTP server after the upgrade).
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read() -> Result<()> {
    use danmaku_proto::wsframe::{OpCode, encode_masked};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = start(config()).await?;
    let mut request = format!(
        "GET /v1/ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: danmaku.v1.json\r\n\r\n",
        t.token("eager"),
        t.http
    )
    .into_bytes();
    let join = br#"{"type":"join","channel":"room:eager"}"#;
    request.extend(encode_masked(true, OpCode::Text, [1, 2, 3, 4], join));
    let mut sock = TcpStream::connect(t.http).await?;
    sock.write_all(&request).await?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + STEP;
    while !String::from_utf8_lossy(&seen).contains(r#""type":"joined""#) {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut chunk))
            .await
            .context("no joined frame for the join sent with the upgrade")??;
        if n == 0 {
            bail!("closed: {}", String::from_utf8_lossy(&seen));
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 101"));
    assert_eq!(t.edge.channel_count(), 1);
    Ok(())
}

#[tokio::test]
async fn silent_connection_is_closed_and_leaves_its_channels() -> Result<()> {
    let mut cfg = config();
    cfg.heartbeat_interval = Duration::from_millis(100);
    let t = start(cfg).await?;
    let mut ws = t.ws("a", Some("danmaku.v1.pb")).await?;
    next_pb(&mut ws).await?;
    send_pb(&mut ws, join("room:idle")).await?;
    next_pb(&mut ws).await?;
    assert_eq!(t.edge.channel_count(), 1);
    expect_closed(&mut ws).await?;
    // The session is dropped right after the close frame is queued.
    for _ in 0..100 {
        if t.edge.channel_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.edge.channel_count(), 0);
    Ok(())
}

#[tokio::test]
async fn cert_endpoint_serves_the_quic_certificate() -> Result<()> {
    let t = start(config()).await?;
    let mut stream = TcpStream::connect(t.http).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /v1/cert HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await?;
    let mut resp = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut resp)).await??;
    let resp = String::from_utf8(resp)?;
    let body = resp.split("\r\n\r\n").nth(1).context("no body")?;
    let v: serde_json::Value = serde_json::from_str(body)?;
    assert_eq!(v["sha256"], t.edge.cert_sha256_hex());
    assert!(
        v["pem"]
            .as_str()
            .unwrap_or("")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    use base64::Engine;
    let der =
        base64::engine::general_purpose::STANDARD.decode(v["der_base64"].as_str().unwrap_or(""))?;
    assert_eq!(der, t.edge.cert_der());
    Ok(())
}

#[tokio::test]
async fn tune_tcp_sets_nodelay_and_send_buffer() -> Result<()> {
    let mut cfg = config();
    cfg.tcp_send_buffer = Some(64 << 10);
    let t = start(cfg).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let _client = TcpStream::connect(listener.local_addr()?).await?;
    let (accepted, _) = listener.accept().await?;
    t.edge.tune_tcp(&accepted);
    assert!(accepted.nodelay()?);
    let size = socket2::SockRef::from(&accepted).send_buffer_size()?;
    // Linux doubles the requested value for bookkeeping.
    assert!(
        (64 << 10..=128 << 10).contains(&size),
        "SO_SNDBUF is {size}"
    );
    Ok(())
}

// ---- QUIC ----

async fn quic_connect(t: &TestEdge) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(
        t.edge.cert_der().to_vec(),
    ))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![danmaku_edge::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = tokio::time::timeout(STEP, endpoint.connect(t.quic, "localhost")?).await??;
    Ok((endpoint, conn))
}

struct Control {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    reader: FrameReader,
}

impl Control {
    async fn send(&mut self, body: client_frame::Body) -> Result<()> {
        let f = frame::encode(&frame::client(body));
        self.send.write_all(&encode_prefixed(&f)).await?;
        Ok(())
    }

    /// The next frame, or `None` when the server finished the stream.
    async fn next(&mut self) -> Result<Option<pb::ServerFrame>> {
        loop {
            if let Some(buf) = self.reader.next_frame()? {
                return Ok(Some(frame::decode_server(&buf, &Limits::default())?));
            }
            let chunk = tokio::time::timeout(STEP, self.recv.read_chunk(64 << 10, true)).await?;
            match chunk {
                Ok(Some(c)) => self.reader.push(&c.bytes),
                Ok(None) | Err(_) => return Ok(None),
            }
        }
    }
}

async fn open_control(conn: &quinn::Connection) -> Result<Control> {
    let (send, recv) = conn.open_bi().await?;
    Ok(Control {
        send,
        recv,
        reader: FrameReader::new(1 << 20),
    })
}

#[tokio::test]
async fn quic_client_authenticates_joins_and_receives_batches() -> Result<()> {
    let t = start(config()).await?;
    let (_endpoint, conn) = quic_connect(&t).await?;
    let mut ctl = open_control(&conn).await?;
    ctl.send(client_frame::Body::Auth(pb::Auth {
        token: t.token("quinn"),
    }))
    .await?;
    match ctl.next().await?.and_then(|f| f.body) {
        Some(server_frame::Body::AuthOk(a)) => assert_eq!(a.user, "quinn"),
        other => bail!("expected auth_ok, got {other:?}"),
    }
    ctl.send(join("room:q")).await?;
    assert!(matches!(
        ctl.next().await?.and_then(|f| f.body),
        Some(server_frame::Body::Joined(j)) if j.channel == "room:q"
    ));
    assert_eq!(
        t.metric("danmaku_edge_connections{transport=\"quic\"}"),
        1.0
    );

    for i in 0..5 {
        t.publish("room:q", "s", &format!("q{i}")).await?;
    }
    // Small batches fit a datagram; accept the stream path too.
    let mut texts = Vec::new();
    let mut uni: Option<(quinn::RecvStream, FrameReader)> = None;
    while texts.len() < 5 {
        let bytes = if let Some((recv, reader)) = uni.as_mut() {
            loop {
                if let Some(f) = reader.next_frame()? {
                    break f;
                }
                match tokio::time::timeout(STEP, recv.read_chunk(64 << 10, true)).await?? {
                    Some(c) => reader.push(&c.bytes),
                    None => bail!("batch stream ended"),
                }
            }
        } else {
            tokio::select! {
                d = conn.read_datagram() => d?,
                s = conn.accept_uni() => { uni = Some((s?, FrameReader::new(1 << 20))); continue; }
                _ = tokio::time::sleep(STEP) => bail!("no batch arrived"),
            }
        };
        match frame::decode_server(&bytes, &Limits::default())?.body {
            Some(server_frame::Body::Batch(b)) => {
                for ev in danmaku_proto::decode_batch(&b, &Limits::default())? {
                    texts.push(ev.text);
                }
            }
            other => bail!("expected a batch, got {other:?}"),
        }
    }
    assert_eq!(texts, vec!["q0", "q1", "q2", "q3", "q4"]);
    let pushed = r#"danmaku_edge_frames_pushed_total{transport="quic"}"#;
    assert!(t.metric_when(pushed, |v| v >= 1.0).await >= 1.0);

    ctl.send(client_frame::Body::Ping(pb::Ping { ts_ms: 9 }))
        .await?;
    assert!(matches!(
        ctl.next().await?.and_then(|f| f.body),
        Some(server_frame::Body::Pong(p)) if p.ts_ms == 9
    ));
    Ok(())
}

#[tokio::test]
async fn quic_refuses_a_bad_token_and_a_missing_auth() -> Result<()> {
    let t = start(config()).await?;
    let (_e1, conn) = quic_connect(&t).await?;
    let mut ctl = open_control(&conn).await?;
    ctl.send(client_frame::Body::Auth(pb::Auth {
        token: "forged".into(),
    }))
    .await?;
    match ctl.next().await?.and_then(|f| f.body) {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, "bad_token"),
        other => bail!("expected an error, got {other:?}"),
    }
    tokio::time::timeout(STEP, conn.closed()).await?;

    let (_e2, conn) = quic_connect(&t).await?;
    let mut ctl = open_control(&conn).await?;
    ctl.send(join("room:1")).await?;
    match ctl.next().await?.and_then(|f| f.body) {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, "auth_required"),
        other => bail!("expected an error, got {other:?}"),
    }
    tokio::time::timeout(STEP, conn.closed()).await?;
    Ok(())
}

#[tokio::test]
async fn quic_malformed_frame_gets_an_error_and_a_close() -> Result<()> {
    let t = start(config()).await?;
    let (_endpoint, conn) = quic_connect(&t).await?;
    let mut ctl = open_control(&conn).await?;
    ctl.send(client_frame::Body::Auth(pb::Auth {
        token: t.token("q"),
    }))
    .await?;
    ctl.next().await?;
    ctl.send.write_all(&encode_prefixed(&[0xff, 0xff])).await?;
    match ctl.next().await?.and_then(|f| f.body) {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, "malformed_frame"),
        other => bail!("expected an error, got {other:?}"),
    }
    tokio::time::timeout(STEP, conn.closed()).await?;
    assert_eq!(
        t.metric("danmaku_edge_bad_frames_total{code=\"malformed_frame\"}"),
        1.0
    );
    Ok(())
}

// ---- the reliable lane ----

fn reliable_config() -> EdgeConfig {
    EdgeConfig {
        reliable: ReliableConfig {
            reorder_hold: Duration::from_millis(100),
            ..ReliableConfig::default()
        },
        ..config()
    }
}

async fn send_json(ws: &mut Ws, text: &str) -> Result<()> {
    ws.send(Message::Text(text.to_owned().into())).await?;
    Ok(())
}

/// Connects `user` over JSON and joins `channel`; returns the socket and `last_seq`.
async fn join_json(t: &TestEdge, user: &str, channel: &str) -> Result<(Ws, u64)> {
    let mut ws = t.ws(user, Some("danmaku.v1.json")).await?;
    next_json(&mut ws).await?; // auth_ok
    send_json(
        &mut ws,
        &format!(r#"{{"type":"join","channel":"{channel}"}}"#),
    )
    .await?;
    match next_json(&mut ws).await? {
        JsonServerFrame::Joined { last_seq, .. } => Ok((ws, last_seq)),
        other => bail!("expected joined, got {other:?}"),
    }
}

/// How a reliable event reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Inside the channel's tick frame (`batch`), shared by every member.
    Tick,
    /// A `reliable` frame of its own (a join push, a resume, a missed tick, a resend).
    Single,
}

/// A gift event as `append` stored it and `publish_seq` published it.
fn check_gift(channel: &str, frame_channel: &str, seq: u64, event: &JsonEvent) {
    assert_eq!(frame_channel, channel);
    assert_eq!(event.seq, Some(seq));
    assert_eq!(event.kind, "gift");
    assert_eq!(event.text, format!("gift {seq}"), "event of seq {seq}");
    assert_eq!(
        event.payload,
        Some(serde_json::json!({"gift": "rocket"})),
        "payload survives bus and store"
    );
}

/// The reliable seqs of the next frame that carries any (danmaku-only ticks
/// are skipped), each event checked: how they came, and the seqs in wire order.
async fn next_reliable_frame(ws: &mut Ws, channel: &str) -> Result<(Via, Vec<u64>)> {
    loop {
        match next_json(ws).await? {
            JsonServerFrame::Reliable {
                channel: c,
                seq,
                event,
            } => {
                check_gift(channel, &c, seq, &event);
                return Ok((Via::Single, vec![seq]));
            }
            JsonServerFrame::Batch {
                channel: c, events, ..
            } => {
                let mut seqs = Vec::new();
                for e in events.iter().filter(|e| e.seq.is_some()) {
                    let seq = e.seq.unwrap_or_default();
                    check_gift(channel, &c, seq, e);
                    seqs.push(seq);
                }
                if !seqs.is_empty() {
                    return Ok((Via::Tick, seqs));
                }
            }
            other => bail!("expected reliable events, got {other:?}"),
        }
    }
}

/// The next `n` reliable seqs on the wire, in wire order, however they came.
async fn reliable_seqs(ws: &mut Ws, channel: &str, n: usize) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    while out.len() < n {
        let (_, seqs) = next_reliable_frame(ws, channel).await?;
        out.extend(seqs);
    }
    assert_eq!(out.len(), n, "more reliable events than expected: {out:?}");
    Ok(out)
}

/// The next reliable seq (the next frame must carry exactly one).
async fn next_reliable(ws: &mut Ws, channel: &str) -> Result<u64> {
    Ok(reliable_seqs(ws, channel, 1).await?[0])
}

/// What a client makes of the wire, by the SDK's rule: each seq delivered
/// once, in order; one that arrives ahead of a hole is held; one already
/// delivered is a duplicate (a shared tick can repeat what a resume sent).
#[derive(Debug, Default)]
struct Delivered {
    upto: u64,
    held: std::collections::BTreeSet<u64>,
    order: Vec<u64>,
    dups: usize,
    wire: Vec<(Via, u64)>,
}

impl Delivered {
    fn starting_at(upto: u64) -> Self {
        Delivered {
            upto,
            ..Delivered::default()
        }
    }

    fn offer(&mut self, via: Via, seq: u64) {
        self.wire.push((via, seq));
        if seq <= self.upto || !self.held.insert(seq) {
            self.dups += 1;
            return;
        }
        while self.held.remove(&(self.upto + 1)) {
            self.upto += 1;
            self.order.push(self.upto);
        }
    }

    /// Reads frames until everything up to `upto` is delivered.
    async fn read_until(&mut self, ws: &mut Ws, channel: &str, upto: u64) -> Result<()> {
        while self.upto < upto {
            let (via, seqs) = next_reliable_frame(ws, channel).await?;
            for seq in seqs {
                self.offer(via, seq);
            }
        }
        Ok(())
    }
}

/// Acks `seq`, then pings: the pong must be the next frame (nothing extra was sent).
async fn ack_and_expect_quiet(ws: &mut Ws, channel: &str, seq: u64) -> Result<()> {
    send_json(
        ws,
        &format!(r#"{{"type":"ack","channel":"{channel}","seq":{seq}}}"#),
    )
    .await?;
    send_json(ws, r#"{"type":"ping"}"#).await?;
    assert_eq!(next_json(ws).await?, JsonServerFrame::Pong);
    Ok(())
}

#[tokio::test]
async fn reliable_events_reach_members_in_seq_order_when_published_out_of_order() -> Result<()> {
    let t = start(reliable_config()).await?;
    let (mut ws, last) = join_json(&t, "alice", "room:r").await?;
    assert_eq!(last, 0);
    let mut pbws = t.ws("pat", Some("danmaku.v1.pb")).await?;
    next_pb(&mut pbws).await?;
    send_pb(&mut pbws, join("room:r")).await?;
    next_pb(&mut pbws).await?;
    t.append_n("room:r", 5).await?;
    // Two ingest nodes race: 3 before 2; later 5 before 4; 1 and 3 redelivered.
    for seq in [1, 3, 2, 1, 5, 3, 4] {
        t.publish_seq("room:r", seq).await?;
    }
    // Ordered by the edge, they ride the room's ticks: no frame of their own.
    let mut frames = 0;
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let (via, s) = next_reliable_frame(&mut ws, "room:r").await?;
        assert_eq!(via, Via::Tick, "live gifts ride the tick");
        seqs.extend(s);
        frames += 1;
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert!(frames <= 3, "5 gifts in {frames} ticks");
    ack_and_expect_quiet(&mut ws, "room:r", 5).await?;
    let mut pb_seqs = Vec::new();
    while pb_seqs.len() < 5 {
        match next_pb(&mut pbws).await?.body {
            Some(server_frame::Body::Batch(b)) => {
                let events = danmaku_proto::decode_batch(&b, &Limits::default())?;
                let inside: Vec<u64> = events.iter().map(|e| e.seq).collect();
                assert!(inside.iter().all(|&s| s > 0), "{inside:?}");
                assert_eq!(
                    (b.first_seq, b.last_seq),
                    (inside[0], inside[inside.len() - 1]),
                    "the range is readable without opening the payload"
                );
                pb_seqs.extend(inside);
            }
            other => bail!("expected a tick, got {other:?}"),
        }
    }
    assert_eq!(pb_seqs, vec![1, 2, 3, 4, 5]);
    assert!(t.metric("danmaku_edge_reorder_held_total") >= 1.0);
    assert_eq!(
        t.metric("danmaku_edge_bus_events_total{result=\"reliable\"}"),
        7.0
    );
    assert_eq!(t.metric("danmaku_edge_reliable_acked_total"), 5.0);
    assert_eq!(
        t.metric("danmaku_edge_ack_frames_total"),
        1.0,
        "one cumulative ack"
    );
    assert_eq!(
        t.metric("danmaku_edge_reliable_sent_total"),
        10.0,
        "5 gifts to 2 members, each inside a tick"
    );
    assert_eq!(t.metric("danmaku_edge_reliable_missed_sent_total"), 0.0);
    Ok(())
}

#[tokio::test]
async fn a_gap_never_filled_on_the_bus_is_filled_from_the_store() -> Result<()> {
    let t = start(reliable_config()).await?;
    let (mut ws, _) = join_json(&t, "alice", "room:g").await?;
    t.append_n("room:g", 4).await?;
    for seq in [1, 3, 4] {
        t.publish_seq("room:g", seq).await?;
    }
    assert_eq!(reliable_seqs(&mut ws, "room:g", 4).await?, vec![1, 2, 3, 4]);
    ack_and_expect_quiet(&mut ws, "room:g", 4).await?;
    assert!(t.metric("danmaku_edge_gap_fills_total") >= 1.0);
    assert!(t.metric("danmaku_edge_reorder_held_total") >= 1.0);
    Ok(())
}

#[tokio::test]
async fn resume_replays_the_gap_then_goes_live_without_duplicates() -> Result<()> {
    let t = start(reliable_config()).await?;
    t.append_n("room:x", 3).await?;
    let (mut ws, last) = join_json(&t, "alice", "room:x").await?;
    assert_eq!(last, 3, "joined answers the channel's last seq");
    send_json(
        &mut ws,
        r#"{"type":"resume","channel":"room:x","after_seq":1}"#,
    )
    .await?;
    let mut got = Delivered::starting_at(1);
    got.read_until(&mut ws, "room:x", 3).await?;
    assert_eq!(got.wire, vec![(Via::Single, 2), (Via::Single, 3)]);
    t.append_n("room:x", 2).await?;
    // This edge's bus brings 2 and 3 only now (redelivered, out of order): the
    // shared tick carries them again; the client keeps 4 and 5 once.
    for seq in [2, 3, 4, 3, 5, 4] {
        t.publish_seq("room:x", seq).await?;
    }
    got.read_until(&mut ws, "room:x", 5).await?;
    assert_eq!(
        got.order,
        vec![2, 3, 4, 5],
        "each seq delivered once, in order"
    );
    assert!(got.wire[2..].iter().all(|(via, _)| *via == Via::Tick));
    ack_and_expect_quiet(&mut ws, "room:x", 5).await?;
    // A live event past a gap the channel never saw on this edge: the gap is
    // read from the store and the tick brings all three, in order.
    t.append_n("room:x", 3).await?;
    t.publish_seq("room:x", 8).await?;
    assert_eq!(reliable_seqs(&mut ws, "room:x", 3).await?, vec![6, 7, 8]);
    ack_and_expect_quiet(&mut ws, "room:x", 8).await?;
    assert_eq!(t.metric("danmaku_edge_resumes_total"), 1.0);
    assert_eq!(t.metric("danmaku_edge_resume_replayed_total"), 2.0);
    Ok(())
}

#[tokio::test]
async fn a_long_resume_is_paced_by_acks_instead_of_overflowing_the_window() -> Result<()> {
    let mut cfg = reliable_config();
    cfg.reliable.max_unacked = 3;
    let t = start(cfg).await?;
    t.append_n("room:p", 7).await?;
    let (mut ws, _) = join_json(&t, "alice", "room:p").await?;
    send_json(
        &mut ws,
        r#"{"type":"resume","channel":"room:p","after_seq":0}"#,
    )
    .await?;
    let mut got = Delivered::starting_at(0);
    got.read_until(&mut ws, "room:p", 3).await?;
    assert_eq!(got.wire.len(), 3, "one window: {:?}", got.wire);
    // A live event while catching up rides its tick; the client holds it.
    t.append_n("room:p", 1).await?;
    t.publish_seq("room:p", 8).await?;
    send_json(&mut ws, r#"{"type":"ping"}"#).await?;
    loop {
        match next_json(&mut ws).await? {
            JsonServerFrame::Pong => break,
            JsonServerFrame::Batch { events, .. } => {
                for e in events {
                    got.offer(Via::Tick, e.seq.unwrap_or_default());
                }
            }
            other => bail!("window full: nothing but the live tick, got {other:?}"),
        }
    }
    assert_eq!(got.upto, 3, "the window of 3 waits for an ack");
    send_json(&mut ws, r#"{"type":"ack","channel":"room:p","seq":3}"#).await?;
    got.read_until(&mut ws, "room:p", 6).await?;
    send_json(&mut ws, r#"{"type":"ack","channel":"room:p","seq":6}"#).await?;
    got.read_until(&mut ws, "room:p", 8).await?;
    assert_eq!(got.order, (1..=8).collect::<Vec<_>>());
    // Caught up: live again (9 rides a tick; 8's own tick may still be on its way).
    t.append_n("room:p", 1).await?;
    t.publish_seq("room:p", 9).await?;
    got.read_until(&mut ws, "room:p", 9).await?;
    assert_eq!(got.wire.last(), Some(&(Via::Tick, 9)));
    assert_eq!(
        got.order,
        (1..=9).collect::<Vec<_>>(),
        "each once, in order"
    );
    ack_and_expect_quiet(&mut ws, "room:p", 9).await?;
    assert_eq!(t.metric("danmaku_edge_reliable_backlog_closes_total"), 0.0);
    assert_eq!(t.metric("danmaku_edge_resume_replayed_total"), 8.0);
    Ok(())
}

#[tokio::test]
async fn unacked_reliable_frames_are_retransmitted_then_the_connection_is_closed() -> Result<()> {
    let mut cfg = reliable_config();
    cfg.reliable.retransmit_initial = Duration::from_millis(50);
    cfg.reliable.retransmit_max = Duration::from_millis(100);
    cfg.reliable.max_attempts = 3;
    let t = start(cfg).await?;
    let (mut ws, _) = join_json(&t, "alice", "room:t").await?;
    t.append_n("room:t", 1).await?;
    t.publish_seq("room:t", 1).await?;
    assert_eq!(
        next_reliable_frame(&mut ws, "room:t").await?,
        (Via::Tick, vec![1])
    );
    assert_eq!(
        next_reliable_frame(&mut ws, "room:t").await?,
        (Via::Single, vec![1]),
        "resent from the channel's ring"
    );
    assert!(t.metric("danmaku_edge_reliable_retransmits_total") >= 1.0);
    assert!(t.metric("danmaku_edge_reliable_stalls_total") >= 1.0);
    // Acked: no more resends.
    send_json(&mut ws, r#"{"type":"ack","channel":"room:t","seq":1}"#).await?;
    send_json(&mut ws, r#"{"type":"ping"}"#).await?;
    loop {
        match next_json(&mut ws).await? {
            JsonServerFrame::Pong => break,
            JsonServerFrame::Reliable { seq: 1, .. } => {} // in flight before the ack
            other => bail!("unexpected {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_json(&mut ws, r#"{"type":"ping"}"#).await?;
    assert_eq!(next_json(&mut ws).await?, JsonServerFrame::Pong);
    // Never acked: after max_attempts sends the connection is closed with a hint.
    t.append_n("room:t", 1).await?;
    t.publish_seq("room:t", 2).await?;
    assert_eq!(
        next_reliable_frame(&mut ws, "room:t").await?,
        (Via::Tick, vec![2])
    );
    for _ in 0..2 {
        assert_eq!(
            next_reliable_frame(&mut ws, "room:t").await?,
            (Via::Single, vec![2])
        );
    }
    match next_json(&mut ws).await? {
        JsonServerFrame::Error { code, message } => {
            assert_eq!(code, "reliable_backlog");
            assert!(message.contains("resume with after_seq"), "{message}");
        }
        other => bail!("expected reliable_backlog, got {other:?}"),
    }
    expect_closed(&mut ws).await?;
    assert_eq!(t.metric("danmaku_edge_reliable_backlog_closes_total"), 1.0);
    Ok(())
}

#[tokio::test]
async fn group_join_requires_membership_and_pushes_the_newest_missed_page() -> Result<()> {
    let mut cfg = reliable_config();
    cfg.reliable.missed_page = 2;
    cfg.reliable.ack_persist_interval = Duration::from_millis(50);
    let t = start(cfg).await?;
    t.store.join_group("group:g", "alice").await?;
    t.append_n("group:g", 5).await?;
    t.store.ack("alice", "group:g", 1).await?;
    let mut bob = t.ws("bob", Some("danmaku.v1.json")).await?;
    next_json(&mut bob).await?;
    send_json(&mut bob, r#"{"type":"join","channel":"group:g"}"#).await?;
    match next_json(&mut bob).await? {
        JsonServerFrame::Error { code, .. } => assert_eq!(code, "not_member"),
        other => bail!("expected not_member, got {other:?}"),
    }
    send_json(&mut bob, r#"{"type":"ping"}"#).await?;
    assert_eq!(
        next_json(&mut bob).await?,
        JsonServerFrame::Pong,
        "bob stays"
    );

    let (mut ws, last) = join_json(&t, "alice", "group:g").await?;
    assert_eq!(last, 5);
    // Missed 2..=5; the newest page of 2 is pushed, the rest is HTTP history.
    assert_eq!(reliable_seqs(&mut ws, "group:g", 2).await?, vec![4, 5]);
    t.append_n("group:g", 1).await?;
    t.publish_seq("group:g", 6).await?;
    assert_eq!(next_reliable(&mut ws, "group:g").await?, 6);
    ack_and_expect_quiet(&mut ws, "group:g", 6).await?;
    let deadline = tokio::time::Instant::now() + STEP;
    while t.store.acked("alice", "group:g").await? != 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ack offset never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Resume on a group reads as a member: nothing from before joined_seq.
    send_json(
        &mut ws,
        r#"{"type":"resume","channel":"group:g","after_seq":3}"#,
    )
    .await?;
    assert_eq!(reliable_seqs(&mut ws, "group:g", 3).await?, vec![4, 5, 6]);
    ack_and_expect_quiet(&mut ws, "group:g", 6).await?;
    Ok(())
}

#[tokio::test]
async fn a_slow_consumer_still_gets_every_reliable_frame() -> Result<()> {
    let mut cfg = reliable_config();
    cfg.send_queue_frames = 1;
    cfg.tcp_send_buffer = Some(4096);
    cfg.batch.min_window = Duration::from_millis(1);
    cfg.batch.max_events = 1;
    // No resends while the client is not reading: only missed ticks are sent again.
    cfg.reliable.retransmit_initial = Duration::from_secs(30);
    let t = start(cfg).await?;
    let (mut ws, _) = join_json(&t, "slow", "room:s").await?;
    let big = "x".repeat(4000);
    const GIFTS: u64 = 40;
    for seq in 1..=GIFTS {
        t.append("room:s", &format!("gift {seq}")).await?;
        for _ in 0..50 {
            t.publish("room:s", "bob", &big).await?;
        }
        t.publish_seq("room:s", seq).await?;
    }
    // Let the edge fill the socket and its queue while the client does not read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = Delivered::starting_at(0);
    let mut batches = 0;
    while got.upto < GIFTS {
        match next_json(&mut ws).await? {
            JsonServerFrame::Reliable {
                seq,
                event,
                channel,
            } => {
                check_gift("room:s", &channel, seq, &event);
                got.offer(Via::Single, seq);
            }
            JsonServerFrame::Batch { events, .. } => {
                batches += 1;
                for e in events.iter().filter_map(|e| e.seq) {
                    got.offer(Via::Tick, e);
                }
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got.order,
        (1..=GIFTS).collect::<Vec<_>>(),
        "every gift once, in order"
    );
    assert!(batches < 51 * GIFTS, "{batches} ticks: some were dropped");
    assert!(t.metric("danmaku_edge_slow_consumer_drops_total") > 0.0);
    // The batcher runs on its own thread, so a tick can mark a gift missed
    // again while the connection is already catching it up: such repeats
    // (clients drop them by seq) may still be on their way. Read until quiet.
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), next_json(&mut ws)).await
    {
        if let JsonServerFrame::Reliable { seq, .. } = frame? {
            got.offer(Via::Single, seq);
        }
    }
    // Whether a gift's own tick was dropped depends on the kernel's buffers;
    // every gift that came on its own was counted as a missed tick's.
    let singles = got
        .wire
        .iter()
        .filter(|(via, _)| *via == Via::Single)
        .count();
    assert_eq!(
        t.metric("danmaku_edge_reliable_missed_sent_total"),
        singles as f64
    );
    Ok(())
}

/// Ticks go from the batcher shard straight into a WebSocket's socket; when
/// the socket is full the shard writes what it takes and the connection's
/// writer the rest, and later ticks queue behind it: the viewer still reads
/// whole frames, in order, with only whole ticks dropped.
#[tokio::test]
async fn ticks_written_by_the_shard_stay_whole_and_in_order_when_the_socket_fills() -> Result<()> {
    let mut cfg = config();
    cfg.tcp_send_buffer = Some(4096);
    cfg.send_queue_frames = 4;
    cfg.batch.min_window = Duration::from_millis(1);
    cfg.batch.max_events = 1;
    let t = start(cfg).await?;
    let mut ws = t.ws("reader", Some("danmaku.v1.pb")).await?;
    assert!(matches!(
        next_pb(&mut ws).await?.body,
        Some(server_frame::Body::AuthOk(_))
    ));
    send_pb(&mut ws, join("room:d")).await?;
    assert!(matches!(
        next_pb(&mut ws).await?.body,
        Some(server_frame::Body::Joined(_))
    ));
    // A reading viewer: its tick goes into the socket whole, from the shard.
    t.publish("room:d", "bob", "first").await?;
    match next_pb(&mut ws).await?.body {
        Some(server_frame::Body::Batch(b)) => assert_eq!(batch_texts(&b)?, ["first"]),
        other => bail!("expected the first batch, got {other:?}"),
    }
    let whole = r#"danmaku_edge_direct_writes_total{result="whole"}"#;
    assert_eq!(t.metric_when(whole, |v| v >= 1.0).await, 1.0);
    // Now it stops reading while ticks of incompressible text pile up.
    const TICKS: usize = 300;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..TICKS {
        // ~3 KB per frame after zstd: hex of a xorshift stream.
        let filler: String = (0..375)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{x:016x}")
            })
            .collect();
        t.publish("room:d", "bob", &format!("{i:04} {filler}"))
            .await?;
    }
    let partial = r#"danmaku_edge_direct_writes_total{result="partial"}"#;
    assert!(
        t.metric_when(partial, |v| v >= 1.0).await >= 1.0,
        "a full socket took a frame in part"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Read until the edge has handled every tick and a quiet second passed.
    let mut seen = Vec::new();
    loop {
        let Ok(msg) = tokio::time::timeout(Duration::from_secs(1), next_pb(&mut ws)).await else {
            if t.metric("danmaku_edge_batches_total") >= (TICKS + 1) as f64 {
                break;
            }
            continue;
        };
        match msg?.body {
            Some(server_frame::Body::Batch(b)) => {
                for text in batch_texts(&b)? {
                    seen.push(text[..4].parse::<usize>()?);
                }
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "ticks arrive in order: {seen:?}"
    );
    let dropped = t.metric("danmaku_edge_slow_consumer_drops_total");
    assert_eq!(
        seen.len() + dropped as usize,
        TICKS,
        "every tick is either read or counted as dropped"
    );
    assert!(dropped > 0.0, "the queue behind the full socket overflowed");
    // Drained: the next tick goes from the shard into the socket again.
    let before = t.metric(whole);
    t.publish("room:d", "bob", "after").await?;
    match next_pb(&mut ws).await?.body {
        Some(server_frame::Body::Batch(b)) => assert_eq!(batch_texts(&b)?, ["after"]),
        other => bail!("expected the last batch, got {other:?}"),
    }
    assert_eq!(t.metric_when(whole, |v| v > before).await, before + 1.0);
    Ok(())
}

#[tokio::test]
async fn quic_receives_reliable_frames_on_the_control_stream_and_resumes() -> Result<()> {
    let t = start(reliable_config()).await?;
    t.append_n("room:qr", 2).await?;
    let (_endpoint, conn) = quic_connect(&t).await?;
    let mut ctl = open_control(&conn).await?;
    ctl.send(client_frame::Body::Auth(pb::Auth {
        token: t.token("quinn"),
    }))
    .await?;
    ctl.next().await?;
    ctl.send(join("room:qr")).await?;
    assert!(matches!(
        ctl.next().await?.and_then(|f| f.body),
        Some(server_frame::Body::Joined(j)) if j.last_seq == 2
    ));
    ctl.send(client_frame::Body::Resume(pb::Resume {
        channel: "room:qr".into(),
        after_seq: 0,
    }))
    .await?;
    // The resume's frames come on the control stream.
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        match ctl.next().await?.and_then(|f| f.body) {
            Some(server_frame::Body::Reliable(r)) => {
                assert_eq!(r.channel, "room:qr");
                assert_eq!(r.event.map(|e| e.text), Some(format!("gift {}", r.seq)));
                seqs.push(r.seq);
            }
            other => bail!("expected reliable, got {other:?}"),
        }
    }
    assert_eq!(seqs, vec![1, 2]);
    // A live gift rides the tick, on the batch stream.
    t.append_n("room:qr", 1).await?;
    t.publish_seq("room:qr", 3).await?;
    let mut uni = tokio::time::timeout(STEP, conn.accept_uni()).await??;
    let mut reader = FrameReader::new(1 << 20);
    let tick = loop {
        if let Some(f) = reader.next_frame()? {
            break frame::decode_server(&f, &Limits::default())?;
        }
        match tokio::time::timeout(STEP, uni.read_chunk(64 << 10, true)).await?? {
            Some(c) => reader.push(&c.bytes),
            None => bail!("batch stream ended"),
        }
    };
    match tick.body {
        Some(server_frame::Body::Batch(b)) => {
            let events = danmaku_proto::decode_batch(&b, &Limits::default())?;
            assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
            assert_eq!(events[0].text, "gift 3");
        }
        other => bail!("expected a tick, got {other:?}"),
    }
    ctl.send(client_frame::Body::Ack(pb::Ack {
        channel: "room:qr".into(),
        seq: 3,
    }))
    .await?;
    ctl.send(client_frame::Body::Ping(pb::Ping { ts_ms: 1 }))
        .await?;
    assert!(matches!(
        ctl.next().await?.and_then(|f| f.body),
        Some(server_frame::Body::Pong(_))
    ));
    assert_eq!(t.metric("danmaku_edge_reliable_acked_total"), 3.0);
    Ok(())
}

// ---- prepared frames: one frame per batch, the same bytes for every member ----

/// A WebSocket client on a plain TCP socket (hand-made upgrade), so the test
/// sees the exact bytes the edge wrote.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(t: &TestEdge, user: &str, subprotocol: &str) -> Result<RawWs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(t.http).await?;
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = format!(
            "GET /v1/ws?token={} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n",
            t.token(user),
            t.http
        );
        tcp.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(STEP, tcp.read(&mut chunk)).await??;
            if n == 0 {
                bail!("closed during the handshake");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455 §1.3's sample key and its accept value.
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(
            head.contains(&format!("sec-websocket-protocol: {subprotocol}")),
            "{head}"
        );
        buf.drain(..end);
        Ok(RawWs { tcp, buf })
    }

    /// The next frame's complete bytes as written by the edge (header included).
    async fn raw_frame(&mut self) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                let (len, pos) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into()?) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= pos + len {
                    return Ok(self.buf.drain(..pos + len).collect());
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(STEP, self.tcp.read(&mut chunk)).await??;
            if n == 0 {
                bail!("stream ended");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next frame's payload, decoded as protobuf.
    async fn next_pb(&mut self) -> Result<(Vec<u8>, pb::ServerFrame)> {
        let raw = self.raw_frame().await?;
        let mut dec = danmaku_proto::wsframe::Decoder::client(1 << 20);
        dec.push(&raw);
        match dec.next_message()? {
            Some(danmaku_proto::wsframe::Message::Binary(b)) => {
                let f = frame::decode_server(&b, &Limits::default())?;
                Ok((raw, f))
            }
            other => bail!("expected a binary frame, got {other:?}"),
        }
    }

    async fn send_pb(&mut self, body: client_frame::Body) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let bytes = frame::encode(&frame::client(body));
        let wire = danmaku_proto::wsframe::encode_masked(
            true,
            danmaku_proto::wsframe::OpCode::Binary,
            [0x12, 0x34, 0x56, 0x78],
            &bytes,
        );
        self.tcp.write_all(&wire).await?;
        Ok(())
    }
}

fn batch_texts(b: &pb::Batch) -> Result<Vec<String>> {
    Ok(danmaku_proto::decode_batch(b, &Limits::default())?
        .into_iter()
        .map(|e| e.text)
        .collect())
}

#[tokio::test]
async fn every_member_gets_the_same_events_and_ws_pb_members_the_same_bytes() -> Result<()> {
    let t = start(config()).await?;
    let room = "room:same";
    let mut a = RawWs::connect(&t, "a", "danmaku.v1.pb").await?;
    let mut b = RawWs::connect(&t, "b", "danmaku.v1.pb").await?;
    for ws in [&mut a, &mut b] {
        assert!(matches!(
            ws.next_pb().await?.1.body,
            Some(server_frame::Body::AuthOk(_))
        ));
        ws.send_pb(join(room)).await?;
        assert!(matches!(
            ws.next_pb().await?.1.body,
            Some(server_frame::Body::Joined(_))
        ));
    }
    let mut js = t.ws("j", Some("danmaku.v1.json")).await?;
    next_json(&mut js).await?;
    send_json(&mut js, &format!(r#"{{"type":"join","channel":"{room}"}}"#)).await?;
    next_json(&mut js).await?;
    let (_endpoint, conn) = quic_connect(&t).await?;
    let mut ctl = open_control(&conn).await?;
    ctl.send(client_frame::Body::Auth(pb::Auth {
        token: t.token("q"),
    }))
    .await?;
    ctl.next().await?;
    ctl.send(join(room)).await?;
    ctl.next().await?;

    let sent: Vec<String> = (0..20).map(|i| format!("same {i} ✓")).collect();
    for text in &sent {
        t.publish(room, "s", text).await?;
    }

    // Two protobuf members: every batch frame byte-identical, events in order.
    let mut got_a = Vec::new();
    while got_a.len() < sent.len() {
        let (raw_a, fa) = a.next_pb().await?;
        let (raw_b, _) = b.next_pb().await?;
        assert_eq!(
            raw_a, raw_b,
            "a batch frame is the same bytes for every member"
        );
        match fa.body {
            Some(server_frame::Body::Batch(batch)) => got_a.extend(batch_texts(&batch)?),
            other => bail!("expected a batch, got {other:?}"),
        }
    }
    assert_eq!(got_a, sent);

    // The JSON member: the same events.
    let mut got_j = Vec::new();
    while got_j.len() < sent.len() {
        match next_json(&mut js).await? {
            JsonServerFrame::Batch { events, .. } => {
                got_j.extend(events.into_iter().map(|e: JsonEvent| e.text))
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(got_j, sent);

    // The QUIC member: the same events (datagrams or the batch stream).
    let mut got_q = Vec::new();
    let mut uni: Option<(quinn::RecvStream, FrameReader)> = None;
    while got_q.len() < sent.len() {
        let bytes = if let Some((recv, reader)) = uni.as_mut() {
            loop {
                if let Some(f) = reader.next_frame()? {
                    break f;
                }
                match tokio::time::timeout(STEP, recv.read_chunk(64 << 10, true)).await?? {
                    Some(c) => reader.push(&c.bytes),
                    None => bail!("batch stream ended"),
                }
            }
        } else {
            tokio::select! {
                d = conn.read_datagram() => d?,
                s = conn.accept_uni() => { uni = Some((s?, FrameReader::new(1 << 20))); continue; }
                _ = tokio::time::sleep(STEP) => bail!("no batch arrived"),
            }
        };
        match frame::decode_server(&bytes, &Limits::default())?.body {
            Some(server_frame::Body::Batch(batch)) => got_q.extend(batch_texts(&batch)?),
            other => bail!("expected a batch, got {other:?}"),
        }
    }
    assert_eq!(got_q, sent);
    assert!(t.metric("danmaku_edge_egress_bytes_total{transport=\"ws_pb\"}") > 0.0);
    assert!(t.metric("danmaku_edge_egress_bytes_total{transport=\"ws_json\"}") > 0.0);
    assert!(t.metric("danmaku_edge_egress_bytes_total{transport=\"quic\"}") > 0.0);
    Ok(())
}

#[tokio::test]
async fn ws_protocol_violations_and_pings_on_a_raw_socket() -> Result<()> {
    use danmaku_proto::wsframe::{Decoder, Message as WsMessage, OpCode, encode_masked};
    use tokio::io::AsyncWriteExt;
    let t = start(config()).await?;
    // A WebSocket ping is answered with a pong carrying the same data.
    let mut ws = RawWs::connect(&t, "p", "danmaku.v1.pb").await?;
    ws.next_pb().await?;
    ws.tcp
        .write_all(&encode_masked(true, OpCode::Ping, [1, 2, 3, 4], b"hb"))
        .await?;
    let raw = ws.raw_frame().await?;
    let mut dec = Decoder::client(1024);
    dec.push(&raw);
    assert_eq!(
        dec.next_message()?,
        Some(WsMessage::Pong(Bytes::from_static(b"hb")))
    );
    // An unmasked client frame breaks the protocol: closed, counted.
    ws.tcp.write_all(&[0x82, 0x01, 0x00]).await?;
    let raw = ws.raw_frame().await?;
    assert_eq!(raw[0] & 0x0f, 0x8, "a close frame");
    assert_eq!(u16::from_be_bytes([raw[2], raw[3]]), 1002);
    assert_eq!(
        t.metric("danmaku_edge_bad_frames_total{code=\"websocket_protocol\"}"),
        1.0
    );
    Ok(())
}

/// Reads JSON frames until one matches `want`, within `STEP`; fails on
/// anything `forbid` matches first.
async fn json_until(
    ws: &mut Ws,
    want: impl Fn(&JsonServerFrame) -> bool,
    forbid: impl Fn(&JsonServerFrame) -> bool,
) -> Result<JsonServerFrame> {
    loop {
        let f = next_json(ws).await?;
        if want(&f) {
            return Ok(f);
        }
        if forbid(&f) {
            bail!("unexpected {f:?}");
        }
    }
}

#[tokio::test]
async fn a_ban_on_the_bus_makes_the_users_connections_leave_and_refuses_their_join() -> Result<()> {
    use danmaku_proto::moderation::{MODERATION_BUS_KEY, ban_event};
    let e = start(config()).await?;
    let ch = "room:ban";
    let mut troll_json = e.ws("troll", Some("danmaku.v1.json")).await?;
    let mut troll_pb = e.ws("troll", Some("danmaku.v1.pb")).await?;
    let mut viewer = e.ws("alice", Some("danmaku.v1.json")).await?;
    for ws in [&mut troll_json, &mut viewer] {
        ws.send(Message::Text(
            format!(r#"{{"type":"join","channel":"{ch}"}}"#).into(),
        ))
        .await?;
        json_until(
            ws,
            |f| matches!(f, JsonServerFrame::Joined { .. }),
            |_| false,
        )
        .await?;
    }
    send_pb(&mut troll_pb, join(ch)).await?;
    loop {
        match next_pb(&mut troll_pb).await?.body {
            Some(server_frame::Body::Joined(j)) if j.channel == ch => break,
            Some(server_frame::Body::AuthOk(_)) => {}
            other => bail!("expected joined, got {other:?}"),
        }
    }
    let announce = |until_ms: i64, lifted: bool| {
        let ev = ban_event(ch, "troll", until_ms, lifted, "test");
        let bus = Arc::clone(&e.bus);
        async move {
            bus.publish(
                Bytes::from_static(MODERATION_BUS_KEY.as_bytes()),
                frame::encode(&ev),
            )
            .await
        }
    };
    announce(danmaku_proto::now_ms() + 60_000, false).await?;
    let left = json_until(
        &mut troll_json,
        |f| matches!(f, JsonServerFrame::Left { .. }),
        |_| false,
    )
    .await?;
    assert_eq!(
        left,
        JsonServerFrame::Left {
            channel: ch.into(),
            reason: "banned".into()
        }
    );
    match next_pb(&mut troll_pb).await?.body {
        Some(server_frame::Body::Left(l)) => {
            assert_eq!((l.channel.as_str(), l.reason.as_str()), (ch, "banned"))
        }
        other => bail!("unexpected {other:?}"),
    }
    // Nothing more of the room reaches the banned user; the viewer stays.
    e.publish(ch, "bob", "after the ban").await?;
    let batch = json_until(
        &mut viewer,
        |f| matches!(f, JsonServerFrame::Batch { .. }),
        |f| matches!(f, JsonServerFrame::Left { .. }),
    )
    .await?;
    assert!(
        matches!(batch, JsonServerFrame::Batch { events, .. } if events[0].text == "after the ban")
    );
    // A new join is refused until the ban is lifted.
    send_pb(&mut troll_pb, join(ch)).await?;
    match next_pb(&mut troll_pb).await?.body {
        Some(server_frame::Body::Error(err)) => assert_eq!(err.code, "banned", "{}", err.message),
        other => bail!("expected the error banned, got {other:?}"),
    }
    assert_eq!(e.metric("danmaku_edge_bans_active"), 1.0);
    assert_eq!(e.metric("danmaku_edge_banned_leaves_total"), 2.0);
    assert_eq!(e.metric("danmaku_edge_errors_total{code=\"banned\"}"), 1.0);
    announce(0, true).await?;
    tokio::time::timeout(STEP, async {
        while e.metric("danmaku_edge_bans_active") > 0.0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    send_pb(&mut troll_pb, join(ch)).await?;
    match next_pb(&mut troll_pb).await?.body {
        Some(server_frame::Body::Joined(j)) => assert_eq!(j.channel, ch),
        other => bail!("expected joined after the ban was lifted, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_room_over_its_max_rate_is_thinned_with_every_priority_danmaku_and_gift() -> Result<()> {
    let e = start(EdgeConfig {
        batch: BatchConfig {
            min_window: Duration::from_millis(50),
            ..BatchConfig::default()
        },
        ..EdgeConfig::default()
    })
    .await?;
    let ch = "room:hot";
    let mut viewer = e.ws("alice", Some("danmaku.v1.json")).await?;
    viewer
        .send(Message::Text(
            format!(r#"{{"type":"join","channel":"{ch}"}}"#).into(),
        ))
        .await?;
    json_until(
        &mut viewer,
        |f| matches!(f, JsonServerFrame::Joined { .. }),
        |_| false,
    )
    .await?;
    // 2,000 danmaku/s for 3 s into a room capped at 200/s: one in 20 from a
    // priority sender, and a gift every 100 ms.
    let bus = Arc::clone(&e.bus);
    let publisher = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        for i in 0..300u64 {
            tick.tick().await;
            for j in 0..20u64 {
                let n = i * 20 + j;
                let ev = pb::BusEvent {
                    version: 1,
                    channel: ch.into(),
                    event: Some(pb::Event {
                        kind: pb::Kind::Danmaku as i32,
                        sender: "crowd".into(),
                        text: format!("d{n}"),
                        ts_ms: danmaku_proto::now_ms(),
                        priority: n % 20 == 0,
                        ..Default::default()
                    }),
                    origin: "test".into(),
                    room_max_rate: 200,
                    ..Default::default()
                };
                bus.publish(Bytes::from_static(ch.as_bytes()), frame::encode(&ev))
                    .await?;
            }
            if i % 10 == 0 {
                let ev = pb::BusEvent {
                    version: 1,
                    channel: ch.into(),
                    event: Some(pb::Event {
                        kind: pb::Kind::Gift as i32,
                        sender: "bob".into(),
                        text: "rocket".into(),
                        ts_ms: danmaku_proto::now_ms(),
                        seq: i / 10 + 1,
                        ..Default::default()
                    }),
                    origin: "test".into(),
                    ..Default::default()
                };
                bus.publish(Bytes::from_static(ch.as_bytes()), frame::encode(&ev))
                    .await?;
            }
        }
        anyhow::Ok(start.elapsed())
    });
    let (mut danmaku, mut priority, mut gifts, mut sampled_out) = (0u64, 0u64, 0u64, 0u64);
    let mut last_priority = String::new();
    while let Ok(f) = tokio::time::timeout(Duration::from_secs(2), next_json(&mut viewer)).await {
        if let JsonServerFrame::Batch {
            events,
            sampled_out: s,
            ..
        } = f?
        {
            sampled_out += s.unwrap_or(0);
            for ev in events {
                match (ev.kind.as_str(), ev.priority) {
                    ("gift", _) => gifts += 1,
                    ("danmaku", true) => {
                        priority += 1;
                        last_priority = ev.text;
                    }
                    ("danmaku", false) => danmaku += 1,
                    _ => {}
                }
            }
        }
    }
    let secs = publisher.await??.as_secs_f64();
    let rate = (danmaku + priority) as f64 / secs;
    eprintln!(
        "pushed {rate:.0}/s over {secs:.2} s ({danmaku} + {priority} priority), {sampled_out} sampled out, {gifts} gifts"
    );
    assert_eq!(
        priority, 300,
        "every priority danmaku (last {last_priority})"
    );
    assert_eq!(gifts, 30, "every gift");
    assert_eq!(
        danmaku + priority + sampled_out,
        6_000,
        "sampled_out counts the rest"
    );
    assert!(
        (180.0..=220.0).contains(&rate),
        "200/s ±10% expected, got {rate:.0}/s"
    );
    assert_eq!(
        e.metric_when("danmaku_edge_sampled_out_total", |v| v
            >= sampled_out as f64)
            .await,
        sampled_out as f64
    );
    Ok(())
}
