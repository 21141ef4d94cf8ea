//! What the edge tells a client, as one enum for both wire forms.
//!
//! [`from_pb`] turns a bounded-decoded protobuf `ServerFrame` into a
//! [`ServerEvent`] (opening batches with [`danmaku_proto::decode_batch`]);
//! [`from_json`] does the same for a `danmaku.v1.json` text frame. Both are pure
//! so they are tested without a server.

use danmaku_proto::json::{JsonServerFrame, decode_server_json};
use danmaku_proto::pb::{self, server_frame::Body};
use danmaku_proto::{Limits, ProtoError, decode_batch, frame};

/// The id of the blob `event` carries (notify-pull), if any: fetch it with
/// [`crate::ingest::IngestClient::fetch_blob`] or build its URL with
/// [`crate::ingest::IngestClient::blob_url`] when it is needed (a gift banner
/// shown), not on arrival.
pub fn blob_of(event: &pb::Event) -> Option<&str> {
    (!event.blob.is_empty()).then_some(event.blob.as_str())
}

/// An edge address offered in a `Redirect` (the protobuf type is the shared form).
pub type EdgeAddr = pb::EdgeAddr;

/// One frame from the edge, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// The edge accepted the token; `user` is the authenticated user id.
    /// `ack_interval_ms`: how often the edge asks for acks at most (0: the
    /// client's own [`ClientConfig::ack_interval`](crate::ClientConfig::ack_interval)).
    AuthOk { user: String, ack_interval_ms: u32 },
    /// The client is a member of `channel`; `last_seq` is the channel's latest
    /// reliable seq; `ack_interval_ms`: how often to ack this channel at most
    /// when slower than `AuthOk`'s pace (0: that one; rooms get a slower one).
    Joined {
        channel: String,
        last_seq: u64,
        ack_interval_ms: u32,
    },
    /// The client left `channel`: on request (`reason` empty), `"removed"`
    /// when the user was removed from the group, or `"banned"` when a
    /// moderator banned the user from it (nothing more arrives from it; a new
    /// `join` is refused with the error `banned` until the ban ends).
    Left { channel: String, reason: String },
    /// A batch of danmaku-lane events of one channel.
    Batch {
        channel: String,
        events: Vec<pb::Event>,
    },
    /// One reliable-lane event; ack it with `Ack{channel, seq}`.
    Reliable {
        channel: String,
        seq: u64,
        event: pb::Event,
    },
    /// Answer to a ping.
    Pong,
    /// The edge is draining: reconnect to one of these edges.
    Redirect { edges: Vec<EdgeAddr> },
    /// The edge reports a problem (bad frame, unknown channel, not allowed...).
    Error { code: String, message: String },
    /// Cluster-wide member count of a big channel this client joined.
    Online { channel: String, online: u64 },
    /// To this user only: `code` `"muted"` in `channel` until `until_ms`
    /// (ms since the Unix epoch); posts there are refused until then.
    Notice {
        channel: String,
        code: String,
        until_ms: i64,
    },
    /// A moderator took back an event of `channel`: remove it from screen.
    /// `id` is a danmaku's [`pb::Event::id`], or a gift's / chat message's
    /// seq in decimal. Read out of a tick (never inside [`ServerEvent::Batch`]),
    /// after the tick's batch.
    Retract { channel: String, id: String },
    /// Hot-room thinning left `count` danmaku of `channel` out of a tick (show
    /// "+count"). Read out of the tick (`Batch.sampled_out`), before its batch.
    SampledOut { channel: String, count: u64 },
    /// Never on the wire: a [`crate::resilient::ResilientClient`] lost its edge and is
    /// connected again, to `edge` (its base URL), with its channels re-joined
    /// and resumed.
    Reconnected { edge: String },
}

impl ServerEvent {
    /// Number of events this frame carries (batch size, 1 for a reliable event, else 0).
    pub fn event_count(&self) -> usize {
        match self {
            ServerEvent::Batch { events, .. } => events.len(),
            ServerEvent::Reliable { .. } => 1,
            _ => 0,
        }
    }
}

/// Splits a tick: each reliable event (`seq > 0`) of a `Batch` becomes its
/// own [`ServerEvent::Reliable`], in order, followed by the `Batch` with the
/// danmaku alone (empty when the tick carried only gifts: one `Batch` per
/// tick frame). The application and the reliable tracker see a gift the same
/// way whether the edge sent it inside a tick or alone (a resend, a resume).
/// Any other event is returned as is.
pub fn split_tick(ev: ServerEvent) -> Vec<ServerEvent> {
    let ServerEvent::Batch { channel, events } = ev else {
        return vec![ev];
    };
    if !events.iter().any(|e| e.seq > 0) {
        return vec![ServerEvent::Batch { channel, events }];
    }
    let mut out = Vec::with_capacity(events.len() + 1);
    let mut danmaku = Vec::new();
    for e in events {
        if e.seq > 0 {
            out.push(ServerEvent::Reliable {
                channel: channel.clone(),
                seq: e.seq,
                event: e,
            });
        } else {
            danmaku.push(e);
        }
    }
    out.push(ServerEvent::Batch {
        channel,
        events: danmaku,
    });
    out
}

/// Converts a protobuf server frame; batches are decompressed and decoded within `limits`.
pub fn from_pb(f: pb::ServerFrame, limits: &Limits) -> Result<ServerEvent, ProtoError> {
    Ok(match f.body.ok_or(ProtoError::EmptyFrame)? {
        Body::AuthOk(a) => ServerEvent::AuthOk {
            user: a.user,
            ack_interval_ms: a.ack_interval_ms,
        },
        Body::Joined(j) => ServerEvent::Joined {
            channel: j.channel,
            last_seq: j.last_seq,
            ack_interval_ms: j.ack_interval_ms,
        },
        Body::Left(l) => ServerEvent::Left {
            channel: l.channel,
            reason: l.reason,
        },
        Body::Batch(b) => {
            let events = decode_batch(&b, limits)?;
            ServerEvent::Batch {
                channel: b.channel,
                events,
            }
        }
        Body::Reliable(r) => ServerEvent::Reliable {
            channel: r.channel,
            seq: r.seq,
            event: r.event.ok_or(ProtoError::EmptyFrame)?,
        },
        Body::Pong(_) => ServerEvent::Pong,
        Body::Redirect(r) => ServerEvent::Redirect { edges: r.edges },
        Body::Error(e) => ServerEvent::Error {
            code: e.code,
            message: e.message,
        },
        Body::Online(o) => ServerEvent::Online {
            channel: o.channel,
            online: o.online,
        },
        Body::Notice(n) => ServerEvent::Notice {
            channel: n.channel,
            code: n.code,
            until_ms: n.until_ms,
        },
    })
}

/// Decodes (bounded) and converts one binary frame from the edge: its main
/// event (a tick's online count is left out: [`decode_pb_events`] has it).
pub fn decode_pb(buf: &[u8], limits: &Limits) -> Result<ServerEvent, ProtoError> {
    from_pb(frame::decode_server(buf, limits)?, limits)
}

/// Everything one binary frame from the edge says, in order: the channel's
/// online count when it rides a tick (`Batch.online`), then the frame's
/// event. What a connection's reader hands on.
pub fn decode_pb_events(buf: &[u8], limits: &Limits) -> Result<Vec<ServerEvent>, ProtoError> {
    let f = frame::decode_server(buf, limits)?;
    let (online, sampled_out) = match &f.body {
        Some(Body::Batch(b)) => (b.online, b.sampled_out),
        _ => (0, 0),
    };
    Ok(with_tick_extras(from_pb(f, limits)?, online, sampled_out))
}

/// Everything a decoded frame says, in order: a tick's online count and
/// `sampled_out` (each when not 0), the frame's event (a batch without its
/// retractions), then the tick's retractions.
fn with_tick_extras(ev: ServerEvent, online: u64, sampled_out: u64) -> Vec<ServerEvent> {
    let ServerEvent::Batch {
        channel,
        mut events,
    } = ev
    else {
        return vec![ev];
    };
    let mut out = Vec::with_capacity(1);
    if online > 0 {
        out.push(ServerEvent::Online {
            channel: channel.clone(),
            online,
        });
    }
    if sampled_out > 0 {
        out.push(ServerEvent::SampledOut {
            channel: channel.clone(),
            count: sampled_out,
        });
    }
    let retract = pb::Kind::Retract as i32;
    let retracted: Vec<String> = events
        .iter()
        .filter(|e| e.kind == retract)
        .map(|e| e.id.clone())
        .collect();
    if !retracted.is_empty() {
        events.retain(|e| e.kind != retract);
    }
    out.push(ServerEvent::Batch {
        channel: channel.clone(),
        events,
    });
    out.extend(retracted.into_iter().map(|id| ServerEvent::Retract {
        channel: channel.clone(),
        id,
    }));
    out
}

/// [`decode_pb_events`] for a `danmaku.v1.json` text frame.
pub fn decode_json_events(text: &str, limits: &Limits) -> Result<Vec<ServerEvent>, ProtoError> {
    let f = decode_server_json(text, limits)?;
    let (online, sampled_out) = match &f {
        JsonServerFrame::Batch {
            online,
            sampled_out,
            ..
        } => (online.unwrap_or(0), sampled_out.unwrap_or(0)),
        _ => (0, 0),
    };
    let ev = from_json(f);
    check_json_bounds(&ev, limits)?;
    Ok(with_tick_extras(ev, online, sampled_out))
}

/// Converts a JSON server frame.
pub fn from_json(f: JsonServerFrame) -> ServerEvent {
    match f {
        JsonServerFrame::AuthOk {
            user,
            ack_interval_ms,
        } => ServerEvent::AuthOk {
            user,
            ack_interval_ms,
        },
        JsonServerFrame::Joined {
            channel,
            last_seq,
            ack_interval_ms,
        } => ServerEvent::Joined {
            channel,
            last_seq,
            ack_interval_ms,
        },
        JsonServerFrame::Left { channel, reason } => ServerEvent::Left { channel, reason },
        JsonServerFrame::Batch {
            channel, events, ..
        } => ServerEvent::Batch {
            channel,
            events: events.into_iter().map(|e| e.into_pb()).collect(),
        },
        JsonServerFrame::Reliable {
            channel,
            seq,
            event,
        } => {
            let mut event = event.into_pb();
            if event.seq == 0 {
                event.seq = seq;
            }
            ServerEvent::Reliable {
                channel,
                seq,
                event,
            }
        }
        JsonServerFrame::Pong => ServerEvent::Pong,
        JsonServerFrame::Redirect { edges } => ServerEvent::Redirect {
            edges: edges
                .into_iter()
                .map(|e| EdgeAddr {
                    id: e.id,
                    ws: e.ws,
                    quic: e.quic,
                    load: e.load,
                })
                .collect(),
        },
        JsonServerFrame::Error { code, message } => ServerEvent::Error { code, message },
        JsonServerFrame::Online { channel, online } => ServerEvent::Online { channel, online },
        JsonServerFrame::Notice {
            channel,
            code,
            until_ms,
        } => ServerEvent::Notice {
            channel,
            code,
            until_ms,
        },
    }
}

/// Decodes (bounded) and converts one JSON text frame from the edge, checking
/// string and batch bounds like the binary path does.
pub fn decode_json(text: &str, limits: &Limits) -> Result<ServerEvent, ProtoError> {
    let ev = from_json(decode_server_json(text, limits)?);
    check_json_bounds(&ev, limits)?;
    Ok(ev)
}

fn check_event(ev: &pb::Event, limits: &Limits) -> Result<(), ProtoError> {
    limits.check_str("sender", &ev.sender)?;
    limits.check_str("text", &ev.text)?;
    limits.check_str("payload", &ev.payload_json)?;
    limits.check_str("blob", &ev.blob)
}

fn check_json_bounds(ev: &ServerEvent, limits: &Limits) -> Result<(), ProtoError> {
    match ev {
        ServerEvent::Batch { channel, events } => {
            limits.check_str("channel", channel)?;
            if events.len() > limits.max_batch_events {
                return Err(ProtoError::TooManyEvents {
                    claimed: events.len(),
                    limit: limits.max_batch_events,
                });
            }
            events.iter().try_for_each(|e| check_event(e, limits))
        }
        ServerEvent::Reliable { channel, event, .. } => {
            limits.check_str("channel", channel)?;
            check_event(event, limits)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_proto::BatchEncoder;
    use danmaku_proto::sample::CommentGenerator;

    fn danmaku(sender: &str, text: &str, ts_ms: i64) -> pb::Event {
        pb::Event {
            kind: pb::Kind::Danmaku as i32,
            sender: sender.into(),
            text: text.into(),
            ts_ms,
            ..Default::default()
        }
    }

    #[test]
    fn pb_batch_is_opened() {
        let events = CommentGenerator::new(7).events(200, 1_000);
        let batch = BatchEncoder::default().encode("room:1", &events).unwrap();
        assert_eq!(
            batch.codec,
            pb::Codec::Zstd as i32,
            "big batch is compressed"
        );
        let wire = frame::encode(&frame::server(Body::Batch(batch)));
        let ev = decode_pb(&wire, &Limits::default()).unwrap();
        assert_eq!(
            ev,
            ServerEvent::Batch {
                channel: "room:1".into(),
                events
            }
        );
    }

    #[test]
    fn pb_control_frames() {
        let limits = Limits::default();
        let cases = [
            (
                Body::AuthOk(pb::AuthOk {
                    user: "alice".into(),
                    ack_interval_ms: 5000,
                }),
                ServerEvent::AuthOk {
                    user: "alice".into(),
                    ack_interval_ms: 5000,
                },
            ),
            (
                Body::Joined(pb::Joined {
                    channel: "room:42".into(),
                    last_seq: 17,
                    ack_interval_ms: 5000,
                }),
                ServerEvent::Joined {
                    channel: "room:42".into(),
                    last_seq: 17,
                    ack_interval_ms: 5000,
                },
            ),
            (
                Body::Left(pb::Left {
                    channel: "group:7".into(),
                    reason: "removed".into(),
                }),
                ServerEvent::Left {
                    channel: "group:7".into(),
                    reason: "removed".into(),
                },
            ),
            (Body::Pong(pb::Pong { ts_ms: 5 }), ServerEvent::Pong),
            (
                Body::Error(pb::Error {
                    code: "bad_channel".into(),
                    message: "nope".into(),
                }),
                ServerEvent::Error {
                    code: "bad_channel".into(),
                    message: "nope".into(),
                },
            ),
        ];
        for (body, want) in cases {
            let wire = frame::encode(&frame::server(body));
            assert_eq!(decode_pb(&wire, &limits).unwrap(), want);
        }
    }

    #[test]
    fn pb_reliable_and_redirect() {
        let gift = pb::Event {
            kind: pb::Kind::Gift as i32,
            seq: 18,
            payload_json: r#"{"id":"rocket"}"#.into(),
            ..danmaku("bob", "rocket", 9)
        };
        let wire = frame::encode(&frame::server(Body::Reliable(pb::Reliable {
            channel: "group:7".into(),
            seq: 18,
            event: Some(gift.clone()),
        })));
        assert_eq!(
            decode_pb(&wire, &Limits::default()).unwrap(),
            ServerEvent::Reliable {
                channel: "group:7".into(),
                seq: 18,
                event: gift
            }
        );
        let edge = EdgeAddr {
            id: "e2".into(),
            ws: "ws://127.0.0.1:7071/v1/ws".into(),
            quic: "127.0.0.1:7071".into(),
            load: 0.25,
        };
        let wire = frame::encode(&frame::server(Body::Redirect(pb::Redirect {
            edges: vec![edge.clone()],
        })));
        assert_eq!(
            decode_pb(&wire, &Limits::default()).unwrap(),
            ServerEvent::Redirect { edges: vec![edge] }
        );
    }

    #[test]
    fn pb_bad_input_is_an_error() {
        let limits = Limits::default();
        assert!(decode_pb(&[0xff, 0xff, 0xff], &limits).is_err());
        let empty = frame::encode(&pb::ServerFrame {
            version: 1,
            body: None,
        });
        assert_eq!(decode_pb(&empty, &limits), Err(ProtoError::EmptyFrame));
        // A batch whose count lies about its payload.
        let mut batch = BatchEncoder::default()
            .encode("room:1", &[danmaku("a", "hi", 1)])
            .unwrap();
        batch.count = 3;
        let wire = frame::encode(&frame::server(Body::Batch(batch)));
        assert_eq!(decode_pb(&wire, &limits).unwrap_err().code(), "bad_batch");
        let small = Limits {
            max_frame_bytes: 4,
            ..Limits::default()
        };
        let wire = frame::encode(&frame::server(Body::Pong(pb::Pong { ts_ms: 123456 })));
        assert_eq!(
            decode_pb(&wire, &small).unwrap_err().code(),
            "frame_too_large"
        );
    }

    #[test]
    fn json_frames_match_api_md() {
        let limits = Limits::default();
        let cases = [
            (
                r#"{"type":"auth_ok","user":"alice"}"#,
                ServerEvent::AuthOk {
                    user: "alice".into(),
                    ack_interval_ms: 0,
                },
            ),
            (
                r#"{"type":"auth_ok","user":"alice","ack_interval_ms":1000}"#,
                ServerEvent::AuthOk {
                    user: "alice".into(),
                    ack_interval_ms: 1000,
                },
            ),
            (
                r#"{"type":"joined","channel":"room:42","last_seq":17}"#,
                ServerEvent::Joined {
                    channel: "room:42".into(),
                    last_seq: 17,
                    ack_interval_ms: 0,
                },
            ),
            (
                r#"{"type":"joined","channel":"room:42","last_seq":17,"ack_interval_ms":5000}"#,
                ServerEvent::Joined {
                    channel: "room:42".into(),
                    last_seq: 17,
                    ack_interval_ms: 5000,
                },
            ),
            (
                r#"{"type":"batch","channel":"room:42","events":[{"kind":"danmaku","sender":"alice","text":"hi","ts_ms":1732350000000}]}"#,
                ServerEvent::Batch {
                    channel: "room:42".into(),
                    events: vec![danmaku("alice", "hi", 1_732_350_000_000)],
                },
            ),
            (r#"{"type":"pong"}"#, ServerEvent::Pong),
            (
                r#"{"type":"error","code":"bad_channel","message":"x"}"#,
                ServerEvent::Error {
                    code: "bad_channel".into(),
                    message: "x".into(),
                },
            ),
            (
                r#"{"type":"redirect","edges":[{"id":"e1","ws":"ws://h/v1/ws","quic":"h:1","load":0.5}]}"#,
                ServerEvent::Redirect {
                    edges: vec![EdgeAddr {
                        id: "e1".into(),
                        ws: "ws://h/v1/ws".into(),
                        quic: "h:1".into(),
                        load: 0.5,
                    }],
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(decode_json(text, &limits).unwrap(), want, "{text}");
        }
        match decode_json(
            r#"{"type":"reliable","channel":"group:7","seq":18,"event":{"kind":"gift","sender":"bob","text":"rocket","ts_ms":5,"payload":{"n":1}}}"#,
            &limits,
        )
        .unwrap()
        {
            ServerEvent::Reliable {
                channel,
                seq,
                event,
            } => {
                assert_eq!((channel.as_str(), seq), ("group:7", 18));
                assert_eq!(event.kind, pb::Kind::Gift as i32);
                assert_eq!(event.seq, 18);
                assert_eq!(event.payload_json, r#"{"n":1}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_pb_batches_agree() {
        let events = CommentGenerator::new(3).events(20, 5);
        let json = danmaku_proto::json::batch_json("room:9", &events, None, 0);
        let wire = frame::encode(&frame::server(Body::Batch(
            BatchEncoder::default().encode("room:9", &events).unwrap(),
        )));
        let limits = Limits::default();
        assert_eq!(
            decode_json(&json, &limits).unwrap(),
            decode_pb(&wire, &limits).unwrap()
        );
    }

    #[test]
    fn a_blob_id_arrives_in_both_forms() {
        let id = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let mut events = CommentGenerator::new(3).events(2, 5);
        events[1].blob = id.into();
        let json = danmaku_proto::json::batch_json("room:9", &events, None, 0);
        let wire = frame::encode(&frame::server(Body::Batch(
            BatchEncoder::default().encode("room:9", &events).unwrap(),
        )));
        let limits = Limits::default();
        for got in [
            decode_json(&json, &limits).unwrap(),
            decode_pb(&wire, &limits).unwrap(),
        ] {
            let ServerEvent::Batch { events, .. } = got else {
                panic!("{got:?}")
            };
            let blobs: Vec<_> = events.iter().map(blob_of).collect();
            assert_eq!(blobs, [None, Some(id)]);
        }
    }

    #[test]
    fn retractions_and_sampled_out_come_out_of_the_tick_in_both_forms() {
        let mut events = CommentGenerator::new(3).events(2, 5);
        events.push(pb::Event {
            kind: pb::Kind::Retract as i32,
            id: "abc".into(),
            ts_ms: 7,
            ..Default::default()
        });
        let json = danmaku_proto::json::batch_json("room:9", &events, None, 42);
        let mut batch = BatchEncoder::default().encode("room:9", &events).unwrap();
        batch.sampled_out = 42;
        let wire = frame::encode(&frame::server(Body::Batch(batch)));
        let limits = Limits::default();
        let from_json = decode_json_events(&json, &limits).unwrap();
        assert_eq!(from_json, decode_pb_events(&wire, &limits).unwrap());
        assert_eq!(
            from_json,
            vec![
                ServerEvent::SampledOut {
                    channel: "room:9".into(),
                    count: 42
                },
                ServerEvent::Batch {
                    channel: "room:9".into(),
                    events: events[..2].to_vec()
                },
                ServerEvent::Retract {
                    channel: "room:9".into(),
                    id: "abc".into()
                },
            ]
        );
    }

    #[test]
    fn json_bad_input_is_an_error() {
        let limits = Limits {
            max_string_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(
            decode_json("{nope", &limits).unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            decode_json(r#"{"type":"dance"}"#, &limits)
                .unwrap_err()
                .code(),
            "malformed_json"
        );
        let long = r#"{"type":"batch","channel":"room:1","events":[{"kind":"danmaku","sender":"a","text":"far too long","ts_ms":1}]}"#;
        assert_eq!(
            decode_json(long, &limits).unwrap_err().code(),
            "string_too_long"
        );
    }

    #[test]
    fn a_tick_with_gifts_becomes_reliable_events_then_its_danmaku() {
        let ev = |seq: u64, text: &str| pb::Event {
            kind: if seq > 0 {
                pb::Kind::Gift
            } else {
                pb::Kind::Danmaku
            } as i32,
            text: text.into(),
            seq,
            ..Default::default()
        };
        let batch = BatchEncoder::default()
            .encode(
                "room:1",
                &[ev(0, "a"), ev(7, "g7"), ev(0, "b"), ev(8, "g8")],
            )
            .unwrap();
        assert_eq!((batch.first_seq, batch.last_seq), (7, 8));
        let wire = frame::encode(&frame::server(Body::Batch(batch)));
        let split = split_tick(decode_pb(&wire, &Limits::default()).unwrap());
        let kinds: Vec<String> = split
            .iter()
            .map(|e| match e {
                ServerEvent::Reliable { seq, event, .. } => format!("r{seq}:{}", event.text),
                ServerEvent::Batch { events, .. } => format!(
                    "b:{}",
                    events
                        .iter()
                        .map(|e| e.text.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["r7:g7", "r8:g8", "b:a,b"]);
        // Gifts alone: still one (empty) batch per tick; no gifts: untouched.
        let gifts_only = ServerEvent::Batch {
            channel: "room:1".into(),
            events: vec![ev(9, "g9")],
        };
        assert!(
            matches!(&split_tick(gifts_only)[..], [ServerEvent::Reliable { seq: 9, .. }, ServerEvent::Batch { events, .. }] if events.is_empty())
        );
        let plain = ServerEvent::Batch {
            channel: "room:1".into(),
            events: vec![ev(0, "x")],
        };
        assert_eq!(split_tick(plain.clone()), vec![plain]);
    }
}
