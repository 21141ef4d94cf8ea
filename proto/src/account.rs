//! Account policy: revoked tokens and blocked users, held in memory by every
//! ingest and edge so that checking a connect or a post costs a hash lookup.
//!
//! The changes ([`pb::AccountChange`]) are made by ingest (`POST
//! /v1/admin/revocations`, `PUT`/`DELETE /v1/users/{user}/block`), persisted in
//! the store and announced on the bus under [`ACCOUNT_KEY`]; each process
//! applies them to its own [`AccountPolicy`] and loads the stored ones at
//! start. Applying is idempotent and order-proof: revocations only grow (a
//! set of ids, the latest `issued_before` per user), and of two block changes
//! for one user the later by `at_ms` wins, so a bus that replays an old
//! message (Kafka from an older offset) cannot undo a newer one.
//!
//! Entries go once they no longer refuse anything: a revoked id at its
//! `expire_at` (the token's own `exp`), a user revocation at its `expire_at`
//! (when the last token it covers has expired), an ended block after
//! [`BLOCK_TOMBSTONE_SECS`] (kept that long only to outvote replays).
//!
//! Sans IO: [`AccountPolicy`] is plain data with `now` passed in;
//! [`SharedPolicy`] puts it behind a read-write lock for the services.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::pb;
use crate::pb::account_change::Change;
use crate::token::{Claims, MAX_JTI_BYTES};

/// The bus key of account announcements. Channel names are `room:<id>` or
/// `group:<id>`, so this key can never be a channel an edge hosts.
pub const ACCOUNT_KEY: &str = "!account";

/// How long an ended block is remembered, so that a replayed older "block"
/// announcement does not bring it back.
pub const BLOCK_TOMBSTONE_SECS: u64 = 600;

/// Longest user id a change may name (the token's `sub` limit).
pub const MAX_USER_BYTES: usize = 128;

/// Why the policy refuses a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token (by `jti`, or all of its user's tokens issued before a time)
    /// was revoked: `401 token_revoked`.
    TokenRevoked,
    /// The user is blocked: `403 user_blocked`. `until` is unix seconds, `None`
    /// for a permanent block.
    UserBlocked { until: Option<u64> },
}

impl Refusal {
    /// The error code of HTTP answers and `error` frames.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::TokenRevoked => "token_revoked",
            Refusal::UserBlocked { .. } => "user_blocked",
        }
    }

    /// For people: what happened and what to do.
    pub fn message(self) -> String {
        match self {
            Refusal::TokenRevoked => "this token was revoked; sign in again for a new one".into(),
            Refusal::UserBlocked { until: None } => "this account is blocked".into(),
            Refusal::UserBlocked { until: Some(t) } => {
                format!("this account is blocked until {t} (unix seconds)")
            }
        }
    }
}

/// What applying a change means for open connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to close (an unblock, an already known change, an invalid one).
    None,
    /// Close connections authenticated with this `jti`.
    Token(String),
    /// Close `user`'s connections whose token was issued before
    /// `issued_before` (or has no `iat`).
    UserBefore { user: String, issued_before: u64 },
    /// Close every connection of `user`.
    Blocked(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct UserRevocation {
    issued_before: u64,
    expire_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    /// Unix seconds; `u64::MAX` = permanent; `<= now` = ended.
    until: u64,
    at_ms: i64,
}

/// Revoked tokens and blocked users of one process.
#[derive(Debug, Default, Clone)]
pub struct AccountPolicy {
    tokens: HashMap<String, u64>,
    users: HashMap<String, UserRevocation>,
    blocks: HashMap<String, Block>,
}

impl AccountPolicy {
    /// Whether `claims` may be used at `now` (unix seconds): a revoked token
    /// first (the credential is bad), then a blocked user.
    pub fn check(&self, claims: &Claims, now: u64) -> Result<(), Refusal> {
        if let Some(jti) = &claims.jti
            && self.tokens.get(jti).is_some_and(|&exp| exp > now)
        {
            return Err(Refusal::TokenRevoked);
        }
        if let Some(r) = self.users.get(&claims.sub)
            && r.expire_at > now
            && claims.iat.unwrap_or(0) < r.issued_before
        {
            return Err(Refusal::TokenRevoked);
        }
        match self.blocks.get(&claims.sub) {
            Some(b) if b.until > now => Err(Refusal::UserBlocked {
                until: (b.until != u64::MAX).then_some(b.until),
            }),
            _ => Ok(()),
        }
    }

    /// Applies one change (from a request, the bus or the store).
    pub fn apply(&mut self, change: &pb::AccountChange, now: u64) -> Effect {
        match &change.change {
            Some(Change::RevokeToken(r)) => {
                if !valid_id(&r.jti, MAX_JTI_BYTES) || r.expire_at <= now {
                    return Effect::None;
                }
                let exp = self.tokens.entry(r.jti.clone()).or_insert(0);
                *exp = (*exp).max(r.expire_at);
                Effect::Token(r.jti.clone())
            }
            Some(Change::RevokeUser(r)) => {
                if !valid_id(&r.user, MAX_USER_BYTES) || r.expire_at <= now {
                    return Effect::None;
                }
                let e = self.users.entry(r.user.clone()).or_insert(UserRevocation {
                    issued_before: 0,
                    expire_at: 0,
                });
                e.issued_before = e.issued_before.max(r.issued_before);
                e.expire_at = e.expire_at.max(r.expire_at);
                Effect::UserBefore {
                    user: r.user.clone(),
                    issued_before: e.issued_before,
                }
            }
            Some(Change::Block(b)) => {
                if !valid_id(&b.user, MAX_USER_BYTES) {
                    return Effect::None;
                }
                let until = match (b.lifted, b.until) {
                    (true, t) => t.min(now),
                    (false, 0) => u64::MAX,
                    (false, t) => t,
                };
                let newer = self
                    .blocks
                    .get(&b.user)
                    .is_none_or(|old| change.at_ms >= old.at_ms);
                if !newer {
                    return Effect::None;
                }
                self.blocks.insert(
                    b.user.clone(),
                    Block {
                        until,
                        at_ms: change.at_ms,
                    },
                );
                if until > now {
                    Effect::Blocked(b.user.clone())
                } else {
                    Effect::None
                }
            }
            None => Effect::None,
        }
    }

    /// Drops entries that refuse nothing any more; returns how many.
    pub fn purge(&mut self, now: u64) -> usize {
        let before = self.len();
        self.tokens.retain(|_, exp| *exp > now);
        self.users.retain(|_, r| r.expire_at > now);
        self.blocks
            .retain(|_, b| b.until > now || b.until.saturating_add(BLOCK_TOMBSTONE_SECS) > now);
        before - self.len()
    }

    /// Entries held (revoked ids, user revocations, blocks including ended ones).
    pub fn len(&self) -> usize {
        self.tokens.len() + self.users.len() + self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Blocks in force at `now`.
    pub fn active_blocks(&self, now: u64) -> usize {
        self.blocks.values().filter(|b| b.until > now).count()
    }

    /// Revoked token ids and user revocations in force at `now`.
    pub fn active_revocations(&self, now: u64) -> usize {
        self.tokens.values().filter(|&&e| e > now).count()
            + self.users.values().filter(|r| r.expire_at > now).count()
    }
}

fn valid_id(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max
}

/// An [`AccountPolicy`] shared by a process's tasks. Checks take the read
/// lock for one lookup; changes are rare (an admin call), so writers never
/// hold readers up for long.
#[derive(Debug, Default)]
pub struct SharedPolicy(RwLock<AccountPolicy>);

impl SharedPolicy {
    pub fn check(&self, claims: &Claims, now: u64) -> Result<(), Refusal> {
        self.read().check(claims, now)
    }

    pub fn apply(&self, change: &pb::AccountChange, now: u64) -> Effect {
        self.write().apply(change, now)
    }

    pub fn purge(&self, now: u64) -> usize {
        self.write().purge(now)
    }

    /// `(revocations, blocks)` in force at `now`, for gauges.
    pub fn active(&self, now: u64) -> (usize, usize) {
        let p = self.read();
        (p.active_revocations(now), p.active_blocks(now))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AccountPolicy> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AccountPolicy> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A change revoking the token `jti` until `expire_at`.
pub fn revoke_token(jti: &str, expire_at: u64, at_ms: i64) -> pb::AccountChange {
    pb::AccountChange {
        change: Some(Change::RevokeToken(pb::RevokeToken {
            jti: jti.to_owned(),
            expire_at,
        })),
        at_ms,
    }
}

/// A change revoking `user`'s tokens issued before `issued_before`, kept until
/// `expire_at`.
pub fn revoke_user(
    user: &str,
    issued_before: u64,
    expire_at: u64,
    at_ms: i64,
) -> pb::AccountChange {
    pb::AccountChange {
        change: Some(Change::RevokeUser(pb::RevokeUser {
            user: user.to_owned(),
            issued_before,
            expire_at,
        })),
        at_ms,
    }
}

/// A change blocking `user` until `until` (`None`: permanently), or lifting
/// the block (`lifted`, `until` = now).
pub fn block(user: &str, until: Option<u64>, lifted: bool, at_ms: i64) -> pb::AccountChange {
    pb::AccountChange {
        change: Some(Change::Block(pb::BlockUser {
            user: user.to_owned(),
            until: until.unwrap_or(0),
            lifted,
        })),
        at_ms,
    }
}

/// The bus message payload announcing `change` (key: [`ACCOUNT_KEY`]).
pub fn bus_event(change: pb::AccountChange, origin: &str) -> pb::BusEvent {
    pb::BusEvent {
        version: crate::PROTOCOL_VERSION,
        channel: String::new(),
        event: None,
        origin: origin.to_owned(),
        membership: None,
        account: Some(change),
        moderation: None,
        room_max_rate: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, jti: Option<&str>, iat: Option<u64>) -> Claims {
        Claims {
            sub: sub.into(),
            exp: 10_000,
            role: "user".into(),
            kid: None,
            jti: jti.map(Into::into),
            iat,
        }
    }

    #[test]
    fn a_revoked_id_is_refused_until_it_expires_then_dropped() {
        let mut p = AccountPolicy::default();
        let t = claims("alice", Some("t1"), Some(100));
        assert_eq!(p.check(&t, 100), Ok(()));
        assert_eq!(
            p.apply(&revoke_token("t1", 2_000, 1), 100),
            Effect::Token("t1".into())
        );
        assert_eq!(p.check(&t, 100), Err(Refusal::TokenRevoked));
        assert_eq!(
            p.check(&claims("alice", Some("t2"), Some(100)), 100),
            Ok(())
        );
        assert_eq!(p.check(&claims("alice", None, None), 100), Ok(()));
        assert_eq!(p.check(&t, 2_000), Ok(()));
        assert_eq!(p.purge(1_999), 0);
        assert_eq!(p.purge(2_000), 1);
        assert!(p.is_empty());
        // Already expired: nothing to hold.
        assert_eq!(p.apply(&revoke_token("t3", 50, 1), 100), Effect::None);
        assert_eq!(p.apply(&revoke_token("", 5_000, 1), 100), Effect::None);
        assert!(p.is_empty());
    }

    #[test]
    fn issued_before_covers_older_tokens_and_tokens_without_iat_only() {
        let mut p = AccountPolicy::default();
        let effect = p.apply(&revoke_user("alice", 500, 4_000, 1), 600);
        assert_eq!(
            effect,
            Effect::UserBefore {
                user: "alice".into(),
                issued_before: 500
            }
        );
        let refused = Err(Refusal::TokenRevoked);
        assert_eq!(
            p.check(&claims("alice", Some("a"), Some(499)), 600),
            refused
        );
        assert_eq!(p.check(&claims("alice", None, None), 600), refused);
        assert_eq!(p.check(&claims("alice", Some("b"), Some(500)), 600), Ok(()));
        assert_eq!(p.check(&claims("bob", None, Some(1)), 600), Ok(()));
        // An earlier cut-off never shrinks a later one.
        p.apply(&revoke_user("alice", 300, 3_000, 2), 600);
        assert_eq!(p.check(&claims("alice", None, Some(400)), 600), refused);
        assert_eq!(p.check(&claims("alice", None, Some(400)), 4_000), Ok(()));
        assert_eq!(p.purge(4_000), 1);
    }

    #[test]
    fn blocks_end_by_time_or_lift_and_the_later_change_wins() {
        let mut p = AccountPolicy::default();
        let bob = claims("bob", Some("x"), Some(1));
        assert_eq!(
            p.apply(&block("bob", Some(200), false, 10), 100),
            Effect::Blocked("bob".into())
        );
        assert_eq!(
            p.check(&bob, 150),
            Err(Refusal::UserBlocked { until: Some(200) })
        );
        assert_eq!(p.check(&bob, 200), Ok(()));
        p.apply(&block("bob", None, false, 20), 150);
        assert_eq!(
            p.check(&bob, 10_000),
            Err(Refusal::UserBlocked { until: None })
        );
        assert_eq!(p.apply(&block("bob", None, true, 30), 160), Effect::None);
        assert_eq!(p.check(&bob, 160), Ok(()));
        // A replay of the older block does not bring it back.
        assert_eq!(p.apply(&block("bob", None, false, 20), 170), Effect::None);
        assert_eq!(p.check(&bob, 170), Ok(()));
        assert_eq!(p.active_blocks(170), 0);
        // The lifted block is remembered for a while, then dropped.
        assert_eq!(p.purge(170), 0);
        assert_eq!(p.purge(160 + BLOCK_TOMBSTONE_SECS), 1);
    }

    #[test]
    fn shared_policy_counts_what_is_in_force() {
        let p = SharedPolicy::default();
        p.apply(&revoke_token("t", 1_000, 1), 10);
        p.apply(&revoke_user("u", 5, 1_000, 1), 10);
        p.apply(&block("b", Some(20), false, 1), 10);
        assert_eq!(p.active(10), (2, 1));
        assert_eq!(p.active(20), (2, 0));
        let refused = p.check(&claims("b", None, None), 10).unwrap_err();
        assert_eq!(refused.code(), "user_blocked");
        assert!(refused.message().contains("20"));
    }
}
