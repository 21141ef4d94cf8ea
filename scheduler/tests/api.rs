//! The scheduler's HTTP surface driven in-process with `tower::ServiceExt::oneshot`:
//! `GET /v1/edges` over static edges, the registry's authentication and
//! refusals, online counts and `/readyz`. Picks over registered edges with
//! live readings are tested against real edge processes in the workspace's
//! `tests/scheduler.rs`.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use danmaku_proto::token::{TokenKey, now_secs};
use danmaku_scheduler::{EdgeInfo, Scheduler, SchedulerConfig};
use prometheus::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "scheduler-api-test";

fn edge(id: &str, load: f64) -> EdgeInfo {
    EdgeInfo {
        id: id.into(),
        ws: format!("ws://{id}.local:7070/v1/ws"),
        quic: format!("{id}.local:7070"),
        load,
    }
}

fn app_token() -> String {
    TokenKey::new(SECRET).mint("edge-1", "app", now_secs(), 600)
}

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Body::from(serde_json::to_vec(&v).unwrap())
        }
        None => Body::empty(),
    };
    let resp = router
        .clone()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, value)
}

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, Value) {
    call(router, Method::GET, uri, None, None).await
}

fn counter(registry: &Registry, name: &str, label: (&str, &str)) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == label.0 && l.value() == label.1)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn registration(id: &str) -> Value {
    json!({
        "id": id, "ws": "ws://127.0.0.1:9/v1/ws", "quic": "127.0.0.1:9",
        "metrics_url": "http://127.0.0.1:9/metrics", "capacity": 19000,
        "egress_capacity": 125000000, "cores": 2
    })
}

fn scheduler(static_edges: Vec<EdgeInfo>, registry: &Registry) -> axum::Router {
    let s = Scheduler::new(
        SchedulerConfig {
            static_edges,
            auth_secret: Some(SECRET.into()),
            ..SchedulerConfig::default()
        },
        registry,
    )
    .unwrap();
    s.router().merge(s.control_router())
}

#[tokio::test]
async fn power_of_two_choices_over_static_edges() {
    let registry = Registry::new();
    let edges = vec![
        edge("a", 0.5),
        edge("b", 0.2),
        edge("c", 0.5),
        edge("d", 0.9),
    ];
    let router = scheduler(edges.clone(), &registry);

    let (status, body) = get(&router, "/v1/edges").await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<EdgeInfo> = serde_json::from_value(body["edges"].clone()).unwrap();
    assert_eq!(got.len(), 3);
    let mut ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "distinct edges: {got:?}");

    // The most loaded edge is never the first answer: it loses every pair.
    for _ in 0..100 {
        let (_, body) = get(&router, "/v1/edges?k=1").await;
        assert_eq!(body["edges"].as_array().unwrap().len(), 1);
        assert_ne!(body["edges"][0]["id"], "d");
    }
    let total: u64 = ["a", "b", "c", "d"]
        .iter()
        .map(|e| counter(&registry, "danmaku_scheduler_picks_total", ("edge", e)))
        .sum();
    assert_eq!(total, 3 + 100);

    // Same seed, same inputs: a second scheduler answers the same.
    let other = scheduler(edges, &Registry::new());
    let fresh = scheduler(
        vec![
            edge("a", 0.5),
            edge("b", 0.2),
            edge("c", 0.5),
            edge("d", 0.9),
        ],
        &Registry::new(),
    );
    for seed in [1u64, 42, 9_999_999] {
        let uri = format!("/v1/edges?k=3&seed={seed}");
        let (_, one) = get(&other, &uri).await;
        let (_, two) = get(&fresh, &uri).await;
        assert_eq!(one["edges"][0]["id"], two["edges"][0]["id"], "seed {seed}");
        assert_eq!(one["edges"][1]["id"], two["edges"][1]["id"], "seed {seed}");
    }

    for bad in [
        "/v1/edges?k=0",
        "/v1/edges?k=many",
        "/v1/edges?k=17",
        "/v1/edges?seed=-1",
    ] {
        let (status, body) = get(&router, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["error"]["code"], "bad_query", "{bad}");
    }
    assert_eq!(
        counter(
            &registry,
            "danmaku_scheduler_refused_total",
            ("code", "bad_query")
        ),
        4
    );
}

#[tokio::test]
async fn no_edge_is_503_and_bad_config_is_refused() {
    let registry = Registry::new();
    let router = scheduler(Vec::new(), &registry);
    let (status, body) = get(&router, "/v1/edges").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "no_edge");
    let (status, body) = get(&router, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "no_edge");

    // A registered edge without a load reading is not handed out yet.
    let t = app_token();
    let (status, _) = call(
        &router,
        Method::POST,
        "/v1/registry/edges",
        Some(&t),
        Some(registration("e1")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(&router, "/v1/edges").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 warming"),
        "{body}"
    );
    assert_eq!(
        counter(
            &registry,
            "danmaku_scheduler_refused_total",
            ("code", "no_edge")
        ),
        2
    );

    let dup = SchedulerConfig {
        static_edges: vec![edge("a", 0.1), edge("a", 0.2)],
        ..SchedulerConfig::default()
    };
    assert!(Scheduler::new(dup, &Registry::new()).is_err());
    let nan = SchedulerConfig {
        static_edges: vec![edge("a", f64::NAN)],
        ..SchedulerConfig::default()
    };
    assert!(Scheduler::new(nan, &Registry::new()).is_err());

    let router = scheduler(vec![edge("s", 0.0)], &Registry::new());
    let (status, body) = get(&router, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["healthy_edges"], 1);
}

#[tokio::test]
async fn registry_calls_need_an_app_token_and_a_sound_body() {
    let registry = Registry::new();
    let router = scheduler(Vec::new(), &registry);
    let reg = registration("edge-1");
    let post = |uri: &'static str, token: Option<String>, body: Value| {
        let router = router.clone();
        async move { call(&router, Method::POST, uri, token.as_deref(), Some(body)).await }
    };

    let wrong = TokenKey::new("not-the-secret").mint("edge-1", "app", now_secs(), 600);
    for token in [None, Some(wrong), Some("garbage".to_string())] {
        let (status, body) = post("/v1/registry/edges", token, reg.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "bad_token");
    }
    let expired = TokenKey::new(SECRET).mint("edge-1", "app", now_secs() - 100, 10);
    let (status, _) = post("/v1/registry/edges", Some(expired), reg.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let user = TokenKey::new(SECRET).mint("alice", "user", now_secs(), 600);
    let (status, body) = post("/v1/registry/edges", Some(user), reg.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");

    let t = Some(app_token());
    for (field, value) in [
        ("capacity", json!(0)),
        ("capacity", json!(100_000_000_000u64)),
        ("egress_capacity", json!(-1)),
        ("cores", json!(1_000_000)),
        ("ws", json!("ftp://x")),
    ] {
        let mut body = reg.clone();
        body[field] = value;
        let (status, answer) = post("/v1/registry/edges", t.clone(), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}");
        assert_eq!(answer["error"]["code"], "bad_registration");
        assert!(
            answer["error"]["message"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    let (status, _) = call(
        &router,
        Method::POST,
        "/v1/registry/edges",
        t.as_deref(),
        Some(json!("just a string")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        counter(
            &registry,
            "danmaku_scheduler_registrations_total",
            ("result", "refused")
        ),
        11
    );

    // Register, re-register, heartbeat, deregister.
    let (status, body) = post("/v1/registry/edges", t.clone(), reg.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["heartbeat_interval_ms"], 1000);
    let (status, _) = post("/v1/registry/edges", t.clone(), reg.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        counter(
            &registry,
            "danmaku_scheduler_registrations_total",
            ("result", "created")
        ),
        1
    );
    assert_eq!(
        counter(
            &registry,
            "danmaku_scheduler_registrations_total",
            ("result", "replaced")
        ),
        1
    );

    let hb = json!({"ready": true, "draining": false, "connections": 3, "members": 3,
                    "channels": [{"channel": "room:1", "members": 3}]});
    let (status, body) = post("/v1/registry/edges/edge-1/heartbeat", t.clone(), hb.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["online"]["room:1"], 3);
    let (status, body) = post("/v1/registry/edges/nobody/heartbeat", t.clone(), hb.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_edge");
    let (status, body) = post(
        "/v1/registry/edges/edge-1/heartbeat",
        t.clone(),
        json!({"channels": [{"channel": "lobby", "members": 1}]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_heartbeat");
    let (status, _) = post("/v1/registry/edges/edge-1/heartbeat", None, hb.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = get(&router, "/v1/channels/room:1/online").await;
    assert_eq!((status, body["online"].as_u64()), (StatusCode::OK, Some(3)));
    let (status, body) = get(&router, "/v1/channels/room:2/online").await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"channel": "room:2", "online": 0}))
    );
    let (status, body) = get(&router, "/v1/channels/lobby/online").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_channel");

    let del = |token: Option<String>| {
        let router = router.clone();
        async move {
            call(
                &router,
                Method::DELETE,
                "/v1/registry/edges/edge-1",
                token.as_deref(),
                None,
            )
            .await
        }
    };
    assert_eq!(del(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(del(t.clone()).await.0, StatusCode::NO_CONTENT);
    let (status, body) = del(t.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_edge");
    // Its members no longer count.
    let (_, body) = get(&router, "/v1/channels/room:1/online").await;
    assert_eq!(body["online"], 0);
    assert!(
        counter(
            &registry,
            "danmaku_scheduler_refused_total",
            ("code", "bad_token")
        ) >= 6
    );
    assert_eq!(
        counter(
            &registry,
            "danmaku_scheduler_refused_total",
            ("code", "unknown_edge")
        ),
        2
    );
}

#[tokio::test]
async fn without_a_secret_registration_is_off() {
    let s = Scheduler::new(SchedulerConfig::default(), &Registry::new()).unwrap();
    let router = s.control_router();
    let t = app_token();
    let (status, body) = call(
        &router,
        Method::POST,
        "/v1/registry/edges",
        Some(&t),
        Some(registration("x")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--auth-secret")
    );
}
