//! WebSocket framing (RFC 6455 §5), sans IO, sized for a broadcast server.
//!
//! Two halves, both plain functions over bytes:
//!
//! * [`Prepared`]: a complete server→client frame, header and payload in ONE
//!   buffer. Server frames are never masked, so the bytes are identical for every
//!   receiver: a batch is framed once and every connection writes the same
//!   refcounted `Bytes` (gorilla's `PreparedMessage`, uWebSockets' pub/sub). A
//!   general WebSocket library frames per connection instead, copying header and
//!   payload into each connection's write buffer.
//! * [`Decoder`]: reads a client's masked frames. Client frames are tiny (join,
//!   ack, ping), so the decoder holds no buffer between frames — an idle
//!   connection costs nothing here — and never reserves more than the bytes that
//!   actually arrived. A declared length above the limit is refused from the
//!   header alone, before anything is buffered.
//!
//! No extensions are negotiated (the batches are zstd-compressed already), so
//! the RSV bits must be zero.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest payload of a control frame (ping, pong, close).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Control frames may not be fragmented and carry at most 125 bytes.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Bytes of the header of an unmasked frame carrying `len` payload bytes.
pub const fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    }
}

fn put_header(buf: &mut impl BufMut, fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, len: usize) {
    buf.put_u8(if fin { 0x80 } else { 0 } | opcode as u8);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        buf.put_u8(mask_bit | len as u8);
    } else if len <= 0xFFFF {
        buf.put_u8(mask_bit | 126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(mask_bit | 127);
        buf.put_u64(len as u64);
    }
    if let Some(m) = mask {
        buf.put_slice(&m);
    }
}

/// A complete, unmasked server→client frame built once and shared by every
/// connection that sends it. Cloning is a refcount bump. One pointer wide, so a
/// connection's queue of them stays small (tokio allocates a queue's first
/// block of 32 slots up front, per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared(std::sync::Arc<Framed>);

#[derive(Debug, PartialEq, Eq)]
struct Framed {
    wire: Bytes,
    header: u8,
}

impl Prepared {
    /// Frames `payload` (one copy, once for all receivers).
    pub fn new(opcode: OpCode, payload: &[u8]) -> Prepared {
        let h = header_len(payload.len());
        let mut buf = BytesMut::with_capacity(h + payload.len());
        put_header(&mut buf, true, opcode, None, payload.len());
        buf.put_slice(payload);
        Prepared::from_parts(buf.freeze(), h)
    }

    /// Encodes a protobuf message straight after its frame header: one
    /// allocation, no copy.
    pub fn encode<M: prost::Message>(opcode: OpCode, message: &M) -> Prepared {
        let len = message.encoded_len();
        let h = header_len(len);
        let mut buf = BytesMut::with_capacity(h + len);
        put_header(&mut buf, true, opcode, None, len);
        message.encode_raw(&mut buf);
        debug_assert_eq!(buf.len(), h + len);
        Prepared::from_parts(buf.freeze(), h)
    }

    /// Bytes sent exactly as they are, without a WebSocket header: the same
    /// shared, refcounted carrier for a transport with its own framing (a
    /// server-sent event). [`Prepared::wire`] and [`Prepared::payload`] are
    /// both the whole of `bytes`; [`Prepared::opcode`] reads `Text`.
    pub fn raw(bytes: Bytes) -> Prepared {
        Prepared::from_parts(bytes, 0)
    }

    fn from_parts(wire: Bytes, header: usize) -> Prepared {
        Prepared(std::sync::Arc::new(Framed {
            wire,
            header: header as u8,
        }))
    }

    /// A close frame with `code` and a reason cut to fit a control frame.
    pub fn close(code: u16, reason: &str) -> Prepared {
        let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        Prepared::new(OpCode::Close, &payload)
    }

    /// The answer to a ping: a pong with the same application data.
    pub fn pong(ping_payload: &[u8]) -> Prepared {
        let end = ping_payload.len().min(MAX_CONTROL_PAYLOAD);
        Prepared::new(OpCode::Pong, &ping_payload[..end])
    }

    /// The whole frame as written to a WebSocket.
    pub fn wire(&self) -> &Bytes {
        &self.0.wire
    }

    /// The payload alone (a slice of the same buffer), e.g. for QUIC.
    pub fn payload(&self) -> Bytes {
        self.0.wire.slice(usize::from(self.0.header)..)
    }

    pub fn opcode(&self) -> OpCode {
        if self.0.header == 0 {
            return OpCode::Text; // raw bytes (`Prepared::raw`): never a WebSocket frame
        }
        OpCode::from_bits(self.0.wire[0] & 0x0F).unwrap_or(OpCode::Binary)
    }
}

/// Frames `payload` as a client does: masked with `mask`. For clients, tests
/// and fuzzing; the edge itself never masks.
pub fn encode_masked(fin: bool, opcode: OpCode, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len()) + 4 + payload.len());
    put_header(&mut out, fin, opcode, Some(mask), payload.len());
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
    out
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// One complete message read from a peer (fragments reassembled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Text payload; NOT yet checked for UTF-8 (the caller parses it anyway).
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// `code` is absent when the close frame had no payload.
    Close {
        code: Option<u16>,
        reason: Bytes,
    },
}

/// Why a peer's bytes are not a valid WebSocket stream.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// A message (the sum of its fragments) declared above the limit.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    /// A framing rule broken: the stream cannot be trusted any further.
    #[error("websocket protocol violation: {0}")]
    Protocol(&'static str),
}

/// Reads WebSocket frames from a byte stream, sans IO: [`Decoder::push`] what
/// the socket gave, take [`Decoder::next_message`] until `Ok(None)`.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_message: usize,
    masked: bool,
    /// A fragmented message being assembled: its opcode and data so far.
    partial: Option<(OpCode, BytesMut)>,
}

impl Decoder {
    /// Server side: every frame must be masked; messages up to `max_message` bytes.
    pub fn server(max_message: usize) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_message,
            masked: true,
            partial: None,
        }
    }

    /// Client side: frames must NOT be masked (reading a server, e.g. in tests).
    pub fn client(max_message: usize) -> Self {
        Decoder {
            masked: false,
            ..Decoder::server(max_message)
        }
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned (including an unfinished message).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.partial.as_ref().map_or(0, |(_, d)| d.len())
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. After an
    /// error the stream is unusable: close the connection.
    pub fn next_message(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            let Some(frame) = self.next_frame()? else {
                // Nothing pending: give the allocation back (idle connections
                // then hold no read buffer at all).
                if self.buf.is_empty() && self.buf.capacity() > 0 {
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            let (fin, opcode, payload) = frame;
            match opcode {
                OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
                OpCode::Close => return close_message(payload.freeze()).map(Some),
                OpCode::Text | OpCode::Binary => {
                    if self.partial.is_some() {
                        return Err(WsError::Protocol("new message inside a fragmented one"));
                    }
                    if fin {
                        return Ok(Some(data_message(opcode, payload.freeze())));
                    }
                    self.partial = Some((opcode, payload));
                }
                OpCode::Continuation => {
                    let Some((op, mut data)) = self.partial.take() else {
                        return Err(WsError::Protocol("continuation without a message"));
                    };
                    data.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(data_message(op, data.freeze())));
                    }
                    self.partial = Some((op, data));
                }
            }
        }
    }

    /// One whole frame, unmasked, or `None` if it has not fully arrived.
    fn next_frame(&mut self) -> Result<Option<(bool, OpCode, BytesMut)>, WsError> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let opcode = OpCode::from_bits(b[0] & 0x0F).ok_or(WsError::Protocol("unknown opcode"))?;
        let masked = b[1] & 0x80 != 0;
        if masked != self.masked {
            return Err(WsError::Protocol(if self.masked {
                "client frame is not masked"
            } else {
                "server frame is masked"
            }));
        }
        let (len, pos) = match b[1] & 0x7F {
            126 => {
                let Some(l) = b.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([l[0], l[1]])), 4)
            }
            127 => {
                let Some(l) = b.get(2..10) else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(l.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("64-bit length with the top bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        if opcode.is_control() {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::Protocol("control frame above 125 bytes"));
            }
        } else {
            let so_far = match (&self.partial, opcode) {
                (Some((_, d)), OpCode::Continuation) => d.len() as u64,
                _ => 0,
            };
            let size = so_far.saturating_add(len);
            if size > self.max_message as u64 {
                return Err(WsError::TooLarge {
                    size,
                    limit: self.max_message,
                });
            }
        }
        let mask_len = if masked { 4 } else { 0 };
        // `len` ≤ max_message (data) or 125 (control): fits usize.
        let len = len as usize;
        if b.len() < pos + mask_len + len {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        if masked {
            mask.copy_from_slice(&b[pos..pos + 4]);
        }
        self.buf.advance(pos + mask_len);
        let mut payload = self.buf.split_to(len);
        if masked {
            apply_mask(&mut payload, mask);
        }
        Ok(Some((fin, opcode, payload)))
    }
}

fn data_message(opcode: OpCode, data: Bytes) -> Message {
    if opcode == OpCode::Text {
        Message::Text(data)
    } else {
        Message::Binary(data)
    }
}

fn close_message(payload: Bytes) -> Result<Message, WsError> {
    match payload.len() {
        0 => Ok(Message::Close {
            code: None,
            reason: Bytes::new(),
        }),
        1 => Err(WsError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason = payload.slice(2..);
            if std::str::from_utf8(&reason).is_err() {
                return Err(WsError::Protocol("close reason is not UTF-8"));
            }
            Ok(Message::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn decode_all(dec: &mut Decoder) -> Result<Vec<Message>, WsError> {
        let mut out = Vec::new();
        while let Some(m) = dec.next_message()? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn rfc_6455_examples_decode() {
        // §5.7: a single-frame masked text message "Hello".
        let mut dec = Decoder::server(1024);
        dec.push(&[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ]);
        assert_eq!(
            decode_all(&mut dec).unwrap(),
            [Message::Text(Bytes::from_static(b"Hello"))]
        );
        // §5.7: a fragmented unmasked text message, read as a client.
        let mut dec = Decoder::client(1024);
        dec.push(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]);
        assert_eq!(
            decode_all(&mut dec).unwrap(),
            [Message::Text(Bytes::from_static(b"Hello"))]
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn prepared_frames_match_the_rfc_layout_for_each_length_class() {
        let p = Prepared::new(OpCode::Text, b"Hello");
        assert_eq!(&p.wire()[..], &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(&p.payload()[..], b"Hello");
        assert_eq!(p.opcode(), OpCode::Text);
        let p = Prepared::new(OpCode::Binary, &[7u8; 256]);
        assert_eq!(&p.wire()[..4], &[0x82, 0x7E, 0x01, 0x00]);
        let p = Prepared::new(OpCode::Binary, &[7u8; 65536]);
        assert_eq!(&p.wire()[..10], &[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(p.payload().len(), 65536);
        assert_eq!(
            p.payload().as_ptr(),
            p.wire()[10..].as_ptr(),
            "a slice, not a copy"
        );
    }

    #[test]
    fn encode_writes_the_protobuf_after_the_header() {
        let f = crate::frame::error("code", "message");
        let p = Prepared::encode(OpCode::Binary, &f);
        assert_eq!(p.payload(), crate::frame::encode(&f));
        assert_eq!(p.wire()[0], 0x82);
    }

    #[test]
    fn close_and_pong_fit_a_control_frame() {
        let long = "é".repeat(100);
        let c = Prepared::close(1008, &long);
        assert!(c.payload().len() <= MAX_CONTROL_PAYLOAD);
        let mut dec = Decoder::client(1024);
        dec.push(c.wire());
        match dec.next_message().unwrap() {
            Some(Message::Close { code, reason }) => {
                assert_eq!(code, Some(1008));
                assert!(
                    std::str::from_utf8(&reason).is_ok(),
                    "cut at a char boundary"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Prepared::pong(&[1u8; 200]).payload().len(), 125);
    }

    #[test]
    fn oversize_is_refused_from_the_header_before_buffering() {
        let mut dec = Decoder::server(100);
        // Only the header of a 1 MiB frame: refused already.
        dec.push(&[0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(
            dec.next_message(),
            Err(WsError::TooLarge {
                size: 1 << 20,
                limit: 100
            })
        );
        // Fragments that are small alone but too large together.
        let mut dec = Decoder::server(100);
        dec.push(&encode_masked(false, OpCode::Binary, MASK, &[1; 60]));
        dec.push(&encode_masked(true, OpCode::Continuation, MASK, &[1; 60]));
        assert!(matches!(
            dec.next_message(),
            Err(WsError::TooLarge { size: 120, .. })
        ));
    }

    #[test]
    fn protocol_violations_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![0x81, 0x05, b'H', b'e', b'l', b'l', b'o'],
                "client frame is not masked",
            ),
            (
                encode_masked(true, OpCode::Text, MASK, b"x")
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| if i == 0 { b | 0x40 } else { b })
                    .collect(),
                "reserved bits set",
            ),
            (vec![0x83, 0x80, 0, 0, 0, 0], "unknown opcode"),
            (
                encode_masked(false, OpCode::Ping, MASK, b""),
                "fragmented control frame",
            ),
            (
                encode_masked(true, OpCode::Ping, MASK, &[0; 126]),
                "control frame above 125 bytes",
            ),
            (
                encode_masked(true, OpCode::Continuation, MASK, b"x"),
                "continuation without a message",
            ),
            (
                encode_masked(true, OpCode::Close, MASK, &[3]),
                "close payload of one byte",
            ),
            (
                encode_masked(true, OpCode::Close, MASK, &[3, 232, 0xff]),
                "close reason is not UTF-8",
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1],
                "64-bit length with the top bit set",
            ),
        ];
        for (bytes, what) in cases {
            let mut dec = Decoder::server(1 << 20);
            dec.push(&bytes);
            assert_eq!(dec.next_message(), Err(WsError::Protocol(what)), "{what}");
        }
        let mut dec = Decoder::server(1024);
        dec.push(&encode_masked(false, OpCode::Text, MASK, b"a"));
        dec.push(&encode_masked(true, OpCode::Binary, MASK, b"b"));
        assert_eq!(
            dec.next_message(),
            Err(WsError::Protocol("new message inside a fragmented one"))
        );
    }

    #[test]
    fn idle_decoder_holds_no_buffer() {
        let mut dec = Decoder::server(1024);
        dec.push(&encode_masked(true, OpCode::Binary, MASK, &[9; 40]));
        assert!(dec.next_message().unwrap().is_some());
        assert_eq!(dec.next_message().unwrap(), None);
        assert_eq!(dec.buf.capacity(), 0);
        assert_eq!(dec.buffered(), 0);
    }

    #[derive(Debug, Clone)]
    enum Sent {
        Data {
            text: bool,
            payload: Vec<u8>,
            pieces: usize,
        },
        Ping(Vec<u8>),
    }

    fn sent() -> impl Strategy<Value = Sent> {
        prop_oneof![
            (
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..700),
                1usize..5
            )
                .prop_map(|(text, payload, pieces)| Sent::Data {
                    text,
                    payload,
                    pieces
                }),
            proptest::collection::vec(any::<u8>(), 0..126).prop_map(Sent::Ping),
        ]
    }

    proptest! {
        /// Any sequence of (possibly fragmented) messages with pings between
        /// fragments, under any mask and cut into any chunks, decodes to exactly
        /// the messages sent, and leaves nothing buffered.
        #[test]
        fn masked_messages_round_trip(
            msgs in proptest::collection::vec(sent(), 0..12),
            mask in any::<[u8; 4]>(),
            chunk in 1usize..64,
        ) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for m in &msgs {
                match m {
                    Sent::Ping(p) => {
                        wire.extend(encode_masked(true, OpCode::Ping, mask, p));
                        expected.push(Message::Ping(Bytes::from(p.clone())));
                    }
                    Sent::Data { text, payload, pieces } => {
                        let op = if *text { OpCode::Text } else { OpCode::Binary };
                        let size = payload.len().div_ceil(*pieces).max(1);
                        let parts: Vec<&[u8]> = if payload.is_empty() { vec![&[]] } else { payload.chunks(size).collect() };
                        for (i, part) in parts.iter().enumerate() {
                            let first = if i == 0 { op } else { OpCode::Continuation };
                            wire.extend(encode_masked(i + 1 == parts.len(), first, mask, part));
                            if i == 0 && parts.len() > 1 {
                                // A control frame between fragments is allowed.
                                wire.extend(encode_masked(true, OpCode::Pong, mask, b"p"));
                                expected.push(Message::Pong(Bytes::from_static(b"p")));
                            }
                        }
                        let b = Bytes::from(payload.clone());
                        expected.push(if *text { Message::Text(b) } else { Message::Binary(b) });
                    }
                }
            }
            let mut dec = Decoder::server(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                dec.push(piece);
                got.extend(decode_all(&mut dec).unwrap());
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(dec.buffered(), 0);
        }

        /// A prepared frame reads back as its payload, whatever its size class.
        #[test]
        fn prepared_frames_decode_as_a_client_reads_them(
            payload in proptest::collection::vec(any::<u8>(), 0..70_000),
            text in any::<bool>(),
        ) {
            let op = if text { OpCode::Text } else { OpCode::Binary };
            let p = Prepared::new(op, &payload);
            prop_assert_eq!(p.wire().len(), header_len(payload.len()) + payload.len());
            let mut dec = Decoder::client(1 << 20);
            dec.push(p.wire());
            let b = Bytes::from(payload);
            let want = if text { Message::Text(b) } else { Message::Binary(b) };
            prop_assert_eq!(dec.next_message().unwrap(), Some(want));
            prop_assert_eq!(dec.next_message().unwrap(), None);
        }

        /// Arbitrary bytes never panic the decoder, and nothing it yields is
        /// above its limit.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..32) {
            let mut dec = Decoder::server(64);
            'feed: for piece in data.chunks(chunk) {
                dec.push(piece);
                loop {
                    match dec.next_message() {
                        Ok(Some(Message::Text(b) | Message::Binary(b))) => prop_assert!(b.len() <= 64),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
        }
    }
}
