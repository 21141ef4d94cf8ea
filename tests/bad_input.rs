//! Bad input on a live standalone server: each refusal has its status code, a
//! JSON error body with a stable code, and a metric; a malformed frame closes
//! only the connection that sent it.

mod common;

use std::time::Duration;

use danmaku_client::{Client, ClientConfig, IngestClient, PostOutcome, ServerEvent, Transport};
use danmaku_proto::{Limits, frame, pb};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

async fn post(base: &str, auth: Option<&str>, channel: &str, body: String) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/channels/{channel}/messages"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = auth {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send().await.expect("request sent")
}

async fn error_code(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .expect("error.code")
        .to_owned();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, code)
}

fn danmaku(text: &str) -> String {
    serde_json::json!({"kind": "danmaku", "text": text}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_have_status_code_and_json_body() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let good = common::token(&srv, "alice");

    let (s, code) = error_code(post(&base, Some("nope.nope"), "room:1", danmaku("hi")).await).await;
    assert_eq!((s, code.as_str()), (401, "bad_token"));
    let (s, _) = error_code(post(&base, None, "room:1", danmaku("hi")).await).await;
    assert_eq!(s, 401);
    let forged = danmaku_proto::token::TokenKey::new("other-secret").mint(
        "alice",
        "user",
        danmaku_proto::token::now_secs(),
        60,
    );
    let (s, code) = error_code(post(&base, Some(&forged), "room:1", danmaku("hi")).await).await;
    assert_eq!((s, code.as_str()), (401, "bad_token"));

    let (s, code) = error_code(post(&base, Some(&good), "lobby:1", danmaku("hi")).await).await;
    assert_eq!((s, code.as_str()), (400, "bad_channel"));
    let (s, code) = error_code(post(&base, Some(&good), "room:a%20b", danmaku("hi")).await).await;
    assert_eq!((s, code.as_str()), (400, "bad_channel"));

    let huge = danmaku(&"x".repeat(9000));
    let (s, code) = error_code(post(&base, Some(&good), "room:1", huge).await).await;
    assert_eq!((s, code.as_str()), (413, "body_too_large"));

    let (s, code) =
        error_code(post(&base, Some(&good), "room:1", danmaku(&"长".repeat(201))).await).await;
    assert_eq!((s, code.as_str()), (400, "text_too_long"));
    let (s, _) = error_code(post(&base, Some(&good), "room:1", "{not json".into()).await).await;
    assert_eq!(s, 400);

    // Flood: the default per-user bucket holds 10; 40 back-to-back posts must hit it.
    let flooder = common::token(&srv, "flooder");
    let mut limited = None;
    for _ in 0..40 {
        let resp = post(&base, Some(&flooder), "room:1", danmaku("spam")).await;
        if resp.status().as_u16() == 429 {
            let retry_after: u64 = resp
                .headers()
                .get("retry-after")
                .expect("Retry-After header")
                .to_str()
                .unwrap()
                .parse()
                .expect("Retry-After in seconds");
            assert!(retry_after >= 1);
            limited = Some(error_code(resp).await.1);
            break;
        }
        assert_eq!(resp.status().as_u16(), 202);
    }
    assert_eq!(limited.as_deref(), Some("rate_limited"));

    let metrics = common::metrics_text(&base).await;
    for status in ["401", "400", "413", "429"] {
        let n = danmaku_testkit::metric_value(
            &metrics,
            "danmaku_ingest_requests_total",
            &[("status", status)],
        );
        assert!(
            n.is_some_and(|n| n >= 1.0),
            "no requests counted with status {status}"
        );
    }
    srv.stop().await;
}

/// Opens a raw WebSocket (no SDK) so the test can send bytes the SDK never would.
async fn raw_ws(
    base: &str,
    token: &str,
    protocol: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/v1/ws?token={token}", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws upgrade");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some(protocol)
    );
    ws
}

/// Reads until the server closes; returns the error code of the last error frame.
async fn error_then_close<S>(ws: &mut S, json: bool) -> String
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let mut code = None;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) if !json => {
                    if let Ok(pb::ServerFrame {
                        body: Some(pb::server_frame::Body::Error(e)),
                        ..
                    }) = frame::decode_server(&b, &Limits::default())
                    {
                        code = Some(e.code);
                    }
                }
                Ok(Message::Text(t)) if json => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "error" {
                        code = Some(v["code"].as_str().unwrap().to_owned());
                    }
                }
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "server did not close the connection");
    code.expect("an error frame before the close")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let srv = common::start(|_| {}).await;
    let base = srv.base_url();
    let mut bystander = Client::connect_ws(
        &base,
        &common::token(&srv, "bystander"),
        Transport::WsPb,
        ClientConfig::default(),
    )
    .await
    .unwrap();
    bystander.join("room:1").await.unwrap();
    common::wait_joined(&mut bystander, "room:1").await;

    let mut pb_ws = raw_ws(&base, &common::token(&srv, "mallory"), "danmaku.v1.pb").await;
    pb_ws
        .send(Message::Binary(vec![0xff, 0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    assert_eq!(error_then_close(&mut pb_ws, false).await, "malformed_frame");

    let mut json_ws = raw_ws(&base, &common::token(&srv, "mallory2"), "danmaku.v1.json").await;
    json_ws
        .send(Message::Text("{\"type\":\"join\",".into()))
        .await
        .unwrap();
    assert_eq!(error_then_close(&mut json_ws, true).await, "malformed_json");

    // A bad channel name is an error frame but not a reason to close.
    bystander.join("not-a-channel").await.unwrap();
    let ingest = IngestClient::new(&base);
    let out = ingest
        .post_danmaku(&common::token(&srv, "alice"), "room:1", "still here")
        .await
        .unwrap();
    assert!(matches!(out, PostOutcome::Accepted { .. }));
    let mut saw_bad_channel = false;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = bystander.next_event().await {
            match ev {
                ServerEvent::Error { code, .. } => {
                    assert_eq!(code, "bad_channel");
                    saw_bad_channel = true;
                }
                ServerEvent::Batch { events, .. } => return events[0].text.clone(),
                _ => {}
            }
        }
        panic!("bystander's connection closed");
    })
    .await
    .expect("bystander still receives");
    assert_eq!(got, "still here");
    assert!(saw_bad_channel);

    let metrics = common::metrics_text(&base).await;
    let bad = danmaku_testkit::metric_value(&metrics, "danmaku_edge_bad_frames_total", &[])
        .unwrap_or(0.0);
    assert!(bad >= 2.0, "bad frames counted: {bad}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_without_a_valid_token_is_refused() {
    let srv = common::start(|_| {}).await;
    let url = format!("ws://{}/v1/ws?token=garbage", srv.http_addr);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "danmaku.v1.json".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!(
            "expected HTTP 401, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    srv.stop().await;
}
