//! QUIC limits before authentication, against a real `danmaku standalone`
//! process: a peer gets one control stream, no streams of its own and no
//! datagrams, a 16 KiB frame limit until it authenticates (exactly 16 KiB passes,
//! one byte more is refused; after auth the 1 MiB limit applies), and a deadline
//! for its `auth` frame. Many such peers flooding at once cost the edge no more
//! memory than docs/PROTOCOL.md promises per peer (64 KiB of windows plus one
//! frame, plus the connection itself) and leave its service to real clients intact.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent};
use danmaku_proto::framing::{FrameReader, encode_prefixed};
use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::{Limits, frame};
use danmaku_testkit::metric_value;

/// Unauthenticated peers flooding at once.
const PEERS: usize = 40;
/// The edge's `--handshake-timeout` in this test.
const HANDSHAKE: Duration = Duration::from_secs(3);
/// docs/PROTOCOL.md's limits: flow-control windows of 64 KiB per stream and per
/// connection, and frames of at most 16 KiB before authentication.
const RECEIVE_WINDOW: u64 = 64 << 10;
const PRE_AUTH_FRAME: u64 = 16 << 10;
/// What a connection costs the edge besides buffered data (see the flood test).
const CONNECTION_STATE: u64 = 64 << 10;

fn token(user: &str) -> String {
    danmaku_proto::token::TokenKey::new(common::SECRET).mint(
        user,
        "user",
        danmaku_proto::token::now_secs(),
        3600,
    )
}

async fn start_edge() -> common::Proc {
    danmaku_testkit::init_crypto();
    let addr = common::free_addr();
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-ql"));
    let (listen, data) = (addr.to_string(), data.to_string_lossy().into_owned());
    common::spawn_args(
        addr,
        &[
            "standalone",
            "--listen",
            &listen,
            "--data",
            &data,
            "--auth-secret",
            common::SECRET,
            "--handshake-timeout",
            "3s",
        ],
    )
    .await
}

/// A bare QUIC connection to the edge (ALPN `danmaku/1`), no frames sent.
async fn raw_peer(addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection) {
    // The standalone's development certificate, pinned (verification is on).
    let der = danmaku_client::IngestClient::new(&format!("http://{addr}"))
        .fetch_cert_der()
        .await
        .unwrap();
    let tls = danmaku_client::quic::tls_config(Some(der)).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("QUIC handshake");
    (endpoint, conn)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The frames the edge sent on a control stream until it finished it.
async fn read_frames(recv: &mut quinn::RecvStream) -> Vec<Body> {
    let bytes = tokio::time::timeout(Duration::from_secs(15), recv.read_to_end(1 << 20))
        .await
        .expect("the edge finishes the control stream")
        .expect("control stream read");
    let mut reader = FrameReader::new(1 << 20);
    reader.push(&bytes);
    let mut out = Vec::new();
    while let Some(f) = reader.next_frame().unwrap() {
        let f = frame::decode_server(&f, &Limits::default()).unwrap();
        out.extend(f.body);
    }
    out
}

fn error_code(frames: &[Body]) -> Option<&str> {
    frames.iter().find_map(|b| match b {
        Body::Error(e) => Some(e.code.as_str()),
        _ => None,
    })
}

/// One abusive peer: an unfinished `auth` frame on the control stream, then
/// tries to open its own streams (to fill with 1 MiB each) and send datagrams.
/// Returns the connection, its control stream's receiving half and how many
/// extra streams the edge let it open.
async fn flood(addr: SocketAddr) -> (quinn::Endpoint, quinn::Connection, quinn::RecvStream, usize) {
    let (endpoint, conn) = raw_peer(addr).await;
    assert_eq!(
        conn.max_datagram_size(),
        None,
        "the edge must not accept datagrams"
    );
    assert!(
        conn.send_datagram(vec![0u8; 1000].into()).is_err(),
        "a datagram to the edge must be refused locally"
    );
    let (mut send, recv) = conn.open_bi().await.unwrap();
    // Declares 16,000 bytes (within the pre-auth limit) and sends 15,000.
    let mut partial = encode_prefixed(&vec![0u8; 16_000]).to_vec();
    partial.truncate(partial.len() - 1_000);
    send.write_all(&partial).await.unwrap();
    let mut opened = 0;
    let junk = vec![7u8; 1 << 20];
    for _ in 0..4 {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_millis(200), conn.open_uni()).await
        {
            opened += 1;
            let _ = tokio::time::timeout(Duration::from_millis(500), s.write_all(&junk)).await;
        }
    }
    if let Ok(Ok((mut s, _))) =
        tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await
    {
        opened += 1;
        let _ = tokio::time::timeout(Duration::from_millis(500), s.write_all(&junk)).await;
    }
    // Keeps `send` open: dropping it would reset the stream.
    std::mem::forget(send);
    (endpoint, conn, recv, opened)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_quic_peers_are_bounded_and_closed_at_the_deadline() {
    let edge = start_edge().await;
    let pid = edge.child.id();
    // Warm up (first connection allocates the endpoint's buffers).
    drop(raw_peer(edge.addr).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss0 = rss_kb(pid);

    let peers: Vec<_> = (0..PEERS).map(|_| tokio::spawn(flood(edge.addr))).collect();
    let mut peers_done = Vec::new();
    for p in peers {
        peers_done.push(p.await.expect("peer task"));
    }
    let rss1 = rss_kb(pid);
    let opened: usize = peers_done.iter().map(|p| p.3).sum();
    assert_eq!(opened, 0, "peers opened streams beyond the control stream");
    // quinn's defaults would let these peers park ~160 MB of stream data here.
    // docs/PROTOCOL.md: a peer can make the edge buffer at most about 64 KiB (its
    // flow-control windows) plus one frame (16 KiB before auth). On top comes the
    // connection itself (quinn + rustls state and the edge's task: BENCHMARKS.md
    // measures ~36 KB per idle QUIC connection; allowed here: 64 KiB).
    let per_peer_kb = (RECEIVE_WINDOW + PRE_AUTH_FRAME + CONNECTION_STATE) / 1024;
    let grown_kb = rss1.saturating_sub(rss0);
    eprintln!(
        "edge RSS {rss0} -> {rss1} kB: {} kB per unauthenticated peer (bound {per_peer_kb} kB)",
        grown_kb / PEERS as u64
    );
    assert!(
        grown_kb <= PEERS as u64 * per_peer_kb,
        "edge RSS grew {grown_kb} kB for {PEERS} unauthenticated peers: over {per_peer_kb} kB each"
    );

    // Meanwhile a real client is served.
    let http = IngestClient::new(&edge.base);
    let mut viewer = Client::connect_quic(
        edge.addr,
        Some(http.fetch_cert_der().await.unwrap()),
        &token("viewer"),
        ClientConfig::default(),
    )
    .await
    .expect("a real client connects during the flood");
    viewer.join("room:ql").await.unwrap();
    common::wait_joined(&mut viewer, "room:ql").await;
    let posted = http
        .post_danmaku(&token("poster"), "room:ql", "still serving")
        .await
        .unwrap();
    assert!(matches!(posted, PostOutcome::Accepted { .. }), "{posted:?}");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match viewer.next_event().await {
                Some(ServerEvent::Batch { events, .. })
                    if events.iter().any(|e| e.text == "still serving") =>
                {
                    return;
                }
                Some(_) => {}
                None => panic!("viewer closed"),
            }
        }
    })
    .await
    .expect("the danmaku arrives");

    // Every peer is closed with `handshake_timeout` at the deadline.
    for (_endpoint, conn, mut recv, _) in peers_done {
        let frames = read_frames(&mut recv).await;
        assert_eq!(error_code(&frames), Some("handshake_timeout"), "{frames:?}");
        let closed = tokio::time::timeout(HANDSHAKE * 3, conn.closed())
            .await
            .expect("closed by the edge");
        match closed {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(1), "{c:?}")
            }
            other => panic!("closed by {other:?}"),
        }
    }
    let text = common::metrics_text(&edge.base).await;
    let refused = metric_value(
        &text,
        "danmaku_edge_refused_total",
        &[("code", "handshake_timeout")],
    )
    .unwrap_or(0.0);
    assert!(refused >= PEERS as f64, "refused {refused}");
    // The real client is still connected and served.
    viewer.ping().await.unwrap();
}

/// `frame` (a `ClientFrame`) padded with an unknown field (number 15, which a
/// decoder skips) to exactly `size` encoded bytes.
fn padded(frame: danmaku_proto::pb::ClientFrame, size: usize) -> Vec<u8> {
    use prost::Message;
    let mut buf = frame.encode_to_vec();
    // Tag byte (field 15, length-delimited) + a 2- or 3-byte length + payload.
    let room = size - buf.len() - 1;
    let len_bytes = if room - 2 < 1 << 14 { 2 } else { 3 };
    let pad = room - len_bytes;
    buf.push((15 << 3) | 2);
    prost::encoding::encode_varint(pad as u64, &mut buf);
    assert_eq!(buf.len() + pad, size, "padding arithmetic");
    buf.resize(size, 0);
    buf
}

fn auth_frame(user: &str) -> danmaku_proto::pb::ClientFrame {
    frame::client(danmaku_proto::pb::client_frame::Body::Auth(
        danmaku_proto::pb::Auth { token: token(user) },
    ))
}

/// Reads the control stream until a frame other than `Online`/`Reliable`
/// noise arrives; returns it.
async fn next_frame(recv: &mut quinn::RecvStream, reader: &mut FrameReader) -> Body {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            while let Some(f) = reader.next_frame().unwrap() {
                if let Some(b) = frame::decode_server(&f, &Limits::default()).unwrap().body {
                    return b;
                }
            }
            let chunk = recv
                .read_chunk(1 << 16, true)
                .await
                .expect("control stream read")
                .expect("the edge keeps the control stream open");
            reader.push(&chunk.bytes);
        }
    })
    .await
    .expect("a frame from the edge within 10 s")
}

async fn bad_frames(base: &str) -> f64 {
    let text = common::metrics_text(base).await;
    metric_value(
        &text,
        "danmaku_edge_bad_frames_total",
        &[("code", "frame_too_large")],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_16_kib_are_refused_before_auth_and_accepted_after() {
    let edge = start_edge().await;

    // One byte over 16 KiB, before auth: refused from its length prefix.
    let before = bad_frames(&edge.base).await;
    let (_e1, conn) = raw_peer(edge.addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut prefix = Vec::new();
    prost::encoding::encode_varint(PRE_AUTH_FRAME + 1, &mut prefix);
    send.write_all(&prefix).await.unwrap();
    let frames = read_frames(&mut recv).await;
    assert_eq!(error_code(&frames), Some("frame_too_large"), "{frames:?}");
    assert_eq!(bad_frames(&edge.base).await, before + 1.0);

    // Exactly 16 KiB before auth: an `auth` frame of that size is accepted.
    let (_e2, conn) = raw_peer(edge.addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let auth = padded(auth_frame("big-auth"), PRE_AUTH_FRAME as usize);
    send.write_all(&encode_prefixed(&auth)).await.unwrap();
    let mut reader = FrameReader::new(1 << 20);
    match next_frame(&mut recv, &mut reader).await {
        Body::AuthOk(ok) => assert_eq!(ok.user, "big-auth"),
        other => panic!("a 16 KiB auth frame: {other:?}"),
    }

    // After auth the frame limit is the full one (1 MiB): 64 KiB and 256 KiB
    // pings (beyond the flow-control window, so they pass in steps) are answered.
    for size in [64 << 10, 256 << 10] {
        let ping = frame::client(danmaku_proto::pb::client_frame::Body::Ping(
            danmaku_proto::pb::Ping { ts_ms: size as i64 },
        ));
        send.write_all(&encode_prefixed(&padded(ping, size)))
            .await
            .unwrap();
        match next_frame(&mut recv, &mut reader).await {
            Body::Pong(p) => assert_eq!(p.ts_ms, size as i64),
            other => panic!("a {size}-byte ping after auth: {other:?}"),
        }
    }
    assert_eq!(
        bad_frames(&edge.base).await,
        before + 1.0,
        "only the pre-auth frame was refused"
    );

    // And the 1 MiB limit still holds after auth.
    let mut prefix = Vec::new();
    prost::encoding::encode_varint((1 << 20) + 1, &mut prefix);
    send.write_all(&prefix).await.unwrap();
    match next_frame(&mut recv, &mut reader).await {
        Body::Error(e) => assert_eq!(e.code, "frame_too_large"),
        other => panic!("a frame over 1 MiB after auth: {other:?}"),
    }
}
