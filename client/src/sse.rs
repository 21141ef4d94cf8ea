//! Server-sent events: the fallback for networks that break WebSocket.
//!
//! [`SseClient`] opens `GET /v1/sse?token=…&channel=…` and turns each event's
//! `data:` (a JSON frame, the same as `danmaku.v1.json`'s) into
//! [`ServerEvent`]s. The stream is one way: the edge joins the channels of the
//! query, acks for the client what it wrote, and a new stream resumes each
//! channel from `after` (the last reliable `seq` the application got). The
//! client remembers the last `id:` per channel ([`SseClient::last_ids`]) so a
//! reconnect can pass them back. Parsing is [`EventStreamParser`], sans-IO.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use danmaku_proto::Limits;
use reqwest::Url;
use tokio::sync::mpsc;

use crate::error::ClientError;
use crate::event::{ServerEvent, decode_json_events};

/// Events buffered between the reading task and [`SseClient::next_event`].
const QUEUE: usize = 1024;

/// One server-sent event: its `id:` (if any) and its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: String,
}

/// Splits a `text/event-stream` body into events (WHATWG rules the edge
/// uses: `\n` line ends, `field: value`, a blank line ends an event,
/// comments start with `:`). Bounded: an event longer than `max` bytes is an
/// error, so a broken stream cannot grow the buffer without end.
#[derive(Debug)]
pub struct EventStreamParser {
    buf: Vec<u8>,
    max: usize,
}

impl EventStreamParser {
    pub fn new(max: usize) -> Self {
        EventStreamParser {
            buf: Vec::new(),
            max,
        }
    }

    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, ClientError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = find_blank_line(&self.buf) {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8(block)
                .map_err(|_| ClientError::Unexpected("event stream is not UTF-8".into()))?;
            let mut ev = SseEvent {
                id: None,
                data: String::new(),
            };
            let mut has_data = false;
            for line in text.lines() {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                    None => (line, ""),
                };
                match field {
                    "" => {} // a comment (heartbeat)
                    "id" => ev.id = Some(value.to_owned()),
                    "data" => {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(value);
                        has_data = true;
                    }
                    _ => {} // `retry`, `event`: nothing to do
                }
            }
            if has_data {
                out.push(ev);
            }
        }
        if self.buf.len() > self.max {
            return Err(ClientError::Unexpected(format!(
                "an event above {} bytes",
                self.max
            )));
        }
        Ok(out)
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

/// `…/v1/sse?token=…&channel=…&after=…` from an `http(s)://` base URL.
pub fn sse_url(
    base_url: &str,
    token: &str,
    channels: &[&str],
    after: &[(&str, u64)],
) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::InvalidUrl {
        url: base_url.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        "ws" => url
            .set_scheme("http")
            .map_err(|_| bad("cannot set scheme"))?,
        "wss" => url
            .set_scheme("https")
            .map_err(|_| bad("cannot set scheme"))?,
        _ => return Err(bad("scheme must be http or https")),
    }
    let path = url.path().trim_end_matches('/');
    let path = path.strip_suffix("/v1/ws").unwrap_or(path);
    let path = format!("{path}/v1/sse");
    url.set_path(&path);
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("token", token);
        for c in channels {
            q.append_pair("channel", c);
        }
        for (c, seq) in after {
            q.append_pair("after", &format!("{c}:{seq}"));
        }
    }
    Ok(url)
}

/// A server-sent events stream from an edge.
pub struct SseClient {
    events: mpsc::Receiver<ServerEvent>,
    last_ids: Arc<Mutex<BTreeMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SseClient {
    /// Opens the stream; fails with [`ClientError::HttpStatus`] when the edge
    /// refuses it (bad token, revoked, blocked, bad channel, bad `after`).
    /// `after`: per channel, the last reliable `seq` already delivered.
    pub async fn connect(
        base_url: &str,
        token: &str,
        channels: &[&str],
        after: &[(&str, u64)],
        limits: Limits,
    ) -> Result<SseClient, ClientError> {
        let url = sse_url(base_url, token, channels, after)?;
        let mut resp = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream")
            .send()
            .await?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            return Err(ClientError::HttpStatus {
                status,
                code: body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                message: body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
        let (tx, events) = mpsc::channel(QUEUE);
        let last_ids: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let ids = Arc::clone(&last_ids);
        let task = tokio::spawn(async move {
            let mut parser = EventStreamParser::new(limits.max_frame_bytes + 256);
            while let Ok(Some(chunk)) = resp.chunk().await {
                let evs = match parser.feed(&chunk) {
                    Ok(evs) => evs,
                    Err(e) => {
                        tracing::debug!(error = %e, "sse stream refused");
                        return;
                    }
                };
                for ev in evs {
                    let decoded = match decode_json_events(&ev.data, &limits) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::debug!(error = %e, "bad sse event");
                            return;
                        }
                    };
                    // Recorded before the events are queued, so whoever reads
                    // the last of them finds its id recorded.
                    if let Some((c, seq)) = ev.id.as_deref().and_then(|i| i.rsplit_once(':'))
                        && let Ok(seq) = seq.parse::<u64>()
                    {
                        let mut ids = ids.lock().unwrap_or_else(|e| e.into_inner());
                        let slot = ids.entry(c.to_owned()).or_default();
                        *slot = (*slot).max(seq);
                    }
                    for d in decoded {
                        if tx.send(d).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(SseClient {
            events,
            last_ids,
            task,
        })
    }

    /// The next event; `None` once the stream ended.
    pub async fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.recv().await
    }

    /// Per channel, the highest `id:` seq read so far.
    pub fn last_ids(&self) -> BTreeMap<String, u64> {
        self.last_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the stream (the edge sees the connection close).
    pub fn close(&self) {
        self.task.abort();
    }
}

impl Drop for SseClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_across_chunks() {
        let mut p = EventStreamParser::new(1024);
        assert!(
            p.feed(b"retry: 1000\n\n: heartbeat\n\nid: room:1:5\nda")
                .unwrap()
                .is_empty()
        );
        let evs = p.feed(b"ta: {\"a\":1}\n\ndata: x\ndata: y\n\n").unwrap();
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    id: Some("room:1:5".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: None,
                    data: "x\ny".into()
                }
            ]
        );
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = EventStreamParser::new(16);
        assert!(p.feed(&[b'a'; 40]).is_err());
    }

    #[test]
    fn the_url_names_every_channel_and_resume_point() {
        let u = sse_url(
            "http://h:1/v1/ws",
            "t k",
            &["room:1", "group:2"],
            &[("group:2", 7)],
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "http://h:1/v1/sse?token=t+k&channel=room%3A1&channel=group%3A2&after=group%3A2%3A7"
        );
    }
}
