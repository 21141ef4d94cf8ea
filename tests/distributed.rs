//! Distributed mode on real processes: `danmaku ingest` and `danmaku edge` as
//! separate OS processes sharing a real Kafka-API broker (tansu, started by
//! scripts/services.sh), clients spread over the edges.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Proc, spawn};
use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent, Transport};
use danmaku_testkit::kafka::{Broker, shared_broker, unique};

fn token(user: &str) -> String {
    danmaku_proto::token::TokenKey::new(common::SECRET).mint(
        user,
        "user",
        danmaku_proto::token::now_secs(),
        3600,
    )
}

/// Connects viewer `i` to `edge` with a transport that cycles through all three.
async fn viewer(i: usize, edge: &Proc) -> Client {
    let config = ClientConfig::default();
    let t = token(&format!("viewer{i}"));
    let c = match i % 3 {
        0 => Client::connect_ws(&edge.base, &t, Transport::WsPb, config).await,
        1 => Client::connect_ws(&edge.base, &t, Transport::WsJson, config).await,
        _ => {
            let cert = IngestClient::new(&edge.base)
                .fetch_cert_der()
                .await
                .unwrap();
            Client::connect_quic(edge.addr, Some(cert), &t, config).await
        }
    };
    c.unwrap_or_else(|e| panic!("viewer {i} to {}: {e}", edge.base))
}

/// Posts `text` until accepted (bounded): used to prove the path works end to end
/// before measuring, since an edge consumes from "latest" once its subscription is live.
async fn post_until_accepted(ingest: &IngestClient, t: &str, channel: &str, text: &str) {
    for _ in 0..300 {
        if let Ok(PostOutcome::Accepted { .. }) = ingest.post_danmaku(t, channel, text).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("post of {text:?} never accepted");
}

/// Reads `client` until every text in `want` was seen; returns texts in arrival order.
async fn read_until(
    client: &mut Client,
    within: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let mut texts = Vec::new();
    let r = tokio::time::timeout(within, async {
        while !done(&texts) {
            match client.next_event().await {
                Some(ServerEvent::Batch { events, .. }) => {
                    texts.extend(events.into_iter().map(|e| e.text))
                }
                Some(_) => {}
                None => panic!("connection closed after {} texts", texts.len()),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "timed out with {} texts, last {:?}",
        texts.len(),
        texts.last()
    );
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_three_edges_deliver_every_comment_in_order() {
    danmaku_testkit::init_crypto();
    let bus = format!("kafka://{}?topic={}", shared_broker(), unique("dist"));
    let limits = ["--user-rate", "100000", "--user-burst", "100000"];
    let mut edges = Vec::new();
    for _ in 0..3 {
        edges.push(spawn("edge", &bus, &[]).await);
    }
    let ingests = [
        spawn("ingest", &bus, &limits).await,
        spawn("ingest", &bus, &limits).await,
    ];

    let mut viewers = Vec::new();
    for i in 0..9 {
        let mut c = viewer(i, &edges[i % 3]).await;
        c.join("room:dist").await.unwrap();
        common::wait_joined(&mut c, "room:dist").await;
        viewers.push(c);
    }
    // Warm up: every viewer sees a comment through Kafka before the counted run.
    let clients = [
        IngestClient::new(&ingests[0].base),
        IngestClient::new(&ingests[1].base),
    ];
    let warm = token("warmup");
    for v in &mut viewers {
        let got = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                post_until_accepted(&clients[0], &warm, "room:dist", "warmup").await;
                let seen = tokio::time::timeout(Duration::from_millis(500), async {
                    loop {
                        if let Some(ServerEvent::Batch { .. }) = v.next_event().await {
                            return;
                        }
                    }
                })
                .await;
                if seen.is_ok() {
                    return;
                }
            }
        })
        .await;
        assert!(got.is_ok(), "a viewer never saw a warm-up comment");
    }

    const SENDERS: usize = 5;
    const PER_SENDER: usize = 200;
    let collectors: Vec<_> = viewers
        .into_iter()
        .map(|mut v| {
            tokio::spawn(async move {
                read_until(&mut v, Duration::from_secs(120), |t| {
                    t.iter().filter(|x| x.starts_with('s')).count() >= SENDERS * PER_SENDER
                })
                .await
            })
        })
        .collect();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let clients = clients.clone();
            tokio::spawn(async move {
                let t = token(&format!("sender{s}"));
                for n in 0..PER_SENDER {
                    // Round-robin over the two ingest nodes.
                    let out = clients[n % 2]
                        .post_danmaku(&t, "room:dist", &format!("s{s} {n}"))
                        .await
                        .unwrap();
                    assert!(matches!(out, PostOutcome::Accepted { .. }), "{out:?}");
                }
            })
        })
        .collect();
    for s in senders {
        s.await.unwrap();
    }
    for c in collectors {
        let texts = c.await.unwrap();
        let mut next: HashMap<&str, usize> = HashMap::new();
        let mut total = 0;
        for text in texts.iter().filter(|x| x.starts_with('s')) {
            let (tag, n) = text.split_once(' ').unwrap();
            let n: usize = n.parse().unwrap();
            let expected = next.entry(tag).or_insert(0);
            assert_eq!(n, *expected, "{tag}: got #{n}, expected #{expected}");
            *expected += 1;
            total += 1;
        }
        assert_eq!(total, SENDERS * PER_SENDER, "exactly every comment once");
    }
    // The Kafka bus metrics docs/METRICS.md promises are served by a Kafka edge.
    let bus_metrics: Vec<String> = common::documented_metrics()
        .into_iter()
        .filter(|(section, _)| section == "bus")
        .map(|(_, name)| name)
        .collect();
    assert!(bus_metrics.len() >= 5);
    let text = common::metrics_text(&edges[0].base).await;
    let missing = common::missing_metrics(&text, &bus_metrics);
    assert!(
        missing.is_empty(),
        "documented but not served by a Kafka edge: {missing:?}"
    );
    drop(ingests);
    drop(edges);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_is_survived_without_restarting_processes() {
    danmaku_testkit::init_crypto();
    let mut broker = Broker::start();
    let bus = format!("kafka://{}?topic={}", broker.addr(), unique("restart"));
    let edges = [
        spawn("edge", &bus, &[]).await,
        spawn("edge", &bus, &[]).await,
    ];
    let ingest = spawn(
        "ingest",
        &bus,
        &["--user-rate", "100000", "--user-burst", "100000"],
    )
    .await;
    let http = IngestClient::new(&ingest.base);
    let t = token("poster");

    let mut viewers = Vec::new();
    for i in 0..4 {
        let mut c = viewer(i, &edges[i % 2]).await;
        c.join("room:r").await.unwrap();
        common::wait_joined(&mut c, "room:r").await;
        viewers.push(c);
    }
    for (i, v) in viewers.iter_mut().enumerate() {
        let mut n = 0;
        let got = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                n += 1;
                post_until_accepted(&http, &t, "room:r", &format!("before {i} {n}")).await;
                let seen = tokio::time::timeout(Duration::from_millis(500), v.next_event()).await;
                if let Ok(Some(ServerEvent::Batch { .. })) = seen {
                    return;
                }
            }
        })
        .await;
        assert!(got.is_ok(), "viewer {i} saw nothing before the restart");
    }

    broker.kill();
    // While the broker is down, ingest must refuse rather than acknowledge.
    let refused = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match http
                .post_danmaku(&t, "room:r", "during outage")
                .await
                .unwrap()
            {
                PostOutcome::Rejected {
                    status: 503, code, ..
                } => return code,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("a post during the outage is answered 503");
    assert_eq!(refused, "bus_unavailable");
    let metrics = common::metrics_text(&ingest.base).await;
    assert_eq!(
        danmaku_testkit::metric_value(&metrics, "danmaku_bus_up", &[]),
        Some(0.0),
        "ingest reports the bus down"
    );

    broker.launch();
    post_until_accepted(&http, &t, "room:r", "after restart").await;
    // Posts after the restart reach every viewer, over the connections they already had.
    for n in 0..20 {
        post_until_accepted(&http, &t, "room:r", &format!("after {n}")).await;
    }
    for v in &mut viewers {
        let texts = read_until(v, Duration::from_secs(90), |t| {
            t.iter().any(|x| x == "after 19")
        })
        .await;
        for n in 0..20 {
            assert!(texts.contains(&format!("after {n}")), "missing 'after {n}'");
        }
    }
    for e in &edges {
        // `bus_up` is the subscription's own view, refreshed by its poll loop:
        // it may trail the first events delivered after the restart.
        danmaku_testkit::eventually(
            Duration::from_secs(30),
            "the edge reports the bus up",
            || {
                let base = e.base.clone();
                async move {
                    let m = common::metrics_text(&base).await;
                    (danmaku_testkit::metric_value(&m, "danmaku_bus_up", &[]) == Some(1.0))
                        .then_some(())
                }
            },
        )
        .await;
        let m = common::metrics_text(&e.base).await;
        assert!(danmaku_testkit::metric_value(&m, "danmaku_edge_connections", &[]).unwrap() >= 2.0);
    }
}
