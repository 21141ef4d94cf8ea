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
use danmaku_store::{Appended, Member, NewMessage, Store, StoreError, StoredMessage, Unread};
use prometheus::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

/// One ingest node on its own memory bus and its own embedded store (a fresh
/// temporary file per harness, so tests never share state).
struct Harness {
    router: Router,
    registry: Registry,
    key: TokenKey,
    sub: Box<dyn Subscription>,
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn new(config: IngestConfig) -> Harness {
        let bus = Arc::new(MemoryBus::new(MemoryBusConfig::default()));
        let sub = bus.subscribe_all().await.unwrap();
        Self::with_bus(config, bus, sub).await
    }

    async fn with_bus(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        sub: Box<dyn Subscription>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("embedded:{}", dir.path().join("danmaku.db").display());
        let store = danmaku_store::connect(&url).await.unwrap();
        Self::with_parts(config, bus, sub, store, Some(dir))
    }

    fn with_parts(
        config: IngestConfig,
        bus: Arc<dyn Bus>,
        sub: Box<dyn Subscription>,
        store: Arc<dyn Store>,
        dir: Option<tempfile::TempDir>,
    ) -> Harness {
        let registry = Registry::new();
        let key = TokenKey::new("test-secret");
        let ingest = Ingest::new(config, bus, store.clone(), key.clone(), &registry).unwrap();
        Harness {
            router: ingest.router(),
            registry,
            key,
            sub,
            store,
            _dir: dir,
        }
    }

    fn token(&self, user: &str) -> String {
        self.key.mint(user, "user", now_secs(), 3600)
    }

    /// A token of the app backend (role `app`), which manages membership.
    fn app_token(&self) -> String {
        self.key.mint("backend", "app", now_secs(), 3600)
    }

    /// Posts and expects 200 with a seq.
    async fn post_reliable(&self, channel: &str, user: &str, body: Value) -> u64 {
        let (status, _, reply) = self
            .send(post(channel, Some(&self.token(user)), body.to_string()))
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["seq"].as_u64().unwrap_or_else(|| panic!("{reply}"))
    }

    /// The app backend adds `user` to `group`; returns `joined_seq`.
    async fn join(&self, group: &str, user: &str) -> u64 {
        let (status, _, reply) = self
            .send(member_request("PUT", group, user, Some(&self.app_token())))
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        reply["joined_seq"].as_u64().unwrap()
    }

    /// `GET` with the user's token; expects 200.
    async fn get_ok(&self, uri: &str, user: &str) -> Value {
        let (status, _, reply) = self.send(get(uri, Some(&self.token(user)))).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {reply}");
        reply
    }

    /// The seqs of a history page and its `next_after_seq`.
    async fn history(&self, channel: &str, user: &str, query: &str) -> (Vec<u64>, u64) {
        let reply = self
            .get_ok(&format!("/v1/channels/{channel}/messages?{query}"), user)
            .await;
        let seqs = reply["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        (seqs, reply["next_after_seq"].as_u64().unwrap())
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

fn get(uri: &str, token: Option<&str>) -> Request<Body> {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Body::empty()).unwrap()
}

fn member_request(method: &str, group: &str, user: &str, token: Option<&str>) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("/v1/groups/{group}/members/{user}"));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(Body::empty()).unwrap()
}

fn ack_request(channel: &str, token: &str, seq: u64) -> Request<Body> {
    Request::post(format!("/v1/channels/{channel}/ack"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(json!({ "seq": seq }).to_string()))
        .unwrap()
}

fn gift(text: &str) -> Value {
    json!({"kind": "gift", "text": text, "payload": {"gift_id": 7}})
}

fn chat(text: &str) -> Value {
    json!({"kind": "chat", "text": text})
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
    let id = reply["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id.len(), 27, "a danmaku id: {reply}");
    assert_eq!(reply, json!({"accepted": true, "id": id}));

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
    assert_eq!(event.id, id, "the event carries the id the 202 answered");
    assert!(!event.priority, "a user token's danmaku is not priority");
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
    )
    .await;
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
    // Dev tokens are user tokens: an app token (group management) is refused.
    let (status, code) = on
        .refused(dev_token_request(json!({"user": "carol", "role": "app"})))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "role_not_allowed")
    );
    assert_eq!(
        on.metric(
            "danmaku_ingest_rejected_total",
            &[("code", "role_not_allowed")]
        ),
        1.0
    );
    let (status, _, body) = on.send(dev_token_request(json!({"user": "carol"}))).await;
    assert_eq!(status, StatusCode::OK);
    let token = body["token"].as_str().unwrap().to_owned();
    let claims = on.key.verify(&token, now_secs()).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.role.as_str()),
        ("carol", "user")
    );
    assert_eq!(body["role"], "user");
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
async fn dev_app_tokens_only_with_their_flag() {
    let on = Harness::new(IngestConfig {
        dev_tokens: true,
        dev_app_tokens: true,
        ..IngestConfig::default()
    })
    .await;
    let (status, _, body) = on
        .send(dev_token_request(json!({"user": "backend", "role": "app"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(on.key.verify(&token, now_secs()).unwrap().role, "app");
    // ... and it manages groups.
    let (status, _, reply) = on
        .send(member_request("PUT", "group:1", "alice", Some(&token)))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
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

#[tokio::test]
async fn gifts_are_persisted_then_published_with_their_seq() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let before = now_ms();
    for want in 1..=3 {
        let seq = h.post_reliable("room:1", "alice", gift("rocket")).await;
        assert_eq!(seq, want);
        let (msg, bus_event) = h.next_published().await;
        assert_eq!(msg.key, Bytes::from_static(b"room:1"));
        let event = bus_event.event.unwrap();
        assert_eq!(event.kind(), pb::Kind::Gift);
        assert_eq!(event.seq, want);
        assert_eq!(event.sender, "alice");
        assert_eq!(event.text, "rocket");
        assert!(event.ts_ms >= before && event.ts_ms <= now_ms());
        let payload: Value = serde_json::from_str(&event.payload_json).unwrap();
        assert_eq!(payload, json!({"gift_id": 7}));
    }
    // Another channel has its own seq.
    assert_eq!(h.post_reliable("room:2", "bob", gift("car")).await, 1);
    assert_eq!(h.next_published().await.1.event.unwrap().seq, 1);
    h.nothing_published().await;

    let stored = h.store.read_after("room:1", 0, 10).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].kind, "gift");
    assert_eq!(stored[0].payload_json.as_deref(), Some(r#"{"gift_id":7}"#));

    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "gift"), ("status", "200")]
        ),
        4.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_reliable_persisted_total",
            &[("kind", "gift")]
        ),
        4.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_store_op_seconds",
            &[("op", "append"), ("backend", "embedded")]
        ),
        4.0
    );
    assert_eq!(
        h.metric("danmaku_ingest_reliable_duplicates_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_repeated_client_msg_id_answers_the_first_seq_and_is_published_again() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let first = json!({"kind": "gift", "text": "rocket", "client_msg_id": "g-1"});
    assert_eq!(h.post_reliable("room:1", "alice", first.clone()).await, 1);
    let original = h.next_published().await.1.event.unwrap();
    assert_eq!(original.client_msg_id, "g-1");

    assert_eq!(h.post_reliable("room:1", "alice", gift("other")).await, 2);
    h.next_published().await;

    // The identical resend gets seq 1 and republishes what was stored.
    assert_eq!(h.post_reliable("room:1", "alice", first).await, 1);
    let again = h.next_published().await.1.event.unwrap();
    assert_eq!(again, original);
    h.nothing_published().await;

    assert_eq!(h.store.last_seq("room:1").await.unwrap(), 2);
    assert_eq!(
        h.metric("danmaku_ingest_reliable_duplicates_total", &[]),
        1.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_reliable_persisted_total",
            &[("kind", "gift")]
        ),
        2.0
    );
}

/// The gift-loss bug: bob reusing alice's `client_msg_id` used to get alice's
/// seq back while his own gift was never stored.
#[tokio::test]
async fn another_senders_gift_with_the_same_client_msg_id_is_stored() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let alice = json!({"kind": "gift", "text": "rocket", "client_msg_id": "x"});
    let bob = json!({"kind": "gift", "text": "castle", "client_msg_id": "x"});
    assert_eq!(h.post_reliable("room:1", "alice", alice).await, 1);
    let a = h.next_published().await.1.event.unwrap();
    assert_eq!(h.post_reliable("room:1", "bob", bob.clone()).await, 2);
    let b = h.next_published().await.1.event.unwrap();
    assert_eq!((a.sender.as_str(), a.seq), ("alice", 1));
    assert_eq!(
        (b.sender.as_str(), b.text.as_str(), b.seq),
        ("bob", "castle", 2)
    );
    // Bob's own retry is his duplicate.
    assert_eq!(h.post_reliable("room:1", "bob", bob).await, 2);

    let history = h.get_ok("/v1/channels/room:1/messages", "carol").await;
    let got: Vec<(String, String)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["sender"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("alice".to_owned(), "rocket".to_owned()),
            ("bob".to_owned(), "castle".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_reused_client_msg_id_with_another_body_is_409() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let first = json!({"kind": "gift", "text": "rocket", "client_msg_id": "g-1",
                       "payload": {"gift_id": 7}});
    assert_eq!(h.post_reliable("room:1", "alice", first.clone()).await, 1);
    h.next_published().await;

    for changed in [
        json!({"kind": "gift", "text": "castle", "client_msg_id": "g-1", "payload": {"gift_id": 7}}),
        json!({"kind": "gift", "text": "rocket", "client_msg_id": "g-1", "payload": {"gift_id": 8}}),
        json!({"kind": "gift", "text": "rocket", "client_msg_id": "g-1"}),
    ] {
        let (status, _, body) = h
            .send(post("room:1", Some(&h.token("alice")), changed.to_string()))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "idempotency_conflict", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("seq 1") && message.contains("g-1"),
            "{message}"
        );
    }
    h.nothing_published().await;
    assert_eq!(h.store.last_seq("room:1").await.unwrap(), 1);
    assert_eq!(
        h.metric(
            "danmaku_ingest_rejected_total",
            &[("code", "idempotency_conflict")]
        ),
        3.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "gift"), ("status", "409")]
        ),
        3.0
    );
    // A conflict is the client's mistake, not a store failure.
    assert_eq!(h.metric("danmaku_ingest_store_errors_total", &[]), 0.0);
    // The identical retry (payload keys in another order) still answers seq 1.
    let reordered = json!({"payload": {"gift_id": 7}, "client_msg_id": "g-1",
                           "text": "rocket", "kind": "gift"});
    assert_eq!(h.post_reliable("room:1", "alice", reordered).await, 1);
}

#[tokio::test]
async fn chat_needs_a_group_and_groups_need_membership() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let alice = h.token("alice");
    let (status, code) = h
        .refused(post("room:1", Some(&alice), chat("hi").to_string()))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "chat_needs_group")
    );
    for body in [
        chat("hi").to_string(),
        gift("rose").to_string(),
        danmaku("hi"),
    ] {
        let (status, code) = h.refused(post("group:7", Some(&alice), body)).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "not_member")
        );
    }
    h.nothing_published().await;
    assert_eq!(h.store.last_seq("group:7").await.unwrap(), 0);

    assert_eq!(h.join("group:7", "alice").await, 0);
    assert_eq!(h.post_reliable("group:7", "alice", chat("hi")).await, 1);
    let event = h.next_published().await.1.event.unwrap();
    assert_eq!((event.kind(), event.seq), (pb::Kind::Chat, 1));
    let (status, _, _) = h.send(post("group:7", Some(&alice), danmaku("hi"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(h.next_published().await.1.event.unwrap().seq, 0);

    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "chat"), ("status", "403")]
        ),
        1.0
    );
    assert_eq!(
        h.metric("danmaku_ingest_rejected_total", &[("code", "not_member")]),
        3.0
    );
}

#[tokio::test]
async fn history_pages_oldest_first() {
    let h = Harness::new(IngestConfig::default()).await;
    for i in 1..=5 {
        h.post_reliable("room:h", "alice", gift(&format!("g{i}")))
            .await;
    }
    assert_eq!(h.history("room:h", "bob", "limit=2").await, (vec![1, 2], 2));
    assert_eq!(
        h.history("room:h", "bob", "after_seq=2&limit=2").await,
        (vec![3, 4], 4)
    );
    assert_eq!(
        h.history("room:h", "bob", "after_seq=4&limit=2").await,
        (vec![5], 5)
    );
    assert_eq!(h.history("room:h", "bob", "after_seq=5").await, (vec![], 5));
    assert_eq!(h.history("room:none", "bob", "").await, (vec![], 0));

    let page = h.get_ok("/v1/channels/room:h/messages", "bob").await;
    let first = &page["messages"][0];
    assert_eq!(first["kind"], "gift");
    assert_eq!(first["sender"], "alice");
    assert_eq!(first["text"], "g1");
    assert_eq!(first["payload"], json!({"gift_id": 7}));
    assert!(first["ts_ms"].as_i64().unwrap() > 0);

    for query in ["after_seq=-1", "after_seq=x", "limit=0", "limit=abc"] {
        let uri = format!("/v1/channels/room:h/messages?{query}");
        let (status, code) = h.refused(get(&uri, Some(&h.token("bob")))).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, "bad_query")
        );
    }
    let (status, code) = h.refused(get("/v1/channels/room:h/messages", None)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );
    let (status, code) = h
        .refused(get("/v1/channels/lobby:1/messages", Some(&h.token("bob"))))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "bad_channel")
    );
    assert!(
        h.metric(
            "danmaku_ingest_store_op_seconds",
            &[("op", "read"), ("backend", "embedded")]
        ) >= 5.0
    );
}

#[tokio::test]
async fn a_member_sees_only_messages_after_joining() {
    let h = Harness::new(IngestConfig::default()).await;
    h.join("group:g", "alice").await;
    for i in 1..=3 {
        h.post_reliable("group:g", "alice", chat(&format!("c{i}")))
            .await;
    }
    assert_eq!(h.join("group:g", "bob").await, 3);
    assert_eq!(
        h.join("group:g", "bob").await,
        3,
        "joining again keeps joined_seq"
    );
    assert_eq!(h.post_reliable("group:g", "bob", chat("c4")).await, 4);

    assert_eq!(h.history("group:g", "bob", "").await, (vec![4], 4));
    assert_eq!(
        h.history("group:g", "bob", "after_seq=1").await,
        (vec![4], 4)
    );
    assert_eq!(
        h.history("group:g", "alice", "").await,
        (vec![1, 2, 3, 4], 4)
    );
    let (status, code) = h
        .refused(get(
            "/v1/channels/group:g/messages",
            Some(&h.token("carol")),
        ))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "not_member")
    );
}

#[tokio::test]
async fn acks_move_unread_counts() {
    let h = Harness::new(IngestConfig::default()).await;
    let bob = h.token("bob");
    assert_eq!(
        h.get_ok("/v1/unread", "bob").await,
        json!({"total": 0, "channels": {}})
    );
    h.join("group:u", "alice").await;
    h.join("group:u", "bob").await;
    for i in 1..=3 {
        h.post_reliable("group:u", "alice", chat(&format!("c{i}")))
            .await;
    }
    assert_eq!(
        h.get_ok("/v1/unread", "bob").await,
        json!({"total": 3, "channels": {"group:u": 3}})
    );

    let (status, _, reply) = h.send(ack_request("group:u", &bob, 2)).await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"acked": 2})));
    assert_eq!(
        h.get_ok("/v1/unread", "bob").await,
        json!({"total": 1, "channels": {"group:u": 1}})
    );
    // Never backwards, never past the last seq.
    let (_, _, reply) = h.send(ack_request("group:u", &bob, 1)).await;
    assert_eq!(reply, json!({"acked": 2}));
    let (_, _, reply) = h.send(ack_request("group:u", &bob, 99)).await;
    assert_eq!(reply, json!({"acked": 3}));
    assert_eq!(
        h.get_ok("/v1/unread", "bob").await,
        json!({"total": 0, "channels": {"group:u": 0}})
    );

    // A room has no members: anyone may ack it, and it then counts.
    h.post_reliable("room:r", "alice", gift("rose")).await;
    let (status, _, reply) = h.send(ack_request("room:r", &bob, 0)).await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"acked": 0})));
    assert_eq!(h.get_ok("/v1/unread", "bob").await["total"], 1);

    // A room without reliable messages (any name a client makes up) stores nothing:
    // acks cannot grow the table or /v1/unread without bound.
    for i in 0..20 {
        let (status, code) = h
            .refused(ack_request(&format!("room:made-up-{i}"), &bob, 1))
            .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "unknown_channel")
        );
    }
    assert_eq!(
        h.get_ok("/v1/unread", "bob").await,
        json!({"total": 1, "channels": {"group:u": 0, "room:r": 1}})
    );
    assert_eq!(h.store.acked("bob", "room:made-up-0").await.unwrap(), 0);
    assert_eq!(
        h.metric(
            "danmaku_ingest_rejected_total",
            &[("code", "unknown_channel")]
        ),
        20.0
    );

    let (status, code) = h
        .refused(ack_request("group:u", &h.token("carol"), 1))
        .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "not_member")
    );
    let bad = Request::post("/v1/channels/group:u/ack")
        .header(header::AUTHORIZATION, format!("Bearer {bob}"))
        .body(Body::from(r#"{"seq":-1}"#))
        .unwrap();
    assert_eq!(
        h.refused(bad).await,
        (StatusCode::BAD_REQUEST, "bad_json".into())
    );
    let (status, code) = h.refused(get("/v1/unread", None)).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "missing_token")
    );
    for op in ["ack", "unread", "membership"] {
        assert!(
            h.metric(
                "danmaku_ingest_store_op_seconds",
                &[("op", op), ("backend", "embedded")]
            ) >= 1.0,
            "{op}"
        );
    }
}

#[tokio::test]
async fn membership_is_for_app_tokens_only() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let app = h.app_token();
    let user = h.token("alice");
    for method in ["PUT", "DELETE"] {
        let (status, code) = h
            .refused(member_request(method, "group:m", "alice", Some(&user)))
            .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        let (status, code) = h
            .refused(member_request(method, "group:m", "alice", None))
            .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::UNAUTHORIZED, "missing_token")
        );
    }
    for (group, user, want) in [
        ("room:1", "alice", "bad_channel"),
        ("lobby:1", "alice", "bad_channel"),
        ("group:m", "a%20b", "bad_user"),
        ("group:m", "a:b", "bad_user"),
    ] {
        let (status, code) = h
            .refused(member_request("PUT", group, user, Some(&app)))
            .await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::BAD_REQUEST, want),
            "{group} {user}"
        );
    }
    assert!(h.store.members("group:m").await.unwrap().is_empty());

    let (status, _, reply) = h
        .send(member_request("DELETE", "group:m", "alice", Some(&app)))
        .await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"removed": false})));
    assert_eq!(h.join("group:m", "alice").await, 0);
    assert_eq!(
        h.store.is_member("group:m", "alice").await.unwrap(),
        Some(0)
    );
    let (status, _, reply) = h
        .send(member_request("DELETE", "group:m", "alice", Some(&app)))
        .await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"removed": true})));
    assert_eq!(h.store.is_member("group:m", "alice").await.unwrap(), None);
    // Each DELETE told the edges (keyed by the group), the retry included.
    for _ in 0..2 {
        let (msg, ev) = h.next_published().await;
        assert_eq!(&msg.key[..], b"group:m");
        assert_eq!(ev.event, None);
        assert_eq!(
            ev.membership,
            Some(pb::Membership {
                user: "alice".into(),
                removed: true
            })
        );
    }
    h.nothing_published().await;
}

#[tokio::test]
async fn a_bus_outage_after_persisting_says_so_and_a_retry_gets_the_same_seq() {
    let idle = MemoryBus::new(MemoryBusConfig::default());
    let h = Harness::with_bus(
        IngestConfig::default(),
        Arc::new(DownBus),
        idle.subscribe_all().await.unwrap(),
    )
    .await;
    let body = json!({"kind": "gift", "text": "rocket", "client_msg_id": "g-1"});
    for _ in 0..2 {
        let (status, _, reply) = h
            .send(post("room:1", Some(&h.token("alice")), body.to_string()))
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply["error"]["code"], "bus_unavailable");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("persisted as seq 1") && message.contains("client_msg_id"),
            "{message}"
        );
    }
    let stored = h.store.read_after("room:1", 0, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        h.metric("danmaku_ingest_reliable_duplicates_total", &[]),
        1.0
    );
}

/// A store that is down: every call fails as unavailable. A test double for
/// the failure path only (the real backends run the store's contract suite).
struct DownStore;

fn down<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("database unreachable".into()))
}

#[async_trait]
impl Store for DownStore {
    fn backend(&self) -> &'static str {
        "down"
    }
    async fn ping(&self) -> Result<(), StoreError> {
        down()
    }
    async fn append(&self, _: NewMessage) -> Result<Appended, StoreError> {
        down()
    }
    async fn read_after(
        &self,
        _: &str,
        _: u64,
        _: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        down()
    }
    async fn last_seq(&self, _: &str) -> Result<u64, StoreError> {
        down()
    }
    async fn join_group(&self, _: &str, _: &str) -> Result<u64, StoreError> {
        down()
    }
    async fn leave_group(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        down()
    }
    async fn is_member(&self, _: &str, _: &str) -> Result<Option<u64>, StoreError> {
        down()
    }
    async fn members(&self, _: &str) -> Result<Vec<Member>, StoreError> {
        down()
    }
    async fn ack(&self, _: &str, _: &str, _: u64) -> Result<u64, StoreError> {
        down()
    }
    async fn acked(&self, _: &str, _: &str) -> Result<u64, StoreError> {
        down()
    }
    async fn unread(&self, _: &str) -> Result<Unread, StoreError> {
        down()
    }
    async fn moderate(&self, _: &danmaku_store::ModerationAction) -> Result<bool, StoreError> {
        down()
    }
    async fn policy(&self, _: &str, _: i64) -> Result<danmaku_store::Policy, StoreError> {
        down()
    }
    async fn policy_scopes(&self, _: i64) -> Result<Vec<String>, StoreError> {
        down()
    }
    async fn moderation_head(&self) -> Result<u64, StoreError> {
        down()
    }
    async fn moderation_log(
        &self,
        _: &str,
        _: usize,
    ) -> Result<Vec<danmaku_store::AuditEntry>, StoreError> {
        down()
    }

    async fn bans(&self, _: i64) -> Result<Vec<danmaku_store::Ban>, StoreError> {
        down()
    }

    async fn retracted(&self, _: &str, _: u64, _: u64) -> Result<Vec<u64>, StoreError> {
        down()
    }
    async fn record_account_change(&self, _: &pb::AccountChange) -> Result<(), StoreError> {
        down()
    }
    async fn account_changes(&self, _: u64) -> Result<Vec<pb::AccountChange>, StoreError> {
        down()
    }
    async fn purge_account_changes(&self, _: u64) -> Result<u64, StoreError> {
        down()
    }
}

#[tokio::test]
async fn a_store_outage_is_503_and_nothing_is_acknowledged() {
    let bus = Arc::new(MemoryBus::new(MemoryBusConfig::default()));
    let sub = bus.subscribe_all().await.unwrap();
    let mut h = Harness::with_parts(IngestConfig::default(), bus, sub, Arc::new(DownStore), None);
    let alice = h.token("alice");
    let unavailable = (
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable".to_owned(),
    );
    assert_eq!(
        h.refused(post("room:1", Some(&alice), gift("rocket").to_string()))
            .await,
        unavailable
    );
    assert_eq!(
        h.refused(post("group:1", Some(&alice), danmaku("hi")))
            .await,
        unavailable
    );
    h.nothing_published().await;
    assert_eq!(
        h.refused(get("/v1/channels/room:1/messages", Some(&alice)))
            .await,
        unavailable
    );
    assert_eq!(
        h.refused(ack_request("room:1", &alice, 1)).await,
        unavailable
    );
    assert_eq!(
        h.refused(get("/v1/unread", Some(&alice))).await,
        unavailable
    );
    assert_eq!(
        h.refused(member_request(
            "PUT",
            "group:1",
            "bob",
            Some(&h.app_token())
        ))
        .await,
        unavailable
    );
    // The danmaku lane in a room does not need the store.
    let (status, _, _) = h.send(post("room:1", Some(&alice), danmaku("hi"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    for op in ["append", "membership", "read", "ack", "unread"] {
        assert_eq!(
            h.metric("danmaku_ingest_store_errors_total", &[("op", op)]),
            if op == "membership" { 2.0 } else { 1.0 },
            "{op}"
        );
    }
    assert_eq!(
        h.metric(
            "danmaku_ingest_requests_total",
            &[("kind", "gift"), ("status", "503")]
        ),
        1.0
    );
    assert_eq!(
        h.metric(
            "danmaku_ingest_store_op_seconds",
            &[("op", "append"), ("backend", "down")]
        ),
        1.0
    );
}

/// A revocation request of the app backend.
fn revocation(token: &str, body: Value) -> Request<Body> {
    Request::post("/v1/admin/revocations")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn account_changes_are_stored_applied_here_and_announced() {
    let mut h = Harness::new(IngestConfig::default()).await;
    let now = now_secs();
    let alice = h.key.mint_with_id("alice", "user", now, 3600, "alice-1");
    let (status, _, _) = h.send(post("room:1", Some(&alice), danmaku("hi"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.next_published().await;
    let (status, _, answer) = h
        .send(revocation(
            &h.app_token(),
            json!({"jti": "alice-1", "expire_at": now + 3600}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"jti": "alice-1", "expire_at": now + 3600}));
    // Announced under the account key, for the other ingests and every edge.
    let (msg, event) = h.next_published().await;
    assert_eq!(msg.key.as_ref(), b"!account");
    assert_eq!(event.channel, "");
    assert!(event.event.is_none());
    let change = event.account.expect("an account change");
    assert!(change.at_ms > 0);
    // Refused here at once, on every authenticated call; stored for restarts.
    let refused = (StatusCode::UNAUTHORIZED, "token_revoked".to_owned());
    assert_eq!(
        h.refused(post("room:1", Some(&alice), danmaku("hi"))).await,
        refused
    );
    assert_eq!(h.refused(get("/v1/unread", Some(&alice))).await, refused);
    assert_eq!(h.store.account_changes(now).await.unwrap().len(), 1);
    // Blocked: 403 until lifted.
    let bob = h.token("bob");
    let block = Request::put("/v1/users/bob/block")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.app_token()))
        .body(Body::empty())
        .unwrap();
    let (status, _, answer) = h.send(block).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer,
        json!({"user": "bob", "blocked": true, "until": null})
    );
    assert_eq!(
        h.refused(post("room:1", Some(&bob), danmaku("hi"))).await,
        (StatusCode::FORBIDDEN, "user_blocked".to_owned())
    );
    let unblock = Request::delete("/v1/users/bob/block")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.app_token()))
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.send(unblock).await.0, StatusCode::OK);
    let (status, _, _) = h.send(post("room:1", Some(&bob), danmaku("hi"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        h.metric(
            "danmaku_ingest_account_changes_total",
            &[("change", "block")]
        ),
        1.0
    );
}

#[tokio::test]
async fn an_account_change_the_store_cannot_keep_is_503_and_not_applied() {
    let bus = Arc::new(MemoryBus::new(MemoryBusConfig::default()));
    let sub = bus.subscribe_all().await.unwrap();
    let mut h = Harness::with_parts(IngestConfig::default(), bus, sub, Arc::new(DownStore), None);
    let now = now_secs();
    let alice = h.key.mint_with_id("alice", "user", now, 3600, "alice-1");
    assert_eq!(
        h.refused(revocation(
            &h.app_token(),
            json!({"jti": "alice-1", "expire_at": now + 3600}),
        ))
        .await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable".to_owned()
        )
    );
    h.nothing_published().await;
    let (status, _, _) = h.send(post("room:1", Some(&alice), danmaku("hi"))).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "not revoked: nothing was stored"
    );
    assert_eq!(
        h.metric("danmaku_ingest_store_errors_total", &[("op", "account")]),
        1.0
    );
}
