//! QUIC limits before authentication, against a real `danmaku standalone`
//! process: a peer gets one control stream, no streams of its own and no
//! datagrams, a small frame limit until it authenticates, and a deadline for
//! its `auth` frame. Many such peers flooding at once leave the edge's memory
//! flat and its service to real clients intact.

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
    let grown_mb = rss1.saturating_sub(rss0) as f64 / 1024.0;
    assert!(
        grown_mb < 64.0,
        "edge RSS grew {grown_mb:.1} MB for {PEERS} unauthenticated peers"
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
    assert!(matches!(posted, PostOutcome::Accepted), "{posted:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_size_frame_before_auth_is_refused() {
    let edge = start_edge().await;
    let (_endpoint, conn) = raw_peer(edge.addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // 1 MiB is within the frame limit after auth, not before.
    let mut prefix = Vec::new();
    prost::encoding::encode_varint(1 << 20, &mut prefix);
    send.write_all(&prefix).await.unwrap();
    let frames = read_frames(&mut recv).await;
    assert_eq!(error_code(&frames), Some("frame_too_large"), "{frames:?}");
    let text = common::metrics_text(&edge.base).await;
    assert!(
        metric_value(
            &text,
            "danmaku_edge_bad_frames_total",
            &[("code", "frame_too_large")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}
