//! A viewer that stops reading while gifts flow is closed with
//! `reliable_backlog` (its acks stand still through every resend attempt, or
//! its wake queue overflows) — not at the idle timeout — while the edge holds
//! no gift of its own for it (its queue holds shared tick frames); then it
//! reconnects, resumes from its last ack and ends with every gift once.
//!
//! The server runs in-process (real sockets, real client) because the test
//! shrinks settings that have no flag: the edge's `SO_SNDBUF`, so the stalled
//! socket fills after a few frames, the unacked window, so it is the stall —
//! not the window — that trips, the resend timings, and the text limit, so gifts of 2 KB fill the
//! socket's buffers quickly. The viewer's own `SO_RCVBUF` is pinned too: the
//! kernel otherwise grows a receive buffer up to `net.ipv4.tcp_rmem`'s maximum
//! (32 MiB on some machines, more than every gift of this test together).

mod common;

use std::time::Duration;

use danmaku_client::{
    ClientConfig, EdgeTarget, IngestClient, PostOutcome, ResilientClient, ServerEvent, Transport,
};
use danmaku_testkit::{eventually, metric_value};

const GIFTS: u64 = 1200;

async fn post_gift(http: &IngestClient, token: &str, channel: &str, i: u64) {
    let id = format!("g{i}");
    for _ in 0..200 {
        match http
            .post_reliable(
                token,
                channel,
                "gift",
                &format!("gift {i} {}", "x".repeat(2000)),
                Some(&id),
            )
            .await
        {
            Ok(PostOutcome::Persisted { .. }) => return,
            Ok(PostOutcome::Rejected {
                status: 429 | 503, ..
            })
            | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(other) => panic!("gift {i}: {other:?}"),
        }
    }
    panic!("gift {i} never persisted");
}

async fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&common::metrics_text(base).await, name, labels).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_is_closed_with_reliable_backlog_and_resumes_losslessly() {
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-rq"));
    let srv = common::start(|c| {
        c.data = data.clone();
        c.edge.reliable.queue = 16;
        c.edge.reliable.max_unacked = 1_000_000;
        // A stalled viewer is given up after its resend attempts (ticks still
        // queued for its socket spend them without a resend): seconds, not minutes.
        c.edge.reliable.retransmit_initial = Duration::from_millis(500);
        c.edge.reliable.retransmit_max = Duration::from_secs(1);
        c.edge.reliable.max_attempts = 3;
        c.edge.tcp_send_buffer = Some(4096);
        c.ingest.user_rate_per_sec = 1e6;
        c.ingest.user_burst = 1_000_000;
        // 2 KB gifts: the stalled path's buffers fill after about 14 (below).
        c.ingest.max_text_chars = 4000;
    })
    .await;
    let base = srv.base_url();
    let channel = "room:rq";

    // event_buffer 1: once one event waits for the application, the SDK stops
    // reading the socket, so not calling next_event is a peer that stopped reading.
    // What the stalled path can hold, whatever the kernel's settings: the edge's
    // send buffer (4 KiB asked, the kernel doubles it: 8 KiB) + the viewer's receive
    // buffer (the same: 8 KiB) + what the SDK read ahead before it stopped (its
    // one waiting event, the frame being decoded, the rest of its last socket
    // read: ≤ 8 KiB + 2 × 2 KB) ≈ 28 KB ≈ 14 gifts of 2 KB; then the queue's 16
    // frames fill. So the overflow comes after ~30 of the 1,200 gifts (2.4 MB).
    let config = ClientConfig {
        event_buffer: 1,
        recv_buffer_bytes: Some(4096),
        ..ClientConfig::default()
    };
    let mut viewer = ResilientClient::connect(
        vec![EdgeTarget::new(&base, Transport::WsPb)],
        common::token(&srv, "viewer"),
        config,
    )
    .await
    .expect("viewer connects");
    viewer.join_from(channel, 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match viewer.next_event().await {
                Some(ServerEvent::Joined { .. }) => return,
                Some(ServerEvent::Error { code, message }) => panic!("{code}: {message}"),
                Some(_) => {}
                None => panic!("viewer gave up before joining"),
            }
        }
    })
    .await
    .expect("joined");

    // Four senders post every gift while the viewer reads nothing.
    let senders: Vec<_> = (0..4u64)
        .map(|s| {
            let http = IngestClient::new(&base);
            let token = common::token(&srv, &format!("gifter{s}"));
            tokio::spawn(async move {
                for i in (s..GIFTS).step_by(4) {
                    post_gift(&http, &token, channel, i).await;
                }
            })
        })
        .collect();

    // The stalled connection is closed with `reliable_backlog`: its wake queue
    // overflowed, or its acks stood still through every resend attempt.
    eventually(Duration::from_secs(60), "a reliable backlog close", || {
        let base = base.clone();
        async move {
            let n = metric(&base, "danmaku_edge_reliable_backlog_closes_total", &[]).await;
            (n >= 1.0).then_some(())
        }
    })
    .await;

    // Reading again: the buffered frames, the `reliable_backlog` error, a
    // reconnect with resume, and the rest from the store and live.
    let mut seqs = Vec::new();
    let collected = tokio::time::timeout(Duration::from_secs(120), async {
        while seqs.len() < GIFTS as usize {
            match viewer.next_event().await {
                Some(ServerEvent::Reliable { seq, .. }) => seqs.push(seq),
                Some(_) => {}
                None => panic!("viewer gave up after {} gifts", seqs.len()),
            }
        }
    })
    .await;
    for s in senders {
        s.await.expect("sender");
    }
    assert!(
        collected.is_ok(),
        "got {} of {GIFTS} gifts (last {:?})",
        seqs.len(),
        seqs.last()
    );
    let want: Vec<u64> = (1..=GIFTS).collect();
    assert_eq!(seqs, want, "every gift exactly once, in order");
    // The gifts' ticks and the frames queued before the close may carry every
    // gift: the `reliable_backlog` close (counted above) can come after the
    // last one, and the reconnect with it. Nothing reaches the app twice.
    let reconnected = tokio::time::timeout(Duration::from_secs(30), async {
        while viewer.reconnects() == 0 {
            match viewer.next_event().await {
                Some(ServerEvent::Reliable { seq, .. }) => panic!("gift {seq} delivered twice"),
                Some(_) => {}
                None => panic!("viewer gave up"),
            }
        }
    })
    .await;
    assert!(
        reconnected.is_ok() && viewer.reconnects() >= 1,
        "the viewer reconnected"
    );
    assert!(metric(&base, "danmaku_edge_reliable_backlog_closes_total", &[]).await >= 1.0);
    assert!(
        metric(
            &base,
            "danmaku_edge_errors_total",
            &[("code", "reliable_backlog")]
        )
        .await
            >= 1.0
    );
    // A resume served the gifts the closed connection had not delivered.
    assert!(metric(&base, "danmaku_edge_resumes_total", &[]).await >= 1.0);
    let _ = std::fs::remove_dir_all(&data);
}
