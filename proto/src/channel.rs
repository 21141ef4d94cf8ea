//! Channel names: `room:<id>` (live room, membership = who is connected) and
//! `group:<id>` (persistent membership). Parsed once at the edge of the system
//! so the rest of the code holds a name known to be valid and cheap to clone.

use std::fmt;
use std::sync::Arc;

use crate::error::ProtoError;
use crate::id::is_valid_id;

/// What a channel is; decides membership and which message kinds it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    Room,
    Group,
}

/// A validated channel name. Cloning is a refcount bump.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `room:<id>` / `group:<id>` with id `[A-Za-z0-9_-]{1,64}`.
    pub fn parse(s: &str) -> Result<Self, ProtoError> {
        if kind_of(s).is_none() {
            return Err(ProtoError::BadChannel(truncate(s)));
        }
        Ok(ChannelName(Arc::from(s)))
    }

    pub fn kind(&self) -> ChannelKind {
        // Validated at construction.
        kind_of(&self.0).unwrap_or(ChannelKind::Room)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn kind_of(s: &str) -> Option<ChannelKind> {
    let (kind, id) = if let Some(id) = s.strip_prefix("room:") {
        (ChannelKind::Room, id)
    } else if let Some(id) = s.strip_prefix("group:") {
        (ChannelKind::Group, id)
    } else {
        return None;
    };
    is_valid_id(id).then_some(kind)
}

/// Keeps error messages bounded when a peer sends a huge bogus name.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rooms_and_groups() {
        assert_eq!(
            ChannelName::parse("room:42").unwrap().kind(),
            ChannelKind::Room
        );
        assert_eq!(
            ChannelName::parse("group:a_b-C9").unwrap().kind(),
            ChannelKind::Group
        );
        let max = format!("room:{}", "x".repeat(64));
        assert!(ChannelName::parse(&max).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "", "room:", "room", "chan:1", "room:a b", "room:é", "ROOM:1", "room:1:2",
        ] {
            let err = ChannelName::parse(bad).unwrap_err();
            assert_eq!(err.code(), "bad_channel", "{bad}");
        }
        let long = format!("room:{}", "x".repeat(65));
        assert!(ChannelName::parse(&long).is_err());
    }
}
