//! Account protection on the edge: refuse revoked tokens and blocked users at
//! connect, and close the open connections a new revocation or block covers.
//!
//! The check at connect is [`Account::register`], called when the session
//! starts (`connection.rs`, both transports): the connection is upgraded (a
//! WebSocket) or authenticated (QUIC) first and then answered with an `error`
//! frame (`token_revoked`, `user_blocked`) and closed, because a browser
//! cannot read the status of a refused WebSocket upgrade, only frames.
//!
//! The policy (`danmaku_proto::account`) is loaded from the store at start and
//! kept in step by the bus consumer (`consumer.rs`), which hands every message
//! keyed [`ACCOUNT_KEY`] to [`Account::on_announcement`]. A check is one read
//! lock and up to three hash lookups.
//!
//! To close connections without a scan, every admitted connection is indexed
//! by user with its token's `jti` and `iat` ([`Account::register`], undone when
//! the session drops). Closing queues an `error` frame (`token_revoked` or
//! `user_blocked`) and a close on the connection's reply queue, which its
//! writer drains ahead of ticks; the connection task then sees the writer gone
//! and cleans up as for any closed peer. Registering re-checks the policy
//! after the entry is in the index, so a change that lands between the
//! handshake's check and the registration is seen by one side or the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use danmaku_proto::account::{ACCOUNT_KEY, Effect, Refusal, SharedPolicy};
use danmaku_proto::token::{Claims, now_secs};
use danmaku_proto::{Limits, frame};
use danmaku_store::Store;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::channels::ConnId;
use crate::metrics::AccountMetrics;
use crate::reply::{CloseReason, Reply};

/// How often expired entries leave the memory (and the gauges are refreshed).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// The token facts a connection is indexed by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TokenFacts {
    /// `exp`, unix seconds.
    pub exp: u64,
    pub jti: Option<Box<str>>,
    pub iat: Option<u64>,
}

impl From<&Claims> for TokenFacts {
    fn from(c: &Claims) -> Self {
        TokenFacts {
            exp: c.exp,
            jti: c.jti.as_deref().map(Into::into),
            iat: c.iat,
        }
    }
}

/// One open connection of a user.
struct Open {
    conn: ConnId,
    jti: Option<Box<str>>,
    iat: Option<u64>,
    replies: mpsc::Sender<Reply>,
}

/// The edge's policy and its index of open connections by user.
pub(crate) struct Account {
    policy: SharedPolicy,
    conns: DashMap<Arc<str>, Vec<Open>>,
    metrics: AccountMetrics,
    limits: Limits,
    /// Whether the stored policy has been loaded (else the sweep retries).
    loaded: AtomicBool,
}

impl Account {
    pub fn new(metrics: AccountMetrics, limits: Limits) -> Self {
        Account {
            policy: SharedPolicy::default(),
            conns: DashMap::new(),
            metrics,
            limits,
            loaded: AtomicBool::new(false),
        }
    }

    /// Whether `claims` may be used now (a fresh `auth` frame's token).
    pub fn check(&self, claims: &Claims) -> Result<(), Refusal> {
        self.policy.check(claims, now_secs())
    }

    /// Indexes an admitted connection; refuses it if the policy now does.
    pub fn register(
        &self,
        user: &str,
        conn: ConnId,
        token: &TokenFacts,
        replies: mpsc::Sender<Reply>,
    ) -> Result<(), Refusal> {
        self.conns.entry(Arc::from(user)).or_default().push(Open {
            conn,
            jti: token.jti.clone(),
            iat: token.iat,
            replies,
        });
        let recheck = self.policy.check(&claims_of(user, token), now_secs());
        if recheck.is_err() {
            self.unregister(user, conn);
        }
        recheck
    }

    /// A fresh `auth` frame replaced the connection's token.
    pub fn refresh(&self, user: &str, conn: ConnId, token: &TokenFacts) {
        if let Some(mut open) = self.conns.get_mut(user)
            && let Some(o) = open.iter_mut().find(|o| o.conn == conn)
        {
            o.jti = token.jti.clone();
            o.iat = token.iat;
        }
    }

    /// Forgets a connection (its session is gone).
    pub fn unregister(&self, user: &str, conn: ConnId) {
        self.conns.remove_if_mut(user, |_, open| {
            open.retain(|o| o.conn != conn);
            open.is_empty()
        });
    }

    /// Applies a bus message keyed [`ACCOUNT_KEY`]; false if it was not a
    /// decodable account change.
    pub fn on_announcement(&self, payload: &[u8]) -> bool {
        let Some(change) = frame::decode_bus_event(payload, &self.limits)
            .ok()
            .and_then(|e| e.account)
        else {
            return false;
        };
        let effect = self.policy.apply(&change, now_secs());
        self.close_covered(&effect);
        true
    }

    /// Closes the open connections `effect` covers; returns how many.
    fn close_covered(&self, effect: &Effect) -> usize {
        let (refusal, user, covered) = match effect {
            Effect::None => return 0,
            Effect::Token(jti) => (Refusal::TokenRevoked, None, Covered::Token(jti)),
            Effect::UserBefore {
                user,
                issued_before,
            } => (
                Refusal::TokenRevoked,
                Some(user.as_str()),
                Covered::IssuedBefore(*issued_before),
            ),
            Effect::Blocked(user) => (
                // The block in force (with its end), for the error message.
                self.policy
                    .check(&claims_of(user, &TokenFacts::default()), now_secs())
                    .err()
                    .unwrap_or(Refusal::UserBlocked { until: None }),
                Some(user.as_str()),
                Covered::All,
            ),
        };
        let mut closed = 0;
        let mut close_all = |open: &Vec<Open>| {
            for o in open.iter().filter(|o| covered.covers(o)) {
                close(o, refusal);
                closed += 1;
            }
        };
        match user {
            Some(user) => {
                if let Some(open) = self.conns.get(user) {
                    close_all(&open);
                }
            }
            // A revoked id names no user: look through everyone (rare: an admin call).
            None => {
                for open in self.conns.iter() {
                    close_all(&open);
                }
            }
        }
        if closed > 0 {
            self.metrics
                .closes
                .with_label_values(&[refusal.code()])
                .inc_by(closed as u64);
            tracing::info!(?effect, closed, "connections closed by an account change");
        }
        closed
    }

    /// Applies the stored changes; false (logged) when the store cannot be read.
    pub async fn load(&self, store: &dyn Store) -> bool {
        let now = now_secs();
        match store.account_changes(now).await {
            Ok(changes) => {
                for c in &changes {
                    let effect = self.policy.apply(c, now);
                    self.close_covered(&effect);
                }
                self.loaded.store(true, Ordering::Relaxed);
                tracing::debug!(changes = changes.len(), "account policy loaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the account policy; retrying");
                false
            }
        }
    }

    /// The bus lagged: a change may be lost, so load the stored state again.
    pub fn reload_later(&self) {
        self.loaded.store(false, Ordering::Relaxed);
    }

    /// Drops expired entries and refreshes the gauges every few seconds; loads
    /// the stored policy while it is not loaded.
    pub async fn sweep(self: Arc<Self>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.loaded.load(Ordering::Relaxed) {
                self.load(&*store).await;
            }
            let now = now_secs();
            self.policy.purge(now);
            let (revocations, blocks) = self.policy.active(now);
            let g = &self.metrics.entries;
            g.with_label_values(&["revocations"])
                .set(revocations as i64);
            g.with_label_values(&["blocks"]).set(blocks as i64);
        }
    }
}

/// Which of a user's open connections a change covers.
enum Covered<'a> {
    /// Those authenticated with this `jti`.
    Token(&'a str),
    /// Those whose token was issued before this (or has no `iat`).
    IssuedBefore(u64),
    All,
}

impl Covered<'_> {
    fn covers(&self, o: &Open) -> bool {
        match self {
            Covered::Token(jti) => o.jti.as_deref() == Some(*jti),
            Covered::IssuedBefore(t) => o.iat.unwrap_or(0) < *t,
            Covered::All => true,
        }
    }
}

/// What the policy needs to know of an indexed connection's token.
fn claims_of(user: &str, token: &TokenFacts) -> Claims {
    Claims {
        sub: user.to_owned(),
        exp: token.exp,
        role: String::new(),
        kid: None,
        jti: token.jti.as_deref().map(Into::into),
        iat: token.iat,
    }
}

/// Queues the `error` frame and the close on the connection's reply queue
/// (its writer sends both, then closes). A full queue (a peer that stopped
/// reading) gets them from a task that waits up to a second for room; such a
/// connection is closed by its idle timeout at the latest.
fn close(open: &Open, refusal: Refusal) {
    let error = || Reply::Frame(Box::new(frame::error(refusal.code(), refusal.message())));
    let close = Reply::Close(CloseReason::AccountRefused);
    if open.replies.try_send(error()).is_ok() {
        if let Err(mpsc::error::TrySendError::Full(close)) = open.replies.try_send(close) {
            let replies = open.replies.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), replies.send(close)).await;
            });
        }
        return;
    }
    let replies = open.replies.clone();
    let error = error();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            replies.send(error).await?;
            replies.send(close).await
        })
        .await;
    });
}

/// Whether a bus message key is the account announcements' key.
pub(crate) fn is_account_key(key: &[u8]) -> bool {
    key == ACCOUNT_KEY.as_bytes()
}

#[cfg(test)]
mod tests {
    use danmaku_proto::account;
    use danmaku_proto::pb::server_frame::Body;
    use prometheus::Registry;

    use super::*;

    fn facts(jti: &str, iat: u64) -> TokenFacts {
        TokenFacts {
            exp: u64::MAX,
            jti: Some(jti.into()),
            iat: Some(iat),
        }
    }

    fn announce(change: danmaku_proto::pb::AccountChange) -> bytes::Bytes {
        frame::encode(&account::bus_event(change, "test"))
    }

    fn error_code(r: Option<Reply>) -> String {
        match r {
            Some(Reply::Frame(f)) => match f.body {
                Some(Body::Error(e)) => e.code,
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn changes_close_exactly_the_connections_they_cover() {
        let account = Account::new(
            AccountMetrics::register(&Registry::new()).unwrap(),
            Limits::default(),
        );
        let (a1, mut a1_rx) = mpsc::channel(8);
        let (a2, mut a2_rx) = mpsc::channel(8);
        let (b1, mut b1_rx) = mpsc::channel(8);
        account.register("alice", 1, &facts("t1", 100), a1).unwrap();
        account.register("alice", 2, &facts("t2", 200), a2).unwrap();
        account.register("bob", 3, &facts("t3", 100), b1).unwrap();
        let now = now_secs();
        // One token by id: alice's first connection only.
        assert!(account.on_announcement(&announce(account::revoke_token("t1", now + 60, 1))));
        assert_eq!(error_code(a1_rx.try_recv().ok()), "token_revoked");
        assert!(matches!(
            a1_rx.try_recv(),
            Ok(Reply::Close(CloseReason::AccountRefused))
        ));
        assert!(a2_rx.try_recv().is_err() && b1_rx.try_recv().is_err());
        // Issued before 150: alice's second token is newer.
        account.on_announcement(&announce(account::revoke_user("alice", 150, now + 60, 1)));
        assert!(a2_rx.try_recv().is_err());
        // A block: every connection of bob.
        account.on_announcement(&announce(account::block("bob", None, false, 1)));
        assert_eq!(error_code(b1_rx.try_recv().ok()), "user_blocked");
        // Registering against the policy refuses what it covers.
        let (b2, _b2_rx) = mpsc::channel(8);
        assert_eq!(
            account.register("bob", 4, &facts("t4", now), b2),
            Err(Refusal::UserBlocked { until: None })
        );
        account.unregister("alice", 1);
        account.unregister("alice", 2);
        account.unregister("bob", 3);
        assert!(account.conns.is_empty(), "nothing left behind");
        assert!(!account.on_announcement(b"garbage"));
    }
}
