//! Blobs for notify-pull: upload (app role, bounded, content type kept),
//! content-addressed ids, immutable caching with ETag / 304, typed refusals;
//! served by ingest and by the edge's own route from the same store; messages
//! carrying a blob id to viewers (WebSocket in both encodings, SSE, long-poll),
//! history, resume and a group member's catch-up from the store.

mod common;

use std::time::Duration;

use danmaku_client::{
    Client, ClientConfig, IngestClient, Limits, PostOutcome, ServerEvent, SseClient, Transport,
};
use danmaku_testkit::metric_value;
use sha2::Digest;

fn app_token(srv: &danmaku::standalone::Running) -> String {
    srv.tokens
        .mint("backend", "app", danmaku_proto::token::now_secs(), 3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_upload_serve_cache_and_refuse() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let http = reqwest::Client::new();
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let want_id = hex::encode(sha2::Sha256::digest(&body));

    let resp = http
        .post(format!("{base}/v1/blobs"))
        .bearer_auth(app_token(&srv))
        .header("content-type", "image/png")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(created["id"], want_id.as_str());
    assert_eq!(created["url"], format!("/v1/blobs/{want_id}"));

    // Served by ingest, and by the edge's route (what a distributed edge mounts).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge_base = format!("http://{}", listener.local_addr().unwrap());
    let router = srv.edge.blob_router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    for b in [&base, &edge_base] {
        let resp = http
            .get(format!("{b}/v1/blobs/{want_id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{b}");
        assert_eq!(resp.headers()["content-type"], "image/png");
        assert_eq!(resp.headers()["etag"], format!("\"{want_id}\"").as_str());
        assert_eq!(
            resp.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(resp.bytes().await.unwrap().to_vec(), body);
        let again = http
            .get(format!("{b}/v1/blobs/{want_id}"))
            .header("if-none-match", format!("\"{want_id}\""))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{b}");
        let missing = http
            .get(format!("{b}/v1/blobs/{}", "0".repeat(64)))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404, "{b}");
        let bad = http
            .get(format!("{b}/v1/blobs/not-an-id"))
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400, "{b}");
        let e: serde_json::Value = bad.json().await.unwrap();
        assert_eq!(e["error"]["code"], "bad_blob");
    }

    // The same bytes again: the same id, one blob.
    let resp = http
        .post(format!("{base}/v1/blobs"))
        .bearer_auth(app_token(&srv))
        .header("content-type", "image/png")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // Plain users may not upload; oversized and empty bodies are refused.
    let user = common::token(&srv, "viewer");
    let cases = [
        (user.as_str(), vec![1u8; 10], 403, "forbidden"),
        (
            &*app_token(&srv),
            vec![7u8; (1 << 20) + 1],
            413,
            "body_too_large",
        ),
        (&*app_token(&srv), vec![], 400, "bad_blob"),
    ];
    for (token, body, status, code) in cases {
        let resp = http
            .post(format!("{base}/v1/blobs"))
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{code}");
        let e: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(e["error"]["code"], code);
    }
    let text = common::metrics_text(&base).await;
    for code in ["forbidden", "body_too_large", "bad_blob"] {
        let n =
            metric_value(&text, "danmaku_ingest_rejected_total", &[("code", code)]).unwrap_or(0.0);
        assert!(n >= 1.0, "{code} counted: {n}");
    }
}

/// Reads events until `pick` returns something, panicking on an error frame or
/// after 10 s.
async fn next_matching<T>(
    client: &mut Client,
    what: &str,
    mut pick: impl FnMut(ServerEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next_event().await {
                Some(ServerEvent::Error { code, message }) => panic!("{what}: {code}: {message}"),
                Some(ev) => {
                    if let Some(t) = pick(ev) {
                        return t;
                    }
                }
                None => panic!("{what}: connection closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 10 s"))
}

/// The blob ids of the gift `seq` and of the danmaku `text` as they arrive on an
/// SSE stream (a gift may ride a tick's batch or come alone).
async fn sse_blobs(c: &mut SseClient, seq: u64, text: &str) -> (String, String) {
    let (mut gift, mut danmaku) = (None, None);
    tokio::time::timeout(Duration::from_secs(10), async {
        while gift.is_none() || danmaku.is_none() {
            let events = match c.next_event().await {
                Some(ServerEvent::Batch { events, .. }) => events,
                Some(ServerEvent::Reliable { event, .. }) => vec![event],
                Some(ServerEvent::Error { code, message }) => panic!("sse: {code}: {message}"),
                Some(_) => continue,
                None => panic!("sse: stream ended"),
            };
            for e in events {
                if e.seq == seq {
                    gift = Some(e.blob);
                } else if e.text == text {
                    danmaku = Some(e.blob);
                }
            }
        }
    })
    .await
    .expect("sse: the gift and the danmaku within 10 s");
    (gift.unwrap(), danmaku.unwrap())
}

/// One `GET /v1/poll?{query}`, its JSON answer.
async fn poll(http: &reqwest::Client, base: &str, query: &str) -> serde_json::Value {
    let resp = http
        .get(format!("{base}/v1/poll?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "poll {query}");
    resp.json().await.unwrap()
}

/// The same over long-poll from `cursor`: the JSON events' `blob` fields.
async fn poll_blobs(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    mut cursor: String,
    seq: u64,
    text: &str,
) -> (serde_json::Value, serde_json::Value) {
    let (mut gift, mut danmaku) = (None, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gift.is_none() || danmaku.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "poll: both within 10 s"
        );
        let answer = poll(http, base, &format!("{query}&cursor={cursor}&wait=2")).await;
        cursor = answer["cursor"].as_str().expect("a cursor").to_owned();
        for f in answer["events"].as_array().expect("events") {
            let events = match f["type"].as_str() {
                Some("batch") => f["events"].as_array().unwrap().clone(),
                Some("reliable") => vec![f["event"].clone()],
                _ => continue,
            };
            for e in events {
                if e["seq"].as_u64() == Some(seq) {
                    gift = Some(e["blob"].clone());
                } else if e["text"] == text {
                    danmaku = Some(e["blob"].clone());
                }
            }
        }
    }
    (gift.unwrap(), danmaku.unwrap())
}

/// Waits for the SSE stream's `Joined` of `channel`.
async fn next_matching_sse(c: &mut SseClient, channel: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match c.next_event().await {
                Some(ServerEvent::Joined { channel: ch, .. }) if ch == channel => return,
                Some(ServerEvent::Error { code, message }) => panic!("sse: {code}: {message}"),
                Some(_) => {}
                None => panic!("sse: stream ended before joined"),
            }
        }
    })
    .await
    .expect("sse joined within 10 s")
}

/// The reliable event of `seq`, its blob id.
fn reliable_blob(want: u64) -> impl FnMut(ServerEvent) -> Option<String> {
    move |ev| match ev {
        ServerEvent::Reliable { seq, event, .. } if seq == want => Some(event.blob),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_blobs_to_viewers_history_and_resume() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let http = IngestClient::new(&base);
    let app = app_token(&srv);
    let png: Vec<u8> = format!("\u{89}PNG rocket {}", std::process::id()).into_bytes();
    let id = http
        .upload_blob(&app, "image/png", png.clone())
        .await
        .unwrap();
    assert_eq!(id, hex::encode(sha2::Sha256::digest(&png)));

    let room = format!("room:blob-{}", std::process::id());
    let alice = common::token(&srv, "alice");
    let mut pb_viewer = Client::connect_ws(
        &base,
        &common::token(&srv, "viewer-pb"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let mut json_viewer = Client::connect_ws(
        &base,
        &common::token(&srv, "viewer-json"),
        Transport::WsJson,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    for v in [&mut pb_viewer, &mut json_viewer] {
        v.join(&room).await.unwrap();
        common::wait_joined(v, &room).await;
    }
    // The fallbacks: an SSE stream and a long-poller (its cursor from now).
    let sse_token = common::token(&srv, "viewer-sse");
    let mut sse = SseClient::connect(&base, &sse_token, &[&room], &[], Limits::default())
        .await
        .unwrap();
    next_matching_sse(&mut sse, &room).await;
    let raw = reqwest::Client::new();
    let poll_query = format!(
        "channel={room}&token={}",
        common::token(&srv, "viewer-poll")
    );
    let first = poll(&raw, &base, &poll_query).await;
    let cursor = first["cursor"].as_str().expect("a cursor").to_owned();

    // A plain user's gift carrying the app's blob reaches both encodings with it.
    let out = http
        .post_with_blob(&alice, &room, "gift", "rocket", &id, Some("g-1"))
        .await
        .unwrap();
    let PostOutcome::Persisted { seq } = out else {
        panic!("gift with a blob: {out:?}")
    };
    for (v, what) in [(&mut pb_viewer, "ws-pb"), (&mut json_viewer, "ws-json")] {
        let got = next_matching(v, what, reliable_blob(seq)).await;
        assert_eq!(got, id, "{what}");
    }
    // The SDK fetches it on demand from the id the event carried.
    let fetched = http.fetch_blob(&id).await.unwrap();
    assert_eq!(
        (fetched.content_type.as_str(), fetched.body),
        ("image/png", png)
    );

    // A danmaku with a blob arrives with it, in both encodings.
    let out = http
        .post_with_blob(&alice, &room, "danmaku", "look", &id, None)
        .await
        .unwrap();
    assert!(matches!(out, PostOutcome::Accepted { .. }), "{out:?}");
    for (v, what) in [(&mut pb_viewer, "ws-pb"), (&mut json_viewer, "ws-json")] {
        let got = next_matching(v, what, |ev| match ev {
            ServerEvent::Batch { events, .. } => events
                .into_iter()
                .find(|e| e.text == "look")
                .map(|e| e.blob),
            _ => None,
        })
        .await;
        assert_eq!(got, id, "danmaku on {what}");
    }
    assert_eq!(
        sse_blobs(&mut sse, seq, "look").await,
        (id.clone(), id.clone()),
        "sse"
    );
    let (gift, danmaku) = poll_blobs(&raw, &base, &poll_query, cursor, seq, "look").await;
    assert_eq!(
        (gift.as_str(), danmaku.as_str()),
        (Some(&*id), Some(&*id)),
        "long-poll"
    );

    // History and resume return it; a gift without one has none.
    let out = http
        .post_reliable(&alice, &room, "gift", "heart", None)
        .await
        .unwrap();
    let PostOutcome::Persisted { seq: plain } = out else {
        panic!("plain gift: {out:?}")
    };
    let page = http.history(&alice, &room, 0, 10).await.unwrap();
    let blobs: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.blob.clone()))
        .collect();
    assert_eq!(blobs, [(seq, Some(id.clone())), (plain, None)]);
    json_viewer.resume(&room, 0).await.unwrap();
    let got = next_matching(&mut json_viewer, "resume", reliable_blob(seq)).await;
    assert_eq!(got, id, "resume");

    // A retry with the same key answers the same seq; another blob under it conflicts.
    let again = http
        .post_with_blob(&alice, &room, "gift", "rocket", &id, Some("g-1"))
        .await
        .unwrap();
    assert_eq!(again, PostOutcome::Persisted { seq });
    let other = http
        .upload_blob(&app, "image/png", b"another picture".to_vec())
        .await
        .unwrap();
    let conflict = http
        .post_with_blob(&alice, &room, "gift", "rocket", &other, Some("g-1"))
        .await
        .unwrap();
    assert!(
        matches!(&conflict, PostOutcome::Rejected { status: 409, code, .. } if code == "idempotency_conflict"),
        "{conflict:?}"
    );

    // A group chat stored while its member was away reaches them from the
    // store (the store → event path) with its blob.
    let group = format!("group:blob-{}", std::process::id());
    for user in ["alice", "bob"] {
        http.join_group(&app, &group, user).await.unwrap();
    }
    let out = http
        .post_with_blob(&alice, &group, "chat", "see this", &id, None)
        .await
        .unwrap();
    let PostOutcome::Persisted { seq: chat } = out else {
        panic!("chat with a blob: {out:?}")
    };
    let mut bob = Client::connect_ws(
        &base,
        &common::token(&srv, "bob"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    bob.join(&group).await.unwrap();
    let got = next_matching(&mut bob, "group catch-up", reliable_blob(chat)).await;
    assert_eq!(got, id, "catch-up from the store");

    // Unknown and malformed ids are refused with their codes and counted.
    let rejected = |text: &str, code: &str| {
        metric_value(text, "danmaku_ingest_rejected_total", &[("code", code)]).unwrap_or(0.0)
    };
    let before = common::metrics_text(&base).await;
    let unknown = hex::encode(sha2::Sha256::digest(b"never uploaded"));
    let cases = [
        ("gift", unknown.as_str(), "unknown_blob"),
        ("danmaku", unknown.as_str(), "unknown_blob"),
        ("gift", "not-a-blob", "bad_blob"),
        ("danmaku", &*id.to_uppercase(), "bad_blob"),
        ("gift", &id[..63], "bad_blob"),
    ];
    for (kind, blob, code) in cases {
        let out = http
            .post_with_blob(&alice, &room, kind, "x", blob, None)
            .await
            .unwrap();
        assert!(
            matches!(&out, PostOutcome::Rejected { status: 400, code: c, .. } if c == code),
            "{kind} with {blob:?}: {out:?}"
        );
    }
    let history = http.history(&alice, &room, 0, 10).await.unwrap();
    assert_eq!(history.messages.len(), 2, "refused gifts store nothing");
    let text = common::metrics_text(&base).await;
    for (code, want) in [("unknown_blob", 2.0), ("bad_blob", 3.0)] {
        let n = rejected(&text, code) - rejected(&before, code);
        assert_eq!(n, want, "{code} counted");
    }
    srv.stop().await;
}
