//! Registration with the scheduler and the heartbeats that keep it: register
//! (`POST /v1/registry/edges`), heartbeat at the interval the scheduler asks,
//! register again on `404 unknown_edge`, deregister on shutdown or drain.
//!
//! These run on a thread and runtime of their own (see [`spawn_heartbeats`]).
//! Each heartbeat reports readiness, counts and the biggest channels
//! ([`heartbeat_channels`]); its answer refreshes the cluster-wide online
//! counts that [`super::online`] pushes.

use std::sync::Arc;
use std::time::Duration;

use danmaku_proto::control::{
    ChannelMembers, EdgeRegistration, HeartbeatAnswer, HeartbeatBody, RegisterAnswer,
};
use tokio_util::sync::CancellationToken;

use super::scheduler::{app_token, scheduler_url};
use crate::node::Edge;

/// Most channels one heartbeat reports (the scheduler refuses more than 10,000).
pub const HEARTBEAT_MAX_CHANNELS: usize = 1_000;
/// How long a heartbeat waits for the server's runtime to check readiness.
const READINESS_WAIT: Duration = Duration::from_secs(1);

/// The channels a heartbeat reports: the biggest first, at most `max`.
pub fn heartbeat_channels(mut counts: Vec<ChannelMembers>, max: usize) -> Vec<ChannelMembers> {
    counts.retain(|c| c.members > 0);
    counts.sort_unstable_by(|a, b| {
        b.members
            .cmp(&a.members)
            .then_with(|| a.channel.cmp(&b.channel))
    });
    counts.truncate(max);
    counts
}

/// Registration and heartbeats run on their own thread and runtime. On the
/// server's runtime a heartbeat waited behind every connection task a batch
/// tick had woken: an edge busy with 15k+ viewers missed its heartbeats and the
/// scheduler ejected it as dead, again and again, while it served fine. The
/// operating system gives this mostly idle thread the CPU as soon as it wakes.
pub(super) fn spawn_heartbeats(edge: Arc<Edge>, shutdown: CancellationToken) {
    let server = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("edge-heartbeat".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(registration_loop(edge, server, shutdown)),
                Err(e) => tracing::error!(error = %e, "no runtime for the scheduler heartbeats"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the scheduler heartbeats");
    }
}

/// The `result` label of a scheduler answer.
fn result_of(status: reqwest::StatusCode) -> &'static str {
    if status.is_success() {
        "ok"
    } else if status == reqwest::StatusCode::NOT_FOUND {
        "unknown_edge"
    } else {
        "error"
    }
}

/// Registers the edge; the heartbeat interval the scheduler asks for, or
/// `None` when it could not be reached or refused.
async fn register(edge: &Edge) -> Option<Duration> {
    let control = &edge.config.control;
    let url = scheduler_url(edge, "/v1/registry/edges")?;
    let advertise = control.advertise.as_deref().unwrap_or_default();
    let body = EdgeRegistration {
        id: edge.config.id.clone(),
        ws: format!("ws://{advertise}/v1/ws"),
        quic: advertise.to_owned(),
        metrics_url: format!(
            "http://{}/metrics",
            control.metrics_advertise.as_deref().unwrap_or(advertise)
        ),
        capacity: control.capacity,
        egress_capacity: control.egress_capacity,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    };
    let sent = post_json(edge, url, &body).await;
    match sent {
        Ok(r) if r.status().is_success() => {
            edge.control.metrics.scheduler("register", "ok");
            let interval = r
                .json::<RegisterAnswer>()
                .await
                .map_or(1000, |a| a.heartbeat_interval_ms)
                .clamp(100, 10_000);
            tracing::info!(edge = %edge.config.id, "registered with the scheduler");
            Some(Duration::from_millis(interval))
        }
        Ok(r) => {
            edge.control.metrics.scheduler("register", "error");
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            tracing::warn!(%status, %body, "scheduler refused the registration");
            None
        }
        Err(e) => {
            edge.control.metrics.scheduler("register", "error");
            tracing::warn!(error = %e, "cannot reach the scheduler to register");
            None
        }
    }
}

/// What one heartbeat did.
enum Beat {
    Ok,
    Unknown,
    Failed,
}

async fn heartbeat(
    edge: &Arc<Edge>,
    server: &tokio::runtime::Handle,
    last_ready: &mut bool,
) -> Beat {
    let Some(url) = scheduler_url(
        edge,
        &format!("/v1/registry/edges/{}/heartbeat", edge.config.id),
    ) else {
        return Beat::Failed;
    };
    let channels = edge.channels.snapshot();
    let members = channels.iter().map(|c| c.len() as u64).sum();
    let counts = channels
        .iter()
        .map(|c| ChannelMembers {
            channel: c.name().to_string(),
            members: c.len() as u64,
        })
        .collect();
    // The store ping runs on the server's runtime, where the store's pooled
    // connections live (one opened from here would die with this runtime). A
    // runtime too busy to answer within a second keeps the last answer: busy
    // is not dead, and the heartbeat must not wait for it.
    let probe = Arc::clone(edge);
    let ready = server.spawn(async move { probe.readiness().await.is_ok() });
    if let Ok(Ok(r)) = tokio::time::timeout(READINESS_WAIT, ready).await {
        *last_ready = r;
    }
    let body = HeartbeatBody {
        ready: *last_ready,
        draining: edge.is_draining(),
        connections: edge.connection_count() as u64,
        members,
        channels: heartbeat_channels(counts, HEARTBEAT_MAX_CHANNELS),
    };
    let sent = post_json(edge, url, &body).await;
    let r = match sent {
        Ok(r) => r,
        Err(e) => {
            edge.control.metrics.scheduler("heartbeat", "error");
            tracing::debug!(error = %e, "heartbeat failed");
            return Beat::Failed;
        }
    };
    let result = result_of(r.status());
    edge.control.metrics.scheduler("heartbeat", result);
    match result {
        "ok" => {
            if let Ok(answer) = r.json::<HeartbeatAnswer>().await
                && let Ok(mut online) = edge.control.online.write()
            {
                *online = Arc::new(answer.online.into_iter().collect());
            }
            Beat::Ok
        }
        "unknown_edge" => Beat::Unknown,
        _ => Beat::Failed,
    }
}

async fn registration_loop(
    edge: Arc<Edge>,
    server: tokio::runtime::Handle,
    shutdown: CancellationToken,
) {
    let mut interval = None;
    let mut retry = Duration::from_millis(200);
    let mut last_ready = false;
    loop {
        let wait = match interval {
            None => match register(&edge).await {
                Some(i) => {
                    interval = Some(i);
                    retry = Duration::from_millis(200);
                    i
                }
                None => {
                    retry = (retry * 2).min(Duration::from_secs(5));
                    retry
                }
            },
            Some(i) => {
                if let Beat::Unknown = heartbeat(&edge, &server, &mut last_ready).await {
                    tracing::info!(edge = %edge.config.id, "scheduler forgot this edge; registering again");
                    interval = None;
                    continue;
                }
                i
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // A drain deregisters (in the drain task) and heartbeats stop, or they
            // would register the edge again.
            _ = edge.control.drain_requested.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Clean shutdown without a drain: leave the registry at once.
    deregister(&edge).await;
}

/// `DELETE /v1/registry/edges/{id}`: leave the scheduler's registry (drain
/// start, clean shutdown).
pub(super) async fn deregister(edge: &Edge) {
    let Some(url) = scheduler_url(edge, &format!("/v1/registry/edges/{}", edge.config.id)) else {
        return;
    };
    match edge
        .control
        .http
        .delete(url)
        .bearer_auth(app_token(edge))
        .send()
        .await
    {
        Ok(r) => {
            edge.control
                .metrics
                .scheduler("deregister", result_of(r.status()));
            tracing::info!(edge = %edge.config.id, status = %r.status(), "deregistered");
        }
        Err(e) => {
            edge.control.metrics.scheduler("deregister", "error");
            tracing::warn!(error = %e, "cannot reach the scheduler to deregister");
        }
    }
}

/// POSTs `body` as JSON to the scheduler, with this edge's app token.
async fn post_json(
    edge: &Edge,
    url: String,
    body: &impl serde::Serialize,
) -> reqwest::Result<reqwest::Response> {
    edge.control
        .http
        .post(url)
        .bearer_auth(app_token(edge))
        .json(body)
        .send()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(channel: &str, members: u64) -> ChannelMembers {
        ChannelMembers {
            channel: channel.into(),
            members,
        }
    }

    #[test]
    fn heartbeat_reports_the_biggest_channels_first_and_bounded() {
        let counts = vec![
            count("room:a", 3),
            count("room:b", 1200),
            count("room:c", 0),
            count("room:d", 50),
        ];
        let out = heartbeat_channels(counts.clone(), 10);
        assert_eq!(
            out,
            vec![
                count("room:b", 1200),
                count("room:d", 50),
                count("room:a", 3)
            ]
        );
        assert_eq!(heartbeat_channels(counts, 2).len(), 2);
    }
}
