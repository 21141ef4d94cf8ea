//! Blobs for notify-pull: upload (app role, bounded, content type kept),
//! content-addressed ids, immutable caching with ETag / 304, typed refusals;
//! served by ingest and by the edge's own route from the same store.

mod common;

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
