//! End-to-end check of a running distributed cluster, from a client's point
//! of view (what `deploy/netns-cluster.sh test` runs in the client namespace):
//!
//! 1. the scheduler hands out every edge, at addresses that are not loopback
//!    (an edge advertising `127.0.0.1` works on one host and nowhere else);
//! 2. viewers ask the scheduler and connect to what it hands out (WebSocket
//!    protobuf and JSON in turn), join one room, and spread over the edges
//!    (max/mean at most 1.25);
//! 3. gifts are posted through the ingest nodes in turn (each with a
//!    `client_msg_id`, retried on 503);
//! 4. a quarter of the way in, the edge the first viewer is on is drained
//!    (`POST /admin/drain`): its viewers must land on the other edges, and the
//!    scheduler must stop handing it out;
//! 5. every viewer must get every gift seq exactly once, in order.
//!
//! ```sh
//! cargo run --example cluster_check -- SCHEDULER_URL INGEST_URL[,INGEST_URL…] SECRET
//! # e.g. http://10.77.0.31:7070 http://10.77.0.11:7070,http://10.77.0.12:7070 s3cret
//! ```
//! `CHECK_VIEWERS` (default 60), `CHECK_GIFTS` (default 200) and
//! `CHECK_EDGES` (edges expected, default 3) size it. Exit status 0 only when
//! every check holds; the whole run is bounded (about two minutes at most).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use danmaku_client::{
    ClientConfig, IngestClient, PostOutcome, ResilientClient, ServerEvent, Transport,
};
use danmaku_proto::token::{TokenKey, now_secs};
use serde_json::Value;

/// Longest the viewers wait for the last gift.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(90);

fn env_or(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

/// `(id, ws URL)` of every edge one `GET /v1/edges?k=16` hands out.
async fn handed_out(
    http: &reqwest::Client,
    scheduler: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let body: Value = http
        .get(format!("{scheduler}/v1/edges?k=16"))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["edges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e["id"].as_str()?.to_owned(), e["ws"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default())
}

/// `host:port` of a `ws://host:port/…` or `http://host:port` URL.
fn host_port(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Posts one gift through `ingest` until it is stored; its seq.
async fn post_gift(
    ingest: &IngestClient,
    token: &str,
    channel: &str,
    id: &str,
) -> anyhow::Result<u64> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        match ingest
            .post_reliable(token, channel, "gift", "rocket", Some(id))
            .await
        {
            Ok(PostOutcome::Persisted { seq }) => return Ok(seq),
            Ok(PostOutcome::Rejected { status: 503, .. }) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(other) => bail!("gift {id} through {}: {other:?}", ingest.base_url()),
        }
    }
    bail!("gift {id} never stored through {}", ingest.base_url())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [scheduler, ingests, secret] = args.as_slice() else {
        bail!("usage: cluster_check SCHEDULER_URL INGEST_URL[,INGEST_URL…] SECRET");
    };
    let ingests: Vec<IngestClient> = ingests.split(',').map(IngestClient::new).collect();
    let viewers_n = env_or("CHECK_VIEWERS", 60)?;
    let gifts = env_or("CHECK_GIFTS", 200)? as u64;
    let edges_n = env_or("CHECK_EDGES", 3)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = TokenKey::new(secret);
    let token = |user: &str, role: &str| key.mint(user, role, now_secs(), 3600);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let started = Instant::now();

    // 1. Every edge handed out, none on loopback.
    let mut edges = Vec::new();
    let until = Instant::now() + Duration::from_secs(30);
    while edges.len() < edges_n {
        ensure!(
            Instant::now() < until,
            "the scheduler hands out {edges:?}, expected {edges_n} edges"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        edges = handed_out(&http, scheduler).await.unwrap_or_default();
    }
    for (id, ws) in &edges {
        let host = host_port(ws);
        ensure!(
            !host.starts_with("127.")
                && !host.starts_with("localhost")
                && !host.starts_with("[::1]"),
            "edge {id} is handed out at a loopback address: {ws}"
        );
    }
    println!("scheduler hands out {edges:?}");

    // 2. Viewers through the scheduler, one room.
    let channel = format!("room:netns-{}", std::process::id());
    let mut viewers = Vec::with_capacity(viewers_n);
    for i in 0..viewers_n {
        let transport = if i % 2 == 0 {
            Transport::WsPb
        } else {
            Transport::WsJson
        };
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        let mut v = ResilientClient::connect_via_scheduler(
            scheduler,
            transport,
            token(&format!("viewer{i}"), "user"),
            config,
        )
        .await
        .with_context(|| format!("viewer {i} connects through the scheduler"))?;
        v.join(&channel).await?;
        viewers.push(v);
    }
    let mut per_edge: BTreeMap<String, usize> = BTreeMap::new();
    for v in &viewers {
        *per_edge.entry(host_port(v.current_edge())).or_default() += 1;
    }
    println!("{viewers_n} viewers per edge: {per_edge:?}");
    ensure!(
        per_edge.len() == edges_n,
        "viewers landed on {} edges, expected {edges_n}: {per_edge:?}",
        per_edge.len()
    );
    // The scheduler hands out the least loaded edge: viewers arriving one by one
    // spread evenly (a bound, not exact: another client may connect meanwhile).
    let most = per_edge.values().copied().max().unwrap_or(0) as f64;
    let ratio = most * edges_n as f64 / viewers_n as f64;
    ensure!(
        ratio <= 1.25,
        "viewers spread {per_edge:?}: max/mean {ratio:.2} above 1.25"
    );
    let drained = host_port(viewers[0].current_edge());
    let on_drained: HashSet<usize> = viewers
        .iter()
        .enumerate()
        .filter(|(_, v)| host_port(v.current_edge()) == drained)
        .map(|(i, _)| i)
        .collect();
    // Joins are asynchronous: give them a moment before the first gift.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 5. (collectors) every gift seq exactly once, in order.
    let collectors: Vec<_> = viewers
        .into_iter()
        .map(|mut v| {
            let channel = channel.clone();
            let drained = drained.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::with_capacity(gifts as usize);
                let deadline = tokio::time::Instant::now() + DELIVERY_DEADLINE;
                // Every gift, and (the drain's last waves may come after the
                // last gift) off the drained edge. next_event is cancel-safe.
                while seqs.len() < gifts as usize || host_port(v.current_edge()) == drained {
                    let wait = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
                    match tokio::time::timeout_at(wait, v.next_event()).await {
                        Ok(Some(ServerEvent::Reliable {
                            channel: c, seq, ..
                        })) if c == channel => seqs.push(seq),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) if tokio::time::Instant::now() >= deadline => break,
                        Err(_) => {}
                    }
                }
                (seqs, host_port(v.current_edge()), v.reconnects())
            })
        })
        .collect();

    // 3 + 4. Gifts through the ingests in turn; the drain a quarter of the way in.
    let gifter = token("gifter", "user");
    let mut drain_sent = None;
    for n in 0..gifts {
        let ingest = &ingests[n as usize % ingests.len()];
        let seq = post_gift(ingest, &gifter, &channel, &format!("netns-{n}")).await?;
        ensure!(seq == n + 1, "gift {n} got seq {seq}, expected {}", n + 1);
        if n == gifts / 4 {
            let r = http
                .post(format!("http://{drained}/admin/drain"))
                .bearer_auth(token("ops", "app"))
                .send()
                .await
                .context("POST /admin/drain")?;
            ensure!(r.status().as_u16() == 202, "drain answered {}", r.status());
            println!("draining {drained} ({} viewers on it)", on_drained.len());
            drain_sent = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "posted {gifts} gifts through {} ingest nodes",
        ingests.len()
    );

    let mut failures = Vec::new();
    let mut after: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in collectors.into_iter().enumerate() {
        let (seqs, edge, reconnects) = c.await?;
        let want: Vec<u64> = (1..=gifts).collect();
        if seqs != want {
            let distinct: HashSet<_> = seqs.iter().collect();
            failures.push(format!(
                "viewer {i}: {} gifts, {} distinct, want 1..={gifts} once each",
                seqs.len(),
                distinct.len()
            ));
        }
        if edge == drained {
            failures.push(format!("viewer {i} is still on the drained edge {drained}"));
        }
        if on_drained.contains(&i) && reconnects == 0 {
            failures.push(format!(
                "viewer {i} left the drained edge without a reconnect"
            ));
        }
        *after.entry(edge).or_default() += 1;
    }
    println!("after the drain, viewers per edge: {after:?}");
    let still = handed_out(&http, scheduler).await?;
    if still.iter().any(|(_, ws)| host_port(ws) == drained) {
        failures.push(format!(
            "the scheduler still hands out {drained}: {still:?}"
        ));
    }
    if let Some(at) = drain_sent {
        println!(
            "drain to last gift delivered: {:.1} s",
            at.elapsed().as_secs_f64()
        );
    }
    ensure!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "cluster check passed in {:.1} s: {viewers_n} viewers, {gifts} gifts each exactly once, \
         {} moved off the drained edge",
        started.elapsed().as_secs_f64(),
        on_drained.len()
    );
    Ok(())
}
