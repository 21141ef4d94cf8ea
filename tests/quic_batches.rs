//! Danmaku batches over QUIC: one ordered path, every drop counted.
//!
//! * Small and big batches mixed (small ones used to go as datagrams and big
//!   ones on a stream, and overtook each other whenever the stream was held up,
//!   as loss and retransmission do): a QUIC viewer whose stream data comes late
//!   still sees each sender's comments in order, none missing.
//! * A QUIC viewer that does not read: its batches are dropped at the edge and
//!   counted in `danmaku_edge_slow_consumer_drops_total` (quinn used to drop
//!   queued datagrams silently), while a reading viewer gets every comment.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use danmaku::standalone::Running;
use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent};
use danmaku_proto::framing::{FrameReader, encode_prefixed};
use danmaku_proto::pb::{self, client_frame::Body};
use danmaku_proto::{Limits, frame, token::now_secs};
use danmaku_testkit::{eventually, metric_value};
use tokio::sync::mpsc;

/// Posts until accepted (retrying 429s).
async fn post(http: &IngestClient, token: &str, channel: &str, text: &str) {
    for _ in 0..200 {
        match http.post_danmaku(token, channel, text).await {
            Ok(PostOutcome::Accepted { .. }) => return,
            Ok(PostOutcome::RateLimited { .. }) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Ok(other) => panic!("{text}: {other:?}"),
        }
    }
    panic!("{text} never accepted");
}

/// `n` pseudo-random alphanumerics: they compress poorly, so a dozen of them
/// make a batch larger than one QUIC datagram.
fn filler(seed: &mut u64, n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ALPHABET[(*seed % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// A bare QUIC connection (quinn with `transport`), offering `alpn` (`None`:
/// what the SDK offers), authenticated as `user` and joined to `channel`. The
/// control stream's replies are read and dropped so it never stalls.
async fn bare_quic(
    srv: &Running,
    user: &str,
    channel: &str,
    alpn: Option<&[&[u8]]>,
    transport: quinn::TransportConfig,
) -> (quinn::Endpoint, quinn::Connection) {
    // The standalone's development certificate, pinned (verification is on).
    let der = IngestClient::new(&srv.base_url())
        .fetch_cert_der()
        .await
        .unwrap();
    let mut tls = danmaku_client::quic::tls_config(Some(der)).unwrap();
    if let Some(alpn) = alpn {
        tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    }
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(srv.quic_addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let token = srv.tokens.mint(user, "user", now_secs(), 3600);
    for body in [
        Body::Auth(pb::Auth { token }),
        Body::Join(pb::Join {
            channel: channel.into(),
        }),
    ] {
        send.write_all(&encode_prefixed(&frame::encode(&frame::client(body))))
            .await
            .unwrap();
    }
    tokio::spawn(async move {
        let _keep = send;
        let mut buf = vec![0u8; 4096];
        while let Ok(Some(_)) = recv.read(&mut buf).await {}
    });
    (endpoint, conn)
}

/// A bare QUIC viewer (quinn with `transport`): authenticates, joins and
/// reads its control stream. With `read` it also reads datagrams at once and
/// the batch stream `read` late per chunk, sending the comments to the
/// returned queue in the order they were read; without it, it never reads a
/// batch.
async fn raw_viewer(
    srv: &Running,
    user: &str,
    channel: &str,
    transport: quinn::TransportConfig,
    read: Option<Duration>,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    mpsc::UnboundedReceiver<String>,
) {
    let (endpoint, conn) = bare_quic(srv, user, channel, None, transport).await;
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(delay) = read {
        let texts = |bytes: &[u8]| match danmaku_client::event::decode_pb(bytes, &Limits::default())
        {
            Ok(ServerEvent::Batch { events, .. }) => events.into_iter().map(|e| e.text).collect(),
            Ok(_) => Vec::new(),
            Err(e) => panic!("bad batch: {e}"),
        };
        tokio::spawn({
            let (conn, tx) = (conn.clone(), tx.clone());
            async move {
                while let Ok(d) = conn.read_datagram().await {
                    for t in texts(&d) {
                        let _ = tx.send(t);
                    }
                }
            }
        });
        tokio::spawn({
            let conn = conn.clone();
            async move {
                while let Ok(mut uni) = conn.accept_uni().await {
                    let mut reader = FrameReader::new(1 << 20);
                    loop {
                        tokio::time::sleep(delay).await;
                        match uni.read_chunk(64 << 10, true).await {
                            Ok(Some(c)) => reader.push(&c.bytes),
                            _ => break,
                        }
                        while let Some(f) = reader.next_frame().unwrap() {
                            for t in texts(&f) {
                                let _ = tx.send(t);
                            }
                        }
                    }
                }
            }
        });
    }
    (endpoint, conn, rx)
}

async fn quic_viewer(srv: &Running, user: &str, channel: &str) -> Client {
    let mut c = Client::connect_quic(
        srv.quic_addr,
        Some(srv.edge.cert_der().to_vec()),
        &common::token(srv, user),
        ClientConfig::default(),
    )
    .await
    .expect("QUIC viewer connects");
    c.join(channel).await.unwrap();
    common::wait_joined(&mut c, channel).await;
    c
}

/// Reads batches until `want` comments arrived; returns their texts in order.
async fn collect(viewer: &mut Client, want: usize) -> Vec<String> {
    let mut texts = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while texts.len() < want {
            match viewer.next_event().await {
                Some(ServerEvent::Batch { events, .. }) => {
                    texts.extend(events.into_iter().map(|e| e.text))
                }
                Some(_) => {}
                None => panic!("viewer closed after {} comments", texts.len()),
            }
        }
    })
    .await;
    assert!(done.is_ok(), "got {} of {want} comments", texts.len());
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_viewer_sees_each_senders_order_across_small_and_big_batches() {
    const SENDERS: u64 = 3;
    const ROUNDS: u64 = 12;
    const BIG: u64 = 12;
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-qb"));
    let srv = common::start(|c| {
        c.data = data.clone();
        c.ingest.user_rate_per_sec = 10_000.0;
        c.ingest.user_burst = 10_000;
    })
    .await;
    let channel = "room:qb-order";
    // Stream data read 150 ms late per chunk, datagrams at once.
    let (_endpoint, _conn, mut viewer) = raw_viewer(
        &srv,
        "viewer",
        channel,
        quinn::TransportConfig::default(),
        Some(Duration::from_millis(150)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let http = IngestClient::new(&srv.base_url());
            let token = common::token(&srv, &format!("sender{s}"));
            tokio::spawn(async move {
                let mut seed = 0x9E37_79B9_7F4A_7C15 ^ (s + 1);
                let mut i = 0u64;
                for _ in 0..ROUNDS {
                    // A lone small comment: its own small batch...
                    post(&http, &token, channel, &format!("{s}:{i}:")).await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(70)).await;
                    // ...then a burst that makes a big one.
                    for _ in 0..BIG {
                        let text = format!("{s}:{i}:{}", filler(&mut seed, 150));
                        post(&http, &token, channel, &text).await;
                        i += 1;
                    }
                }
                i
            })
        })
        .collect();
    let mut total = 0;
    for s in senders {
        total += s.await.expect("sender") as usize;
    }
    let mut texts = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        while texts.len() < total {
            texts.push(viewer.recv().await.expect("viewer open"));
        }
    })
    .await;
    assert!(got.is_ok(), "got {} of {total} comments", texts.len());
    let mut next: HashMap<u64, u64> = HashMap::new();
    for t in &texts {
        let mut parts = t.splitn(3, ':');
        let s: u64 = parts.next().unwrap().parse().unwrap();
        let i: u64 = parts.next().unwrap().parse().unwrap();
        let want = next.entry(s).or_insert(0);
        assert_eq!(
            i, *want,
            "sender {s}: comment {i} arrived when {want} was due"
        );
        *want += 1;
    }
    assert_eq!(texts.len(), total);
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_quic_viewers_drops_are_counted_and_others_get_everything() {
    const COMMENTS: usize = 600;
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-qs"));
    let srv = common::start(|c| {
        c.data = data.clone();
        c.edge.send_queue_frames = 4;
        c.edge.quic_send_window = 16 << 10;
        c.ingest.user_rate_per_sec = 10_000.0;
        c.ingest.user_burst = 10_000;
    })
    .await;
    let channel = "room:qb-slow";
    let mut healthy = quic_viewer(&srv, "healthy", channel).await;

    // The slow viewer: 8 KiB receive windows, never reads a batch.
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(quinn::VarInt::from_u32(8 << 10))
        .receive_window(quinn::VarInt::from_u32(16 << 10));
    let (_endpoint, _slow, _) = raw_viewer(&srv, "slow", channel, transport, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let http = IngestClient::new(&srv.base_url());
    let poster = common::token(&srv, "poster");
    let mut seed = 7u64;
    let base = srv.base_url();
    let drops = || async {
        let text = common::metrics_text(&base).await;
        metric_value(&text, "danmaku_edge_slow_consumer_drops_total", &[]).unwrap_or(0.0)
    };
    let before = drops().await;
    let posting = async {
        for i in 0..COMMENTS {
            post(
                &http,
                &poster,
                channel,
                &format!("{i}:{}", filler(&mut seed, 100)),
            )
            .await;
            if i % 5 == 4 {
                // Several batches rather than one big one.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    };
    let (_, texts) = tokio::join!(posting, collect(&mut healthy, COMMENTS));
    for (i, t) in texts.iter().enumerate() {
        assert!(t.starts_with(&format!("{i}:")), "comment {i}: {t}");
    }
    eventually(Duration::from_secs(10), "slow-consumer drops", || async {
        (drops().await > before).then_some(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&data);
}

/// Long enough that even alone in its tick it shrinks with the dictionary
/// (a lone short comment does not pay for a zstd frame header and stays raw).
const COMMENT: &str = "前方高能 前方高能 前方高能 主播好帅 主播好帅 666666 哈哈哈哈哈哈";

/// Connects with ALPN `offer`, joins `channel`, posts one comment and returns
/// the ALPN agreed on and the first batch off the batch stream, as sent.
async fn first_batch(srv: &Running, offer: &[&[u8]], channel: &str) -> (Vec<u8>, pb::Batch) {
    let (_endpoint, conn) = bare_quic(
        srv,
        "viewer",
        channel,
        Some(offer),
        quinn::TransportConfig::default(),
    )
    .await;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let http = IngestClient::new(&srv.base_url());
    post(&http, &common::token(srv, "poster"), channel, COMMENT).await;
    let mut uni = tokio::time::timeout(Duration::from_secs(10), conn.accept_uni())
        .await
        .expect("a batch stream")
        .unwrap();
    let mut reader = FrameReader::new(1 << 20);
    loop {
        if let Some(f) = reader.next_frame().unwrap() {
            match frame::decode_server(&f, &Limits::default()).unwrap().body {
                Some(pb::server_frame::Body::Batch(b)) => return (alpn, b),
                other => panic!("not a batch: {other:?}"),
            }
        }
        let chunk = uni.read_chunk(64 << 10, true).await.unwrap().expect("open");
        reader.push(&chunk.bytes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_viewers_get_dense_batches_on_danmaku_2_and_plain_ones_on_danmaku_1() {
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-qa"));
    let srv = common::start(|c| c.data = data.clone()).await;
    use danmaku_client::quic::{ALPN, ALPN_DENSE};
    // What the SDK offers: the dense layout, compressed with dictionary 1.
    let (alpn, b) = first_batch(&srv, &[ALPN_DENSE, ALPN], "room:qa-dense").await;
    assert_eq!(alpn, ALPN_DENSE);
    assert_eq!(
        (b.encoding, b.dict_id, b.codec),
        (2, 1, pb::Codec::Zstd as i32)
    );
    let events = danmaku_proto::decode_batch(&b, &Limits::default()).unwrap();
    assert_eq!(events[0].text, COMMENT);
    assert_eq!(events[0].id.len(), 27, "the id is rebuilt whole");
    // A client from before `danmaku/2`.
    let (alpn, b) = first_batch(&srv, &[ALPN], "room:qa-plain").await;
    assert_eq!(alpn, ALPN);
    assert_eq!((b.encoding, b.dict_id), (0, 0));
    let events = danmaku_proto::decode_batch(&b, &Limits::default()).unwrap();
    assert_eq!(events[0].text, COMMENT);
    let _ = std::fs::remove_dir_all(&data);
}
