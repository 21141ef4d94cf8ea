//! What ingest hears from the other nodes on the bus.
//!
//! An ingest node publishes channel events and never needs them back, but some
//! announcements change how every node answers: the account changes (token
//! revocations and user blocks, key [`ACCOUNT_KEY`]) and the moderation
//! changes (word lists, mutes, moderators, room settings, key
//! [`MODERATION_BUS_KEY`]) made through another ingest.
//! [`Ingest::start_announcements`] loads the stored account state, subscribes
//! to the bus and runs ONE task per node (one read of the topic, whatever the
//! kinds) that dispatches each message by its key (before decoding anything,
//! so the stream of channel events costs one comparison each) and sweeps
//! expired entries. A new kind of announcement is one more arm in
//! [`Announcements::dispatch`] and its handler.
//!
//! Subscribing before loading means nothing announced in between is missed;
//! applying a change twice is harmless (see `danmaku_proto::account`).

use std::sync::Arc;
use std::time::Duration;

use danmaku_bus::{BusError, BusMessage, Subscription};
use danmaku_proto::account::ACCOUNT_KEY;
use danmaku_proto::token::now_secs;
use danmaku_proto::{Limits, frame};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::IngestError;
use crate::moderation::MODERATION_BUS_KEY;
use crate::node::Ingest;

/// How often expired entries leave the memory (and the gauges are refreshed).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often this node deletes expired account rows from the store.
const STORE_PURGE_EVERY: u32 = 60;

/// The task's state: the node it updates and whether the stored policy is loaded.
struct Announcements {
    ingest: Arc<Ingest>,
    limits: Limits,
    loaded: bool,
}

impl Ingest {
    /// Subscribes to the bus, loads the stored account policy (retried every
    /// sweep while the store is down) and spawns the task that applies
    /// announcements until `shutdown`.
    pub async fn start_announcements(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, IngestError> {
        let sub = self.bus.subscribe_all().await?;
        let mut task = Announcements {
            ingest: Arc::clone(self),
            limits: Limits::default(),
            loaded: false,
        };
        task.load().await;
        Ok(tokio::spawn(task.run(sub, shutdown)))
    }
}

impl Announcements {
    async fn run(mut self, mut sub: Box<dyn Subscription>, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut sweeps = 0u32;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    sweeps = sweeps.wrapping_add(1);
                    self.sweep(sweeps.is_multiple_of(STORE_PURGE_EVERY)).await;
                }
                next = sub.recv() => match next {
                    Ok(msg) => self.dispatch(msg).await,
                    Err(BusError::Lagged(n)) => {
                        // A lost change would stay unknown here until a restart:
                        // reload the stored state, which has it.
                        tracing::warn!(skipped = n, "ingest announcements lagged; reloading");
                        self.loaded = false;
                        let _ = self.ingest.reload_all("lagged").await;
                    }
                    Err(BusError::Closed) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "bus receive failed; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                },
            }
        }
    }

    /// Acts on one bus message by its key; channel events are not ingest's.
    async fn dispatch(&self, msg: BusMessage) {
        let key = msg.key.as_ref();
        if key == ACCOUNT_KEY.as_bytes() {
            self.on_account(&msg);
        } else if key == MODERATION_BUS_KEY.as_bytes() {
            self.on_moderation(&msg).await;
        }
    }

    /// Reloads the scope another node changed (awaited: reloads stay in the
    /// order the changes were announced).
    async fn on_moderation(&self, msg: &BusMessage) {
        let scope = match frame::decode_bus_event(&msg.payload, &self.limits) {
            Ok(ev) => match ev.moderation {
                // Our own announcement: reloaded before answering.
                Some(_) if ev.origin == self.ingest.config.node_id => return,
                Some(m) => m.scope,
                None => return,
            },
            Err(e) => {
                tracing::debug!(error = %e, "undecodable moderation announcement");
                return;
            }
        };
        let _ = self.ingest.reload_scope(&scope, "bus").await;
    }

    fn on_account(&self, msg: &BusMessage) {
        let change = frame::decode_bus_event(&msg.payload, &self.limits)
            .ok()
            .and_then(|e| e.account);
        match change {
            Some(change) => {
                self.ingest.policy.apply(&change, now_secs());
            }
            None => tracing::debug!("undecodable account announcement"),
        }
    }

    /// Applies the stored changes (once, and again after a lag).
    async fn load(&mut self) {
        let now = now_secs();
        match self.ingest.store.account_changes(now).await {
            Ok(changes) => {
                for c in &changes {
                    self.ingest.policy.apply(c, now);
                }
                tracing::info!(changes = changes.len(), "account policy loaded");
                self.loaded = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the account policy; retrying");
            }
        }
    }

    async fn sweep(&mut self, purge_store: bool) {
        if !self.loaded {
            self.load().await;
        }
        let now = now_secs();
        self.ingest.policy.purge(now);
        let (revocations, blocks) = self.ingest.policy.active(now);
        let gauges = &self.ingest.metrics.account_entries;
        gauges
            .with_label_values(&["revocations"])
            .set(revocations as i64);
        gauges.with_label_values(&["blocks"]).set(blocks as i64);
        if purge_store {
            match self.ingest.store.purge_account_changes(now).await {
                Ok(n) if n > 0 => tracing::debug!(rows = n, "expired account rows purged"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging account rows failed"),
            }
        }
    }
}
