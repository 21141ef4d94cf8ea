//! Keeping every ingest node's copy of the policy fresh: a task that listens
//! for `BusEvent.moderation` announcements (reloading the named scope) and
//! reloads everything every [`FULL_RELOAD_EVERY`].
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

/// How often each node reloads every scope from the store, whatever it heard.
pub const FULL_RELOAD_EVERY: Duration = Duration::from_secs(30);

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
        self.reload_all("start")
            .await
            .map_err(|e| IngestError::Moderation(format!("loading the stored policy: {e}")))?;
        tokio::spawn(run(Arc::downgrade(self), sub));
        Ok(())
    }
}

async fn run(ingest: Weak<Ingest>, mut sub: Box<dyn Subscription>) {
    let limits = Limits::default();
    let mut full = tokio::time::interval(FULL_RELOAD_EVERY);
    full.tick().await; // the first tick is now: just loaded
    loop {
        let next = tokio::select! {
            next = sub.recv() => Some(next),
            _ = full.tick() => None,
        };
        let Some(ingest) = ingest.upgrade() else {
            return;
        };
        let Some(next) = next else {
            let _ = ingest.reload_all("periodic").await;
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
