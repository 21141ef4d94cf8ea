//! The registry endpoints edges call (all need an `app`-role token):
//!
//! * `POST /v1/registry/edges` — register or re-register (upsert by id);
//!   answers `{"heartbeat_interval_ms":1000}`.
//! * `POST /v1/registry/edges/{id}/heartbeat` — readiness, drain state and
//!   local member counts; answers the cluster-wide count of each reported
//!   channel. `404 unknown_edge` tells the edge to register again (it was
//!   ejected, or the scheduler restarted).
//! * `DELETE /v1/registry/edges/{id}` — leave (drain start, clean shutdown).
//!
//! The bodies are [`danmaku_proto::control`]'s, shared with the edge; they are
//! checked field by field here, so a refusal names the field.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use danmaku_proto::ChannelName;
use danmaku_proto::control::{HeartbeatAnswer, HeartbeatBody, RegisterAnswer};
use serde_json::{Map, Value};

use crate::auth::require_app;
use crate::error::ApiError;
use crate::load_model::{Heartbeat, Registered, Registration};
use crate::state::Scheduler;

/// Longest edge id.
pub const MAX_ID_LEN: usize = 64;
/// Largest `capacity` (client connections) accepted.
pub const MAX_CAPACITY: u64 = 10_000_000;
/// Largest `egress_capacity` (bytes/s) accepted.
pub const MAX_EGRESS_CAPACITY: u64 = 1_000_000_000_000;
/// `egress_capacity` when the edge does not say: 1 Gbit/s.
pub const DEFAULT_EGRESS_CAPACITY: u64 = 125_000_000;
/// Largest `cores` accepted.
pub const MAX_CORES: u64 = 1024;
/// Most channels one heartbeat may report (edges send at most 1,000).
pub const MAX_HEARTBEAT_CHANNELS: usize = 10_000;

pub async fn register(
    State(scheduler): State<Arc<Scheduler>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RegisterAnswer>, ApiError> {
    let refused = |e: ApiError| {
        scheduler
            .metrics
            .registrations_total
            .with_label_values(&["refused"])
            .inc();
        e
    };
    require_app(scheduler.tokens.as_ref(), &headers).map_err(refused)?;
    let reg = parse_registration(&body).map_err(refused)?;
    let id = reg.id.clone();
    let result = scheduler.model().on_register(Instant::now(), reg);
    let label = match result {
        Registered::Created => "created",
        Registered::Replaced => "replaced",
    };
    tracing::info!(edge = %id, result = label, "edge registered");
    scheduler
        .metrics
        .registrations_total
        .with_label_values(&[label])
        .inc();
    scheduler.sample_now.notify_one();
    Ok(Json(RegisterAnswer {
        heartbeat_interval_ms: scheduler.config.heartbeat_interval.as_millis() as u64,
    }))
}

pub async fn heartbeat(
    State(scheduler): State<Arc<Scheduler>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    require_app(scheduler.tokens.as_ref(), &headers)?;
    let hb = parse_heartbeat(&body)?;
    let channels: Vec<String> = hb.channels.iter().map(|(c, _)| c.clone()).collect();
    let mut model = scheduler.model();
    model
        .on_heartbeat(Instant::now(), &id, hb)
        .ok_or_else(|| ApiError::UnknownEdge(truncate(&id)))?;
    let online = channels
        .into_iter()
        .map(|c| {
            let n = model.online(&c);
            (c, n)
        })
        .collect();
    Ok(Json(HeartbeatAnswer { online }))
}

pub async fn deregister(
    State(scheduler): State<Arc<Scheduler>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    require_app(scheduler.tokens.as_ref(), &headers)?;
    if !scheduler.model().on_deregister(&id) {
        return Err(ApiError::UnknownEdge(truncate(&id)));
    }
    let _ = scheduler
        .metrics
        .edge_load
        .remove_label_values(&[id.as_str()]);
    tracing::info!(edge = %id, "edge deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a registration body; the error names the offending field.
pub fn parse_registration(body: &[u8]) -> Result<Registration, ApiError> {
    let bad = |m: String| ApiError::BadRegistration(m);
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(bad("body must be a JSON object".into()));
    };
    let id = string_field(&map, "id", true)?;
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(bad(format!(
            "id must be 1..={MAX_ID_LEN} characters of [A-Za-z0-9._:-]"
        )));
    }
    let ws = string_field(&map, "ws", true)?;
    check_url(&ws, &["ws", "wss"]).map_err(|m| bad(format!("ws: {m}")))?;
    let quic = string_field(&map, "quic", false)?;
    if !quic.is_empty() && !is_host_port(&quic) {
        return Err(bad("quic must be host:port or empty".into()));
    }
    let metrics_url = string_field(&map, "metrics_url", true)?;
    check_url(&metrics_url, &["http", "https"]).map_err(|m| bad(format!("metrics_url: {m}")))?;
    let capacity = int_field(&map, "capacity", None, 1..=MAX_CAPACITY)?;
    let egress_capacity = int_field(
        &map,
        "egress_capacity",
        Some(DEFAULT_EGRESS_CAPACITY),
        1..=MAX_EGRESS_CAPACITY,
    )?;
    let cores = int_field(&map, "cores", Some(1), 1..=MAX_CORES)?;
    Ok(Registration {
        id,
        ws,
        quic,
        metrics_url,
        capacity,
        egress_capacity,
        cores: cores as u32,
    })
}

/// Checks a heartbeat body: JSON shape, channel names, at most
/// [`MAX_HEARTBEAT_CHANNELS`] channels.
pub fn parse_heartbeat(body: &[u8]) -> Result<Heartbeat, ApiError> {
    let hb: HeartbeatBody =
        serde_json::from_slice(body).map_err(|e| ApiError::BadHeartbeat(format!("body: {e}")))?;
    if hb.channels.len() > MAX_HEARTBEAT_CHANNELS {
        return Err(ApiError::BadHeartbeat(format!(
            "channels: {} entries, at most {MAX_HEARTBEAT_CHANNELS}",
            hb.channels.len()
        )));
    }
    let mut channels = Vec::with_capacity(hb.channels.len());
    for c in hb.channels {
        let name = ChannelName::parse(&c.channel)
            .map_err(|e| ApiError::BadHeartbeat(format!("channels: {e}")))?;
        channels.push((name.as_str().to_owned(), c.members));
    }
    Ok(Heartbeat {
        ready: hb.ready,
        draining: hb.draining,
        connections: hb.connections,
        members: hb.members,
        channels,
    })
}

fn string_field(map: &Map<String, Value>, name: &str, required: bool) -> Result<String, ApiError> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None | Some(Value::Null) => Err(ApiError::BadRegistration(format!("{name} is missing"))),
        Some(_) => Err(ApiError::BadRegistration(format!(
            "{name} must be a string"
        ))),
    }
}

fn int_field(
    map: &Map<String, Value>,
    name: &str,
    default: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    let out_of_range = || {
        ApiError::BadRegistration(format!(
            "{name} must be an integer in {}..={}",
            range.start(),
            range.end()
        ))
    };
    match (map.get(name), default) {
        (None | Some(Value::Null), Some(d)) => Ok(d),
        (None | Some(Value::Null), None) => {
            Err(ApiError::BadRegistration(format!("{name} is missing")))
        }
        (Some(Value::Number(n)), _) => n
            .as_u64()
            .filter(|v| range.contains(v))
            .ok_or_else(out_of_range),
        (Some(_), _) => Err(out_of_range()),
    }
}

fn check_url(s: &str, schemes: &[&str]) -> Result<(), String> {
    let url = url::Url::parse(s).map_err(|e| format!("{e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("scheme must be one of {schemes:?}"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
}

/// Keeps error messages bounded whatever id a caller sends.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn good() -> Value {
        serde_json::json!({
            "id": "edge-1", "ws": "ws://127.0.0.1:7071/v1/ws", "quic": "127.0.0.1:7071",
            "metrics_url": "http://127.0.0.1:7071/metrics", "capacity": 19000,
            "egress_capacity": 125000000, "cores": 2
        })
    }

    fn refusal(v: Value) -> String {
        match parse_registration(&body(v)) {
            Err(ApiError::BadRegistration(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_registration_parses() {
        let r = parse_registration(&body(good())).unwrap();
        assert_eq!(r.id, "edge-1");
        assert_eq!(
            (r.capacity, r.egress_capacity, r.cores),
            (19000, 125_000_000, 2)
        );
        let mut minimal = good();
        let m = minimal.as_object_mut().unwrap();
        m.remove("egress_capacity");
        m.remove("cores");
        m.remove("quic");
        let r = parse_registration(&body(minimal)).unwrap();
        assert_eq!(
            (r.egress_capacity, r.cores, r.quic.as_str()),
            (DEFAULT_EGRESS_CAPACITY, 1, "")
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let with = |k: &str, v: Value| {
            let mut g = good();
            g[k] = v;
            g
        };
        assert!(refusal(with("capacity", 0.into())).contains("capacity"));
        assert!(refusal(with("capacity", 10_000_001.into())).contains("capacity"));
        assert!(refusal(with("capacity", (-5).into())).contains("capacity"));
        assert!(refusal(with("capacity", 1e30.into())).contains("capacity"));
        assert!(refusal(with("capacity", "many".into())).contains("capacity"));
        assert!(refusal(with("egress_capacity", 0.into())).contains("egress_capacity"));
        assert!(refusal(with("cores", 5000.into())).contains("cores"));
        assert!(refusal(with("id", "".into())).contains("id"));
        assert!(refusal(with("id", "a b".into())).contains("id"));
        assert!(refusal(with("id", "x".repeat(65).into())).contains("id"));
        assert!(refusal(with("ws", "http://x/v1/ws".into())).starts_with("ws"));
        assert!(refusal(with("ws", 7.into())).starts_with("ws"));
        assert!(refusal(with("quic", "nope".into())).starts_with("quic"));
        assert!(refusal(with("metrics_url", "ftp://x/metrics".into())).starts_with("metrics_url"));
        let mut missing = good();
        missing.as_object_mut().unwrap().remove("capacity");
        assert!(refusal(missing).contains("capacity is missing"));
        assert!(refusal(serde_json::json!([1, 2])).contains("object"));
        assert!(matches!(
            parse_registration(b"{not json"),
            Err(ApiError::BadRegistration(_))
        ));
    }

    #[test]
    fn heartbeats_are_checked() {
        let hb = parse_heartbeat(
            br#"{"ready":true,"draining":false,"connections":3,"members":4,
                 "channels":[{"channel":"room:1","members":3},{"channel":"group:g","members":1}]}"#,
        )
        .unwrap();
        assert_eq!(hb.channels, [("room:1".into(), 3), ("group:g".into(), 1)]);
        assert!(parse_heartbeat(b"{}").unwrap().ready);
        for bad in [
            &br#"{"channels":[{"channel":"lobby","members":1}]}"#[..],
            br#"{"channels":[{"channel":"room:1","members":-1}]}"#,
            br#"{"ready":"yes"}"#,
            b"[",
        ] {
            assert!(
                matches!(parse_heartbeat(bad), Err(ApiError::BadHeartbeat(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many: Vec<Value> = (0..10_001)
            .map(|i| serde_json::json!({"channel": format!("room:{i}"), "members": 1}))
            .collect();
        let too_many = body(serde_json::json!({ "channels": many }));
        assert!(matches!(
            parse_heartbeat(&too_many),
            Err(ApiError::BadHeartbeat(m)) if m.contains("10000")
        ));
    }
}
