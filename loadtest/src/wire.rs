//! A lean WebSocket client for load generation.
//!
//! The SDK client (`danmaku-client`) runs a reader, a writer and a heartbeat task
//! per connection and tungstenite keeps a 128 KiB read buffer each: right for an
//! app, too heavy for 19,000 viewers in one process. Here a connection is one
//! `TcpStream` plus one small `BytesMut`, driven by the viewer's own task: the
//! handshake is written by hand, server frames are parsed in place (they are
//! never masked), and the few client frames (join, ack, ping) are masked and
//! written directly. Control frames (ping/close) are handled here.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// WebSocket opcodes the harness cares about.
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest message accepted from a server (a JSON batch of a busy room is tens of KB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Where a WebSocket connection goes: socket address, `Host` header and the
/// request path with its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

impl WsTarget {
    /// From a base URL (`http://h:p`, `ws://h:p/v1/ws`, …): `/v1/ws` is appended
    /// when `append_v1_ws` and the path does not already end with it.
    pub async fn resolve(url: &str, append_v1_ws: bool) -> io::Result<WsTarget> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("{url}: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| bad(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| bad(format!("{host} resolves to no IPv4 address")))?;
        let mut path = parsed.path().trim_end_matches('/').to_owned();
        if append_v1_ws && !path.ends_with("/v1/ws") {
            path.push_str("/v1/ws");
        }
        if path.is_empty() {
            path.push('/');
        }
        Ok(WsTarget {
            addr,
            host: format!("{host}:{port}"),
            path,
        })
    }
}

/// One client connection.
pub struct WsConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Opcode and data of a fragmented message being reassembled.
    partial: Option<(u8, BytesMut)>,
    mask: u32,
    /// Bytes read from the socket, headers included (what the wire carried).
    pub bytes_in: u64,
}

const READ_CHUNK: usize = 4096;

impl WsConn {
    /// Connects (from `local` when given), sends the upgrade request with
    /// `query` appended to the target's path, and waits for `101`.
    pub async fn connect(
        target: &WsTarget,
        query: &str,
        subprotocol: Option<&str>,
        local: Option<IpAddr>,
    ) -> io::Result<WsConn> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = local {
            danmaku_client::bind::bind_source(&socket, ip)?;
        }
        let stream = socket.connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = WsConn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            partial: None,
            mask: 0x9E37_79B9 ^ (target.addr.port() as u32),
            bytes_in: 0,
        };
        let mut req = format!(
            "GET {}{}{} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            target.path,
            if query.is_empty() { "" } else { "?" },
            query,
            target.host
        );
        if let Some(p) = subprotocol {
            req.push_str("Sec-WebSocket-Protocol: ");
            req.push_str(p);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        conn.stream.write_all(req.as_bytes()).await?;
        // Read the response head; anything after it is already WebSocket data.
        loop {
            if let Some(end) = find(&conn.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&conn.buf[..end]).into_owned();
                let status = head.lines().next().unwrap_or_default().to_owned();
                if !status.contains(" 101") {
                    // Give the caller the body too: it carries the error code.
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(200),
                        conn.stream.read_buf(&mut conn.buf),
                    )
                    .await;
                    let body = String::from_utf8_lossy(&conn.buf[end + 4..]).into_owned();
                    return Err(io::Error::other(format!(
                        "upgrade refused: {status} {}",
                        body.chars().take(160).collect::<String>()
                    )));
                }
                conn.bytes_in += (end + 4) as u64;
                conn.buf.advance(end + 4);
                return Ok(conn);
            }
            if conn.buf.len() > 16 << 10 {
                return Err(io::Error::other("upgrade response head too long"));
            }
            if conn.read_more().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the upgrade",
                ));
            }
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        self.bytes_in += n as u64;
        Ok(n)
    }

    /// The next data message `(opcode, payload)`; `None` when the server closed.
    /// Pings are answered here. Cancel-safe: bytes already read stay buffered.
    pub async fn next(&mut self) -> io::Result<Option<(u8, Bytes)>> {
        loop {
            while let Some(frame) = parse_frame(&self.buf)? {
                let Frame {
                    fin,
                    opcode,
                    header,
                    len,
                    mask,
                } = frame;
                self.buf.advance(header);
                let mut payload = self.buf.split_to(len);
                if let Some(key) = mask {
                    unmask(&mut payload, key);
                }
                match opcode {
                    OP_PING => self.send(OP_PONG, &payload).await?,
                    OP_PONG => {}
                    OP_CLOSE => return Ok(None),
                    OP_CONT => {
                        let Some((op, mut data)) = self.partial.take() else {
                            return Err(io::Error::other("continuation without a first frame"));
                        };
                        data.extend_from_slice(&payload);
                        if data.len() > MAX_MESSAGE {
                            return Err(io::Error::other("message too large"));
                        }
                        if fin {
                            return Ok(Some((op, data.freeze())));
                        }
                        self.partial = Some((op, data));
                    }
                    op if fin => return Ok(Some((op, payload.freeze()))),
                    op => self.partial = Some((op, payload)),
                }
            }
            // Keep idle connections small: a buffer grown by one big frame is dropped.
            if self.buf.is_empty() && self.buf.capacity() > 64 << 10 {
                self.buf = BytesMut::with_capacity(READ_CHUNK);
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes one masked frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let frame = client_frame(opcode, payload, self.mask.to_be_bytes());
        self.stream.write_all(&frame).await
    }

    /// Sends a close frame and shuts the socket down (best effort).
    pub async fn close(mut self) {
        let _ = self.send(OP_CLOSE, &[]).await;
        let _ = self.stream.shutdown().await;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A parsed frame header.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Header length (payload starts here).
    pub header: usize,
    /// Payload length.
    pub len: usize,
    pub mask: Option<[u8; 4]>,
}

/// Parses the frame at the start of `buf`: `None` until it is complete.
pub fn parse_frame(buf: &[u8]) -> io::Result<Option<Frame>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut header) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(io::Error::other(format!("frame of {len} bytes")));
    }
    let mask = if masked {
        if buf.len() < header + 4 {
            return Ok(None);
        }
        let mut k = [0u8; 4];
        k.copy_from_slice(&buf[header..header + 4]);
        header += 4;
        Some(k)
    } else {
        None
    };
    let len = len as usize;
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        header,
        len,
        mask,
    }))
}

fn unmask(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A complete client→server frame (FIN, masked with `key`).
pub fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    push_len(&mut out, payload.len(), 0x80);
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], key);
    out
}

/// A complete server→client frame (FIN, unmasked): what an edge writes.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    push_len(&mut out, payload.len(), 0);
    out.extend_from_slice(payload);
    out
}

fn push_len(out: &mut Vec<u8>, len: usize, mask_bit: u8) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_form() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = client_frame(OP_BINARY, &payload, [1, 2, 3, 4]);
            let h = parse_frame(&f).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.len), (true, OP_BINARY, len));
            let mut body = f[h.header..].to_vec();
            unmask(&mut body, h.mask.unwrap());
            assert_eq!(body, payload);
            // Incomplete input waits for more.
            assert_eq!(parse_frame(&f[..f.len() - 1]).unwrap(), None);

            let s = server_frame(OP_TEXT, &payload);
            let h = parse_frame(&s).unwrap().unwrap();
            assert_eq!(
                (h.opcode, h.mask, h.header + h.len),
                (OP_TEXT, None, s.len())
            );
        }
    }

    #[test]
    fn oversize_frames_are_refused() {
        let mut f = vec![0x82, 127];
        f.extend_from_slice(&(u64::MAX / 2).to_be_bytes());
        assert!(parse_frame(&f).is_err());
    }
}
