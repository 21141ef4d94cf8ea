//! docs/METRICS.md stays true: drive every path it documents through a live
//! standalone server, then require each metric named there in `/metrics`.

mod common;

use std::time::Duration;

use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_served() {
    // Kafka-only bus metrics are checked by tests/distributed.rs against a Kafka edge.
    let names: Vec<String> = common::documented_metrics()
        .into_iter()
        .filter(|(section, name)| section != "bus" || name == "danmaku_bus_up")
        .map(|(_, name)| name)
        .collect();
    assert!(
        names.len() >= 20,
        "parsed only {} names from METRICS.md",
        names.len()
    );

    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let ingest = IngestClient::new(&base);
    let mut viewer = Client::connect_ws(
        &base,
        &common::token(&srv, "v"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    viewer.join("room:m").await.unwrap();
    common::wait_joined(&mut viewer, "room:m").await;

    // Accepted posts, a rejection, and a flood for the rate-limit counters.
    let token = common::token(&srv, "poster");
    let mut limited = false;
    for i in 0..30 {
        match ingest
            .post_danmaku(&token, "room:m", &format!("m{i}"))
            .await
            .unwrap()
        {
            PostOutcome::RateLimited { .. } => limited = true,
            PostOutcome::Accepted { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        limited,
        "the default per-user limit should have refused some of 30 posts"
    );
    // The reliable lane: a gift, its retry (a duplicate) and a history read.
    let gifter = common::token(&srv, "gifter");
    for _ in 0..2 {
        let out = ingest
            .post_reliable(&gifter, "room:m", "gift", "rocket", Some("gift-1"))
            .await
            .unwrap();
        assert!(matches!(out, PostOutcome::Persisted { seq: 1 }), "{out:?}");
    }
    assert_eq!(
        ingest
            .history(&gifter, "room:m", 0, 10)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
    let bad = ingest.post_danmaku(&token, "nope", "x").await.unwrap();
    assert!(
        matches!(bad, PostOutcome::Rejected { status: 400, .. }),
        "{bad:?}"
    );
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(ServerEvent::Batch { .. }) = viewer.next_event().await {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "viewer got a batch");
    // A malformed frame for bad_frames_total, and a scheduler pick.
    let f = danmaku_proto::pb::ClientFrame {
        version: 99,
        ..Default::default()
    };
    let mut mallory = Client::connect_ws(
        &base,
        &common::token(&srv, "mallory"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    mallory.send_raw(f).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while mallory.next_event().await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "bad frame closes the connection");
    let edges: serde_json::Value = reqwest::get(format!("{base}/v1/edges"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edges["edges"].as_array().map(Vec::len), Some(1));

    let text = common::metrics_text(&base).await;
    let missing = common::missing_metrics(&text, &names);
    assert!(missing.is_empty(), "documented but not served: {missing:?}");
    srv.stop().await;
}

/// The name check is exact: a metric is not "served" by another whose name it
/// starts with, and a histogram is served by its `_bucket`/`_sum`/`_count` samples.
#[test]
fn missing_metrics_matches_exact_names() {
    let text = "# TYPE danmaku_a_total counter\ndanmaku_a_total 1\n\
                # TYPE danmaku_h histogram\ndanmaku_h_bucket{le=\"+Inf\"} 1\ndanmaku_h_sum 1\ndanmaku_h_count 1\n\
                # TYPE danmaku_g gauge\ndanmaku_g_other 1\n";
    let names: Vec<String> = ["danmaku_a", "danmaku_a_total", "danmaku_h", "danmaku_g"]
        .map(String::from)
        .into();
    assert_eq!(
        common::missing_metrics(text, &names),
        vec![&names[0], &names[3]]
    );
}
