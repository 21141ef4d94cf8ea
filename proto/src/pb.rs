//! Types generated from `danmaku.proto` (by `build.rs`), and the names of
//! event kinds used in JSON and HTTP bodies.
#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/danmaku.v1.rs"));

impl Kind {
    /// The name used in JSON and HTTP bodies (`danmaku`, `gift`, `chat`,
    /// `retract`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Danmaku => "danmaku",
            Kind::Gift => "gift",
            Kind::Chat => "chat",
            Kind::Retract => "retract",
        }
    }

    /// Parses the name of a kind a client may post (`danmaku`, `gift`,
    /// `chat`; never `retract`, which only moderators cause).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "danmaku" => Some(Kind::Danmaku),
            "gift" => Some(Kind::Gift),
            "chat" => Some(Kind::Chat),
            _ => None,
        }
    }

    /// Parses any kind name found in a JSON event, `retract` included.
    pub fn from_event_name(name: &str) -> Option<Self> {
        match name {
            "retract" => Some(Kind::Retract),
            other => Self::from_name(other),
        }
    }

    /// Reliable kinds are persisted with a seq and acked; danmaku is best effort.
    pub fn is_reliable(self) -> bool {
        matches!(self, Kind::Gift | Kind::Chat)
    }
}
