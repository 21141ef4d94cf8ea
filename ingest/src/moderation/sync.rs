//! Keeping every ingest node's copy of the policy fresh. Announcements of
//! other nodes' changes (`BusEvent.moderation`, key [`MODERATION_BUS_KEY`])
//! arrive through the node's one bus task (`announcements.rs`), which reloads
//! the named scope. Besides, a task here every [`HEAD_POLL_EVERY`] reads the
//! audit trail's head (one indexed query):
//! when it moved since the last full reload, a change was committed that this
//! node may not have heard of (a publish that failed after the commit), so it
//! reloads everything. Every [`FULL_RELOAD_EVERY`] it reloads everything anyway.
//! Unchanged word lists keep their compiled automata across reloads.
//!
//! [`MODERATION_BUS_KEY`]: super::MODERATION_BUS_KEY

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::IngestError;
use crate::node::Ingest;

/// How often each node checks the store for changes it was not told about.
pub const HEAD_POLL_EVERY: Duration = Duration::from_secs(5);
/// How often each node reloads every scope from the store, whatever it heard.
pub const FULL_RELOAD_EVERY: Duration = Duration::from_secs(600);

impl Ingest {
    /// Loads the stored policy (refusing to start without it: posts must not
    /// go out unfiltered) and spawns the task that polls for changes this node
    /// was not told about. Call it after [`Ingest::start_announcements`], whose
    /// subscription then already exists, so a change made while loading is
    /// not missed. The task ends when the `Ingest` is dropped.
    pub async fn start_moderation(self: &Arc<Self>) -> Result<(), IngestError> {
        let load = async {
            // Read before loading: a change committed meanwhile moves it again.
            let head = self
                .store_call("policy", self.store.moderation_head())
                .await?;
            self.reload_all("start").await?;
            Ok::<u64, crate::error::ApiError>(head)
        };
        let head = load
            .await
            .map_err(|e| IngestError::Moderation(format!("loading the stored policy: {e}")))?;
        tokio::spawn(run(Arc::downgrade(self), head));
        Ok(())
    }
}

async fn run(ingest: Weak<Ingest>, mut head: u64) {
    let mut poll = tokio::time::interval(HEAD_POLL_EVERY);
    poll.tick().await; // the first tick is now: just loaded
    let mut last_full = tokio::time::Instant::now();
    loop {
        poll.tick().await;
        let Some(ingest) = ingest.upgrade() else {
            return;
        };
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
    }
}
