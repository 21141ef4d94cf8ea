//! The JSON form of frames (`danmaku.v1.json` subprotocol), for browsers and
//! debugging. Same frames as protobuf, shapes as in docs/PROTOCOL.md:
//! `{"type":"join","channel":"room:42"}`, `{"type":"batch","channel":…,"events":[…]}`.
//!
//! The edge serializes a channel's batch to JSON once per tick (only if some
//! member speaks JSON) with [`batch_json`], borrowing the events, no copies.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ProtoError;
use crate::frame;
use crate::limits::Limits;
use crate::pb::{self, client_frame, server_frame};

/// A client frame as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum JsonClientFrame {
    Auth { token: String },
    Join { channel: String },
    Leave { channel: String },
    Ack { channel: String, seq: u64 },
    Resume { channel: String, after_seq: u64 },
    Ping,
}

impl JsonClientFrame {
    pub fn into_pb(self) -> pb::ClientFrame {
        use client_frame::Body;
        frame::client(match self {
            JsonClientFrame::Auth { token } => Body::Auth(pb::Auth { token }),
            JsonClientFrame::Join { channel } => Body::Join(pb::Join { channel }),
            JsonClientFrame::Leave { channel } => Body::Leave(pb::Leave { channel }),
            JsonClientFrame::Ack { channel, seq } => Body::Ack(pb::Ack { channel, seq }),
            JsonClientFrame::Resume { channel, after_seq } => {
                Body::Resume(pb::Resume { channel, after_seq })
            }
            JsonClientFrame::Ping => Body::Ping(pb::Ping { ts_ms: 0 }),
        })
    }

    /// The JSON form of a protobuf client frame (`None` for an empty frame).
    pub fn from_pb(f: &pb::ClientFrame) -> Option<Self> {
        use client_frame::Body;
        Some(match f.body.as_ref()? {
            Body::Auth(a) => JsonClientFrame::Auth {
                token: a.token.clone(),
            },
            Body::Join(j) => JsonClientFrame::Join {
                channel: j.channel.clone(),
            },
            Body::Leave(l) => JsonClientFrame::Leave {
                channel: l.channel.clone(),
            },
            Body::Ack(a) => JsonClientFrame::Ack {
                channel: a.channel.clone(),
                seq: a.seq,
            },
            Body::Resume(r) => JsonClientFrame::Resume {
                channel: r.channel.clone(),
                after_seq: r.after_seq,
            },
            Body::Ping(_) => JsonClientFrame::Ping,
        })
    }
}

/// Decodes a JSON text frame from a client into the protobuf frame the edge
/// handles, with the same bounds as the binary path.
pub fn decode_client_json(text: &str, limits: &Limits) -> Result<pb::ClientFrame, ProtoError> {
    if text.len() > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge {
            size: text.len(),
            limit: limits.max_frame_bytes,
        });
    }
    let f: JsonClientFrame =
        serde_json::from_str(text).map_err(|e| ProtoError::BadJson(e.to_string()))?;
    let pbf = f.into_pb();
    // Re-check string bounds exactly as the binary decoder does.
    frame::decode_client(&frame::encode(&pbf), limits)
}

/// One event as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonEvent {
    pub kind: String,
    pub sender: String,
    pub text: String,
    pub ts_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// A danmaku's id; on a `retract` event, the id of the event taken back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Sent by an app token or a room moderator (never thinned).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub priority: bool,
    /// The id of a blob the message carries (notify-pull; `GET /v1/blobs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
}

impl JsonEvent {
    pub fn from_pb(ev: &pb::Event) -> Self {
        JsonEvent {
            kind: kind_name(ev.kind).to_owned(),
            sender: ev.sender.clone(),
            text: ev.text.clone(),
            ts_ms: ev.ts_ms,
            seq: (ev.seq != 0).then_some(ev.seq),
            payload: (!ev.payload_json.is_empty())
                .then(|| serde_json::from_str(&ev.payload_json).ok())
                .flatten(),
            id: (!ev.id.is_empty()).then(|| ev.id.clone()),
            priority: ev.priority,
            blob: (!ev.blob.is_empty()).then(|| ev.blob.clone()),
        }
    }

    pub fn into_pb(self) -> pb::Event {
        pb::Event {
            kind: pb::Kind::from_event_name(&self.kind).unwrap_or(pb::Kind::Unspecified) as i32,
            sender: self.sender,
            text: self.text,
            ts_ms: self.ts_ms,
            seq: self.seq.unwrap_or(0),
            payload_json: self.payload.map(|p| p.to_string()).unwrap_or_default(),
            client_msg_id: String::new(),
            id: self.id.unwrap_or_default(),
            priority: self.priority,
            blob: self.blob.unwrap_or_default(),
        }
    }
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

fn kind_name(kind: i32) -> &'static str {
    pb::Kind::try_from(kind)
        .unwrap_or(pb::Kind::Unspecified)
        .name()
}

/// An edge address: an entry of a `redirect` frame and of `GET /v1/edges`
/// ([`crate::control::EdgeList`]). Readers take a missing `ws`, `quic` or
/// `load` as empty (an edge may serve one transport only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonEdge {
    /// Stable id of the edge (also the `edge` metrics label).
    pub id: String,
    /// WebSocket URL, e.g. `ws://10.0.0.5:7070/v1/ws`; empty without WebSocket.
    #[serde(default)]
    pub ws: String,
    /// QUIC address `host:port`; empty when the edge serves no QUIC.
    #[serde(default)]
    pub quic: String,
    /// Load score, 0.0 = idle, 1.0 = at capacity (may exceed 1 when overloaded).
    #[serde(default)]
    pub load: f64,
}

/// A server frame as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JsonServerFrame {
    AuthOk {
        user: String,
        /// How often to ack reliable seqs at most (see `pb::AuthOk`); absent: 0.
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        ack_interval_ms: u32,
    },
    Joined {
        channel: String,
        last_seq: u64,
        /// This channel's ack pace when slower than `auth_ok`'s; absent: that one.
        #[serde(default, skip_serializing_if = "is_zero_u32")]
        ack_interval_ms: u32,
    },
    Left {
        channel: String,
        /// Absent for a client's own `leave`; `"removed"` when the user was
        /// removed from the group, `"banned"` when banned from the channel.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    Batch {
        channel: String,
        events: Vec<JsonEvent>,
        /// The channel's member count riding this tick (see `Online`); absent
        /// in most ticks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        online: Option<u64>,
        /// Danmaku of this tick left out by hot-room thinning; absent when none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sampled_out: Option<u64>,
    },
    Reliable {
        channel: String,
        seq: u64,
        event: JsonEvent,
    },
    Pong,
    Redirect {
        edges: Vec<JsonEdge>,
    },
    Error {
        code: String,
        message: String,
    },
    /// Cluster-wide member count of `channel` (big channels, every few seconds).
    Online {
        channel: String,
        online: u64,
    },
    /// To the user concerned only: `code` `"muted"` until `until_ms`.
    Notice {
        channel: String,
        code: String,
        until_ms: i64,
    },
}

impl From<&pb::EdgeAddr> for JsonEdge {
    fn from(e: &pb::EdgeAddr) -> Self {
        JsonEdge {
            id: e.id.clone(),
            ws: e.ws.clone(),
            quic: e.quic.clone(),
            load: e.load,
        }
    }
}

impl JsonServerFrame {
    /// Converts a protobuf server frame; batches are opened with `limits`.
    pub fn from_pb(f: &pb::ServerFrame, limits: &Limits) -> Result<Self, ProtoError> {
        use server_frame::Body;
        Ok(match f.body.as_ref().ok_or(ProtoError::EmptyFrame)? {
            Body::AuthOk(a) => JsonServerFrame::AuthOk {
                user: a.user.clone(),
                ack_interval_ms: a.ack_interval_ms,
            },
            Body::Joined(j) => JsonServerFrame::Joined {
                channel: j.channel.clone(),
                last_seq: j.last_seq,
                ack_interval_ms: j.ack_interval_ms,
            },
            Body::Left(l) => JsonServerFrame::Left {
                channel: l.channel.clone(),
                reason: l.reason.clone(),
            },
            Body::Batch(b) => JsonServerFrame::Batch {
                channel: b.channel.clone(),
                events: crate::decode_batch(b, limits)?
                    .iter()
                    .map(JsonEvent::from_pb)
                    .collect(),
                online: (b.online > 0).then_some(b.online),
                sampled_out: (b.sampled_out > 0).then_some(b.sampled_out),
            },
            Body::Reliable(r) => JsonServerFrame::Reliable {
                channel: r.channel.clone(),
                seq: r.seq,
                event: r
                    .event
                    .as_ref()
                    .map(JsonEvent::from_pb)
                    .ok_or(ProtoError::EmptyFrame)?,
            },
            Body::Pong(_) => JsonServerFrame::Pong,
            Body::Redirect(r) => JsonServerFrame::Redirect {
                edges: r.edges.iter().map(JsonEdge::from).collect(),
            },
            Body::Error(e) => JsonServerFrame::Error {
                code: e.code.clone(),
                message: e.message.clone(),
            },
            Body::Online(o) => JsonServerFrame::Online {
                channel: o.channel.clone(),
                online: o.online,
            },
            Body::Notice(n) => JsonServerFrame::Notice {
                channel: n.channel.clone(),
                code: n.code.clone(),
                until_ms: n.until_ms,
            },
        })
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Decodes a JSON text frame from an edge (client side), bounded.
pub fn decode_server_json(text: &str, limits: &Limits) -> Result<JsonServerFrame, ProtoError> {
    if text.len() > limits.max_frame_bytes {
        return Err(ProtoError::FrameTooLarge {
            size: text.len(),
            limit: limits.max_frame_bytes,
        });
    }
    serde_json::from_str(text).map_err(|e| ProtoError::BadJson(e.to_string()))
}

#[derive(Serialize)]
struct BatchOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    channel: &'a str,
    events: Vec<EventOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sampled_out: Option<u64>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    kind: &'static str,
    sender: &'a str,
    text: &'a str,
    ts_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    priority: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    blob: &'a str,
}

/// The JSON text of a channel's batch, built once and shared by all JSON
/// members; `online` is the member count riding this tick, if any;
/// `sampled_out` the danmaku thinning left out of it (0: none).
pub fn batch_json(
    channel: &str,
    events: &[pb::Event],
    online: Option<u64>,
    sampled_out: u64,
) -> String {
    let out = BatchOut {
        ty: "batch",
        channel,
        online,
        sampled_out: (sampled_out > 0).then_some(sampled_out),
        events: events
            .iter()
            .map(|ev| EventOut {
                kind: kind_name(ev.kind),
                sender: &ev.sender,
                text: &ev.text,
                ts_ms: ev.ts_ms,
                seq: (ev.seq != 0).then_some(ev.seq),
                // Ingest only publishes payloads that parsed as JSON; anything else is left out.
                payload: (!ev.payload_json.is_empty())
                    .then(|| serde_json::from_str::<&RawValue>(&ev.payload_json).ok())
                    .flatten(),
                id: &ev.id,
                priority: ev.priority,
                blob: &ev.blob,
            })
            .collect(),
    };
    serde_json::to_string(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_match_api_md() {
        let limits = Limits::default();
        let f = decode_client_json(r#"{"type":"join","channel":"room:42"}"#, &limits).unwrap();
        assert_eq!(
            JsonClientFrame::from_pb(&f),
            Some(JsonClientFrame::Join {
                channel: "room:42".into()
            })
        );
        let f = decode_client_json(
            r#"{"type":"resume","channel":"group:7","after_seq":12}"#,
            &limits,
        )
        .unwrap();
        assert_eq!(
            JsonClientFrame::from_pb(&f),
            Some(JsonClientFrame::Resume {
                channel: "group:7".into(),
                after_seq: 12
            })
        );
        assert!(decode_client_json(r#"{"type":"ping"}"#, &limits).is_ok());
        assert_eq!(
            decode_client_json(r#"{"type":"dance"}"#, &limits)
                .unwrap_err()
                .code(),
            "malformed_json"
        );
        assert_eq!(
            decode_client_json("not json", &limits).unwrap_err().code(),
            "malformed_json"
        );
    }

    #[test]
    fn batch_json_round_trips_through_server_frame() {
        let ev = pb::Event {
            kind: pb::Kind::Danmaku as i32,
            sender: "alice".into(),
            text: "hi \"there\" 😀".into(),
            ts_ms: 1_732_350_000_000,
            payload_json: r#"{"color":"red"}"#.into(),
            ..Default::default()
        };
        let text = batch_json("room:42", std::slice::from_ref(&ev), None, 0);
        assert!(!text.contains("online"), "no count, no field: {text}");
        match decode_server_json(&text, &Limits::default()).unwrap() {
            JsonServerFrame::Batch {
                channel,
                events,
                online,
                sampled_out,
            } => {
                assert_eq!(sampled_out, None);
                assert_eq!(channel, "room:42");
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].clone().into_pb(), ev);
                assert_eq!(online, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_online_count_rides_the_batch_in_both_forms() {
        let text = batch_json("room:42", &[], Some(100_000), 0);
        assert_eq!(
            text,
            r#"{"type":"batch","channel":"room:42","events":[],"online":100000}"#
        );
        let pb_batch = pb::Batch {
            channel: "room:42".into(),
            online: 100_000,
            ..Default::default()
        };
        let frame = crate::frame::server(server_frame::Body::Batch(pb_batch));
        let json = JsonServerFrame::from_pb(&frame, &Limits::default()).unwrap();
        assert_eq!(json, decode_server_json(&text, &Limits::default()).unwrap());
    }

    #[test]
    fn sampled_out_and_retract_events_read_the_same_in_both_forms() {
        let retract = pb::Event {
            kind: pb::Kind::Retract as i32,
            ts_ms: 5,
            id: "7f3a9c".into(),
            ..Default::default()
        };
        let text = batch_json("room:42", std::slice::from_ref(&retract), None, 1_234);
        assert!(text.contains(r#""sampled_out":1234"#), "{text}");
        assert!(text.contains(r#""kind":"retract""#), "{text}");
        assert!(text.contains(r#""id":"7f3a9c""#), "{text}");
        let mut enc = crate::BatchEncoder::new(3, 1 << 20).unwrap();
        let mut pb_batch = enc
            .encode("room:42", std::slice::from_ref(&retract))
            .unwrap();
        pb_batch.sampled_out = 1_234;
        let frame = crate::frame::server(server_frame::Body::Batch(pb_batch));
        let from_pb = JsonServerFrame::from_pb(&frame, &Limits::default()).unwrap();
        let from_text = decode_server_json(&text, &Limits::default()).unwrap();
        assert_eq!(from_pb, from_text);
        match from_text {
            JsonServerFrame::Batch {
                sampled_out,
                events,
                ..
            } => {
                assert_eq!(sampled_out, Some(1_234));
                assert_eq!(events[0].clone().into_pb().kind, pb::Kind::Retract as i32);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
