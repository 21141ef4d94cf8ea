//! Keeping every ingest node's copy of the policy fresh: a task that listens
//! for `BusEvent.moderation` announcements (reloading the named scope), and
//! every [`HEAD_POLL_EVERY`] reads the audit trail's head (one indexed query):
//! when it moved since the last full reload, a change was committed that this
//! node may not have heard of (a publish that failed after the commit), so it
//! reloads everything. Every [`FULL_RELOAD_EVERY`] it reloads everything anyway.
//! Unchanged word lists keep their compiled automata across reloads.
//!
//! The subscription sees the whole topic; everything whose key is not
//! [`MODERATION_BUS_KEY`] is skipped before decoding, as edges do for rooms
//! they do not host.

use std::sync::{Arc, Weak};
use std::time::Duration;

use danmaku_bus::{BusError, Subscription};
use danmaku_proto::{Limits, frame};

use super::MODERATION_BUS_KEY;
use crate::{Ingest, IngestError};

/// How often each node checks the store for changes it was not told about.
pub const HEAD_POLL_EVERY: Duration = Duration::from_secs(5);
/// How often each node reloads every scope from the store, whatever it heard.
pub const FULL_RELOAD_EVERY: Duration = Duration::from_secs(600);

impl Ingest {
    /// Loads the stored policy (refusing to start without it: posts must not
    /// go out unfiltered), subscribes to the bus and spawns the task that keeps
    /// the policy fresh. The task ends when the `Ingest` is dropped or the bus
    /// closes.
    pub async fn start_moderation(self: &Arc<Self>) -> Result<(), IngestError> {
        // Subscribe first, so a change made while loading is not missed.
        let sub = self
            .bus
            .subscribe_all()
            .await
            .map_err(|e| IngestError::Moderation(format!("subscribing to the bus: {e}")))?;
        let load = async {
            // Read before loading: a change committed meanwhile moves it again.
            let head = self
                .store_call("policy", self.store.moderation_head())
                .await?;
            self.reload_all("start").await?;
            Ok::<u64, crate::ApiError>(head)
        };
        let head = load
            .await
            .map_err(|e| IngestError::Moderation(format!("loading the stored policy: {e}")))?;
        tokio::spawn(run(Arc::downgrade(self), sub, head));
        Ok(())
    }
}

async fn run(ingest: Weak<Ingest>, mut sub: Box<dyn Subscription>, mut head: u64) {
    let limits = Limits::default();
    let mut poll = tokio::time::interval(HEAD_POLL_EVERY);
    poll.tick().await; // the first tick is now: just loaded
    let mut last_full = tokio::time::Instant::now();
    loop {
        let next = tokio::select! {
            next = sub.recv() => Some(next),
            _ = poll.tick() => None,
        };
        let Some(ingest) = ingest.upgrade() else {
            return;
        };
        let Some(next) = next else {
            let now_head = match ingest.store.moderation_head().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the moderation head failed");
                    continue;
                }
            };
            if now_head != head || last_full.elapsed() >= FULL_RELOAD_EVERY {
                if ingest.reload_all("periodic").await.is_ok() {
                    head = now_head;
                }
                last_full = tokio::time::Instant::now();
            }
            continue;
        };
        match next {
            Ok(msg) if msg.key == MODERATION_BUS_KEY.as_bytes() => {
                let scope = match frame::decode_bus_event(&msg.payload, &limits) {
                    Ok(ev) => match ev.moderation {
                        // Our own announcement: reloaded before answering.
                        Some(_) if ev.origin == ingest.config.node_id => continue,
                        Some(m) => m.scope,
                        None => continue,
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable moderation announcement");
                        continue;
                    }
                };
                let _ = ingest.reload_scope(&scope, "bus").await;
            }
            Ok(_) => {}
            Err(BusError::Lagged(n)) => {
                // An announcement may be among the skipped ones.
                tracing::warn!(skipped = n, "moderation subscription lagged; reloading all");
                let _ = ingest.reload_all("lagged").await;
            }
            Err(BusError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "moderation subscription failed; retrying");
                drop(ingest);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
