//! What one viewer makes of the frames it receives, sans IO.
//!
//! A **counting** viewer never decompresses: from a protobuf `ServerFrame` it
//! reads the outer `Batch` and adds its `count` (a JSON batch: it counts the
//! events' `{"kind":"` openings without parsing them); from a `Reliable` frame it
//! takes the gift's `seq`, remembers it in a bitset and acks it. Loss is still
//! exact per viewer: the coordinator knows how many danmaku and which gift seqs
//! ingest accepted for the room. A **probe** viewer decodes everything and
//! records latency, per-sender order and duplicates ([`crate::tally`]).
//!
//! NATS (peer mode) carries one message per event: `MSG <subject> <sid> <len>`;
//! a gift is a message whose JSON says `"kind":"gift"`.

use danmaku_proto::json::{JsonEvent, JsonServerFrame};
use danmaku_proto::pb::{self, server_frame::Body};
use danmaku_proto::{Limits, decode_batch, frame};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::tally::{SeqSet, ViewerLog, parse_post_text};

/// The protocol a viewer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Wire {
    WsPb,
    WsJson,
    Quic,
    /// NATS text protocol over WebSocket (peer mode).
    Nats,
}

impl Wire {
    pub fn name(self) -> &'static str {
        match self {
            Wire::WsPb => "ws-pb",
            Wire::WsJson => "ws-json",
            Wire::Quic => "quic",
            Wire::Nats => "nats-ws",
        }
    }
}

impl std::str::FromStr for Wire {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ws-pb" | "pb" | "ws" => Ok(Wire::WsPb),
            "ws-json" | "json" => Ok(Wire::WsJson),
            "quic" => Ok(Wire::Quic),
            "nats" | "nats-ws" => Ok(Wire::Nats),
            o => Err(format!("unknown transport {o:?} (ws-pb, ws-json, quic)")),
        }
    }
}

/// Latency samples a probe took from one message: `(lane, ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Danmaku,
    Gift,
}

/// What a received message asks the viewer to do.
#[derive(Debug, Default, PartialEq)]
pub struct Reply {
    /// Frames to send back (join, ack, NATS `PONG`/`CONNECT`), already encoded
    /// for the wire (WebSocket payloads; the opcode follows the wire).
    pub send: Vec<Vec<u8>>,
    /// The viewer is now a member of its room.
    pub joined: bool,
    /// The server refused something (error frame, `-ERR`): the message.
    pub error: Option<String>,
}

/// One viewer's counters.
#[derive(Debug, Default, Clone)]
pub struct ViewerCounts {
    /// Danmaku events received for the room (batch `count`s summed; NATS messages).
    pub danmaku: u64,
    /// Data frames received: batches and reliable frames (NATS: WS frames with a MSG).
    pub frames: u64,
    /// Gift events received, repeats included.
    pub gifts: u64,
    /// Gift seqs seen (edge), or post numbers (NATS probes).
    pub gift_seqs: SeqSet,
    pub gift_duplicates: u64,
    pub gift_order_violations: u64,
    max_gift_seq: u64,
    /// Error frames received.
    pub errors: u64,
    /// Probes only: per-sender record of danmaku.
    pub probe: Option<ViewerLog>,
    /// NATS only: bytes of an incomplete protocol line carried to the next frame.
    carry: Vec<u8>,
    /// Acks are cumulative and sent at most this often (ms; 0 = one per gift):
    /// in a 100k room an ack per gift per viewer would be as many inbound
    /// frames as the edges write. Edges resend only after their (longer)
    /// retransmit timeout, so a late ack costs nothing.
    ack_interval_ms: i64,
    /// Highest gift seq received with every seq before it.
    contiguous: u64,
    acked: u64,
    last_ack_ms: i64,
}

impl ViewerCounts {
    pub fn new(probe: bool) -> Self {
        ViewerCounts {
            probe: probe.then(ViewerLog::default),
            ..ViewerCounts::default()
        }
    }

    /// Acks at most every `ms` milliseconds (cumulative), instead of per gift.
    pub fn with_ack_interval(mut self, ms: u64) -> Self {
        self.ack_interval_ms = i64::try_from(ms).unwrap_or(i64::MAX);
        self
    }

    /// Follows the edge's ack pace (`AuthOk`, or the room's `Joined`) where
    /// it is slower than our own, as the SDKs do.
    fn follow_ack_pace(&mut self, ack_interval_ms: u32) {
        self.ack_interval_ms = self.ack_interval_ms.max(i64::from(ack_interval_ms));
    }

    /// When the cumulative ack owed falls due (ms since the epoch), if one is
    /// owed. The viewer also acks on this timer, as the SDKs do: acking only
    /// when a frame arrives left the last gifts of a run unacked once the
    /// frames stopped, and the edge resent them after its stall timeout —
    /// duplicates in the report that an SDK client does not cause.
    pub fn ack_owed_at(&self) -> Option<i64> {
        (self.contiguous > self.acked)
            .then(|| self.last_ack_ms.saturating_add(self.ack_interval_ms))
    }

    /// The ack frame for `wire` to send at `now_ms`, if one is due.
    pub fn flush_ack(&mut self, wire: Wire, room: &str, now_ms: i64) -> Option<Vec<u8>> {
        self.ack_due(now_ms).map(|seq| ack_frame(wire, room, seq))
    }

    /// The cumulative ack to send now, if one is due.
    fn ack_due(&mut self, now_ms: i64) -> Option<u64> {
        if self.contiguous <= self.acked
            || now_ms.saturating_sub(self.last_ack_ms) < self.ack_interval_ms
        {
            return None;
        }
        self.acked = self.contiguous;
        self.last_ack_ms = now_ms;
        Some(self.acked)
    }

    /// Records gift `seq` (repeats and order are counted).
    pub fn on_gift(&mut self, seq: u64) {
        self.gifts += 1;
        // A viewer that joined mid-run starts at its first gift, not at 1.
        if seq == self.contiguous + 1 || self.gift_seqs.is_empty() {
            self.contiguous = seq;
            while self.gift_seqs.contains(self.contiguous + 1) {
                self.contiguous += 1;
            }
        }
        if !self.gift_seqs.insert(seq) {
            self.gift_duplicates += 1;
        } else if seq < self.max_gift_seq {
            self.gift_order_violations += 1;
        } else {
            self.max_gift_seq = seq;
        }
    }
}

fn latency(now_ms: i64, ts_ms: i64) -> u64 {
    now_ms.saturating_sub(ts_ms).max(0) as u64
}

/// The encoded `Join` for a wire.
pub fn join_frame(wire: Wire, room: &str) -> Vec<u8> {
    match wire {
        Wire::WsJson => serde_json::json!({"type":"join","channel":room})
            .to_string()
            .into_bytes(),
        _ => frame::encode(&frame::client(pb::client_frame::Body::Join(pb::Join {
            channel: room.to_owned(),
        })))
        .to_vec(),
    }
}

/// The encoded `Ack` for a wire.
pub fn ack_frame(wire: Wire, room: &str, seq: u64) -> Vec<u8> {
    match wire {
        Wire::WsJson => serde_json::json!({"type":"ack","channel":room,"seq":seq})
            .to_string()
            .into_bytes(),
        _ => frame::encode(&frame::client(pb::client_frame::Body::Ack(pb::Ack {
            channel: room.to_owned(),
            seq,
        })))
        .to_vec(),
    }
}

/// The encoded heartbeat for a wire (NATS: `PING`).
pub fn ping_frame(wire: Wire) -> Vec<u8> {
    match wire {
        Wire::WsJson => br#"{"type":"ping"}"#.to_vec(),
        Wire::Nats => b"PING\r\n".to_vec(),
        _ => frame::encode(&frame::client(pb::client_frame::Body::Ping(pb::Ping {
            ts_ms: danmaku_proto::now_ms(),
        })))
        .to_vec(),
    }
}

/// NATS subject of a room (`room:lt1-0` → `room.lt1-0`).
pub fn nats_subject(room: &str) -> String {
    room.replace(':', ".")
}

fn count_subslices(hay: &[u8], needle: &[u8]) -> u64 {
    if hay.len() < needle.len() {
        return 0;
    }
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        if &hay[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

/// Handles one message of a viewer of `room`. `record` gets probe latencies.
pub fn on_message(
    c: &mut ViewerCounts,
    wire: Wire,
    room: &str,
    data: &[u8],
    now_ms: i64,
    record: &mut dyn FnMut(Lane, u64),
) -> Reply {
    let mut reply = match wire {
        Wire::WsPb | Wire::Quic => on_pb(c, wire, room, data, now_ms, record),
        Wire::WsJson => on_json(c, room, data, now_ms, record),
        Wire::Nats => return on_nats(c, room, data, now_ms, record),
    };
    // Checked on every frame (batches arrive at least once a window), so a
    // due ack never waits for the next gift.
    if let Some(seq) = c.ack_due(now_ms) {
        reply.send.push(ack_frame(wire, room, seq));
    }
    reply
}

fn on_pb(
    c: &mut ViewerCounts,
    wire: Wire,
    room: &str,
    data: &[u8],
    now_ms: i64,
    record: &mut dyn FnMut(Lane, u64),
) -> Reply {
    let mut reply = Reply::default();
    let f = match pb::ServerFrame::decode(data) {
        Ok(f) => f,
        Err(e) => {
            c.errors += 1;
            reply.error = Some(format!("undecodable frame: {e}"));
            return reply;
        }
    };
    match f.body {
        Some(Body::Batch(b)) if b.channel == room => {
            c.frames += 1;
            if c.probe.is_none() {
                // A tick's gifts are seqs first..=last (contiguous: the edge
                // orders them), readable without opening the payload.
                let gifts = if b.last_seq > 0 {
                    b.last_seq - b.first_seq + 1
                } else {
                    0
                };
                c.danmaku += u64::from(b.count).saturating_sub(gifts);
                for seq in (b.first_seq..=b.last_seq).filter(|&s| s > 0) {
                    c.on_gift(seq);
                }
                return reply;
            }
            match decode_batch(&b, &Limits::default()) {
                Ok(events) => {
                    if let Some(log) = &mut c.probe {
                        log.on_frame();
                    }
                    for e in &events {
                        if e.seq > 0 {
                            c.on_gift(e.seq);
                            record(Lane::Gift, latency(now_ms, e.ts_ms));
                        } else {
                            c.danmaku += 1;
                            if let Some(log) = &mut c.probe {
                                log.on_event(&e.text);
                            }
                            record(Lane::Danmaku, latency(now_ms, e.ts_ms));
                        }
                    }
                }
                Err(e) => {
                    c.errors += 1;
                    reply.error = Some(format!("undecodable batch: {e}"));
                }
            }
        }
        Some(Body::Reliable(r)) if r.channel == room => {
            c.frames += 1;
            c.on_gift(r.seq);
            if c.probe.is_some()
                && let Some(e) = &r.event
            {
                record(Lane::Gift, latency(now_ms, e.ts_ms));
            }
        }
        Some(Body::AuthOk(a)) => {
            c.follow_ack_pace(a.ack_interval_ms);
            reply.send.push(join_frame(wire, room));
        }
        Some(Body::Joined(j)) if j.channel == room => {
            c.follow_ack_pace(j.ack_interval_ms);
            reply.joined = true;
        }
        Some(Body::Error(e)) => {
            c.errors += 1;
            reply.error = Some(format!("{}: {}", e.code, e.message));
        }
        _ => {}
    }
    reply
}

const JSON_BATCH_PREFIX: &[u8] = br#"{"type":"batch""#;

fn on_json(
    c: &mut ViewerCounts,
    room: &str,
    data: &[u8],
    now_ms: i64,
    record: &mut dyn FnMut(Lane, u64),
) -> Reply {
    let mut reply = Reply::default();
    // A counting viewer reads no further than the frame type: every event object
    // of a batch opens with `{"kind":"` (inside a string the quote would be escaped).
    // A tick with gifts carries `"seq":` (danmaku events have none): those
    // are opened, the rest counted by their event objects.
    if c.probe.is_none()
        && data.starts_with(JSON_BATCH_PREFIX)
        && count_subslices(data, br#""seq":"#) == 0
    {
        c.frames += 1;
        c.danmaku += count_subslices(data, br#"{"kind":""#);
        return reply;
    }
    let text = String::from_utf8_lossy(data);
    let f = match danmaku_proto::json::decode_server_json(&text, &Limits::default()) {
        Ok(f) => f,
        Err(e) => {
            c.errors += 1;
            reply.error = Some(format!("undecodable JSON frame: {e}"));
            return reply;
        }
    };
    match f {
        JsonServerFrame::Batch {
            channel, events, ..
        } if channel == room => {
            c.frames += 1;
            if let Some(log) = &mut c.probe {
                log.on_frame();
            }
            for e in &events {
                if let Some(seq) = e.seq.filter(|&s| s > 0) {
                    c.on_gift(seq);
                    if c.probe.is_some() {
                        record(Lane::Gift, latency(now_ms, e.ts_ms));
                    }
                    continue;
                }
                c.danmaku += 1;
                if let Some(log) = &mut c.probe {
                    log.on_event(&e.text);
                    record(Lane::Danmaku, latency(now_ms, e.ts_ms));
                }
            }
        }
        JsonServerFrame::Reliable {
            channel,
            seq,
            event,
        } if channel == room => {
            c.frames += 1;
            c.on_gift(seq);
            if c.probe.is_some() {
                record(Lane::Gift, latency(now_ms, event.ts_ms));
            }
        }
        JsonServerFrame::AuthOk {
            ack_interval_ms, ..
        } => {
            c.follow_ack_pace(ack_interval_ms);
            reply.send.push(join_frame(Wire::WsJson, room));
        }
        JsonServerFrame::Joined {
            channel,
            ack_interval_ms,
            ..
        } if channel == room => {
            c.follow_ack_pace(ack_interval_ms);
            reply.joined = true;
        }
        JsonServerFrame::Error { code, message } => {
            c.errors += 1;
            reply.error = Some(format!("{code}: {message}"));
        }
        _ => {}
    }
    reply
}

fn on_nats(
    c: &mut ViewerCounts,
    room: &str,
    data: &[u8],
    now_ms: i64,
    record: &mut dyn FnMut(Lane, u64),
) -> Reply {
    let mut reply = Reply::default();
    let mut buf = std::mem::take(&mut c.carry);
    buf.extend_from_slice(data);
    let mut pos = 0;
    let mut had_msg = false;
    while let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
        let line = &buf[pos..pos + eol];
        let after = pos + eol + 2;
        if let Some(rest) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len: Option<usize> = std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.split(' ').next_back())
                .and_then(|n| n.parse().ok());
            let Some(len) = len else {
                c.errors += 1;
                reply.error = Some("malformed MSG line".into());
                pos = after;
                continue;
            };
            if buf.len() < after + len + 2 {
                break; // payload not here yet
            }
            let payload = &buf[after..after + len];
            had_msg = true;
            nats_event(c, payload, now_ms, record);
            pos = after + len + 2;
        } else {
            if line.starts_with(b"INFO ") {
                let subject = nats_subject(room);
                reply.send.push(
                    format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {subject} 1\r\nPING\r\n")
                        .into_bytes(),
                );
            } else if line == b"PING" {
                reply.send.push(b"PONG\r\n".to_vec());
            } else if line == b"PONG" {
                reply.joined = true;
            } else if line.starts_with(b"-ERR") {
                c.errors += 1;
                reply.error = Some(String::from_utf8_lossy(line).into_owned());
            }
            pos = after;
        }
    }
    buf.drain(..pos);
    c.carry = buf;
    if had_msg {
        c.frames += 1;
    }
    reply
}

fn nats_event(
    c: &mut ViewerCounts,
    payload: &[u8],
    now_ms: i64,
    record: &mut dyn FnMut(Lane, u64),
) {
    let gift = count_subslices(payload, br#""kind":"gift""#) > 0;
    if c.probe.is_none() {
        if gift {
            c.gifts += 1;
        } else {
            c.danmaku += 1;
        }
        return;
    }
    let Ok(e) = serde_json::from_slice::<JsonEvent>(payload) else {
        c.errors += 1;
        return;
    };
    let lat = latency(now_ms, e.ts_ms);
    if gift {
        // Gifts carry `lt <sender> <n> gift`: the post number stands in for a seq.
        match parse_post_text(&e.text) {
            Some((_, n)) => c.on_gift(n + 1),
            None => c.gifts += 1,
        }
        record(Lane::Gift, lat);
    } else {
        c.danmaku += 1;
        if let Some(log) = &mut c.probe {
            log.on_event(&e.text);
        }
        record(Lane::Danmaku, lat);
    }
}

/// The JSON form of an event, as NATS carries it and as the raw-size baseline.
pub fn event_json(kind: &str, sender: &str, text: &str, ts_ms: i64) -> String {
    serde_json::json!({"kind": kind, "sender": sender, "text": text, "ts_ms": ts_ms}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally::post_text;
    use danmaku_proto::BatchEncoder;

    fn events(texts: &[String]) -> Vec<pb::Event> {
        texts
            .iter()
            .map(|t| pb::Event {
                kind: pb::Kind::Danmaku as i32,
                sender: "s".into(),
                text: t.clone(),
                ts_ms: 1000,
                ..Default::default()
            })
            .collect()
    }

    fn batch_frame(room: &str, texts: &[String]) -> Vec<u8> {
        let b = BatchEncoder::default()
            .encode(room, &events(texts))
            .unwrap();
        frame::encode(&frame::server(Body::Batch(b))).to_vec()
    }

    fn reliable_frame(room: &str, seq: u64) -> Vec<u8> {
        frame::encode(&frame::server(Body::Reliable(pb::Reliable {
            channel: room.into(),
            seq,
            event: Some(pb::Event {
                kind: pb::Kind::Gift as i32,
                ts_ms: 900,
                seq,
                ..Default::default()
            }),
        })))
        .to_vec()
    }

    #[test]
    fn counting_and_probe_agree_on_pb_batches_and_gifts() {
        let texts: Vec<String> = (0..40).map(|n| post_text(1, n, "哈哈哈哈 666")).collect();
        let room = "room:1";
        let mut lat = Vec::new();
        let mut rec = |l: Lane, ms: u64| lat.push((l, ms));
        let mut counting = ViewerCounts::new(false);
        let mut probe = ViewerCounts::new(true);
        for c in [&mut counting, &mut probe] {
            let r = on_message(
                c,
                Wire::WsPb,
                room,
                &batch_frame(room, &texts),
                1100,
                &mut rec,
            );
            assert_eq!(r, Reply::default());
            // another room's batch is not counted
            on_message(
                c,
                Wire::WsPb,
                room,
                &batch_frame("room:2", &texts),
                1100,
                &mut rec,
            );
            // Cumulative acks (interval 0): nothing for a repeat or past a gap.
            for (seq, ack) in [
                (1, Some(1)),
                (2, Some(2)),
                (2, None),
                (4, None),
                (3, Some(4)),
            ] {
                let r = on_message(
                    c,
                    Wire::WsPb,
                    room,
                    &reliable_frame(room, seq),
                    1000,
                    &mut rec,
                );
                let want: Vec<_> = ack
                    .map(|a| ack_frame(Wire::WsPb, room, a))
                    .into_iter()
                    .collect();
                assert_eq!(r.send, want, "seq {seq}");
            }
        }
        for c in [&counting, &probe] {
            assert_eq!((c.danmaku, c.frames, c.gifts), (40, 6, 5));
            assert_eq!(
                (
                    c.gift_seqs.len(),
                    c.gift_duplicates,
                    c.gift_order_violations
                ),
                (4, 1, 1)
            );
        }
        // Only the probe measured latency: 40 danmaku at 100 ms, 5 gifts at 100 ms.
        assert_eq!(lat.iter().filter(|(l, _)| *l == Lane::Danmaku).count(), 40);
        assert_eq!(lat.iter().filter(|(l, _)| *l == Lane::Gift).count(), 5);
        assert!(lat.iter().all(|(_, ms)| *ms == 100));
        assert_eq!(probe.probe.as_ref().unwrap().events, 40);
    }

    #[test]
    fn json_counting_matches_the_json_batch() {
        let room = "room:j";
        let evs = events(
            &(0..7)
                .map(|n| post_text(2, n, "{\"kind\":\"x\"}"))
                .collect::<Vec<_>>(),
        );
        let text = danmaku_proto::json::batch_json(room, &evs, None, 0);
        let mut none = |_: Lane, _: u64| {};
        let mut c = ViewerCounts::new(false);
        on_message(&mut c, Wire::WsJson, room, text.as_bytes(), 0, &mut none);
        let mut p = ViewerCounts::new(true);
        on_message(&mut p, Wire::WsJson, room, text.as_bytes(), 0, &mut none);
        assert_eq!((c.danmaku, p.danmaku), (7, 7));
        let r = on_message(
            &mut c,
            Wire::WsJson,
            room,
            br#"{"type":"auth_ok","user":"u"}"#,
            0,
            &mut none,
        );
        assert_eq!(r.send, vec![join_frame(Wire::WsJson, room)]);
        let r = on_message(
            &mut c,
            Wire::WsJson,
            room,
            br#"{"type":"joined","channel":"room:j","last_seq":0}"#,
            0,
            &mut none,
        );
        assert!(r.joined);
    }

    #[test]
    fn nats_messages_split_across_frames_are_counted_once() {
        let room = "room:n";
        let mut none = |_: Lane, _: u64| {};
        let mut c = ViewerCounts::new(false);
        let r = on_message(
            &mut c,
            Wire::Nats,
            room,
            b"INFO {\"x\":1}\r\n",
            0,
            &mut none,
        );
        assert!(String::from_utf8_lossy(&r.send[0]).contains("SUB room.n 1\r\n"));
        let d = event_json("danmaku", "s", &post_text(0, 1, "x"), 5);
        let g = event_json("gift", "s", &post_text(9, 0, "gift"), 5);
        let wire = format!(
            "MSG room.n 1 {}\r\n{}\r\nPING\r\nMSG room.n 1 {}\r\n{}\r\n",
            d.len(),
            d,
            g.len(),
            g
        );
        let (a, b) = wire.as_bytes().split_at(30);
        on_message(&mut c, Wire::Nats, room, a, 0, &mut none);
        let r = on_message(&mut c, Wire::Nats, room, b, 0, &mut none);
        assert_eq!(r.send, vec![b"PONG\r\n".to_vec()]);
        assert_eq!((c.danmaku, c.gifts), (1, 1));
        assert!(on_message(&mut c, Wire::Nats, room, b"PONG\r\n", 0, &mut none).joined);
    }

    #[test]
    fn acks_are_cumulative_and_paced() {
        let room = "room:a";
        let gift = |seq| reliable_frame(room, seq);
        let mut c = ViewerCounts::new(false).with_ack_interval(1000);
        let mut rec = |_: Lane, _: u64| {};
        // The first gift is acked at once (nothing acked yet, interval elapsed).
        let r = on_message(&mut c, Wire::WsPb, room, &gift(1), 10_000, &mut rec);
        assert_eq!(r.send, vec![ack_frame(Wire::WsPb, room, 1)]);
        // Within the interval: no ack, even across a gap.
        for (seq, at) in [(2, 10_100), (4, 10_200), (3, 10_300)] {
            let r = on_message(&mut c, Wire::WsPb, room, &gift(seq), at, &mut rec);
            assert!(r.send.is_empty(), "seq {seq} at {at}");
        }
        // After it: one cumulative ack for everything contiguous.
        let r = on_message(&mut c, Wire::WsPb, room, &gift(6), 11_000, &mut rec);
        assert_eq!(r.send, vec![ack_frame(Wire::WsPb, room, 4)], "5 is missing");
        // A viewer that joined late anchors at its first gift.
        let mut late = ViewerCounts::new(false).with_ack_interval(0);
        let r = on_message(&mut late, Wire::WsPb, room, &gift(40), 1, &mut rec);
        assert_eq!(r.send, vec![ack_frame(Wire::WsPb, room, 40)]);
    }

    #[test]
    fn an_owed_ack_falls_due_on_the_timer_without_another_frame() {
        let room = "room:a";
        let gift = |seq| reliable_frame(room, seq);
        let mut c = ViewerCounts::new(false).with_ack_interval(1000);
        let mut rec = |_: Lane, _: u64| {};
        assert_eq!(c.ack_owed_at(), None, "nothing received, nothing owed");
        on_message(&mut c, Wire::WsPb, room, &gift(1), 10_000, &mut rec);
        assert_eq!(c.ack_owed_at(), None, "acked at once");
        // The run's last gifts: no frame follows them.
        on_message(&mut c, Wire::WsPb, room, &gift(2), 10_100, &mut rec);
        on_message(&mut c, Wire::WsPb, room, &gift(3), 10_200, &mut rec);
        assert_eq!(c.ack_owed_at(), Some(11_000));
        assert_eq!(c.flush_ack(Wire::WsPb, room, 10_999), None, "not yet due");
        assert_eq!(
            c.flush_ack(Wire::WsPb, room, 11_000),
            Some(ack_frame(Wire::WsPb, room, 3))
        );
        assert_eq!(c.ack_owed_at(), None);
        assert_eq!(c.flush_ack(Wire::WsPb, room, 20_000), None, "acked once");
    }

    #[test]
    fn the_edges_slower_ack_pace_wins() {
        let room = "room:a";
        let auth_ok = |ms| {
            frame::encode(&frame::server(Body::AuthOk(pb::AuthOk {
                user: "v".into(),
                ack_interval_ms: ms,
            })))
            .to_vec()
        };
        let gift = |seq| reliable_frame(room, seq);
        let mut rec = |_: Lane, _: u64| {};
        let mut c = ViewerCounts::new(false).with_ack_interval(1000);
        on_message(&mut c, Wire::WsPb, room, &auth_ok(5000), 0, &mut rec);
        let r = on_message(&mut c, Wire::WsPb, room, &gift(1), 10_000, &mut rec);
        assert_eq!(r.send, vec![ack_frame(Wire::WsPb, room, 1)]);
        // Past our own 1 s but inside the edge's 5 s: no ack yet.
        let r = on_message(&mut c, Wire::WsPb, room, &gift(2), 12_000, &mut rec);
        assert!(r.send.is_empty());
        let r = on_message(&mut c, Wire::WsPb, room, &gift(3), 15_000, &mut rec);
        assert_eq!(r.send, vec![ack_frame(Wire::WsPb, room, 3)]);
        // A faster edge pace does not speed up our own.
        let mut d = ViewerCounts::new(false).with_ack_interval(1000);
        on_message(&mut d, Wire::WsPb, room, &auth_ok(100), 0, &mut rec);
        on_message(&mut d, Wire::WsPb, room, &gift(1), 10_000, &mut rec);
        let r = on_message(&mut d, Wire::WsPb, room, &gift(2), 10_500, &mut rec);
        assert!(r.send.is_empty());
        // The room's own pace from `Joined` (slower than `AuthOk`'s) wins too.
        let joined = |ms| {
            frame::encode(&frame::server(Body::Joined(pb::Joined {
                channel: room.into(),
                last_seq: 0,
                ack_interval_ms: ms,
            })))
            .to_vec()
        };
        let mut e = ViewerCounts::new(false).with_ack_interval(1000);
        on_message(&mut e, Wire::WsPb, room, &auth_ok(1000), 0, &mut rec);
        let r = on_message(&mut e, Wire::WsPb, room, &joined(5000), 0, &mut rec);
        assert!(r.joined);
        on_message(&mut e, Wire::WsPb, room, &gift(1), 10_000, &mut rec);
        assert_eq!(e.ack_owed_at(), None, "the first gift is acked at once");
        on_message(&mut e, Wire::WsPb, room, &gift(2), 12_000, &mut rec);
        assert_eq!(e.ack_owed_at(), Some(15_000));
    }
}
