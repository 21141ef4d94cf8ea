//! Moderation on the ingest side: word lists, room moderators (房管), timed
//! mutes, room settings (slow mode, 全员禁言 `mute_all`, `max_rate`) and the
//! audit trail of every change.
//!
//! The store is the truth: every change is one [`Store::moderate`] call, which
//! applies it and writes its audit row in one transaction. Each ingest node
//! keeps the stored policy in memory ([`Moderation`](crate::screening::Moderation)) so that checking a post
//! costs no store round trip, and keeps it fresh three ways:
//!
//! 1. at start it loads every scope that has a policy ([`Ingest::start_moderation`]);
//! 2. the node that made a change reloads that scope before answering, then
//!    announces it on the bus (`BusEvent.moderation`, key [`MODERATION_BUS_KEY`]),
//!    and every other node reloads the scope when the announcement arrives
//!    ([`sync`]): well under a second over Kafka;
//! 3. every [`sync::HEAD_POLL_EVERY`] each node checks the audit trail's head
//!    and reloads everything when it moved unannounced, which heals a lost
//!    announcement (a publish that failed after the commit, a subscription
//!    that lagged).
//!
//! A word list is compiled into its automata when it is loaded, never per
//! message ([`filter`](crate::screening::filter)). Slow mode's "last post" times are per node: a user
//! whose posts are spread over N ingest nodes by a load balancer could post N
//! times per window (pin users to a node, e.g. by hashing the token, to avoid it).
//!
//! Endpoints, one module each: [`wordlist`], [`moderators`], [`mutes`],
//! [`settings`], [`audit`].

pub mod audit;
pub mod moderators;
pub mod mutes;
pub mod settings;
pub mod sync;
pub mod wordlist;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use danmaku_proto::token::Claims;
use danmaku_proto::{ChannelName, PROTOCOL_VERSION, frame, now_ms, pb};
use danmaku_store::{GLOBAL_SCOPE, ModerationAction, ModerationChange, Policy, RoomSettings};

use crate::error::ApiError;
use crate::node::Ingest;
use crate::reliable::APP_ROLE;
pub use crate::screening::MAX_SLOW_MODE_SECS;
use crate::screening::RoomPolicy;
use crate::screening::filter::{self, Filter, Verdict, WordList};

/// The bus key of moderation announcements. Never a channel name (those are
/// `room:…` / `group:…`), so edges drop these at their hosted-channel lookup
/// (counted as `no_local_members`) without decoding them.
pub const MODERATION_BUS_KEY: &str = "!moderation";
/// Longest mute, in seconds (30 days).
pub const MAX_MUTE_SECS: i64 = 30 * 86_400;
/// Highest `max_rate`, danmaku per second per room.
pub const MAX_ROOM_RATE: i64 = 1_000_000;
/// Largest word-list body, in bytes: 100,000 words of a few characters each.
pub const MAX_WORDLIST_BODY_BYTES: usize = 4 << 20;

/// Who may call a moderation endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allowed {
    /// `app` tokens only.
    App,
    /// `app` tokens and the room's moderators.
    AppOrModerator,
}

/// What a post became after moderation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Screened {
    /// The text to publish (masked when `masked > 0`).
    pub text: String,
    /// Characters replaced by `*`.
    pub masked: usize,
}

impl Ingest {
    /// Refuses a caller who may not act on `channel` (`None`: the global list)
    /// with `403 forbidden`.
    pub(crate) fn authorize(
        &self,
        claims: &Claims,
        channel: Option<&ChannelName>,
        allowed: Allowed,
    ) -> Result<(), ApiError> {
        if claims.role == APP_ROLE {
            return Ok(());
        }
        let moderator = allowed == Allowed::AppOrModerator
            && channel.is_some_and(|c| {
                self.moderation
                    .room(c.as_str())
                    .is_some_and(|r| r.is_moderator(&claims.sub))
            });
        if moderator {
            return Ok(());
        }
        Err(ApiError::NotAllowed(match (allowed, channel) {
            (Allowed::AppOrModerator, Some(c)) => {
                format!("only app tokens and moderators of {c} may do this")
            }
            _ => "only app tokens may do this".into(),
        }))
    }

    /// Applies the room policy and the word lists to a post by `claims.sub`:
    /// a running mute, `mute_all`, block words, slow mode; mask words. Gifts
    /// are purchases: mutes, `mute_all` and slow mode do not hold them back
    /// (the word lists still apply to their text).
    pub(crate) fn screen_post(
        &self,
        channel: &ChannelName,
        claims: &Claims,
        kind: pb::Kind,
        text: String,
    ) -> Result<Screened, ApiError> {
        let room = self.moderation.room(channel.as_str());
        let now = now_ms();
        let privileged =
            claims.role == APP_ROLE || room.as_ref().is_some_and(|r| r.is_moderator(&claims.sub));
        let held = kind != pb::Kind::Gift && !privileged;
        if held && let Some(room) = &room {
            // The user's own mute first: it says until when.
            if let Some(until_ms) = room.muted_until(&claims.sub, now) {
                return Err(self.refuse(ApiError::Muted {
                    channel: channel.to_string(),
                    until_ms,
                    now_ms: now,
                }));
            }
            if room.settings.mute_all {
                return Err(self.refuse(ApiError::RoomMuted(channel.to_string())));
            }
        }
        let global = self.moderation.global();
        let filters = std::iter::once(&*global).chain(room.as_deref().map(|r| &*r.filter));
        let screened = match filter::check(&text, filters) {
            Verdict::Clean => Screened { text, masked: 0 },
            Verdict::Blocked => {
                self.metrics
                    .filtered_total
                    .with_label_values(&["blocked"])
                    .inc();
                return Err(self.refuse(ApiError::BlockedContent));
            }
            Verdict::Masked { text, masked } => {
                self.metrics
                    .filtered_total
                    .with_label_values(&["masked"])
                    .inc();
                Screened { text, masked }
            }
        };
        if held && let Some(room) = &room {
            let window = room.settings.slow_mode_secs;
            if window > 0 {
                self.slow_mode(channel, &claims.sub, Duration::from_secs(window))?;
            }
        }
        Ok(screened)
    }

    /// Records a post in slow mode, or refuses it when the user's previous one
    /// is younger than `window`.
    fn slow_mode(
        &self,
        channel: &ChannelName,
        user: &str,
        window: Duration,
    ) -> Result<(), ApiError> {
        let now = Instant::now();
        let key = (channel.as_str().to_owned(), user.to_owned());
        let mut last = match self.moderation.last_post.entry(key) {
            dashmap::Entry::Vacant(v) => {
                v.insert(now);
                return Ok(());
            }
            dashmap::Entry::Occupied(o) => o.into_ref(),
        };
        let since = now.saturating_duration_since(*last);
        if since < window {
            let wait = window - since;
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(self.refuse(ApiError::SlowMode {
                channel: channel.to_string(),
                window_secs: window.as_secs(),
                retry_after_secs: secs.max(1),
            }));
        }
        *last = now;
        Ok(())
    }

    /// Counts a moderation refusal of a post.
    fn refuse(&self, error: ApiError) -> ApiError {
        self.metrics
            .moderation_refused_total
            .with_label_values(&[error.code()])
            .inc();
        error
    }

    /// Stores `change` (with its audit row), reloads the scope here and tells
    /// the other nodes. Returns whether the state changed.
    pub(crate) async fn apply_moderation(
        &self,
        scope: &str,
        actor: &str,
        change: ModerationChange,
    ) -> Result<bool, ApiError> {
        let what = match &change {
            ModerationChange::SetWordlist { .. } => "wordlist",
            ModerationChange::AddModerator { .. } | ModerationChange::RemoveModerator { .. } => {
                "moderators"
            }
            ModerationChange::Mute { .. } | ModerationChange::Unmute { .. } => "mutes",
            ModerationChange::Settings(_) => "settings",
        };
        let action = ModerationAction {
            scope: scope.to_owned(),
            actor: actor.to_owned(),
            change,
            ts_ms: now_ms(),
        };
        let changed = self
            .store_call("moderate", self.store.moderate(&action))
            .await?;
        self.metrics
            .moderation_actions_total
            .with_label_values(&[what])
            .inc();
        tracing::info!(scope, actor, what, changed, "moderation change");
        if let Err(e) = self.reload_scope(scope, "local").await {
            // Stored but not loaded here: the periodic reload will pick it up.
            tracing::warn!(scope, error = %e, "reloading after a change failed");
        }
        self.announce(scope, what).await;
        Ok(changed)
    }

    /// Publishes `BusEvent.moderation` for `scope`. A failure is logged and
    /// counted, not returned: the change is committed, and other nodes pick it
    /// up when they see the audit trail's head move (within
    /// [`sync::HEAD_POLL_EVERY`]).
    async fn announce(&self, scope: &str, what: &str) {
        let event = pb::BusEvent {
            version: PROTOCOL_VERSION,
            channel: scope.to_owned(),
            event: None,
            origin: self.config.node_id.clone(),
            membership: None,
            account: None,
            moderation: Some(pb::ModerationChanged {
                scope: scope.to_owned(),
                what: what.to_owned(),
                ..Default::default()
            }),
        };
        let key = bytes::Bytes::from_static(MODERATION_BUS_KEY.as_bytes());
        if let Err(e) = self.bus.publish(key, frame::encode(&event)).await {
            self.metrics.moderation_announce_failures_total.inc();
            tracing::warn!(scope, error = %e, "moderation change not announced; other nodes see it by the audit trail's head within seconds");
        }
    }

    /// Tells the edges hosting `channel` that `user` is muted until `until_ms`,
    /// so that user's own connections get a `notice` frame. Published under the
    /// channel's key (in order with its messages). A failure is logged and
    /// counted: the mute holds whether or not the user was told.
    pub(crate) async fn publish_mute_notice(
        &self,
        channel: &ChannelName,
        user: &str,
        until_ms: i64,
    ) {
        let event = pb::BusEvent {
            version: PROTOCOL_VERSION,
            channel: channel.as_str().to_owned(),
            event: None,
            origin: self.config.node_id.clone(),
            membership: None,
            account: None,
            moderation: Some(pb::ModerationChanged {
                scope: channel.as_str().to_owned(),
                what: "mute".to_owned(),
                user: user.to_owned(),
                until_ms,
            }),
        };
        let key = bytes::Bytes::copy_from_slice(channel.as_str().as_bytes());
        if let Err(e) = self.bus.publish(key, frame::encode(&event)).await {
            self.metrics.moderation_announce_failures_total.inc();
            tracing::warn!(%channel, user, error = %e, "mute notice not published");
        }
    }

    /// Reads `scope`'s policy from the store and swaps it in. `trigger` labels
    /// `moderation_reloads_total`.
    pub(crate) async fn reload_scope(&self, scope: &str, trigger: &str) -> Result<(), ApiError> {
        let _one_at_a_time = self.moderation.reload.lock().await;
        let result = self.load_scope(scope).await;
        self.count_reload(trigger, &result);
        result
    }

    /// Reloads every stored scope and forgets scopes no longer stored.
    pub(crate) async fn reload_all(&self, trigger: &str) -> Result<(), ApiError> {
        let _one_at_a_time = self.moderation.reload.lock().await;
        let result = async {
            let scopes = self
                .store_call("policy", self.store.policy_scopes(now_ms()))
                .await?;
            self.load_scope(GLOBAL_SCOPE).await?;
            for scope in &scopes {
                if scope != GLOBAL_SCOPE {
                    self.load_scope(scope).await?;
                }
            }
            let keep: HashSet<&String> = scopes.iter().collect();
            self.moderation
                .rooms
                .retain(|scope, _| keep.contains(scope));
            Ok(())
        }
        .await;
        self.count_reload(trigger, &result);
        self.moderation.prune_last_posts();
        result
    }

    fn count_reload(&self, trigger: &str, result: &Result<(), ApiError>) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .moderation_reloads_total
            .with_label_values(&[trigger, outcome])
            .inc();
        let (global, rooms) = self.moderation.words();
        self.metrics
            .wordlist_words
            .with_label_values(&["global"])
            .set(global as i64);
        self.metrics
            .wordlist_words
            .with_label_values(&["rooms"])
            .set(rooms as i64);
        self.metrics
            .active_mutes
            .set(self.moderation.active_mutes(now_ms()) as i64);
    }

    /// Loads one scope (caller holds the reload lock). Compiling a big list
    /// takes a while, so it runs on the blocking pool.
    async fn load_scope(&self, scope: &str) -> Result<(), ApiError> {
        let policy = self
            .store_call("policy", self.store.policy(scope, now_ms()))
            .await?;
        let Policy {
            block,
            mask,
            moderators,
            mutes,
            settings,
        } = policy;
        let list = WordList { block, mask };
        let loaded = if scope == GLOBAL_SCOPE {
            Some(self.moderation.global())
        } else {
            self.moderation.room(scope).map(|r| r.filter.clone())
        };
        // The periodic reload finds most lists unchanged: keep their automata.
        let filter = match loaded {
            Some(f) if f.compiled_from(&list) => f,
            _ => Arc::new(
                tokio::task::spawn_blocking(move || Filter::compile(&list))
                    .await
                    .map_err(|e| ApiError::Internal(format!("compiling {scope}'s word list: {e}")))?
                    .map_err(|e| ApiError::Internal(format!("stored word list of {scope}: {e}")))?,
            ),
        };
        if scope == GLOBAL_SCOPE {
            self.moderation.set_global(filter);
            return Ok(());
        }
        let room = RoomPolicy {
            filter,
            moderators: moderators.into_iter().collect(),
            mutes: mutes.into_iter().collect(),
            settings,
        };
        if room.filter.is_empty()
            && room.moderators.is_empty()
            && room.mutes.is_empty()
            && room.settings == RoomSettings::default()
        {
            self.moderation.rooms.remove(scope);
        } else {
            self.moderation
                .rooms
                .insert(scope.to_owned(), Arc::new(room));
        }
        Ok(())
    }
}
