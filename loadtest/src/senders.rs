//! Sending side of a run: each sender posts from its own token at its share of
//! the rate, to rooms round-robin and ingest nodes round-robin, honouring
//! `429 Retry-After`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use danmaku_client::{IngestClient, PostOutcome};
use danmaku_proto::sample::CommentGenerator;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::counting::event_json;
use crate::tally::post_text;

/// The ingest nodes posts go to, round-robin over every post of every sender
/// sharing the pool.
#[derive(Debug)]
pub struct IngestPool {
    clients: Vec<IngestClient>,
    next: AtomicUsize,
}

impl IngestPool {
    /// One client per base URL. Panics on an empty list (the config resolves
    /// an empty list to the target first).
    pub fn new(urls: &[String]) -> Self {
        assert!(!urls.is_empty(), "an ingest pool needs at least one URL");
        IngestPool {
            clients: urls.iter().map(|u| IngestClient::new(u)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The client for the next post.
    pub fn next(&self) -> &IngestClient {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// The node sender `index` always posts to. A real client keeps one ingest
    /// connection; alternating nodes would let two nodes' publishes race on the
    /// bus and reorder one sender's danmaku (which probes count as violations).
    pub fn for_sender(&self, index: u32) -> &IngestClient {
        &self.clients[index as usize % self.clients.len()]
    }

    /// The first node (dev tokens are minted there).
    pub fn first(&self) -> &IngestClient {
        &self.clients[0]
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// What one sender did.
#[derive(Debug, Default)]
pub struct SenderOutcome {
    pub attempted: u64,
    pub accepted: u64,
    pub rate_limited: u64,
    pub failed: u64,
    /// `(room index, post number)` of every accepted post.
    pub accepted_posts: Vec<(usize, u64)>,
    /// Gifts: the seq ingest assigned to every accepted post.
    pub seqs: Vec<u64>,
    /// Σ of the accepted events' size as one JSON object each (the baseline
    /// "bytes per message" of a naive one-message-per-frame JSON push).
    pub raw_json_bytes: u64,
}

impl SenderOutcome {
    pub fn add_counts(&mut self, o: &SenderOutcome) {
        self.attempted += o.attempted;
        self.accepted += o.accepted;
        self.rate_limited += o.rate_limited;
        self.failed += o.failed;
        self.raw_json_bytes += o.raw_json_bytes;
    }
}

/// The user id of sender `index` (its token's subject).
pub fn sender_user(index: u32) -> String {
    format!("lt-sender-{index}")
}

/// Posts as sender `index` one post every `period`, the first after `offset`
/// (so senders interleave), for every tick due before `deadline`: a post the
/// server delayed is followed by the ones due meanwhile, never skipped. A 429
/// is retried after its `Retry-After` until `deadline` + 10 s.
#[allow(clippy::too_many_arguments)]
pub async fn run_sender(
    ingest: Arc<IngestPool>,
    token: String,
    index: u32,
    rooms: Vec<String>,
    period: Duration,
    offset: Duration,
    start: Instant,
    deadline: Instant,
    posted: Arc<AtomicU64>,
) -> SenderOutcome {
    let mut out = SenderOutcome::default();
    let user = sender_user(index);
    let mut comments = CommentGenerator::new(u64::from(index) + 1);
    let mut ticker = tokio::time::interval_at(start + offset, period);
    // Every post due before `deadline` is sent, late if the server was slow
    // (a generator that skips what it could not send on time offers less load
    // than asked without saying so).
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let give_up = deadline + Duration::from_secs(10);
    let mut n: u64 = 0;
    'posts: loop {
        if ticker.tick().await >= deadline {
            break;
        }
        let room_idx = (index as usize + n as usize) % rooms.len();
        let text = post_text(index, n, &comments.text());
        // A retry after a 429 goes to the same node.
        let ingest = ingest.for_sender(index);
        loop {
            out.attempted += 1;
            match ingest.post_danmaku(&token, &rooms[room_idx], &text).await {
                // A danmaku post is answered 202; a seq would mean a reliable kind.
                Ok(PostOutcome::Accepted { .. } | PostOutcome::Persisted { .. }) => {
                    out.accepted += 1;
                    out.accepted_posts.push((room_idx, n));
                    out.raw_json_bytes +=
                        event_json("danmaku", &user, &text, danmaku_proto::now_ms()).len() as u64;
                    posted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(PostOutcome::RateLimited { retry_after }) => {
                    out.rate_limited += 1;
                    debug!(sender = index, ?retry_after, "rate limited");
                    if Instant::now() + retry_after >= give_up {
                        break 'posts;
                    }
                    tokio::time::sleep(retry_after).await;
                }
                Ok(PostOutcome::Rejected {
                    status,
                    code,
                    message,
                }) => {
                    out.failed += 1;
                    if out.failed <= 3 {
                        warn!(sender = index, status, code, message, "post rejected");
                    }
                    break;
                }
                Err(e) => {
                    out.failed += 1;
                    if out.failed <= 3 {
                        warn!(sender = index, error = %e, "post failed");
                    }
                    break;
                }
            }
        }
        n += 1;
    }
    out
}

/// Posts gifts as sender `index` to `room` until `deadline`, one every
/// `period`. Each gift has its own `client_msg_id`; a 429, 5xx or transport
/// error is retried with the same id (ingest then answers the first seq) until
/// `deadline` + 10 s, so a gift is either persisted once or counted failed.
#[allow(clippy::too_many_arguments)]
pub async fn run_gift_sender(
    ingest: Arc<IngestPool>,
    token: String,
    index: u32,
    room: String,
    period: Duration,
    offset: Duration,
    start: Instant,
    deadline: Instant,
    posted: Arc<AtomicU64>,
) -> SenderOutcome {
    let mut out = SenderOutcome::default();
    let user = sender_user(index);
    let run = danmaku_proto::now_ms();
    let mut ticker = tokio::time::interval_at(start + offset, period);
    // As for danmaku: every gift due before `deadline` is sent.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let give_up = deadline + Duration::from_secs(10);
    let mut n: u64 = 0;
    loop {
        if ticker.tick().await >= deadline {
            break;
        }
        let text = post_text(index, n, "gift");
        let id = format!("lt-{run}-{index}-{n}");
        let ingest = ingest.next();
        loop {
            out.attempted += 1;
            let retry = match ingest
                .post_reliable(&token, &room, "gift", &text, Some(&id))
                .await
            {
                Ok(PostOutcome::Persisted { seq }) => {
                    out.accepted += 1;
                    out.seqs.push(seq);
                    out.raw_json_bytes +=
                        event_json("gift", &user, &text, danmaku_proto::now_ms()).len() as u64;
                    posted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(PostOutcome::Accepted { .. }) => {
                    warn!(sender = index, "a gift was answered 202 without a seq");
                    out.failed += 1;
                    break;
                }
                Ok(PostOutcome::RateLimited { retry_after }) => {
                    out.rate_limited += 1;
                    retry_after
                }
                Ok(PostOutcome::Rejected {
                    status,
                    code,
                    message,
                }) if status >= 500 => {
                    debug!(
                        sender = index,
                        status, code, message, "gift refused, retrying"
                    );
                    Duration::from_millis(200)
                }
                Ok(PostOutcome::Rejected {
                    status,
                    code,
                    message,
                }) => {
                    out.failed += 1;
                    warn!(sender = index, status, code, message, "gift rejected");
                    break;
                }
                Err(e) => {
                    debug!(sender = index, error = %e, "gift post failed, retrying");
                    Duration::from_millis(200)
                }
            };
            if Instant::now() + retry >= give_up {
                out.failed += 1;
                break;
            }
            tokio::time::sleep(retry).await;
        }
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_pool_is_round_robin() {
        let pool = IngestPool::new(&["http://a:1".into(), "http://b:2/".into()]);
        let seen: Vec<&str> = (0..5).map(|_| pool.next().base_url()).collect();
        assert_eq!(
            seen,
            [
                "http://a:1",
                "http://b:2",
                "http://a:1",
                "http://b:2",
                "http://a:1"
            ]
        );
        assert_eq!(pool.first().base_url(), "http://a:1");
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn a_sender_keeps_one_ingest_and_senders_spread() {
        let pool = IngestPool::new(&["http://a:1".into(), "http://b:2".into()]);
        let of = |i| pool.for_sender(i).base_url().to_owned();
        assert_eq!(of(3), of(3), "same node every post");
        assert_eq!(of(7), "http://b:2");
        let on_a = (0..10).filter(|&i| of(i) == "http://a:1").count();
        assert_eq!(on_a, 5, "ten senders split evenly");
    }
}
