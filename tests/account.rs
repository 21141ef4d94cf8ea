//! Account protection on real processes: two `danmaku edge` and two `danmaku
//! ingest` processes over a real Kafka-API broker and PostgreSQL (started by
//! scripts/services.sh). A revocation or a block made through one ingest
//! closes the covered connections on both edges within a second and is
//! refused by both ingests; `issued_before` spares the tokens minted after
//! it; a block ends by itself; everything survives a restart; bad input gets
//! typed errors.

mod common;

use std::time::{Duration, Instant};

use common::{Proc, spawn};
use danmaku_client::{
    Client, ClientConfig, ClientError, IngestClient, PostOutcome, ServerEvent, Transport,
};
use danmaku_proto::token::{TokenKey, now_secs};
use danmaku_testkit::kafka::{shared_broker, unique};
use serde_json::{Value, json};

/// What the issue asks of a revocation or block: every covered connection on
/// every edge closed within this.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

fn key() -> TokenKey {
    TokenKey::new(common::SECRET)
}

/// A token of `user` issued at `iat` with id `jti`, valid for an hour after.
fn token_at(user: &str, iat: u64, jti: &str) -> String {
    key().mint_with_id(user, "user", iat, 3600, jti)
}

fn app_token() -> String {
    key().mint("backend", "app", now_secs(), 3600)
}

/// Two edges and two ingests on a fresh topic.
struct Cluster {
    edges: [Proc; 2],
    ingests: [Proc; 2],
    http: [IngestClient; 2],
}

impl Cluster {
    async fn start() -> Cluster {
        danmaku_testkit::init_crypto();
        let bus = format!("kafka://{}?topic={}", shared_broker(), unique("account"));
        let edges = [
            spawn("edge", &bus, &[]).await,
            spawn("edge", &bus, &[]).await,
        ];
        let ingests = [
            spawn("ingest", &bus, &[]).await,
            spawn("ingest", &bus, &[]).await,
        ];
        let http = [
            IngestClient::new(&ingests[0].base),
            IngestClient::new(&ingests[1].base),
        ];
        let c = Cluster {
            edges,
            ingests,
            http,
        };
        c.wait_live().await;
        c
    }

    /// Waits until every process consumes the topic: a probe viewer on each
    /// edge sees a danmaku, and each ingest refuses a user the other blocked.
    async fn wait_live(&self) {
        let room = format!("room:{}", unique("probe").replace('.', "_"));
        let probe_token = token_at(&unique("probe"), now_secs(), &unique("j"));
        let mut probes = Vec::new();
        for e in &self.edges {
            let mut p = connect(e, &probe_token, Transport::WsJson).await.unwrap();
            join(&mut p, &room).await;
            probes.push(p);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for p in &mut probes {
            loop {
                assert!(
                    Instant::now() < deadline,
                    "an edge never consumed the topic"
                );
                let _ = self.http[0]
                    .post_danmaku(&probe_token, &room, "probe")
                    .await;
                let seen = tokio::time::timeout(Duration::from_millis(300), async {
                    loop {
                        match p.next_event().await {
                            Some(ServerEvent::Batch { .. }) => return,
                            Some(_) => {}
                            None => panic!("probe connection closed"),
                        }
                    }
                })
                .await;
                if seen.is_ok() {
                    break;
                }
            }
        }
        for (from, to) in [(0, 1), (1, 0)] {
            let user = unique("warm");
            self.http[from]
                .block_user(&app_token(), &user, Some(600))
                .await
                .unwrap();
            let t = token_at(&user, now_secs(), &unique("j"));
            danmaku_testkit::eventually(
                Duration::from_secs(60),
                "the other ingest hears a block",
                || {
                    let http = &self.http[to];
                    let t = t.clone();
                    async move { (post_code(http, &t).await == "user_blocked").then_some(()) }
                },
            )
            .await;
        }
    }
}

async fn connect(edge: &Proc, token: &str, transport: Transport) -> Result<Client, ClientError> {
    let config = ClientConfig::default();
    match transport {
        Transport::Quic => {
            let cert = IngestClient::new(&edge.base).fetch_cert_der().await?;
            Client::connect_quic(edge.addr, Some(cert), token, config).await
        }
        ws => Client::connect_ws(&edge.base, token, ws, config).await,
    }
}

/// Posts a danmaku; the error code, or `accepted`.
async fn post_code(http: &IngestClient, token: &str) -> String {
    match http.post_danmaku(token, "room:acct", "hi").await {
        Ok(PostOutcome::Accepted { .. }) => "accepted".into(),
        Ok(PostOutcome::Rejected { code, .. }) => code,
        other => format!("{other:?}"),
    }
}

/// Waits for the `error` frame that ends `client` and then its end; returns
/// the code and when it came.
async fn closed_with(client: &mut Client, within: Duration) -> (String, Instant) {
    let got = tokio::time::timeout(within, async {
        loop {
            match client.next_event().await {
                Some(ServerEvent::Error { code, .. }) => return code,
                Some(_) => {}
                None => return "closed without an error frame".to_owned(),
            }
        }
    })
    .await
    .unwrap_or_else(|_| "still open".to_owned());
    let at = Instant::now();
    // The edge closes right after the error frame.
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while client.next_event().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the connection stays open after {got}");
    (got, at)
}

/// Whether `client` is still served: it gets a danmaku posted now.
async fn still_served(client: &mut Client, http: &IngestClient, token: &str, room: &str) -> bool {
    let text = unique("alive");
    let _ = http.post_danmaku(token, room, &text).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.next_event().await {
                Some(ServerEvent::Batch { events, .. })
                    if events.iter().any(|e| e.text == text) =>
                {
                    return true;
                }
                Some(ServerEvent::Error { code, .. }) => panic!("error {code}"),
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

async fn join(client: &mut Client, room: &str) {
    client.join(room).await.unwrap();
    common::wait_joined(client, room).await;
}

fn auth_refused_code(r: Result<Client, ClientError>) -> String {
    match r {
        Err(ClientError::AuthRefused { code, .. }) => code,
        Err(e) => format!("{e}"),
        Ok(_) => "connected".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_close_connections_on_every_edge_and_every_ingest_refuses() {
    let c = Cluster::start().await;
    let room = "room:acct";
    let now = now_secs();

    // By id: alice's first token on both edges, her second on edge 1.
    let alice = unique("alice");
    let (j1, j2) = (unique("j1"), unique("j2"));
    let t1 = token_at(&alice, now, &j1);
    let t2 = token_at(&alice, now, &j2);
    let mut a0 = connect(&c.edges[0], &t1, Transport::WsPb).await.unwrap();
    let mut a1 = connect(&c.edges[1], &t1, Transport::Quic).await.unwrap();
    let mut a2 = connect(&c.edges[1], &t2, Transport::WsJson).await.unwrap();
    for a in [&mut a0, &mut a1, &mut a2] {
        join(a, room).await;
    }
    assert_eq!(post_code(&c.http[1], &t1).await, "accepted");
    c.http[0]
        .revoke_token(&app_token(), &j1, now + 3600)
        .await
        .unwrap();
    let revoked_at = Instant::now();
    for (name, a) in [("edge 0, ws", &mut a0), ("edge 1, quic", &mut a1)] {
        let (code, at) = closed_with(a, Duration::from_secs(5)).await;
        assert_eq!(code, "token_revoked", "{name}");
        let took = at.duration_since(revoked_at);
        eprintln!("{name}: closed {took:?} after the revocation");
        assert!(took < CLOSE_WITHIN, "{name} closed after {took:?}");
    }
    // Both ingests refuse it (the other one learnt it from the bus).
    assert_eq!(post_code(&c.http[0], &t1).await, "token_revoked");
    let other = Instant::now();
    danmaku_testkit::eventually(
        CLOSE_WITHIN,
        "the other ingest refuses the revoked token",
        || {
            let (http, t) = (&c.http[1], &t1);
            async move { (post_code(http, t).await == "token_revoked").then_some(()) }
        },
    )
    .await;
    eprintln!(
        "ingest 1 refused it {:?} after",
        other.duration_since(revoked_at)
    );
    // At connect too, on both edges; her other token goes on.
    for e in &c.edges {
        let code = auth_refused_code(connect(e, &t1, Transport::WsPb).await);
        assert_eq!(code, "token_revoked");
    }
    assert!(still_served(&mut a2, &c.http[1], &t2, room).await);

    // Issued before: bob's old token (iat 100 s ago) goes, the one minted after stays.
    let bob = unique("bob");
    let old = token_at(&bob, now - 100, &unique("old"));
    let new = token_at(&bob, now, &unique("new"));
    let mut b_old = connect(&c.edges[0], &old, Transport::WsJson).await.unwrap();
    let mut b_new = connect(&c.edges[1], &new, Transport::WsPb).await.unwrap();
    join(&mut b_old, room).await;
    join(&mut b_new, room).await;
    c.http[1]
        .revoke_user(&app_token(), &bob, now - 50)
        .await
        .unwrap();
    let revoked_at = Instant::now();
    let (code, at) = closed_with(&mut b_old, Duration::from_secs(5)).await;
    assert_eq!(code, "token_revoked");
    assert!(at.duration_since(revoked_at) < CLOSE_WITHIN);
    assert!(still_served(&mut b_new, &c.http[0], &new, room).await);
    danmaku_testkit::eventually(CLOSE_WITHIN, "ingest 0 refuses bob's old token", || {
        let (http, t) = (&c.http[0], &old);
        async move { (post_code(http, t).await == "token_revoked").then_some(()) }
    })
    .await;
    assert_eq!(post_code(&c.http[0], &new).await, "accepted");
    // A token without iat counts as older than any cut-off.
    let legacy = key().sign(&danmaku_proto::token::Claims {
        sub: bob.clone(),
        exp: now + 3600,
        role: "user".into(),
        kid: None,
        jti: None,
        iat: None,
    });
    assert_eq!(post_code(&c.http[1], &legacy).await, "token_revoked");
    let minted_after = token_at(&bob, now_secs(), &unique("after"));
    let mut after = connect(&c.edges[0], &minted_after, Transport::WsPb)
        .await
        .unwrap();
    join(&mut after, room).await;
    assert!(still_served(&mut after, &c.http[1], &minted_after, room).await);

    // Counted: the closes on the edges, the refusals at ingest.
    let edge_metrics = common::metrics_text(&c.edges[0].base).await;
    let closes = danmaku_testkit::metric_value(
        &edge_metrics,
        "danmaku_edge_account_closes_total",
        &[("code", "token_revoked")],
    );
    assert_eq!(closes, Some(2.0), "a0 and b_old");
    let ingest_metrics = common::metrics_text(&c.ingests[0].base).await;
    let refused = danmaku_testkit::metric_value(
        &ingest_metrics,
        "danmaku_ingest_rejected_total",
        &[("code", "token_revoked")],
    );
    assert!(refused >= Some(2.0), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_block_disconnects_everywhere_and_ends() {
    let c = Cluster::start().await;
    let room = "room:acct";
    let carol = unique("carol");
    let t = token_at(&carol, now_secs(), &unique("c"));
    let mut on0 = connect(&c.edges[0], &t, Transport::WsPb).await.unwrap();
    let mut on1 = connect(&c.edges[1], &t, Transport::Quic).await.unwrap();
    join(&mut on0, room).await;
    join(&mut on1, room).await;
    let block_secs = 4;
    c.http[1]
        .block_user(&app_token(), &carol, Some(block_secs))
        .await
        .unwrap();
    let blocked_at = Instant::now();
    for (name, conn) in [("edge 0", &mut on0), ("edge 1", &mut on1)] {
        let (code, at) = closed_with(conn, Duration::from_secs(5)).await;
        assert_eq!(code, "user_blocked", "{name}");
        let took = at.duration_since(blocked_at);
        eprintln!("{name}: closed {took:?} after the block");
        assert!(took < CLOSE_WITHIN, "{name} closed after {took:?}");
    }
    for http in &c.http {
        danmaku_testkit::eventually(CLOSE_WITHIN, "both ingests refuse carol", || async {
            (post_code(http, &t).await == "user_blocked").then_some(())
        })
        .await;
    }
    assert_eq!(
        auth_refused_code(connect(&c.edges[0], &t, Transport::WsJson).await),
        "user_blocked"
    );
    // The block ends by itself (the same token works again).
    let ends = blocked_at + Duration::from_secs(block_secs + 1);
    tokio::time::sleep_until(ends.into()).await;
    for http in &c.http {
        assert_eq!(post_code(http, &t).await, "accepted");
    }
    let mut back = connect(&c.edges[1], &t, Transport::WsPb).await.unwrap();
    join(&mut back, room).await;

    // A permanent block, lifted by DELETE.
    c.http[0]
        .block_user(&app_token(), &carol, None)
        .await
        .unwrap();
    let (code, _) = closed_with(&mut back, Duration::from_secs(5)).await;
    assert_eq!(code, "user_blocked");
    c.http[0].unblock_user(&app_token(), &carol).await.unwrap();
    for http in &c.http {
        danmaku_testkit::eventually(Duration::from_secs(5), "the lifted block", || async {
            (post_code(http, &t).await == "accepted").then_some(())
        })
        .await;
    }
    connect(&c.edges[0], &t, Transport::WsJson).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_blocks_survive_a_restart() {
    danmaku_testkit::init_crypto();
    let now = now_secs();
    let (dave, erin, jti) = (unique("dave"), unique("erin"), unique("j"));
    let revoked = token_at(&unique("frank"), now, &jti);
    let erin_old = token_at(&erin, now - 100, &unique("e"));
    let dave_t = token_at(&dave, now, &unique("d"));
    {
        let bus = format!("kafka://{}?topic={}", shared_broker(), unique("acct-a"));
        let ingest = spawn("ingest", &bus, &[]).await;
        let http = IngestClient::new(&ingest.base);
        let app = app_token();
        http.revoke_token(&app, &jti, now + 3600).await.unwrap();
        http.revoke_user(&app, &erin, now - 10).await.unwrap();
        http.block_user(&app, &dave, None).await.unwrap();
    } // the ingest process is killed here
    let bus = format!("kafka://{}?topic={}", shared_broker(), unique("acct-b"));
    let edge = spawn("edge", &bus, &[]).await;
    let ingest = spawn("ingest", &bus, &[]).await;
    let http = IngestClient::new(&ingest.base);
    assert_eq!(post_code(&http, &revoked).await, "token_revoked");
    assert_eq!(post_code(&http, &erin_old).await, "token_revoked");
    assert_eq!(post_code(&http, &dave_t).await, "user_blocked");
    assert_eq!(
        auth_refused_code(connect(&edge, &revoked, Transport::WsPb).await),
        "token_revoked"
    );
    assert_eq!(
        auth_refused_code(connect(&edge, &erin_old, Transport::Quic).await),
        "token_revoked"
    );
    assert_eq!(
        auth_refused_code(connect(&edge, &dave_t, Transport::WsJson).await),
        "user_blocked"
    );
    let erin_new = token_at(&erin, now_secs(), &unique("e2"));
    assert_eq!(post_code(&http, &erin_new).await, "accepted");
    connect(&edge, &erin_new, Transport::WsPb).await.unwrap();
}

/// Sends `body` (raw text) with `method` to `path` on `base` with `token`;
/// returns the status and the JSON answer.
async fn raw(
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// One bad-input request: name, method, path, token, body, expected status and code.
type Case<'a> = (
    &'a str,
    reqwest::Method,
    String,
    Option<&'a str>,
    String,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_account_input_gets_typed_errors() {
    danmaku_testkit::init_crypto();
    let bus = format!("kafka://{}?topic={}", shared_broker(), unique("acct-bad"));
    let ingest = spawn("ingest", &bus, &[]).await;
    let base = ingest.base.as_str();
    let app = app_token();
    let user = token_at("mallory", now_secs(), &unique("m"));
    let now = now_secs();
    use reqwest::Method;
    let revoke = "/v1/admin/revocations";
    let long_user = "u".repeat(129);
    let cases: Vec<Case> = vec![
        (
            "no token",
            Method::POST,
            revoke.into(),
            None,
            json!({"jti":"x","expire_at":now+60}).to_string(),
            401,
            "missing_token",
        ),
        (
            "a user token",
            Method::POST,
            revoke.into(),
            Some(&user),
            json!({"jti":"x","expire_at":now+60}).to_string(),
            403,
            "forbidden",
        ),
        (
            "an unknown field",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"jti":"x","expire_at":now+60,"why":"spam"}).to_string(),
            400,
            "bad_json",
        ),
        (
            "both forms at once",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"jti":"x","expire_at":now+60,"user":"u","issued_before":now}).to_string(),
            400,
            "bad_json",
        ),
        (
            "neither form",
            Method::POST,
            revoke.into(),
            Some(&app),
            "{}".into(),
            400,
            "bad_json",
        ),
        (
            "not JSON",
            Method::POST,
            revoke.into(),
            Some(&app),
            "revoke everything".into(),
            400,
            "bad_json",
        ),
        (
            "an empty jti",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"jti":"","expire_at":now+60}).to_string(),
            400,
            "bad_json",
        ),
        (
            "expire_at in the past",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"jti":"x","expire_at":now-60}).to_string(),
            400,
            "bad_time",
        ),
        (
            "expire_at in milliseconds",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"jti":"x","expire_at":now*1000}).to_string(),
            400,
            "bad_time",
        ),
        (
            "a negative expire_at",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"jti":"x","expire_at":-5}).to_string(),
            400,
            "bad_json",
        ),
        (
            "issued_before in the future",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"user":"u","issued_before":now+3600}).to_string(),
            400,
            "bad_time",
        ),
        (
            "issued_before of the 1970s",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"user":"u","issued_before":5}).to_string(),
            400,
            "bad_time",
        ),
        (
            "a too long user",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"user":long_user,"issued_before":now}).to_string(),
            400,
            "bad_user",
        ),
        (
            "a jti that never existed",
            Method::POST,
            revoke.into(),
            Some(&app),
            json!({"jti":unique("never"),"expire_at":now+60}).to_string(),
            200,
            "",
        ),
        (
            "block for 0 s",
            Method::PUT,
            "/v1/users/u/block".into(),
            Some(&app),
            json!({"seconds":0}).to_string(),
            400,
            "bad_time",
        ),
        (
            "block for 100 years",
            Method::PUT,
            "/v1/users/u/block".into(),
            Some(&app),
            json!({"seconds":100u64*365*86400}).to_string(),
            400,
            "bad_time",
        ),
        (
            "block with a string",
            Method::PUT,
            "/v1/users/u/block".into(),
            Some(&app),
            json!({"seconds":"10"}).to_string(),
            400,
            "bad_json",
        ),
        (
            "block with an unknown field",
            Method::PUT,
            "/v1/users/u/block".into(),
            Some(&app),
            json!({"seconds":10,"reason":"x"}).to_string(),
            400,
            "bad_json",
        ),
        (
            "block a too long user",
            Method::PUT,
            format!("/v1/users/{long_user}/block"),
            Some(&app),
            "{}".into(),
            400,
            "bad_user",
        ),
        (
            "block by a user token",
            Method::PUT,
            "/v1/users/u/block".into(),
            Some(&user),
            "{}".into(),
            403,
            "forbidden",
        ),
        (
            "unblock by a user token",
            Method::DELETE,
            "/v1/users/u/block".into(),
            Some(&user),
            String::new(),
            403,
            "forbidden",
        ),
        (
            "unblock someone never blocked",
            Method::DELETE,
            format!("/v1/users/{}/block", unique("nobody")),
            Some(&app),
            String::new(),
            200,
            "",
        ),
        (
            "GET on revocations",
            Method::GET,
            revoke.into(),
            Some(&app),
            String::new(),
            405,
            "method_not_allowed",
        ),
    ];
    for (name, method, path, token, body, status, code) in cases {
        let (got, answer) = raw(base, method, &path, token, &body).await;
        assert_eq!(got, status, "{name}: {answer}");
        if !code.is_empty() {
            assert_eq!(answer["error"]["code"], code, "{name}: {answer}");
            assert!(answer["error"]["message"].is_string(), "{name}: {answer}");
        }
    }
    let metrics = common::metrics_text(base).await;
    let bad_time = danmaku_testkit::metric_value(
        &metrics,
        "danmaku_ingest_rejected_total",
        &[("code", "bad_time")],
    );
    assert_eq!(bad_time, Some(6.0));
    assert_eq!(
        danmaku_testkit::metric_value(
            &metrics,
            "danmaku_ingest_account_changes_total",
            &[("change", "revoke_token")]
        ),
        Some(1.0)
    );
    // The process is still fine.
    let (ok, _) = raw(base, Method::GET, "/healthz", None, "").await;
    assert_eq!(ok, 200);
}
