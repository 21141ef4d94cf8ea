//! The dev-token endpoint of a real `danmaku standalone` process: role `user`
//! only unless `--dev-app-tokens`, and a loud warning when it listens on a
//! non-loopback address.

mod common;

use serde_json::{Value, json};

async fn mint(base: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/dev/token"))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/dev/token");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

fn log_of(p: &common::Proc) -> String {
    std::fs::read_to_string(&p.log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tokens_are_user_only_and_exposure_is_loud() {
    let data = std::env::temp_dir().join(danmaku_testkit::kafka::unique("danmaku-devtok"));
    let data = data.to_str().unwrap().to_owned();

    // Every interface, dev tokens, no --dev-app-tokens.
    let port = common::free_addr().port();
    let listen = format!("0.0.0.0:{port}");
    let srv = common::spawn_args(
        listen.parse().unwrap(),
        &["standalone", "--listen", &listen, "--data", &data],
    )
    .await;
    let (status, body) = mint(&srv.base, json!({"user": "alice"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "user");
    let (status, body) = mint(&srv.base, json!({"user": "mallory", "role": "app"})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "role_not_allowed", "{body}");
    let metrics = common::metrics_text(&srv.base).await;
    assert_eq!(
        danmaku_testkit::metric_value(
            &metrics,
            "danmaku_ingest_rejected_total",
            &[("code", "role_not_allowed")]
        ),
        Some(1.0)
    );
    let log = log_of(&srv);
    assert!(
        log.contains("DANGER") && log.contains("non-loopback") && log.contains(&listen),
        "no loud warning for {listen}: {log}"
    );
    drop(srv);

    // Loopback with --dev-app-tokens: app tokens are minted, no DANGER warning.
    let addr = common::free_addr();
    let listen = addr.to_string();
    let srv = common::spawn_args(
        addr,
        &[
            "standalone",
            "--listen",
            &listen,
            "--data",
            &data,
            "--dev-app-tokens",
        ],
    )
    .await;
    let (status, body) = mint(&srv.base, json!({"user": "backend", "role": "app"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "app");
    let log = log_of(&srv);
    assert!(!log.contains("DANGER"), "{log}");
}
