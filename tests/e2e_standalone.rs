//! End to end on real sockets: a standalone server on a free port, clients over
//! WebSocket (JSON and protobuf) and QUIC, comments posted over HTTP.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent, Transport};

const SENDERS: usize = 5;
const PER_SENDER: usize = 100;
const TOTAL: usize = SENDERS * PER_SENDER;

/// What one viewer saw: comment texts in arrival order and how many frames carried them.
struct Seen {
    texts: Vec<(String, String)>,
    /// The danmaku ids, in arrival order.
    ids: Vec<String>,
    frames: usize,
}

async fn collect(mut client: Client, channel: &'static str, want: usize) -> Seen {
    let mut seen = Seen {
        texts: Vec::new(),
        ids: Vec::new(),
        frames: 0,
    };
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        while seen.texts.len() < want {
            match client.next_event().await {
                Some(ServerEvent::Batch { channel: c, events }) => {
                    assert_eq!(c, channel, "batch for a channel this client did not join");
                    seen.frames += 1;
                    for e in events {
                        seen.ids.push(e.id);
                        seen.texts.push((e.sender, e.text));
                    }
                }
                Some(ServerEvent::Error { code, message }) => {
                    panic!("error frame {code}: {message}")
                }
                Some(_) => {}
                None => panic!("connection closed after {} events", seen.texts.len()),
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "got {} of {want} events in 60 s",
        seen.texts.len()
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_viewer_gets_every_comment_in_sender_order() {
    let srv = common::start(|c| {
        c.ingest.user_rate_per_sec = 100_000.0;
        c.ingest.user_burst = 100_000;
    })
    .await;
    let base = srv.base_url();
    let ingest = IngestClient::new(&base);
    let cert = ingest.fetch_cert_der().await.expect("GET /v1/cert");

    let mut viewers = Vec::new();
    for (i, t) in [Transport::WsJson, Transport::WsJson, Transport::WsPb]
        .into_iter()
        .enumerate()
    {
        let c = Client::connect_ws(
            &base,
            &common::token(&srv, &format!("ws{i}")),
            t,
            ClientConfig::default(),
        )
        .await
        .expect("ws connect");
        viewers.push(c);
    }
    for i in 0..2 {
        let c = Client::connect_quic(
            srv.quic_addr,
            Some(cert.clone()),
            &common::token(&srv, &format!("quic{i}")),
            ClientConfig::default(),
        )
        .await
        .expect("quic connect");
        assert_eq!(c.transport(), Transport::Quic);
        viewers.push(c);
    }
    for v in &mut viewers {
        v.join("room:1").await.unwrap();
        common::wait_joined(v, "room:1").await;
    }
    let mut other = Client::connect_ws(
        &base,
        &common::token(&srv, "other"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    other.join("room:2").await.unwrap();
    common::wait_joined(&mut other, "room:2").await;

    let collectors: Vec<_> = viewers
        .into_iter()
        .map(|v| tokio::spawn(collect(v, "room:1", TOTAL)))
        .collect();
    let other_task = tokio::spawn(collect(other, "room:2", 1));

    let posting = std::time::Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let ingest = IngestClient::new(&base);
            let token = common::token(&srv, &format!("sender{s}"));
            tokio::spawn(async move {
                for n in 0..PER_SENDER {
                    let out = ingest
                        .post_danmaku(&token, "room:1", &format!("s{s} {n}"))
                        .await
                        .expect("post");
                    assert!(
                        matches!(out, PostOutcome::Accepted { .. }),
                        "post {s}/{n}: {out:?}"
                    );
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    let posting = posting.elapsed();
    // Batching, as the edge promises it: a room's time-triggered flushes are at
    // least `min_window` apart and all fall between the first post and one
    // window (at most `max_window`) after the last; a size cap (`max_events`,
    // `max_raw_bytes`: these 500 short comments reach only the first) adds at most
    // one flush per `max_events` events.
    let batch = danmaku_edge::BatchConfig::default();
    let max_frames = ((posting + batch.max_window).as_secs_f64() / batch.min_window.as_secs_f64())
        .floor() as usize
        + 1
        + TOTAL.div_ceil(batch.max_events);
    assert!(
        max_frames < TOTAL,
        "posting took {posting:?}: too long to tell batching from one frame per comment"
    );
    let marker = ingest
        .post_danmaku(&common::token(&srv, "marker"), "room:2", "room2-marker")
        .await
        .unwrap();
    let PostOutcome::Accepted { id: marker_id } = marker else {
        panic!("marker not accepted: {marker:?}")
    };
    assert!(
        marker_id.len() == 27 && marker_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a danmaku id: {marker_id:?}"
    );

    for c in collectors {
        let seen = c.await.unwrap();
        assert_eq!(seen.texts.len(), TOTAL);
        let mut next: HashMap<String, usize> = HashMap::new();
        for (sender, text) in &seen.texts {
            let (tag, n) = text.split_once(' ').expect("text is 's<i> <n>'");
            assert_eq!(
                sender,
                &format!("sender{}", &tag[1..]),
                "sender is the token's user"
            );
            let n: usize = n.parse().unwrap();
            let expected = next.entry(tag.to_owned()).or_insert(0);
            assert_eq!(n, *expected, "sender {tag}: got #{n}, expected #{expected}");
            *expected += 1;
        }
        assert_eq!(next.len(), SENDERS);
        assert!(
            seen.frames <= max_frames,
            "batching: {} frames for {TOTAL} events posted in {posting:?} (at most {max_frames})",
            seen.frames
        );
    }
    let seen = other_task.await.unwrap();
    assert_eq!(
        seen.texts,
        vec![("marker".to_owned(), "room2-marker".to_owned())]
    );
    // The id the post was answered with is the one the viewer reads (through
    // the compact batch layout the SDK asked for).
    assert_eq!(seen.ids, vec![marker_id]);

    // The batcher counts a tick after handing it to the viewers (on the edge's
    // delivery thread), so the last tick's count may trail what they read.
    let want = (TOTAL * 5 + 1) as f64;
    let mut delivered = 0.0;
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = common::metrics_text(&base).await;
        delivered =
            danmaku_testkit::metric_value(&metrics, "danmaku_edge_events_delivered_total", &[])
                .unwrap();
        if delivered >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(delivered >= want, "events delivered {delivered}");
    let accepted = danmaku_testkit::metric_value(
        &metrics,
        "danmaku_ingest_requests_total",
        &[("status", "202")],
    )
    .unwrap();
    assert_eq!(accepted, (TOTAL + 1) as f64);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_viewer_loses_batches_without_stalling_others() {
    let srv = common::start(|c| {
        c.ingest.user_rate_per_sec = 100_000.0;
        c.ingest.user_burst = 100_000;
        c.edge.send_queue_frames = 4;
        c.edge.tcp_send_buffer = Some(4096);
    })
    .await;
    let base = srv.base_url();
    let mut slow = Client::connect_ws(
        &base,
        &common::token(&srv, "slow"),
        Transport::WsJson,
        ClientConfig {
            recv_buffer_bytes: Some(4096),
            event_buffer: 1,
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    slow.join("room:slow").await.unwrap();
    common::wait_joined(&mut slow, "room:slow").await;
    // From here on `slow` is never read again.

    let mut fast = Client::connect_ws(
        &base,
        &common::token(&srv, "fast"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    fast.join("room:slow").await.unwrap();
    common::wait_joined(&mut fast, "room:slow").await;

    const POSTS: usize = 1500;
    let fast_task = tokio::spawn(collect(fast, "room:slow", POSTS));
    let filler = "弹".repeat(180);
    let ingest = IngestClient::new(&base);
    let token = common::token(&srv, "poster");
    for n in 0..POSTS {
        let out = ingest
            .post_danmaku(&token, "room:slow", &format!("{n} {filler}"))
            .await
            .unwrap();
        assert!(matches!(out, PostOutcome::Accepted { .. }), "{out:?}");
        if n % 50 == 49 {
            // Spread the posts over many batching windows.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    let seen = fast_task.await.unwrap();
    assert_eq!(seen.texts.len(), POSTS, "the fast viewer got everything");

    let drops = danmaku_testkit::eventually(
        Duration::from_secs(10),
        "slow-consumer drops in /metrics",
        || {
            let base = base.clone();
            async move {
                let m = common::metrics_text(&base).await;
                danmaku_testkit::metric_value(&m, "danmaku_edge_slow_consumer_drops_total", &[])
                    .filter(|v| *v > 0.0)
            }
        },
    )
    .await;
    assert!(drops >= 1.0);
    drop(slow);
    srv.stop().await;
}
