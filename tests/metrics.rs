//! docs/METRICS.md stays true: drive every path it documents through a live
//! standalone server, then require each metric named there in `/metrics`.

mod common;

use std::time::Duration;

use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent, Transport};

fn documented_metrics() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md"))
        .expect("docs/METRICS.md");
    let mut names: Vec<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `danmaku_"))
        .filter_map(|l| l.split('`').nth(1).map(str::to_owned))
        .collect();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_is_served() {
    let names = documented_metrics();
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
            PostOutcome::Accepted => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        limited,
        "the default per-user limit should have refused some of 30 posts"
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
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            !text.lines().any(|l| {
                l.strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{', '_']))
            })
        })
        .collect();
    assert!(missing.is_empty(), "documented but not served: {missing:?}");
    srv.stop().await;
}
