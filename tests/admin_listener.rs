//! `--admin-listen`: `/metrics` leaves the public listener for an admin one, and
//! an edge registers that address, so the scheduler still reads its load there.

mod common;

use std::time::Duration;

use common::{SECRET, free_addr, metrics_text, spawn_plain};

async fn status(url: &str) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_the_admin_listener_and_the_scheduler_follows() {
    danmaku_testkit::init_crypto();
    let sched_admin = free_addr();
    let sched = spawn_plain(
        "scheduler",
        &[
            "--auth-secret".into(),
            SECRET.into(),
            "--admin-listen".into(),
            sched_admin.to_string(),
        ],
    )
    .await;
    let edge_admin = free_addr();
    let store = std::env::temp_dir().join(format!(
        "{}.db",
        danmaku_testkit::kafka::unique("danmaku-admin-edge")
    ));
    let edge_addr = free_addr();
    let edge = common::spawn_args(
        edge_addr,
        &[
            "edge",
            "--listen",
            &edge_addr.to_string(),
            "--bus",
            "memory",
            "--store",
            &format!("embedded:{}", store.display()),
            "--auth-secret",
            SECRET,
            "--scheduler",
            &sched.base,
            "--advertise",
            &edge_addr.to_string(),
            "--admin-listen",
            &edge_admin.to_string(),
        ],
    )
    .await;

    for (public, admin, name) in [
        (&sched.base, sched_admin, "danmaku_scheduler_"),
        (&edge.base, edge_admin, "danmaku_edge_"),
    ] {
        // Public: alive, but no metrics.
        assert_eq!(status(&format!("{public}/healthz")).await, 200);
        assert_eq!(status(&format!("{public}/metrics")).await, 404, "{public}");
        // Admin: the metrics, and a health check for whoever scrapes it.
        let text = metrics_text(&format!("http://{admin}")).await;
        assert!(text.contains(name), "{admin}: no {name} series");
        assert!(text.contains("process_cpu_seconds_total"), "{admin}");
        assert_eq!(status(&format!("http://{admin}/healthz")).await, 200);
    }

    // The scheduler scrapes the edge's admin address: the edge leaves
    // `warming` (no reading yet) for `healthy` and is handed out.
    let healthy = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = metrics_text(&format!("http://{sched_admin}")).await;
            if text
                .lines()
                .any(|l| l == "danmaku_scheduler_edges{state=\"healthy\"} 1")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        healthy.is_ok(),
        "the scheduler never read the edge's load from its admin listener"
    );
    let answer: serde_json::Value = reqwest::get(format!("{}/v1/edges", sched.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ws = answer["edges"][0]["ws"].as_str().unwrap_or_default();
    assert!(ws.contains(&edge_addr.to_string()), "{answer}");
}
