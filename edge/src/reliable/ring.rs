//! A channel's recent reliable events, each framed once as its own
//! `Reliable` frame: what a connection resends to a stalled client, and where a
//! resume or a missed tick is served from before the store is asked.
//!
//! Live, a reliable event travels inside its channel's tick frame; these
//! single-event frames are built once per event per edge (not per member) and
//! only written to the few connections that need them.

use std::collections::VecDeque;
use std::sync::Arc;

use danmaku_proto::json::{JsonEvent, JsonServerFrame};
use danmaku_proto::pb::server_frame::Body;
use danmaku_proto::wsframe::{OpCode, Prepared};
use danmaku_proto::{frame, pb};

use crate::transport::Transport;

/// One reliable event as a `Reliable` frame, built ONCE in both wire forms
/// and shared by `Arc` with every connection that is sent it.
#[derive(Debug)]
pub struct ReliableFrame {
    pub seq: u64,
    pub pb: Prepared,
    pub json: Prepared,
    /// The JSON frame as a server-sent event with `id: <channel>:<seq>`.
    pub sse: Prepared,
}

impl ReliableFrame {
    /// Encodes `event` (whose `seq` is set) as a `Reliable` frame of `channel`.
    pub fn build(channel: &str, event: &pb::Event) -> Arc<ReliableFrame> {
        let seq = event.seq;
        let json = JsonServerFrame::Reliable {
            channel: channel.to_owned(),
            seq,
            event: JsonEvent::from_pb(event),
        }
        .to_text();
        let frame = frame::server(Body::Reliable(pb::Reliable {
            channel: channel.to_owned(),
            seq,
            event: Some(event.clone()),
        }));
        Arc::new(ReliableFrame {
            seq,
            pb: Prepared::encode(OpCode::Binary, &frame),
            sse: crate::sse_wire::event(Some((channel, seq)), json.as_bytes()),
            json: Prepared::new(OpCode::Text, json.as_bytes()),
        })
    }

    /// The frame as `transport` writes it (a refcount bump).
    pub fn outbound(&self, transport: Transport) -> Prepared {
        match transport {
            Transport::Sse => self.sse.clone(),
            t if t.is_json() => self.json.clone(),
            _ => self.pb.clone(),
        }
    }
}

/// The last `capacity` reliable events of a channel, in seq order.
#[derive(Debug)]
pub struct Ring {
    frames: VecDeque<Arc<ReliableFrame>>,
    capacity: usize,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Ring {
            frames: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Appends the channel's next event in order; a seq at or below the last
    /// one is ignored (the fan-out already orders and deduplicates).
    pub fn push(&mut self, frame: Arc<ReliableFrame>) {
        if self.frames.back().is_some_and(|b| b.seq >= frame.seq) {
            return;
        }
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    /// The highest seq held (0 when empty).
    pub fn head(&self) -> u64 {
        self.frames.back().map_or(0, |f| f.seq)
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Up to `limit` frames after seq `after`, oldest first. `None` when the
    /// ring cannot tell what follows `after` (empty, or it no longer holds
    /// `after + 1`): read the store instead.
    pub fn after(&self, after: u64, limit: usize) -> Option<Vec<Arc<ReliableFrame>>> {
        let first = self.frames.front()?.seq;
        if after.saturating_add(1) < first {
            return None;
        }
        let start = self.frames.partition_point(|f| f.seq <= after);
        Some(self.frames.range(start..).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gift(seq: u64) -> Arc<ReliableFrame> {
        ReliableFrame::build(
            "room:r",
            &pb::Event {
                kind: pb::Kind::Gift as i32,
                sender: "bob".into(),
                seq,
                ..Default::default()
            },
        )
    }

    fn seqs(v: Option<Vec<Arc<ReliableFrame>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|f| f.seq).collect())
    }

    #[test]
    fn serves_what_it_holds_and_sends_the_rest_to_the_store() {
        let mut r = Ring::new(4);
        assert_eq!(seqs(r.after(0, 10)), None, "empty: ask the store");
        for s in 3..=8 {
            r.push(gift(s));
        }
        r.push(gift(7)); // late duplicate: ignored
        assert_eq!((r.len(), r.head()), (4, 8));
        assert_eq!(seqs(r.after(4, 10)), Some(vec![5, 6, 7, 8]));
        assert_eq!(seqs(r.after(5, 2)), Some(vec![6, 7]));
        assert_eq!(seqs(r.after(8, 10)), Some(vec![]), "nothing newer");
        assert_eq!(seqs(r.after(3, 10)), None, "4 fell out: the store has it");
    }

    #[test]
    fn a_frame_is_built_once_for_both_wires() {
        let f = gift(9);
        assert_eq!(f.outbound(Transport::WsJson).opcode(), OpCode::Text);
        assert_eq!(
            f.outbound(Transport::Quic).wire().as_ptr(),
            f.outbound(Transport::WsPb).wire().as_ptr()
        );
        let text = String::from_utf8(f.json.payload().to_vec()).unwrap();
        assert!(
            text.contains(r#""type":"reliable""#) && text.contains(r#""seq":9"#),
            "{text}"
        );
    }
}
