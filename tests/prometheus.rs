//! The dashboards and rules work in a real Prometheus: it scrapes a standalone
//! server under a small load of every kind, loads deploy/rules.yml, and every
//! query of the dashboards must return series through the HTTP API while every
//! rule evaluates without error.
//!
//! Needs the `prometheus` binary (Debian's package; `scripts/services.sh start
//! prometheus` or scripts/test-grafana.sh installs it), or its path in
//! `DANMAKU_TEST_PROMETHEUS_BIN`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use danmaku_client::{Client, ClientConfig, IngestClient, Transport};
use danmaku_testkit::kafka::{free_port, unique};
use danmaku_testkit::promql;

fn repo() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

fn prometheus_bin() -> PathBuf {
    if let Ok(p) = std::env::var("DANMAKU_TEST_PROMETHEUS_BIN") {
        return p.into();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .expect(
            "no `prometheus` on PATH: run `scripts/services.sh start prometheus` (installs \
             Debian's package) or set DANMAKU_TEST_PROMETHEUS_BIN",
        )
}

/// A private Prometheus, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Scrapes `target` every second as job `danmaku-standalone` and evaluates `rules`.
    async fn start(target: &str, rules: &Path) -> Prometheus {
        let dir = std::env::temp_dir().join(unique("danmaku-prometheus"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: danmaku-standalone\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let ready = format!("{}/-/ready", p.base);
        danmaku_testkit::eventually(Duration::from_secs(30), "prometheus ready", || {
            let ready = ready.clone();
            async move {
                reqwest::get(ready)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        p
    }

    /// `GET /api/v1/query`: the result array, or the error Prometheus gave.
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.base),
            &[("query", expr)],
        )
        .map_err(|e| e.to_string())?;
        let body: serde_json::Value = reqwest::get(url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn rules(&self) -> Vec<serde_json::Value> {
        let body: serde_json::Value = reqwest::get(format!("{}/api/v1/rules", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// Metrics only a Kafka bus serves (docs/METRICS.md, bus section, all but
/// `danmaku_bus_up`): a standalone on the memory bus has none of them.
fn kafka_only() -> BTreeSet<String> {
    common::documented_metrics()
        .into_iter()
        .filter(|(section, name)| section == "bus" && name != "danmaku_bus_up")
        .map(|(_, name)| name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_show_data_and_rules_evaluate_in_prometheus() {
    let srv = common::start(|c| {
        c.edge.top_rooms_interval = Duration::from_millis(500);
    })
    .await;
    let base = srv.base_url();
    let prom =
        Prometheus::start(&srv.http_addr.to_string(), &repo().join("deploy/rules.yml")).await;

    // A small load of every kind, for as long as the test runs.
    let mut viewer = Client::connect_ws(
        &base,
        &common::token(&srv, "viewer"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    viewer.join("room:p").await.unwrap();
    common::wait_joined(&mut viewer, "room:p").await;
    let reader = tokio::spawn(async move { while viewer.next_event().await.is_some() {} });
    let ingest = IngestClient::new(&base);
    let app = srv
        .tokens
        .mint("app", "app", danmaku_proto::token::now_secs(), 3600);
    ingest.join_group(&app, "group:p", "gifter").await.unwrap();
    let tokens: Vec<String> = (0..10)
        .map(|i| common::token(&srv, &format!("p{i}")))
        .collect();
    let gifter = common::token(&srv, "gifter");
    let flooder = common::token(&srv, "flooder");
    // Account protection: a revoked token and a blocked user keep being refused.
    let now = danmaku_proto::token::now_secs();
    let revoked = srv
        .tokens
        .mint_with_id("rita", "user", now, 3600, "revoked-jti");
    ingest
        .revoke_token(&app, "revoked-jti", now + 3600)
        .await
        .unwrap();
    ingest.block_user(&app, "bert", None).await.unwrap();
    let blocked = common::token(&srv, "bert");
    let load = {
        let ingest = ingest.clone();
        tokio::spawn(async move {
            for n in 0u64.. {
                // ~20 danmaku/s over 10 users: under the default per-user limit.
                let _ = ingest
                    .post_danmaku(&tokens[(n % 10) as usize], "room:p", &format!("d{n}"))
                    .await;
                if n % 10 == 0 {
                    let id = format!("g-{n}");
                    let _ = ingest
                        .post_reliable(&gifter, "room:p", "gift", "rocket", Some(&id))
                        .await;
                    let id = format!("c-{n}");
                    let _ = ingest
                        .post_reliable(&gifter, "group:p", "chat", "hi", Some(&id))
                        .await;
                    let _ = ingest.post_danmaku(&flooder, "nope", "refused").await;
                    // A forged token: the auth panel's ingest bad_token series.
                    let _ = ingest.post_danmaku("forged", "room:p", "x").await;
                    let _ = ingest.post_danmaku(&revoked, "room:p", "x").await;
                    let _ = ingest.post_danmaku(&blocked, "room:p", "x").await;
                }
                if n % 100 == 0 {
                    // A flood: the per-user limit answers 429.
                    for _ in 0..15 {
                        let _ = ingest.post_danmaku(&flooder, "room:p", "flood").await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    reqwest::get(format!("{base}/v1/edges")).await.unwrap();

    // Every rule evaluated at least once, and without error.
    let want_rules =
        promql::rules_from_yaml(&std::fs::read_to_string(repo().join("deploy/rules.yml")).unwrap())
            .unwrap()
            .len();
    let rules =
        danmaku_testkit::eventually(Duration::from_secs(60), "every rule evaluated", || async {
            let rules = prom.rules().await;
            (rules.len() == want_rules && rules.iter().all(|r| r["health"] != "unknown"))
                .then_some(rules)
        })
        .await;
    let bad: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    assert!(bad.is_empty(), "rules failing in Prometheus: {bad:#?}");

    // Each dashboard query returns series (a Kafka-only metric cannot on the
    // memory bus, but its query must still evaluate).
    let kafka = kafka_only();
    let instance = srv.http_addr.to_string();
    let mut failures = Vec::new();
    let mut checked = 0;
    for name in ["danmaku-overview.json", "danmaku-edge.json"] {
        let text = std::fs::read_to_string(repo().join("grafana/dashboards").join(name)).unwrap();
        let d: serde_json::Value = serde_json::from_str(&text).unwrap();
        for q in promql::dashboard_queries(&d) {
            let expr = promql::substitute_grafana_vars(&q.expr.replace("$edge", &instance));
            let names = promql::selector_names(&expr).unwrap();
            let may_be_empty = names.iter().all(|n| kafka.contains(n));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let outcome = loop {
                match prom.query(&expr).await {
                    Err(e) => break Err(format!("error {e}")),
                    Ok(r) if !r.is_empty() || may_be_empty => break Ok(()),
                    Ok(_) if tokio::time::Instant::now() >= deadline => {
                        break Err("no series".to_owned());
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            };
            checked += 1;
            if let Err(e) = outcome {
                failures.push(format!("{name} {:?}: {e}\n    {expr}", q.panel));
            }
        }
    }
    assert!(checked >= 60, "only {checked} queries");
    assert!(
        failures.is_empty(),
        "dashboard queries without data in Prometheus:\n  {}",
        failures.join("\n  ")
    );
    load.abort();
    reader.abort();
    drop(prom);
    srv.stop().await;
}
