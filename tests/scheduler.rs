//! The scheduler on real processes: `danmaku scheduler` and `danmaku edge`
//! processes (each edge on its own memory bus and embedded store: these tests
//! are about where clients land, not about delivery), edges registering
//! themselves and heartbeating, load read from their real `/metrics` (or from
//! a real Prometheus scraping them), clients connecting through
//! `ResilientClient::connect_via_scheduler`. Connections per edge are read
//! back from each edge's `/metrics`.
//!
//! Edges are sized small (`--capacity`) so that on this 2-core machine the
//! connection term dominates the score rather than CPU noise from the test
//! itself; the max/mean ratios are printed for BENCHMARKS.md.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{Proc, SECRET, spawn_plain};
use danmaku_client::{ClientConfig, ResilientClient, Transport};
use danmaku_proto::token::{TokenKey, now_secs};
use danmaku_testkit::{eventually, metric_value};
use serde_json::{Value, json};

fn user_token(i: usize) -> String {
    TokenKey::new(SECRET).mint(&format!("viewer{i}"), "user", now_secs(), 3600)
}

async fn scheduler(extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["--auth-secret".into(), SECRET.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn_plain("scheduler", &args).await
}

/// An edge that registers with `scheduler` itself; its id is `edge-{addr}`.
async fn edge(scheduler: &Proc, capacity: u64) -> Proc {
    let addr = common::free_addr();
    let store = std::env::temp_dir().join(format!(
        "{}.db",
        danmaku_testkit::kafka::unique("danmaku-sched-edge")
    ));
    let args: Vec<String> = [
        "--bus",
        "memory",
        "--store",
        &format!("embedded:{}", store.display()),
        "--auth-secret",
        SECRET,
        "--scheduler",
        &scheduler.base,
        "--advertise",
        &addr.to_string(),
        "--capacity",
        &capacity.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // spawn_plain picks its own address: pass ours through --listen instead.
    spawn_edge_at(addr, &args).await
}

async fn spawn_edge_at(addr: std::net::SocketAddr, args: &[String]) -> Proc {
    let log = std::env::temp_dir().join(format!(
        "{}.log",
        danmaku_testkit::kafka::unique("danmaku-edge")
    ));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .arg("edge")
        .args(["--listen", &addr.to_string()])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn danmaku edge");
    let p = Proc {
        child,
        base: format!("http://{addr}"),
        addr,
        log,
    };
    eventually(Duration::from_secs(30), "edge /healthz", || async {
        let r = reqwest::get(format!("{}/healthz", p.base)).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    p
}

fn edge_id(p: &Proc) -> String {
    format!("edge-{}", p.addr)
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.expect(url);
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Ids in one `GET /v1/edges?k=16` answer (empty on an error answer).
async fn handed_out(scheduler: &Proc) -> HashSet<String> {
    let (_, body) = get_json(&format!("{}/v1/edges?k=16", scheduler.base)).await;
    body["edges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_healthy(scheduler: &Proc, edges: &[&Proc]) {
    let want: HashSet<String> = edges.iter().map(|e| edge_id(e)).collect();
    eventually(
        Duration::from_secs(30),
        "every edge handed out by the scheduler",
        || async { want.is_subset(&handed_out(scheduler).await).then_some(()) },
    )
    .await;
}

async fn connections(edge: &Proc) -> f64 {
    let text = common::metrics_text(&edge.base).await;
    metric_value(&text, "danmaku_edge_connections", &[]).unwrap_or(0.0)
}

/// Connections per edge once their sum reaches `total`.
async fn settled_counts(edges: &[&Proc], total: f64) -> Vec<f64> {
    eventually(Duration::from_secs(30), "edge gauges to add up", || async {
        let mut counts = Vec::new();
        for e in edges {
            counts.push(connections(e).await);
        }
        (counts.iter().sum::<f64>() == total).then_some(counts)
    })
    .await
}

fn max_over_mean(counts: &[f64]) -> f64 {
    let mean = counts.iter().sum::<f64>() / counts.len() as f64;
    counts.iter().cloned().fold(0.0, f64::max) / mean
}

fn client_config() -> ClientConfig {
    ClientConfig {
        heartbeat_interval: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

async fn connect_one(scheduler: &Proc, i: usize) -> ResilientClient {
    ResilientClient::connect_via_scheduler(
        &scheduler.base,
        Transport::WsPb,
        user_token(i),
        client_config(),
    )
    .await
    .unwrap_or_else(|e| panic!("client {i}: {e}"))
}

/// `n` clients, one after the other.
async fn connect_sequentially(scheduler: &Proc, from: usize, n: usize) -> Vec<ResilientClient> {
    let mut out = Vec::with_capacity(n);
    for i in from..from + n {
        out.push(connect_one(scheduler, i).await);
    }
    out
}

/// `n` clients at once (each asks the scheduler, then connects).
async fn connect_burst(scheduler: &Proc, from: usize, n: usize) -> Vec<ResilientClient> {
    let base = scheduler.base.clone();
    let tasks: Vec<_> = (from..from + n)
        .map(|i| {
            let base = base.clone();
            tokio::spawn(async move {
                ResilientClient::connect_via_scheduler(
                    &base,
                    Transport::WsPb,
                    user_token(i),
                    client_config(),
                )
                .await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap().expect("burst client connects"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_balances_three_edges_then_a_burst_then_ejects_a_killed_edge() {
    danmaku_testkit::init_crypto();
    let sched = scheduler(&[]).await;
    let mut e1 = edge(&sched, 1500).await;
    let e2 = edge(&sched, 1500).await;
    let e3 = edge(&sched, 1500).await;
    wait_healthy(&sched, &[&e1, &e2, &e3]).await;

    // 3,000 clients one by one.
    let mut clients = connect_sequentially(&sched, 0, 3000).await;
    let counts = settled_counts(&[&e1, &e2, &e3], 3000.0).await;
    let ratio = max_over_mean(&counts);
    println!("one by one: connections per edge {counts:?}, max/mean {ratio:.3}");
    assert!(ratio <= 1.10, "{counts:?} max/mean {ratio}");

    // A burst of 1,000 concurrent asks + connects.
    let started = Instant::now();
    clients.extend(connect_burst(&sched, 3000, 1000).await);
    let after = settled_counts(&[&e1, &e2, &e3], 4000.0).await;
    let burst: Vec<f64> = after.iter().zip(&counts).map(|(a, b)| a - b).collect();
    let ratio = max_over_mean(&burst);
    println!(
        "burst of 1000 in {:?}: new connections per edge {burst:?}, max/mean {ratio:.3}",
        started.elapsed()
    );
    assert!(ratio <= 1.2, "{burst:?} max/mean {ratio}");
    drop(clients);

    // Throughput and decision latency of GET /v1/edges (for BENCHMARKS.md):
    // 8 keep-alive connections, 4,000 requests.
    let http = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let http = http.clone();
            let url = format!("{}/v1/edges?k=3", sched.base);
            tokio::spawn(async move {
                for _ in 0..500 {
                    let r = http.get(&url).send().await.unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let text = common::metrics_text(&sched.base).await;
    let sum = metric_value(&text, "danmaku_scheduler_decision_seconds_sum", &[]).unwrap_or(0.0);
    let count = metric_value(&text, "danmaku_scheduler_decision_seconds_count", &[]).unwrap_or(1.0);
    println!(
        "GET /v1/edges: 4000 requests in {took:?} = {:.0} req/s; mean decision {:.1} µs over {count} decisions",
        4000.0 / took.as_secs_f64(),
        sum / count * 1e6
    );

    // SIGKILL an edge: out of the answers within 3 s, never back.
    let killed = edge_id(&e1);
    assert!(handed_out(&sched).await.contains(&killed));
    e1.child.kill().unwrap();
    let killed_at = Instant::now();
    let gone = eventually(
        Duration::from_secs(10),
        "killed edge out of the answers",
        || async { (!handed_out(&sched).await.contains(&killed)).then(|| killed_at.elapsed()) },
    )
    .await;
    println!("killed edge no longer handed out after {gone:?}");
    assert!(
        gone <= Duration::from_secs(4),
        "still handed out after {gone:?}"
    );
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let ids = handed_out(&sched).await;
        assert!(
            !ids.contains(&killed),
            "killed edge handed out again: {ids:?}"
        );
        assert_eq!(ids.len(), 2, "{ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = common::metrics_text(&sched.base).await;
    let ejections = metric_value(&text, "danmaku_scheduler_ejections_total", &[]).unwrap_or(0.0);
    assert!(ejections >= 1.0, "no ejection counted");
    drop((e2, e3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_sends_new_clients_to_a_new_edge() {
    danmaku_testkit::init_crypto();
    let sched = scheduler(&[]).await;
    let old = edge(&sched, 4000).await;
    wait_healthy(&sched, &[&old]).await;
    let mut clients = connect_sequentially(&sched, 0, 2000).await;
    settled_counts(&[&old], 2000.0).await;

    let new = edge(&sched, 4000).await;
    wait_healthy(&sched, &[&old, &new]).await;
    clients.extend(connect_sequentially(&sched, 2000, 2000).await);
    let counts = settled_counts(&[&old, &new], 4000.0).await;
    let share = counts[1] / 2000.0;
    println!(
        "imbalance start: old {} new {} (new took {:.1} %)",
        counts[0],
        counts[1],
        share * 100.0
    );
    // Balance is all 2,000 to the new edge; a scheduler blind to load sends
    // ~50 %. The new edge's handshakes cost it CPU, but CPU below half its
    // cores scores 0, so its connection count is what the scheduler weighs.
    assert!(share >= 0.80, "{counts:?}");
    drop(clients);
}

/// `olds` edges (capacity 1,000) filled with `per_old` clients each through
/// the scheduler, then one more edge and `next` more clients: the new edge's
/// share of those, and the final connections per edge.
async fn a_new_edge_among(olds: usize, per_old: usize, next: usize) -> (f64, Vec<f64>) {
    let sched = scheduler(&[]).await;
    let mut edges = Vec::new();
    for _ in 0..olds {
        edges.push(edge(&sched, 1000).await);
    }
    let refs: Vec<&Proc> = edges.iter().collect();
    wait_healthy(&sched, &refs).await;
    let loaded = olds * per_old;
    let mut clients = connect_sequentially(&sched, 0, loaded).await;
    let before = settled_counts(&refs, loaded as f64).await;
    let new = edge(&sched, 1000).await;
    let mut refs = refs;
    refs.push(&new);
    wait_healthy(&sched, &refs).await;
    clients.extend(connect_sequentially(&sched, loaded, next).await);
    let after = settled_counts(&refs, (loaded + next) as f64).await;
    let share = after[olds] / next as f64;
    println!(
        "{olds} edges at {before:?}, then a new one: it took {} of the next {next} \
         ({:.1} %); final {after:?}, max/mean {:.3}",
        after[olds],
        share * 100.0,
        max_over_mean(&after)
    );
    drop(clients);
    (share, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_edge_next_to_five_loaded_ones_takes_the_next_clients() {
    danmaku_testkit::init_crypto();
    // Balance is all 150 to the new edge (900 over six); power of two
    // choices gave it 33 %.
    let (share, after) = a_new_edge_among(5, 150, 150).await;
    assert!(share >= 0.80, "new edge took {:.1} %", share * 100.0);
    assert!(max_over_mean(&after) <= 1.10, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_edge_next_to_two_loaded_ones_takes_the_next_clients() {
    danmaku_testkit::init_crypto();
    // Balance is 333 of the next 400 to the new edge (1,000 over three);
    // power of two choices gave it 62-66 %.
    let (share, after) = a_new_edge_among(2, 300, 400).await;
    assert!(share >= 0.80, "new edge took {:.1} %", share * 100.0);
    assert!(max_over_mean(&after) <= 1.10, "{after:?}");
}

/// Registers `edge` with `scheduler` the way the edge itself does, for a
/// second scheduler replica (an edge registers with one `--scheduler`).
async fn register_with(http: &reqwest::Client, scheduler: &Proc, edge: &Proc) {
    let app = TokenKey::new(SECRET).mint(&edge_id(edge), "app", now_secs(), 600);
    let body = json!({
        "id": edge_id(edge),
        "ws": format!("ws://{}/v1/ws", edge.addr),
        "quic": edge.addr.to_string(),
        "metrics_url": format!("http://{}/metrics", edge.addr),
        "capacity": 1500,
        "cores": 2,
    });
    let r = http
        .post(format!("{}/v1/registry/edges", scheduler.base))
        .bearer_auth(&app)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
}

/// Heartbeats `edges` to `scheduler` every 500 ms until aborted.
fn heartbeat_for(scheduler: &Proc, edges: &[&Proc]) -> tokio::task::JoinHandle<()> {
    let base = scheduler.base.clone();
    let ids: Vec<String> = edges.iter().map(|e| edge_id(e)).collect();
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        loop {
            for id in &ids {
                let app = TokenKey::new(SECRET).mint(id, "app", now_secs(), 600);
                let _ = http
                    .post(format!("{base}/v1/registry/edges/{id}/heartbeat"))
                    .bearer_auth(&app)
                    .json(&json!({"ready": true}))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_replicas_taking_clients_in_turn_do_not_herd() {
    danmaku_testkit::init_crypto();
    // Two replicas read the same edges; each sees only its own hand-outs
    // between readings. Two edges get 600 clients, a third joins, 1,400
    // more: every client asks the replicas in turn.
    let a = scheduler(&[]).await;
    let b = scheduler(&[]).await;
    let http = reqwest::Client::new();
    let e1 = edge(&a, 1500).await;
    let e2 = edge(&a, 1500).await;
    for e in [&e1, &e2] {
        register_with(&http, &b, e).await;
    }
    let mut beats = heartbeat_for(&b, &[&e1, &e2]);
    wait_healthy(&a, &[&e1, &e2]).await;
    wait_healthy(&b, &[&e1, &e2]).await;
    let replicas = [&a, &b];
    let mut clients = Vec::new();
    for i in 0..600 {
        clients.push(connect_one(replicas[i % 2], i).await);
    }
    settled_counts(&[&e1, &e2], 600.0).await;
    let e3 = edge(&a, 1500).await;
    register_with(&http, &b, &e3).await;
    beats.abort();
    beats = heartbeat_for(&b, &[&e1, &e2, &e3]);
    wait_healthy(&a, &[&e1, &e2, &e3]).await;
    wait_healthy(&b, &[&e1, &e2, &e3]).await;
    for i in 600..2000 {
        clients.push(connect_one(replicas[i % 2], i).await);
        if i == 999 {
            let at_1000 = settled_counts(&[&e1, &e2, &e3], 1000.0).await;
            println!(
                "two replicas: the new edge took {} of the next 400",
                at_1000[2]
            );
        }
    }
    let counts = settled_counts(&[&e1, &e2, &e3], 2000.0).await;
    let ratio = max_over_mean(&counts);
    println!("two replicas after 2,000 clients: {counts:?}, max/mean {ratio:.3}");
    beats.abort();
    assert!(ratio <= 1.15, "{counts:?} max/mean {ratio}");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_balances_from_prometheus() {
    danmaku_testkit::init_crypto();
    let prometheus = danmaku_testkit::kafka::env_or_fail("DANMAKU_TEST_PROMETHEUS");
    let targets_dir = danmaku_testkit::kafka::env_or_fail("DANMAKU_TEST_PROMETHEUS_TARGETS");
    let sched = scheduler(&["--prometheus-url", &prometheus]).await;
    let edges = [
        edge(&sched, 1500).await,
        edge(&sched, 1500).await,
        edge(&sched, 1500).await,
    ];
    // Prometheus scrapes the edges (file service discovery, 1 s interval).
    let file = std::path::Path::new(&targets_dir).join(format!(
        "{}.json",
        danmaku_testkit::kafka::unique("scheduler-test")
    ));
    let targets: Vec<String> = edges.iter().map(|e| e.addr.to_string()).collect();
    std::fs::write(&file, json!([{ "targets": targets }]).to_string()).unwrap();
    let refs: Vec<&Proc> = edges.iter().collect();
    wait_healthy(&sched, &refs).await;

    let clients = connect_sequentially(&sched, 0, 3000).await;
    let counts = settled_counts(&refs, 3000.0).await;
    let ratio = max_over_mean(&counts);
    println!("prometheus mode: connections per edge {counts:?}, max/mean {ratio:.3}");
    let _ = std::fs::remove_file(&file);
    assert!(ratio <= 1.10, "{counts:?} max/mean {ratio}");
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_refuses_bad_registry_calls() {
    let sched = scheduler(&[]).await;
    let http = reqwest::Client::new();
    let app = TokenKey::new(SECRET).mint("edge-x", "app", now_secs(), 600);
    let wrong = TokenKey::new("wrong").mint("edge-x", "app", now_secs(), 600);
    let reg = json!({
        "id": "edge-x", "ws": "ws://127.0.0.1:9/v1/ws", "quic": "127.0.0.1:9",
        "metrics_url": "http://127.0.0.1:9/metrics", "capacity": 1000
    });
    let post = |path: &str, token: &str, body: String| {
        http.post(format!("{}{path}", sched.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let mut seen: HashMap<&str, u16> = HashMap::new();
    let cases: [(&str, &str, &str, String); 5] = [
        (
            "wrong secret",
            "/v1/registry/edges",
            wrong.as_str(),
            reg.to_string(),
        ),
        (
            "malformed body",
            "/v1/registry/edges",
            app.as_str(),
            "{\"id\": ".into(),
        ),
        ("absurd capacity", "/v1/registry/edges", app.as_str(), {
            let mut r = reg.clone();
            r["capacity"] = json!(1e15);
            r.to_string()
        }),
        (
            "unknown edge heartbeat",
            "/v1/registry/edges/nobody/heartbeat",
            app.as_str(),
            json!({"ready": true}).to_string(),
        ),
        ("negative cores", "/v1/registry/edges", app.as_str(), {
            let mut r = reg.clone();
            r["cores"] = json!(-2);
            r.to_string()
        }),
    ];
    for (what, path, token, body) in cases {
        let r = post(path, token, body).await.unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        println!("{what}: {status} {answer}");
        seen.insert(what, status);
        assert!(answer["error"]["code"].is_string(), "{what}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{what}: {answer}");
    }
    assert_eq!(seen["wrong secret"], 401);
    assert_eq!(seen["malformed body"], 400);
    assert_eq!(seen["absurd capacity"], 400);
    assert_eq!(seen["negative cores"], 400);
    assert_eq!(seen["unknown edge heartbeat"], 404);
    let (status, body) = get_json(&format!("{}/readyz", sched.base)).await;
    assert_eq!((status, body["reason"].as_str()), (503, Some("no_edge")));
    let (status, body) = get_json(&format!("{}/v1/edges", sched.base)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("no_edge"))
    );
    let text = common::metrics_text(&sched.base).await;
    let refused = |code| metric_value(&text, "danmaku_scheduler_refused_total", &[("code", code)]);
    assert_eq!(refused("bad_token"), Some(1.0));
    assert_eq!(refused("bad_registration"), Some(3.0));
    assert_eq!(refused("unknown_edge"), Some(1.0));
    assert_eq!(refused("no_edge"), Some(1.0));
}
