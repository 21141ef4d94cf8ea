//! The ingest HTTP API driven in-process with `tower::ServiceExt::oneshot`,
//! with a memory-bus subscription to see exactly what was published.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use bytes::Bytes;
use danmaku_bus::{Bus, BusError, BusMessage, MemoryBus, MemoryBusConfig, Subscription};
use danmaku_ingest::{Ingest, IngestConfig};
use danmaku_proto::token::{TokenKey, now_secs};
use danmaku_proto::{Limits, frame, now_ms, pb};
use prometheus::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    router: Router,
    registry: Registry,
    key: TokenKey,
    sub: Box<dyn Subscription>,
}

impl Harness {
    async fn new(config: IngestConfig) -> Harness {
        let bus = Arc::new(MemoryBus::new(MemoryBusConfig::default()));
        let sub = bus.subscribe_all().await.unwrap();
        Self::with_bus(config, bus, sub)
    }

    fn with_bus(config: IngestConfig, bus: Arc<dyn Bus>, sub: Box<dyn Subscription>) -> Harness {
        let registry = Registry::new();
        let key = TokenKey::new("test-secret");
        let ingest = Ingest::new(config, bus, key.clone(), &registry).unwrap();
        Harness {
            router: ingest.router(),
            registry,
            key,
            sub,
        }
    }

    fn token(&self, user: &str) -> String {
        self.key.mint(user, "user", now_secs(), 3600)
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {bytes:?}"));
        (status, headers, body)
    }

    /// Sends and expects a refusal: returns the status and the JSON error code.
    async fn refused(&self, req: Request<Body>) -> (StatusCode, String) {
        let (status, headers, body) = self.send(req).await;
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"));
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{body}");
        (status, code.to_owned())
    }

    async fn next_published(&mut self) -> (BusMessage, pb::BusEvent) {
        let msg = tokio::time::timeout(Duration::from_secs(2), self.sub.recv())
            .await
            .expect("something was published")
            .unwrap();
        let event = frame::decode_bus_event(&msg.payload, &Limits::default()).unwrap();
        (msg, event)
    }

    async fn nothing_published(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(50), self.sub.recv()).await;
        assert!(r.is_err(), "unexpected publish: {r:?}");
    }

    /// Value of a counter (or histogram sample count) with these labels.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = self.registry.gather();
        let Some(family) = families.iter().find(|f| f.name() == name) else {
            return 0.0;
        };
        family
            .get_metric()
            .iter()
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| {
                if m.get_histogram().get_sample_count() > 0 {
                    m.get_histogram().get_sample_count() as f64
                } else {
                    m.get_counter().get_value()
                }
            })
            .sum()
    }
}

fn post(channel: &str, token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut req = Request::post(format!("/v1/channels/{channel}/messages"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(body.into()).unwrap()
}

fn danmaku(text: &str) -> String {
    json!({"kind": "danmaku", "text": text}).to_string()
}

#[tokio::test]
async fn danmaku_is_published_keyed_by_channel_as_the_token_user() {
    let mut h = Harness::new(IngestConfig {
        node_id: "ingest-7".into(),
        ..IngestConfig::default()
    })
    .await;
    let token = h.token("alice");
    let body = json!({
        "kind": "danmaku", "text": "弹幕 hello", "client_msg_id": "m-1",
        "payload": {"color": "#ff0000"},
        "sender": "mallory"
    });
    let before = now_ms();
    let (status, _, reply) = h
        .send(post("room:42", Some(&token), body.to_string()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(reply, json!({"accepted": true}));

    let (msg, bus_event) = h.next_published().await;
    assert_eq!(msg.key, Bytes::from_static(b"room:42"));
    assert_eq!(bus_event.version, danmaku_proto::PROTOCOL_VERSION);
    assert_eq!(bus_event.channel, "room:42");
    assert_eq!(bus_event.origin, "ingest-7");
    let event = bus_event.event.unwrap();
    assert_eq!(event.kind(), pb::Kind::Danmaku);
    assert_eq!(
        event.sender, "alice",
        "the sender comes from the token, not the body"
    );
    assert_eq!(event.text, "弹幕 hello");
    assert_eq!(event.client_msg_id, "m-1");
    assert_eq!(event.seq, 0);
    let payload: Value = serde_json::from_str(&event.payload_json).unwrap();
    assert_eq!(payload, json!({"color": "#ff0000"}));
    assert!(
        event.ts_ms >= before && event.ts_ms <= now_ms(),
        "{}",
        event.ts_ms
    );

    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "danmaku"), ("status", "202")]
        ),
        1.0
    );
    assert_eq!(h.metric("danmaku_ingest_publish_latency_seconds", &[]), 1.0);
    assert_eq!(
        h.metric("danmaku_ingest_published_bytes_total", &[]),
        msg.payload.len() as f64
    );
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let cases = [
        (None, "missing_token"),
        (Some("not-a-token".to_owned()), "bad_token"),
        (
            Some(TokenKey::new("other").mint("alice", "user", now_secs(), 60)),
            "bad_token",
        ),
        (
            Some(h.key.mint("alice", "user", now_secs() - 100, 10)),
            "token_expired",
        ),
    ];
    for (token, want) in cases {
        let (status, code) = h
            .refused(post("room:1", token.as_deref(), danmaku("hi")))
            .await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, want));
    }
    let basic = Request::post("/v1/channels/room:1/messages")
        .header(header::AUTHORIZATION, "Basic YWxpY2U6cHc=")
        .body(Body::from(danmaku("hi")))
        .unwrap();
    assert_eq!(
        h.refused(basic).await,
        (StatusCode::UNAUTHORIZED, "bad_token".into())
    );
    h.nothing_published().await;
    assert_eq!(
        h.metric("danmaku_ingest_rejected_total", &[("code", "bad_token")]),
        3.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_rejected_total",
            &[("code", "token_expired")]
        ),
        1.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "unknown"), ("status", "401")]
        ),
        5.0
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_status_and_code() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let t = h.token("alice");
    let t = Some(t.as_str());
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post("lobby:1", t, danmaku("hi")),
            StatusCode::BAD_REQUEST,
            "bad_channel",
        ),
        (
            post("room:a%20b", t, danmaku("hi")),
            StatusCode::BAD_REQUEST,
            "bad_channel",
        ),
        (
            post("room:%FF", t, danmaku("hi")),
            StatusCode::BAD_REQUEST,
            "bad_channel",
        ),
        (
            post("room:1", t, danmaku(&"x".repeat(9000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            post("room:1", t, danmaku(&"长".repeat(201))),
            StatusCode::BAD_REQUEST,
            "text_too_long",
        ),
        (
            post("room:1", t, danmaku("")),
            StatusCode::BAD_REQUEST,
            "empty_text",
        ),
        (
            post("room:1", t, json!({"kind": "danmaku"}).to_string()),
            StatusCode::BAD_REQUEST,
            "empty_text",
        ),
        (
            post(
                "room:1",
                t,
                &b"{\"kind\":\"danmaku\",\"text\":\"\xff\xfe\"}"[..],
            ),
            StatusCode::BAD_REQUEST,
            "bad_utf8",
        ),
        (
            post("room:1", t, "{not json"),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (post("room:1", t, ""), StatusCode::BAD_REQUEST, "bad_json"),
        (
            post(
                "room:1",
                t,
                json!({"kind": "danmaku", "text": 5}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            post(
                "room:1",
                t,
                json!({"kind": "like", "text": "hi"}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "bad_kind",
        ),
        (
            post(
                "room:1",
                t,
                json!({"kind": "danmaku", "text": "hi", "payload": [1]}).to_string(),
            ),
            StatusCode::BAD_REQUEST,
            "bad_payload",
        ),
    ];
    for (req, want_status, want_code) in cases {
        let uri = req.uri().clone();
        let (status, code) = h.refused(req).await;
        assert_eq!((status, code.as_str()), (want_status, want_code), "{uri}");
    }
    h.nothing_published().await;
    for code in [
        "bad_channel",
        "body_too_large",
        "text_too_long",
        "bad_utf8",
        "bad_json",
        "bad_kind",
    ] {
        assert!(
            h.metric("danmaku_ingest_rejected_total", &[("code", code)]) >= 1.0,
            "{code}"
        );
    }
    assert_eq!(
        h.metric("danmaku_ingest_requests_total", &[("status", "413")]),
        1.0
    );
}

#[tokio::test]
async fn oversize_body_without_content_length_is_413() {
    let h = Harness::new(IngestConfig {
        max_body_bytes: 64,
        ..IngestConfig::default()
    })
    .await;
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 16]))),
    );
    let req = post("room:1", Some(&h.token("alice")), Body::from_stream(chunks));
    assert!(req.headers().get(header::CONTENT_LENGTH).is_none());
    assert_eq!(
        h.refused(req).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large".into())
    );
}

#[tokio::test]
async fn a_flooding_user_gets_429_with_retry_after() {
    let mut h = Harness::new(IngestConfig {
        user_rate_per_sec: 1.0,
        user_burst: 3,
        ..IngestConfig::default()
    })
    .await;
    let flooder = h.token("flooder");
    for _ in 0..3 {
        let (status, _, _) = h
            .send(post("room:1", Some(&flooder), danmaku("spam")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, headers, body) = h
        .send(post("room:1", Some(&flooder), danmaku("spam")))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry_after: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    // Someone else in the same room is not punished for it.
    let (status, _, _) = h
        .send(post("room:1", Some(&h.token("bob")), danmaku("hi")))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    for _ in 0..3 {
        h.next_published().await;
    }
    let (_, last) = h.next_published().await;
    assert_eq!(last.event.unwrap().sender, "bob");
    h.nothing_published().await;
    assert_eq!(
        h.metric("danmaku_ingest_rate_limited_total", &[("scope", "user")]),
        1.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "danmaku"), ("status", "429")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_hot_channel_is_limited_across_users() {
    let h = Harness::new(IngestConfig {
        channel_rate_per_sec: 2.0,
        ..IngestConfig::default()
    })
    .await;
    for user in ["a", "b"] {
        let (status, _, _) = h
            .send(post("room:hot", Some(&h.token(user)), danmaku("x")))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, headers, _) = h
        .send(post("room:hot", Some(&h.token("c")), danmaku("x")))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key(header::RETRY_AFTER));
    let (status, _, _) = h
        .send(post("room:cold", Some(&h.token("c")), danmaku("x")))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        h.metric("danmaku_ingest_rate_limited_total", &[("scope", "channel")]),
        1.0
    );
}

#[tokio::test]
async fn reliable_kinds_are_not_implemented_yet() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let t = h.token("alice");
    for kind in ["gift", "chat"] {
        let body = json!({"kind": kind, "text": "rocket", "payload": {"gift_id": 1}});
        let (status, code) = h.refused(post("room:1", Some(&t), body.to_string())).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_IMPLEMENTED, "not_implemented")
        );
    }
    h.nothing_published().await;
    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "gift"), ("status", "501")]
        ),
        1.0
    );
}

/// A bus that is down.
struct DownBus;

#[async_trait]
impl Bus for DownBus {
    async fn publish(&self, _key: Bytes, _payload: Bytes) -> Result<(), BusError> {
        Err(BusError::Unavailable("broker unreachable".into()))
    }
    async fn subscribe_all(&self) -> Result<Box<dyn Subscription>, BusError> {
        Err(BusError::Unavailable("broker unreachable".into()))
    }
    fn kind(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn bus_outage_is_503() {
    let idle = MemoryBus::new(MemoryBusConfig::default());
    let h = Harness::with_bus(
        IngestConfig::default(),
        Arc::new(DownBus),
        idle.subscribe_all().await.unwrap(),
    );
    let (status, code) = h
        .refused(post("room:1", Some(&h.token("alice")), danmaku("hi")))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "bus_unavailable")
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_rejected_total",
            &[("code", "bus_unavailable")]
        ),
        1.0
    );
    assert_eq!(h.metric("danmaku_ingest_published_bytes_total", &[]), 0.0);
}

fn dev_token_request(body: Value) -> Request<Body> {
    Request::post("/v1/dev/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn dev_tokens_only_when_enabled() {
    let off = Harness::new(IngestConfig::default()).await;
    let (status, code) = off
        .refused(dev_token_request(json!({"user": "alice"})))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    let mut on = Harness::new(IngestConfig {
        dev_tokens: true,
        ..IngestConfig::default()
    })
    .await;
    let (status, _, body) = on
        .send(dev_token_request(json!({"user": "carol", "role": "app"})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = body["token"].as_str().unwrap().to_owned();
    let claims = on.key.verify(&token, now_secs()).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.role.as_str()),
        ("carol", "app")
    );
    assert!(claims.exp >= now_secs() + 86_000);

    let (status, _, _) = on.send(post("room:1", Some(&token), danmaku("hi"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(on.next_published().await.1.event.unwrap().sender, "carol");

    for (body, want) in [
        (json!({"user": "a b"}), "bad_user"),
        (json!({"user": ""}), "bad_user"),
        (json!({"user": "x".repeat(65)}), "bad_user"),
        (json!({"user": "alice", "role": "admin"}), "bad_role"),
        (json!({"name": "alice"}), "bad_json"),
    ] {
        let (status, code) = on.refused(dev_token_request(body)).await;
        assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, want));
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let h = Harness::new(IngestConfig::default()).await;
    let req = Request::get("/v1/nope").body(Body::empty()).unwrap();
    assert_eq!(
        h.refused(req).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let req = Request::delete("/v1/channels/room:1/messages")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        h.refused(req).await,
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
}
