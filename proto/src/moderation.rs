//! Moderation announcements on the bus that edges act on.
//!
//! Ingest announces every committed moderation change under
//! [`MODERATION_BUS_KEY`] (never a channel name: channel names contain a
//! `:` after `room` or `group`). Other ingest nodes reload the named scope;
//! edges decode only these messages' bans ([`BAN`]), which they keep in
//! memory to refuse `join`, and on which the banned user's connections leave
//! the channel.

use crate::pb;

/// The bus key of moderation announcements.
pub const MODERATION_BUS_KEY: &str = "!moderation";

/// `ModerationChanged.what` of a ban (or, with `lifted`, its end).
pub const BAN: &str = "ban";

/// The bus event announcing that `user` is banned from `channel` until
/// `until_ms` (ms since the epoch; 0 = permanently), or, with `lifted`, that
/// the ban was lifted.
pub fn ban_event(
    channel: &str,
    user: &str,
    until_ms: i64,
    lifted: bool,
    origin: &str,
) -> pb::BusEvent {
    pb::BusEvent {
        version: crate::PROTOCOL_VERSION,
        channel: channel.to_owned(),
        event: None,
        origin: origin.to_owned(),
        membership: None,
        account: None,
        moderation: Some(pb::ModerationChanged {
            scope: channel.to_owned(),
            what: BAN.to_owned(),
            user: user.to_owned(),
            until_ms,
            lifted,
        }),
        room_max_rate: 0,
    }
}

/// Whether a bus message key is [`MODERATION_BUS_KEY`].
pub fn is_moderation_key(key: &[u8]) -> bool {
    key == MODERATION_BUS_KEY.as_bytes()
}
