//! The dashboards in grafana/dashboards and the rules in deploy/rules.yml can only
//! name what the code exports: real processes (a standalone server, and edge,
//! ingest and scheduler processes over Kafka) get traffic of every kind, their
//! `/metrics` are scraped, and every PromQL expression is parsed and checked
//! metric by metric, label by label and matcher value by value
//! (`danmaku_testkit::promql`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Proc;
use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent, Transport};
use danmaku_testkit::kafka::{shared_broker, unique};
use danmaku_testkit::promql::{self, Checker, Exported};

fn repo() -> PathBuf {
    // The run-time variable follows the checkout even with a shared target dir.
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = repo().join("grafana/dashboards");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 2, "expected the overview and edge dashboards");
    out
}

fn rules() -> Vec<promql::Rule> {
    let path = repo().join("deploy/rules.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    promql::rules_from_yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dashboards_are_well_formed() {
    let mut uids = BTreeSet::new();
    for (name, d) in dashboards() {
        assert!(
            uids.insert(d["uid"].as_str().expect("uid").to_owned()),
            "{name}: duplicate uid"
        );
        let mut ids = BTreeSet::new();
        let panels = promql::dashboard_panels(&d);
        assert!(panels.len() >= 10, "{name}: only {} panels", panels.len());
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?");
            let id = p["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{name}: panel id {id} used twice");
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(
                p["datasource"]["type"], "prometheus",
                "{name}: panel {title:?} has no Prometheus data source"
            );
            assert!(
                p["datasource"]["uid"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{name}: panel {title:?} data source has no uid"
            );
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{name}: panel {title:?} has no unit"
            );
            let targets = p["targets"].as_array().map_or(0, Vec::len);
            assert!(targets > 0, "{name}: panel {title:?} has no query");
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{name}: panel {title:?} has no description"
            );
        }
        // Only variables the dashboards define (and Grafana's own) are used.
        let defined: BTreeSet<String> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        for q in promql::dashboard_queries(&d) {
            for var in q.expr.split('$').skip(1) {
                let var: String = var
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    var.starts_with("__") || defined.contains(&var),
                    "{name}: panel {:?} uses undefined variable ${var}",
                    q.panel
                );
            }
        }
    }
}

/// Starts `danmaku scheduler` handing out `edge`.
async fn spawn_scheduler(edge: &Proc) -> Proc {
    let addr = common::free_addr();
    let log = std::env::temp_dir().join(format!("{}.log", unique("danmaku-scheduler")));
    let child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .args(["scheduler", "--listen", &addr.to_string(), "--edge"])
        .arg(format!("e1=ws://{}/v1/ws|{}", edge.addr, edge.addr))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn scheduler");
    let p = Proc {
        child,
        base: format!("http://{addr}"),
        addr,
        log,
    };
    danmaku_testkit::eventually(Duration::from_secs(30), "scheduler healthy", || {
        let url = format!("{}/healthz", p.base);
        async move {
            reqwest::get(url)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;
    p
}

fn app_token(secret: &danmaku_proto::token::TokenKey, user: &str) -> String {
    secret.mint(user, "app", danmaku_proto::token::now_secs(), 3600)
}

/// A standalone server with every path exercised: danmaku to a fast and a slow
/// viewer (slow-consumer drops), a gift and its retry, group chat, a refused post,
/// a malformed frame, a scheduler pick. Returns its exposition and stops it.
async fn standalone_exposition() -> String {
    let srv = common::start(|c| {
        c.ingest.user_rate_per_sec = 100_000.0;
        c.ingest.user_burst = 100_000;
        c.edge.send_queue_frames = 4;
        c.edge.tcp_send_buffer = Some(4096);
        c.edge.top_rooms = 5;
        c.edge.top_rooms_interval = Duration::from_millis(200);
    })
    .await;
    let base = srv.base_url();
    let ingest = IngestClient::new(&base);
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
    slow.join("room:hot").await.unwrap();
    common::wait_joined(&mut slow, "room:hot").await;
    // From here on `slow` is never read again.
    let mut fast = Client::connect_ws(
        &base,
        &common::token(&srv, "fast"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    fast.join("room:hot").await.unwrap();
    common::wait_joined(&mut fast, "room:hot").await;
    let reader = tokio::spawn(async move { while fast.next_event().await.is_some() {} });
    let mut quiet = Client::connect_ws(
        &base,
        &common::token(&srv, "quiet"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    quiet.join("room:quiet").await.unwrap();
    common::wait_joined(&mut quiet, "room:quiet").await;

    let poster = common::token(&srv, "poster");
    let filler = "弹".repeat(180);
    let mut n = 0;
    loop {
        let out = ingest
            .post_danmaku(&poster, "room:hot", &format!("{n} {filler}"))
            .await
            .unwrap();
        assert!(matches!(out, PostOutcome::Accepted { .. }), "{out:?}");
        n += 1;
        if n % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let m = common::metrics_text(&base).await;
            if danmaku_testkit::metric_value(&m, "danmaku_edge_slow_consumer_drops_total", &[])
                .is_some_and(|v| v > 0.0)
            {
                break;
            }
            assert!(n < 5_000, "no slow-consumer drop after {n} posts");
        }
    }
    // The reliable lane: a gift and its retry, group chat.
    let gifter = common::token(&srv, "gifter");
    for _ in 0..2 {
        let out = ingest
            .post_reliable(&gifter, "room:hot", "gift", "rocket", Some("g-1"))
            .await
            .unwrap();
        assert!(matches!(out, PostOutcome::Persisted { .. }), "{out:?}");
    }
    ingest
        .join_group(&app_token(&srv.tokens, "app"), "group:g", "gifter")
        .await
        .unwrap();
    let out = ingest
        .post_reliable(&gifter, "group:g", "chat", "hi", Some("c-1"))
        .await
        .unwrap();
    assert!(matches!(out, PostOutcome::Persisted { .. }), "{out:?}");
    // Refused posts (the codes the dashboards and alerts select) and a malformed frame.
    let bad = ingest.post_danmaku(&poster, "nope", "x").await.unwrap();
    assert!(
        matches!(bad, PostOutcome::Rejected { status: 400, .. }),
        "{bad:?}"
    );
    let now = danmaku_proto::token::now_secs();
    for (token, code) in [
        ("x.y".to_owned(), "bad_token"),
        (
            srv.tokens.mint("late", "user", now - 10, 1),
            "token_expired",
        ),
    ] {
        let out = ingest.post_danmaku(&token, "room:hot", "x").await.unwrap();
        assert!(
            matches!(&out, PostOutcome::Rejected { status: 401, code: c, .. } if c == code),
            "{out:?}"
        );
    }
    // Account protection: a revoked token and a blocked user, refused.
    let app = app_token(&srv.tokens, "app");
    let revoked = srv
        .tokens
        .mint_with_id("rita", "user", now, 3600, "revoked-jti");
    ingest
        .revoke_token(&app, "revoked-jti", now + 3600)
        .await
        .unwrap();
    ingest.block_user(&app, "bert", Some(60)).await.unwrap();
    for (token, code) in [
        (revoked, "token_revoked"),
        (common::token(&srv, "bert"), "user_blocked"),
    ] {
        let out = ingest.post_danmaku(&token, "room:hot", "x").await.unwrap();
        assert!(
            matches!(&out, PostOutcome::Rejected { code: c, .. } if c == code),
            "{out:?}"
        );
    }
    let forbidden = ingest.join_group(&poster, "group:g", "poster").await;
    assert!(
        format!("{forbidden:?}").contains("forbidden"),
        "{forbidden:?}"
    );
    assert!(
        Client::connect_ws(&base, "x.y", Transport::WsPb, ClientConfig::default())
            .await
            .is_err(),
        "a WebSocket with a bad token is refused"
    );
    let mut mallory = Client::connect_ws(
        &base,
        &common::token(&srv, "mallory"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    mallory
        .send_raw(danmaku_proto::pb::ClientFrame {
            version: 99,
            ..Default::default()
        })
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while mallory.next_event().await.is_some() {}
    })
    .await;
    reqwest::get(format!("{base}/v1/edges")).await.unwrap();

    // The top-rooms ranking: room:hot (2 members) above room:quiet (1).
    let top: serde_json::Value =
        danmaku_testkit::eventually(Duration::from_secs(10), "room:hot ranked first", || {
            let url = format!("{base}/v1/top-rooms");
            async move {
                let v: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
                (v["by_members"][0]["channel"] == "room:hot").then_some(v)
            }
        })
        .await;
    assert_eq!(top["by_members"][0]["members"], 2, "{top}");
    assert_eq!(top["by_members"][1]["channel"], "room:quiet", "{top}");
    assert_eq!(top["by_members"].as_array().unwrap().len(), 2, "{top}");
    let m = common::metrics_text(&base).await;
    assert_eq!(
        danmaku_testkit::metric_value(&m, "danmaku_edge_top_room_members", &[("rank", "1")]),
        Some(2.0)
    );
    assert_eq!(
        danmaku_testkit::metric_value(&m, "danmaku_edge_top_room_members", &[("rank", "5")]),
        Some(0.0),
        "ranks without a room read 0"
    );
    assert!(
        danmaku_testkit::metric_value(&m, "danmaku_edge_top_room_members", &[("rank", "6")])
            .is_none(),
        "exactly --top-rooms ranks"
    );
    drop(slow);
    drop(quiet);
    reader.abort();
    srv.stop().await;
    m
}

/// Edge, ingest and scheduler processes over Kafka with danmaku, a gift, a
/// refused post and a rate-limited flood. Returns their expositions.
async fn distributed_expositions() -> Vec<(String, String)> {
    danmaku_testkit::init_crypto();
    let bus = format!("kafka://{}?topic={}", shared_broker(), unique("dash"));
    let edge = common::spawn("edge", &bus, &["--top-rooms", "3"]).await;
    let ingest_proc = common::spawn("ingest", &bus, &[]).await;
    let scheduler = spawn_scheduler(&edge).await;
    let key = danmaku_proto::token::TokenKey::new(common::SECRET);
    let token = |u: &str| key.mint(u, "user", danmaku_proto::token::now_secs(), 3600);

    let mut viewer = Client::connect_ws(
        &edge.base,
        &token("viewer"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    viewer.join("room:k").await.unwrap();
    common::wait_joined(&mut viewer, "room:k").await;
    let ingest = IngestClient::new(&ingest_proc.base);
    let poster = token("poster");
    // The edge consumes from "latest" once its subscription is live: post until seen.
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let _ = ingest.post_danmaku(&poster, "room:k", "hello").await;
            let got = tokio::time::timeout(Duration::from_millis(500), async {
                loop {
                    if let Some(ServerEvent::Batch { .. }) = viewer.next_event().await {
                        return;
                    }
                }
            })
            .await;
            if got.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "a danmaku crossed Kafka to the viewer");
    let out = ingest
        .post_reliable(&token("gifter"), "room:k", "gift", "rocket", Some("g-1"))
        .await
        .unwrap();
    assert!(matches!(out, PostOutcome::Persisted { .. }), "{out:?}");
    let bad = ingest.post_danmaku(&poster, "nope", "x").await.unwrap();
    assert!(
        matches!(bad, PostOutcome::Rejected { status: 400, .. }),
        "{bad:?}"
    );
    let flooder = token("flooder");
    let mut limited = false;
    for i in 0..40 {
        if let PostOutcome::RateLimited { .. } = ingest
            .post_danmaku(&flooder, "room:k", &format!("f{i}"))
            .await
            .unwrap()
        {
            limited = true;
        }
    }
    assert!(limited, "the default per-user limit refuses a flood");
    let edges: serde_json::Value = reqwest::get(format!("{}/v1/edges", scheduler.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(edges["edges"][0]["id"], "e1");
    // Let the edge's reliable fan-out and top-rooms ranking run once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut out = Vec::new();
    for (role, p) in [
        ("edge", &edge),
        ("ingest", &ingest_proc),
        ("scheduler", &scheduler),
    ] {
        out.push((role.to_owned(), common::metrics_text(&p.base).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_names_exported_metrics_and_labels() {
    let mut expositions = vec![("standalone".to_owned(), standalone_exposition().await)];
    expositions.extend(distributed_expositions().await);
    let mut exported = Exported::default();
    for (role, text) in &expositions {
        assert!(text.contains("danmaku_"), "{role} served no danmaku metric");
        exported.add_exposition(text);
    }

    // Bounded cardinality: no label may carry a user, a room or a connection.
    let forbidden = [
        "channel",
        "room",
        "user",
        "sender",
        "conn",
        "conn_id",
        "client_msg_id",
    ];
    for (role, text) in &expositions {
        let mut e = Exported::default();
        e.add_exposition(text);
        for line in text.lines().filter(|l| l.starts_with("danmaku_")) {
            let name = line.split(['{', ' ']).next().unwrap();
            let labels = e.labels(name).unwrap();
            for f in forbidden {
                assert!(
                    !labels.contains(f),
                    "{role}: {name} has a per-{f} label: unbounded cardinality"
                );
            }
        }
    }

    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checker = Checker::new(exported);
    // Label values a selector may name: those seen above, those docs/METRICS.md
    // lists (a counter's value appears only once used), and the scrape config's jobs.
    let metrics_md = std::fs::read_to_string(repo().join("docs/METRICS.md")).unwrap();
    let documented = promql::documented_label_values(&metrics_md);
    assert!(
        documented.len() >= 5,
        "METRICS.md value lists: {documented:?}"
    );
    for (metric, label, values) in documented {
        checker.allow_values(&metric, &label, values);
    }
    let scrape = std::fs::read_to_string(repo().join("deploy/prometheus.yml")).unwrap();
    let jobs: Vec<&str> = scrape
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- job_name:"))
        .map(str::trim)
        .collect();
    assert!(jobs.len() >= 4, "jobs in deploy/prometheus.yml: {jobs:?}");
    checker.allow_target_values("job", jobs);
    // The checker refuses a misspelt value, a misspelt job and a misspelt metric.
    for wrong in [
        "danmaku_edge_refused_total{code=\"token_expird\"}",
        "danmaku_ingest_rejected_total{code=~\"bad_token|token_expird\"}",
        "up{job=~\"danmaku-(edge|standalnoe)\"}",
        "danmaku_edge_refused_totl",
    ] {
        assert!(checker.check(wrong).is_err(), "{wrong} passed the checker");
    }
    let rules = rules();
    assert!(rules.len() >= 15, "only {} rules", rules.len());
    for rule in &rules {
        let result = if rule.is_alert {
            checker.check(&rule.expr).map(|_| ())
        } else {
            checker.record(&rule.name, &rule.expr)
        };
        if let Err(p) = result {
            problems.insert(format!("rules.yml {}", rule.name), p);
        }
    }
    let mut queries = 0;
    for (name, d) in dashboards() {
        for q in promql::dashboard_queries(&d) {
            queries += 1;
            let expr = promql::substitute_grafana_vars(&q.expr);
            let what = format!("{name} panel {:?}: {}", q.panel, q.expr);
            match checker.check(&expr) {
                Ok(shape) => {
                    let p = checker.check_legend(&shape, &q.legend);
                    if !p.is_empty() {
                        problems.insert(what, p);
                    }
                }
                Err(p) => {
                    problems.insert(what, p);
                }
            }
        }
        // Variables: `label_values(metric, label)` must name an exported pair.
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let Some(q) = v["query"].as_str() else {
                continue;
            };
            if let Some(args) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
            {
                let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
                let ok = checker
                    .exported
                    .labels(metric.trim())
                    .is_some_and(|l| l.contains(label.trim()));
                if !ok {
                    problems.insert(
                        format!("{name} variable {}", v["name"]),
                        vec![format!("{q}: not an exported metric/label pair")],
                    );
                }
            }
        }
    }
    assert!(queries >= 60, "only {queries} dashboard queries");
    assert!(
        problems.is_empty(),
        "queries naming what no process exports:\n{}",
        problems
            .iter()
            .map(|(k, v)| format!("  {k}\n    {}", v.join("\n    ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every recording rule a dashboard uses is defined in rules.yml (checked above
    // through `record`); and every rule is used or alerted on somewhere.
    let all_exprs: String = dashboards()
        .iter()
        .flat_map(|(_, d)| promql::dashboard_queries(d))
        .map(|q| q.expr)
        .chain(rules.iter().filter(|r| r.is_alert).map(|r| r.expr.clone()))
        .collect::<Vec<_>>()
        .join("\n");
    for r in rules.iter().filter(|r| !r.is_alert) {
        assert!(
            all_exprs.contains(&r.name),
            "recording rule {} is used by no dashboard or alert",
            r.name
        );
    }
}
