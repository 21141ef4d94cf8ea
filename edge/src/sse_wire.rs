//! The bytes of server-sent events (the WHATWG `text/event-stream` format), at
//! the bottom of the edge: the registry frames a tick's SSE event once per
//! channel here, the ring one per reliable event, and `sse.rs` its replies.
//!
//! An event is `id: <channel>:<seq>\n` (only when it carries reliable events:
//! the last seq in it), then `data: <one JSON frame>\n`, then a blank line. The
//! JSON frames are the WebSocket JSON transport's, byte for byte: they never
//! hold a raw newline (JSON escapes control characters), so one `data:` line
//! carries a whole frame. A comment (`: …`) is a heartbeat.

use bytes::{BufMut, Bytes, BytesMut};
use danmaku_proto::wsframe::Prepared;

/// Longest `Last-Event-ID` (or `after=`) value accepted: a channel name
/// (at most 70 bytes) and a seq (at most 20 digits) with room to spare.
pub const MAX_EVENT_ID: usize = 128;

/// One event carrying the JSON frame `json`; `id` is the channel and the last
/// reliable seq inside, if any. Built once and shared by every receiver.
pub fn event(id: Option<(&str, u64)>, json: &[u8]) -> Prepared {
    let mut buf = BytesMut::with_capacity(json.len() + 16 + id.map_or(0, |(c, _)| c.len() + 26));
    if let Some((channel, seq)) = id {
        buf.put_slice(b"id: ");
        buf.put_slice(channel.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(seq.to_string().as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_slice(b"data: ");
    buf.put_slice(json);
    buf.put_slice(b"\n\n");
    Prepared::raw(buf.freeze())
}

/// A comment line: ignored by every client, keeps proxies and NATs from
/// closing a quiet stream and lets the edge notice a peer that went away.
pub fn comment(text: &str) -> Prepared {
    Prepared::raw(Bytes::from(format!(": {text}\n\n")))
}

/// The stream's first bytes: how long a browser waits before reconnecting.
pub fn retry(ms: u64) -> Prepared {
    Prepared::raw(Bytes::from(format!("retry: {ms}\n\n")))
}

/// The `id:` of an event built by [`event`], read back by the writer to
/// learn what it handed to the socket: `(channel, seq)`.
pub fn written_id(wire: &[u8]) -> Option<(&str, u64)> {
    let rest = wire.strip_prefix(b"id: ")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    parse_id(std::str::from_utf8(&rest[..end]).ok()?)
}

/// Parses `<channel>:<seq>` (the channel itself holds one `:`). The channel
/// is not validated here: the caller parses it as a [`danmaku_proto::ChannelName`].
pub fn parse_id(id: &str) -> Option<(&str, u64)> {
    if id.len() > MAX_EVENT_ID {
        return None;
    }
    let (channel, seq) = id.rsplit_once(':')?;
    if channel.is_empty() || seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((channel, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_data_line_with_the_id_of_its_last_seq() {
        let e = event(Some(("room:1", 18)), br#"{"type":"batch"}"#);
        assert_eq!(
            &e.wire()[..],
            b"id: room:1:18\ndata: {\"type\":\"batch\"}\n\n"
        );
        assert_eq!(e.payload(), e.wire().clone());
        assert_eq!(written_id(e.wire()), Some(("room:1", 18)));
        let plain = event(None, b"{}");
        assert_eq!(&plain.wire()[..], b"data: {}\n\n");
        assert_eq!(written_id(plain.wire()), None);
    }

    #[test]
    fn event_ids_parse_strictly() {
        assert_eq!(parse_id("group:7:12"), Some(("group:7", 12)));
        // Not a channel, but shaped like an id: the caller's ChannelName::parse refuses it.
        assert_eq!(parse_id("room:1"), Some(("room", 1)));
        for bad in [
            "",
            "room:1:",
            ":5",
            "room:1:-3",
            "room:1:1x",
            "room:1:99999999999999999999999",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        let huge = format!("room:1:{}", "9".repeat(MAX_EVENT_ID));
        assert_eq!(parse_id(&huge), None);
    }
}
