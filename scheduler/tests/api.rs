//! `GET /v1/edges` driven in-process with `tower::ServiceExt::oneshot`.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use danmaku_scheduler::{EdgeInfo, Scheduler, SchedulerConfig};
use prometheus::Registry;
use serde_json::Value;
use tower::ServiceExt;

fn edge(id: &str, load: f64) -> EdgeInfo {
    EdgeInfo {
        id: id.into(),
        ws: format!("ws://{id}.local:7070/v1/ws"),
        quic: format!("{id}.local:7070"),
        load,
    }
}

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn picks(registry: &Registry, edge: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "danmaku_scheduler_picks_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "edge" && l.value() == edge)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test]
async fn best_edges_first_limited_by_k() {
    let registry = Registry::new();
    let config = SchedulerConfig {
        static_edges: vec![
            edge("a", 0.8),
            edge("b", 0.2),
            edge("c", 0.5),
            edge("d", 0.9),
        ],
    };
    let router = Scheduler::new(config, &registry).unwrap().router();

    let (status, body) = get(&router, "/v1/edges").await;
    assert_eq!(status, StatusCode::OK);
    let edges: Vec<EdgeInfo> = serde_json::from_value(body["edges"].clone()).unwrap();
    let ids: Vec<&str> = edges.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["b", "c", "a"]);
    assert_eq!(edges[0], edge("b", 0.2));

    let (status, body) = get(&router, "/v1/edges?k=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["edges"].as_array().unwrap().len(), 1);
    assert_eq!(body["edges"][0]["id"], "b");
    assert_eq!(body["edges"][0]["ws"], "ws://b.local:7070/v1/ws");

    assert_eq!(picks(&registry, "b"), 2);
    assert_eq!(picks(&registry, "a"), 1);
    assert_eq!(picks(&registry, "d"), 0);

    for bad in ["/v1/edges?k=0", "/v1/edges?k=many", "/v1/edges?k=1000"] {
        let (status, body) = get(&router, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"]["code"], "bad_query", "{bad}");
    }
}

#[tokio::test]
async fn no_edges_is_503_and_bad_config_is_refused() {
    let router = Scheduler::new(SchedulerConfig::default(), &Registry::new())
        .unwrap()
        .router();
    let (status, body) = get(&router, "/v1/edges").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "no_edges");

    let dup = SchedulerConfig {
        static_edges: vec![edge("a", 0.1), edge("a", 0.2)],
    };
    assert!(Scheduler::new(dup, &Registry::new()).is_err());
    let nan = SchedulerConfig {
        static_edges: vec![edge("a", f64::NAN)],
    };
    assert!(Scheduler::new(nan, &Registry::new()).is_err());
}
