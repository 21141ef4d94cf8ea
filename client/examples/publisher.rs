//! Posts comments to a room through the ingest HTTP API.
//!
//! ```text
//! cargo run -p danmaku-client --example publisher -- [BASE_URL] [CHANNEL] [USER] [COUNT] [PER_SECOND]
//! cargo run -p danmaku-client --example publisher -- http://127.0.0.1:7070 room:42 alice 20 2
//! ```
//!
//! Texts come from the sample generator ("666", "哈哈哈哈"...). A `429` is
//! honoured: the publisher sleeps for `Retry-After` and sends the same text again.

use std::time::Duration;

use danmaku_client::{IngestClient, PostOutcome};
use danmaku_proto::sample::CommentGenerator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let channel = args.next().unwrap_or_else(|| "room:42".into());
    let user = args.next().unwrap_or_else(|| "publisher".into());
    let count: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let per_second: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);

    let ingest = IngestClient::new(&base);
    let token = ingest.dev_token(&user).await?;
    let mut comments = CommentGenerator::new(danmaku_proto::now_ms() as u64);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(0.01)));
    let mut sent = 0;
    while sent < count {
        ticker.tick().await;
        let text = comments.text();
        match ingest.post_danmaku(&token, &channel, &text).await? {
            PostOutcome::Accepted { .. } | PostOutcome::Persisted { .. } => {
                sent += 1;
                println!("sent {sent}/{count}: {text}");
            }
            PostOutcome::RateLimited { retry_after } => {
                println!("rate limited, retrying in {retry_after:?}");
                tokio::time::sleep(retry_after).await;
            }
            PostOutcome::Rejected {
                status,
                code,
                message,
            } => anyhow::bail!("rejected with {status} {code}: {message}"),
        }
    }
    Ok(())
}
