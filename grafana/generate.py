#!/usr/bin/env python3
"""Builds danmaku's Grafana dashboards as code with Grafana's Foundation SDK.

    python3 grafana/generate.py           # (re)writes grafana/dashboards/*.json
    python3 grafana/generate.py --check   # exits 1 if a committed file differs

The JSON in grafana/dashboards/ is generated: edit this file, run it, commit both.
scripts/test-grafana.sh runs `--check`, and tests/dashboards.rs proves every metric
and label named in a query is served by a real process.

Conventions the tests rely on:
* every panel has the `${datasource}` Prometheus data source and a unit;
* panel ids are unique per dashboard (assigned here, in order);
* queries use only `$__rate_interval` and `$edge` as template variables.
"""

import argparse
import difflib
import json
import pathlib
import sys

from grafana_foundation_sdk.builders import bargauge, dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import prometheus as pm

OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"


class Ids:
    """Hands out panel ids in order, so each dashboard's ids are unique and stable."""

    def __init__(self):
        self.next = 0

    def __call__(self):
        self.next += 1
        return self.next


def query(expr, legend="", ref="A", fmt=None, instant=False):
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    if fmt is not None:
        q = q.format(fmt)
    if instant:
        q = q.instant()
    return q


def with_queries(panel, queries):
    for i, q in enumerate(queries):
        if isinstance(q, tuple):
            q = query(q[0], q[1], ref=chr(ord("A") + i))
        panel = panel.with_target(q)
    return panel


def ts(ids, title, desc, unit, *queries, w=8, h=8, stack=False):
    p = (
        timeseries.Panel()
        .id(ids())
        .title(title)
        .description(desc)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .line_width(1)
        .fill_opacity(10 if not stack else 30)
    )
    if stack:
        p = p.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    return with_queries(p, queries)


def stat_panel(ids, title, desc, unit, *queries, w=4, h=4):
    p = stat.Panel().id(ids()).title(title).description(desc).datasource(DS).unit(unit).span(w).height(h)
    return with_queries(p, queries)


def bars(ids, title, desc, unit, expr, legend, w=12, h=8):
    """An instant bar list (biggest first): for top-N views."""
    p = (
        bargauge.Panel()
        .id(ids())
        .title(title)
        .description(desc)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.BASIC)
        .min(0)
    )
    return p.with_target(query(expr, legend, instant=True))


def latency_heatmap(ids, title, desc, selector, w=8, h=8):
    expr = f"sum by (le) (increase(danmaku_edge_delivery_latency_seconds_bucket{selector}[{RATE}]))"
    return (
        heatmap.Panel()
        .id(ids())
        .title(title)
        .description(desc)
        .datasource(DS)
        .unit("s")
        .span(w)
        .height(h)
        .calculate(False)
        .with_target(query(expr, "{{le}}", fmt=pm.PromQueryFormat.HEATMAP))
    )


def row(ids, title):
    return dashboard.Row(title).id(ids())


def quantiles(metric, by, selector=""):
    """p50 and p99 of a histogram, grouped by `by` (plus `le`)."""
    inner = f"sum by ({by + ', ' if by else ''}le) (rate({metric}_bucket{selector}[{RATE}]))"
    return [
        (f"histogram_quantile(0.5, {inner})", "p50" + (f" {{{{{by}}}}}" if by else "")),
        (f"histogram_quantile(0.99, {inner})", "p99" + (f" {{{{{by}}}}}" if by else "")),
    ]


def datasource_var():
    return dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def base(title, uid, desc):
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(desc)
        .tags(["danmaku"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_var())
    )


def reliable_panels(ids, sel):
    """The gift-incident group: is every gift persisted, published, delivered, acked?"""
    return [
        ts(
            ids,
            "Gifts and chat persisted",
            "Reliable messages newly persisted by ingest (kind = gift | chat), and retries "
            "answered with their original seq. A drop to 0 while viewers send gifts is an incident.",
            "cps",
            ("sum by (kind) (rate(danmaku_ingest_reliable_persisted_total[$__rate_interval]))", "{{kind}}"),
            ("sum(rate(danmaku_ingest_reliable_duplicates_total[$__rate_interval]))", "duplicates (retries)"),
        ),
        ts(
            ids,
            "Gift and chat posts by status",
            "Reliable posts by HTTP status: 200 persisted; 503 store_unavailable or "
            "bus_unavailable (nothing answered 200 is lost, but these senders must retry); "
            "409 idempotency conflicts; 4xx refused.",
            "reqps",
            (
                'sum by (kind, status) (rate(danmaku_ingest_requests_total{kind=~"gift|chat"}[$__rate_interval]))',
                "{{kind}} {{status}}",
            ),
        ),
        ts(
            ids,
            "Store and bus failures",
            "Failed store calls (ingest and edges, by op) and failed bus publishes. Any of "
            "these explains 5xx on gifts or missing gap fills.",
            "cps",
            ("sum by (op) (rate(danmaku_ingest_store_errors_total[$__rate_interval]))", "ingest {{op}}"),
            (f"sum by (op) (rate(danmaku_edge_store_errors_total{sel}[$__rate_interval]))", "edge {{op}}"),
            ("sum by (instance) (rate(danmaku_bus_publish_errors_total[$__rate_interval]))", "bus publish {{instance}}"),
        ),
        ts(
            ids,
            "Reliable frames sent, acked, retransmitted",
            "Sent for the first time vs acked by clients vs resent for want of an ack. "
            "Retransmits rising while acks fall: clients or links in trouble. Ack frames "
            "read: what the ack paces keep down (one cumulative ack covers many seqs).",
            "cps",
            (f"sum(rate(danmaku_edge_reliable_sent_total{sel}[$__rate_interval]))", "sent"),
            (f"sum(rate(danmaku_edge_reliable_acked_total{sel}[$__rate_interval]))", "acked"),
            (f"sum(rate(danmaku_edge_reliable_retransmits_total{sel}[$__rate_interval]))", "retransmits"),
            (f"sum(rate(danmaku_edge_ack_frames_total{sel}[$__rate_interval]))", "ack frames read"),
        ),
        ts(
            ids,
            "Resumes, replays and gap fills",
            "Resumes served (reconnects, e.g. after an edge died), frames replayed from the "
            "store for them, seq gaps read from the store, events held for reordering.",
            "cps",
            (f"sum(rate(danmaku_edge_resumes_total{sel}[$__rate_interval]))", "resumes"),
            (f"sum(rate(danmaku_edge_resume_replayed_total{sel}[$__rate_interval]))", "replayed"),
            (f"sum(rate(danmaku_edge_gap_fills_total{sel}[$__rate_interval]))", "gap fills"),
            (f"sum(rate(danmaku_edge_reorder_held_total{sel}[$__rate_interval]))", "reorder held"),
        ),
        ts(
            ids,
            "Reliable backlog closes",
            "Connections closed because they could not keep up with the reliable lane "
            "(unacked window full or too many resends). They resume elsewhere; a steady "
            "rate means clients cannot ack.",
            "cps",
            (
                f"sum by (instance) (rate(danmaku_edge_reliable_backlog_closes_total{sel}[$__rate_interval]))",
                "{{instance}}",
            ),
        ),
    ]


def capacity_panels(ids, sel, by):
    """Is the edge full (connections, egress, CPU, memory, file descriptors)?"""
    jobs = '{job=~"danmaku.*"}' if not sel else sel
    leg = f"{{{{{by}}}}}" if by else ""
    grp = f" by ({by})" if by else ""
    return [
        ts(
            ids,
            "Egress bandwidth",
            "Bytes written to client sockets per second by transport (WebSocket frames with "
            "headers; QUIC payloads before QUIC's packet overhead). The scheduler's load model "
            "reads it against the edge's egress capacity.",
            "Bps",
            (
                f"sum by ({by + ', ' if by else ''}transport) (rate(danmaku_edge_egress_bytes_total{sel}[$__rate_interval]))",
                f"{leg} {{{{transport}}}}".strip(),
            ),
            stack=True,
        ),
        ts(
            ids,
            "Connections vs capacity",
            "Open connections divided by the connections the edge is sized for (--capacity, "
            "default 19,000): the connection term of the scheduler's load score.",
            "percentunit",
            (
                f"sum{grp} (danmaku_edge_connections{sel}) / sum{grp} (danmaku_edge_capacity_connections{sel})",
                leg or "fill",
            ),
        ),
        ts(
            ids,
            "CPU per process",
            "CPU seconds per second (1 = one core busy) of each danmaku process; the scheduler "
            "reads an edge's CPU utilisation as this rate divided by its cores.",
            "short",
            (f"sum{grp} (rate(process_cpu_seconds_total{jobs}[$__rate_interval]))", leg or "cores"),
        ),
        ts(
            ids,
            "Resident memory per process",
            "Resident set size of each danmaku process (idle WebSockets cost ~9 KB each; "
            "a steady climb without more connections is a leak), and its virtual size "
            "(address space reserved, mostly allocator arenas and thread stacks).",
            "bytes",
            (f"sum{grp} (process_resident_memory_bytes{jobs})", f"rss {leg}".strip()),
            (f"sum{grp} (process_virtual_memory_bytes{jobs})", f"virtual {leg}".strip()),
        ),
        ts(
            ids,
            "File descriptors used",
            "Open file descriptors over the process limit: every connection holds one; at 100% "
            "accept() fails.",
            "percentunit",
            (f"sum{grp} (process_open_fds{jobs}) / sum{grp} (process_max_fds{jobs})", leg or "fds"),
        ),
        ts(
            ids,
            "Threads and uptime",
            "Threads of each process, and seconds since it started (a drop to 0 is a restart).",
            "short",
            (f"sum{grp} (process_threads{jobs})", f"threads {leg}".strip()),
            (f"time() - max{grp} (process_start_time_seconds{jobs})", f"uptime s {leg}".strip()),
        ),
    ]


def drain_panels(ids, sel, by):
    """A drain in progress (deploys) and the online counts pushed to viewers."""
    leg = f"{{{{{by}}}}}" if by else ""
    grp = f" by ({by})" if by else ""
    return [
        ts(
            ids,
            "Draining and connections left",
            "1 while an edge drains (refuses new connections, redirects its clients in waves), "
            "and the connections still on it: falls to 0 as clients move. Stuck above 0: alert "
            "DanmakuEdgeDrainStuck.",
            "short",
            (f"max{grp} (danmaku_edge_draining{sel})", f"draining {leg}".strip()),
            (f"sum{grp} (danmaku_edge_drain_remaining_connections{sel})", f"remaining {leg}".strip()),
        ),
        ts(
            ids,
            "Drain redirects and forced closes",
            "redirect frames queued while draining (one per client), and redirected clients "
            "closed because they stayed over 5 s (old clients that ignore redirect).",
            "cps",
            (f"sum{grp} (rate(danmaku_edge_drain_redirects_total{sel}[$__rate_interval]))", f"redirects {leg}".strip()),
            (f"sum{grp} (rate(danmaku_edge_drain_forced_closes_total{sel}[$__rate_interval]))", f"forced closes {leg}".strip()),
        ),
        ts(
            ids,
            "Drain requests by result",
            "POST /admin/drain calls: accepted, or refused for a wrong token (bad_token) or a "
            "non-app token (forbidden). Refused calls nobody made: alert DanmakuDrainRefused.",
            "cps",
            (f"sum by (result) (rate(danmaku_edge_drain_requests_total{sel}[$__rate_interval]))", "{{result}}"),
        ),
        ts(
            ids,
            "Online-count frames",
            "online frames (the room's viewer count) queued to members of big channels per second.",
            "cps",
            (f"sum{grp} (rate(danmaku_edge_online_frames_total{sel}[$__rate_interval]))", leg or "online frames"),
        ),
        ts(
            ids,
            "Group members removed",
            "Connections that left a group (left frame, reason removed) because their user was "
            "removed from it over HTTP.",
            "cps",
            (f"sum{grp} (rate(danmaku_edge_members_removed_total{sel}[$__rate_interval]))", leg or "removed"),
        ),
    ]


def refusal_panels(ids, sel):
    """Clients refused by a limit, error answers, and the auth/token signals."""
    return [
        ts(
            ids,
            "Connections and frames refused by reason",
            "Refused by a client limit (rate_limited frames, too_many_connections per user, "
            "too_many_connections_from_ip, handshake_timeout) and sessions closed because "
            "their token expired (token_expired).",
            "cps",
            (f"sum by (code) (rate(danmaku_edge_refused_total{sel}[$__rate_interval]))", "{{code}}"),
        ),
        ts(
            ids,
            "Edge error answers by code",
            "Every error answer the edge sends a client (error frames, refused WebSocket "
            "upgrades) by code: bad_token, bad_channel, not_member, user_mismatch, ...",
            "cps",
            (f"sum by (code) (rate(danmaku_edge_errors_total{sel}[$__rate_interval]))", "{{code}}"),
        ),
        ts(
            ids,
            "Auth: bad and expired tokens",
            "Sessions closed because their token expired (clients should refresh before "
            "expiry), and connections or posts refused for a bad token. A jump after a secret "
            "rotation means a signer still uses a retired key.",
            "cps",
            (f'sum(rate(danmaku_edge_refused_total{{code="token_expired"{", " + sel[1:-1] if sel else ""}}}[$__rate_interval]))', "edge: token expired"),
            (f'sum(rate(danmaku_edge_errors_total{{code="bad_token"{", " + sel[1:-1] if sel else ""}}}[$__rate_interval]))', "edge: bad token"),
            ('sum by (code) (rate(danmaku_ingest_rejected_total{code=~"bad_token|token_expired|forbidden"}[$__rate_interval]))', "ingest: {{code}}"),
        ),
    ]


def moderation_panels(ids):
    """Word filter verdicts, moderation refusals, mutes, bans, retractions, hot-room
    thinning and policy sync (issue 19)."""
    return [
        ts(
            ids,
            "Word filter: blocked and masked posts",
            "Posts caught by the word lists (global and per room): blocked (refused 400 "
            "blocked_content) or masked (published with the words starred). A sudden jump of "
            "blocked is a spam or abuse wave: alert DanmakuBlockedContentBurst.",
            "cps",
            ("sum by (verdict) (rate(danmaku_ingest_filtered_total[$__rate_interval]))", "{{verdict}}"),
        ),
        ts(
            ids,
            "Moderation refusals by reason",
            "Posts refused by the room policy: blocked_content, banned (the sender is banned "
            "from the room), muted (the sender is muted), room_muted (mute_all is on), "
            "slow_mode (a second post within the window).",
            "cps",
            ("sum by (reason) (rate(danmaku_ingest_moderation_refused_total[$__rate_interval]))", "{{reason}}"),
        ),
        ts(
            ids,
            "Active mutes, bans and loaded words",
            "Mutes and bans in force (every ingest node knows all of them: the max over "
            "nodes; edges keep the bans too, to refuse join) and the words loaded in the "
            "global list and in all rooms' lists.",
            "short",
            ("max(danmaku_ingest_active_mutes)", "active mutes"),
            ("max(danmaku_ingest_active_bans)", "active bans"),
            ("max(danmaku_edge_bans_active)", "bans held by edges"),
            ("max by (scope) (danmaku_ingest_wordlist_words)", "words: {{scope}}"),
        ),
        ts(
            ids,
            "Moderation changes and policy reloads",
            "Changes applied (word lists, moderators, mutes, settings), reloads of the policy "
            "by trigger (bus: another node announced a change; periodic: a change heard of through the store, or every 10 min) and "
            "result, and changes stored but not announced. Reload errors mean a node may "
            "enforce a stale policy.",
            "ops",
            ("sum by (what) (rate(danmaku_ingest_moderation_changes_total[$__rate_interval]))", "change: {{what}}"),
            ("sum by (trigger, result) (rate(danmaku_ingest_moderation_reloads_total[$__rate_interval]))", "reload: {{trigger}} {{result}}"),
            ("sum(rate(danmaku_ingest_moderation_announce_failures_total[$__rate_interval]))", "not announced"),
        ),
        ts(
            ids,
            "Bans and retractions on the edges",
            "Connections made to leave a room because their user was banned (left, reason "
            "banned), joins refused with the error banned, and retractions applied through "
            "ingest (each reaches viewers as a retract event in the room's next tick).",
            "ops",
            ("sum(rate(danmaku_edge_banned_leaves_total[$__rate_interval]))", "left: banned"),
            ("sum(rate(danmaku_edge_errors_total{code=\"banned\"}[$__rate_interval]))", "join refused: banned"),
            ("sum(rate(danmaku_ingest_moderation_changes_total{what=\"retract\"}[$__rate_interval]))", "retractions"),
        ),
        ts(
            ids,
            "Hot-room thinning: danmaku sampled out",
            "Danmaku the edges left out of ticks because a room was over its max_rate "
            "(counted once per tick and room, not per viewer); gifts, chat and priority "
            "senders are never thinned. Rising while viewers complain of missing comments: "
            "the cap (room setting or --room-max-rate) is too low.",
            "cps",
            ("sum(rate(danmaku_edge_sampled_out_total[$__rate_interval]))", "sampled out"),
        ),
    ]


def account_panels(ids, sel):
    """Account protection: revocations and blocks made, and what they refuse and close."""
    inner = ", " + sel[1:-1] if sel else ""
    return [
        ts(
            ids,
            "Revocations and blocks made",
            "Account changes made through the ingest API by the app backend: one token "
            "revoked (revoke_token), a user's tokens issued before a time (revoke_user), "
            "block and unblock. Each is stored and announced to every ingest and edge.",
            "cps",
            ("sum by (change) (rate(danmaku_ingest_account_changes_total[$__rate_interval]))", "{{change}}"),
        ),
        ts(
            ids,
            "Refused and closed: revoked tokens, blocked users",
            "Requests refused at ingest (401 token_revoked, 403 user_blocked), connections "
            "refused at connect by the edges, and open connections the edges closed when a "
            "revocation or block arrived. Closes without a matching change above mean another "
            "ingest took it.",
            "cps",
            ('sum by (code) (rate(danmaku_ingest_rejected_total{code=~"token_revoked|user_blocked"}[$__rate_interval]))', "ingest refused: {{code}}"),
            (f'sum by (code) (rate(danmaku_edge_refused_total{{code=~"token_revoked|user_blocked"{inner}}}[$__rate_interval]))', "edge refused at connect: {{code}}"),
            (f"sum by (code) (rate(danmaku_edge_account_closes_total{sel}[$__rate_interval]))", "edge closed: {{code}}"),
        ),
        ts(
            ids,
            "Revocations and blocks in force",
            "Entries each process holds in memory (every ingest and edge holds all of them; "
            "they leave once the tokens they cover have expired or the block ended). Processes "
            "that disagree for more than a few seconds missed an announcement.",
            "short",
            (f"max by (kind) (danmaku_edge_account_policy_entries{sel})", "edge max: {{kind}}"),
            (f"min by (kind) (danmaku_edge_account_policy_entries{sel})", "edge min: {{kind}}"),
            ("max by (kind) (danmaku_ingest_account_policy_entries)", "ingest max: {{kind}}"),
        ),
    ]


def overview():
    ids = Ids()
    d = base(
        "danmaku / overview",
        "danmaku-overview",
        "The whole cluster: connections, ingest, fan-out, latency, bus, reliable lane, "
        "scheduler, hottest rooms, errors. Drill into one edge with 'danmaku / edge'.",
    ).link(
        dashboard.DashboardLink("danmaku dashboards")
        .type(dm.DashboardLinkType.DASHBOARDS)
        .tags(["danmaku"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    )

    d = d.with_row(row(ids, "Health"))
    for p in [
        stat_panel(
            ids,
            "Processes up",
            "Scrape targets of the danmaku jobs that answer /metrics.",
            "short",
            ('sum(up{job=~"danmaku.*"})', "up"),
        ),
        stat_panel(
            ids,
            "Processes down",
            "Scrape targets of the danmaku jobs that do not answer: see alert DanmakuProcessDown.",
            "short",
            ('count(up{job=~"danmaku.*"} == 0) or vector(0)', "down"),
        ),
        stat_panel(
            ids,
            "Bus up (min)",
            "1 while every process can publish and consume; 0 when one lost the broker.",
            "bool",
            ("min(danmaku_bus_up)", "bus up"),
        ),
        stat_panel(
            ids,
            "Online connections",
            "Open client connections on all edges.",
            "short",
            ("sum(danmaku_edge_connections)", "connections"),
        ),
        stat_panel(
            ids,
            "E2E latency p99",
            "Ingest accept to batch pushed, 99th percentile over all edges (recording rule).",
            "s",
            ("danmaku:edge_delivery_latency_seconds:p99", "p99"),
        ),
        stat_panel(
            ids,
            "Delivered events/s",
            "Events x members pushed, all edges.",
            "cps",
            ("sum(instance:danmaku_edge_events_delivered:rate1m)", "delivered"),
        ),
        stat_panel(
            ids,
            "Healthy edges (scheduler)",
            "Edges the scheduler hands out (state healthy). 0: every GET /v1/edges answers 503 "
            "(alert DanmakuNoHealthyEdge). Other states: panel 'Edges by state'.",
            "short",
            ('sum(danmaku_scheduler_edges{state="healthy"})', "healthy"),
            w=12,
        ),
        stat_panel(
            ids,
            "Edges draining",
            "Edges that refuse new connections and redirect their clients (POST /admin/drain). "
            "Planned during a deploy; see the 'Drain and online' row.",
            "short",
            ("sum(danmaku_edge_draining)", "draining"),
            w=12,
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Traffic"))
    for p in [
        ts(
            ids,
            "Connections per edge and transport",
            "Open client connections by edge (instance) and transport (ws_json, ws_pb, quic).",
            "short",
            ("sum by (instance, transport) (danmaku_edge_connections)", "{{instance}} {{transport}}"),
            stack=True,
        ),
        ts(
            ids,
            "Ingest rate by kind",
            "Posts per second by kind (danmaku, gift, chat) and HTTP status (recording rule).",
            "reqps",
            ("sum by (kind, status) (danmaku:ingest_requests:rate1m)", "{{kind}} {{status}}"),
        ),
        ts(
            ids,
            "Delivery rate",
            "Events x members pushed per second, per edge: the fan-out actually done (recording rule).",
            "cps",
            ("instance:danmaku_edge_events_delivered:rate1m", "{{instance}}"),
            stack=True,
        ),
        ts(
            ids,
            "Frames pushed by transport",
            "Frame writes per second: the budget of an edge (each push is one send()).",
            "cps",
            ("sum by (transport) (rate(danmaku_edge_frames_pushed_total[$__rate_interval]))", "{{transport}}"),
            stack=True,
        ),
        ts(
            ids,
            "Channels and memberships",
            "Channels with local members, and memberships (a connection in 3 rooms counts 3), per edge.",
            "short",
            ("sum by (instance) (danmaku_edge_channels)", "channels {{instance}}"),
            ("sum by (instance) (danmaku_edge_channel_members)", "members {{instance}}"),
        ),
        ts(
            ids,
            "Published bytes",
            "Bytes ingest published to the bus.",
            "Bps",
            ("sum by (instance) (rate(danmaku_ingest_published_bytes_total[$__rate_interval]))", "{{instance}}"),
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Edge capacity and process resources"))
    for p in capacity_panels(ids, "", by="instance"):
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Drain and online"))
    for p in drain_panels(ids, "", by="instance"):
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Latency and batching"))
    for p in [
        ts(
            ids,
            "E2E latency p50 / p99",
            "Ingest accept to batch pushed, over all edges (recording rules). Big rooms wait "
            "longer by design: their batching window grows up to 1 s.",
            "s",
            ("danmaku:edge_delivery_latency_seconds:p50", "p50"),
            ("danmaku:edge_delivery_latency_seconds:p99", "p99"),
        ),
        ts(
            ids,
            "E2E latency p99 per edge",
            "The slow edge stands out here (recording rule); open it in 'danmaku / edge'.",
            "s",
            ("instance:danmaku_edge_delivery_latency_seconds:p99", "{{instance}}"),
        ),
        latency_heatmap(
            ids,
            "E2E latency heatmap",
            "Distribution of ingest-accept-to-push latency over time (all edges).",
            "",
        ),
        ts(
            ids,
            "Batch window",
            "Batching window the adaptive policy chose (50 ms small rooms ... 1 s huge rooms).",
            "s",
            *quantiles("danmaku_edge_batch_window_seconds", ""),
        ),
        ts(
            ids,
            "Events per batch",
            "Mean and p99 events per built batch: how well batching coalesces.",
            "short",
            (
                "sum(rate(danmaku_edge_batch_events_sum[$__rate_interval])) / sum(rate(danmaku_edge_batch_events_count[$__rate_interval]))",
                "mean",
            ),
            (
                "histogram_quantile(0.99, sum by (le) (rate(danmaku_edge_batch_events_bucket[$__rate_interval])))",
                "p99",
            ),
        ),
        ts(
            ids,
            "Compression ratio",
            "Batch bytes before zstd divided by bytes after (1 = small batches left uncompressed).",
            "suffix:x",
            (
                "sum by (instance) (rate(danmaku_edge_batch_raw_bytes_total[$__rate_interval])) / sum by (instance) (rate(danmaku_edge_batch_compressed_bytes_total[$__rate_interval]))",
                "{{instance}}",
            ),
        ),
        ts(
            ids,
            "Publish latency p50 / p99",
            "Time for the bus to accept one event at ingest.",
            "s",
            *quantiles("danmaku_ingest_publish_latency_seconds", ""),
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Bus and slow consumers"))
    for p in [
        ts(
            ids,
            "Bus up",
            "1 while a process can publish and deliver through the bus; 0 while the broker is unreachable.",
            "bool",
            ("min by (instance, backend) (danmaku_bus_up)", "{{instance}} {{backend}}"),
        ),
        ts(
            ids,
            "Bus consumer lag",
            "Messages not yet consumed, summed over partitions, per process (Kafka only); "
            "and events an edge skipped because its subscription lagged.",
            "short",
            ("sum by (instance) (danmaku_bus_consumer_lag)", "lag {{instance}}"),
            ("sum by (instance) (rate(danmaku_edge_bus_lagged_total[$__rate_interval]))", "skipped/s {{instance}}"),
        ),
        ts(
            ids,
            "Bus events by result",
            "What edges did with each bus event: batched, reliable, no_local_members, stale, bad_event.",
            "cps",
            ("sum by (result) (rate(danmaku_edge_bus_events_total[$__rate_interval]))", "{{result}}"),
        ),
        ts(
            ids,
            "Slow-consumer drops",
            "Danmaku batches dropped for members whose send queue was full, per edge "
            "(recording rule); gifts are never dropped.",
            "cps",
            ("instance:danmaku_edge_slow_consumer_drops:rate1m", "{{instance}}"),
        ),
        ts(
            ids,
            "Slow-consumer drop ratio",
            "Dropped batches / (pushed + dropped) per edge: the share of viewers' frames lost to slow links.",
            "percentunit",
            ("instance:danmaku_edge_slow_consumer_drop_ratio:rate5m", "{{instance}}"),
        ),
        ts(
            ids,
            "Bus published and consumed",
            "Messages the broker acknowledged and messages each process received (Kafka).",
            "cps",
            ("sum by (instance) (rate(danmaku_bus_published_total[$__rate_interval]))", "published {{instance}}"),
            ("sum by (instance) (rate(danmaku_bus_consumed_total[$__rate_interval]))", "consumed {{instance}}"),
        ),
        ts(
            ids,
            "Bus reassignments and topic creations",
            "Partition re-assignments (topic re-created after a broker restart, or resized) and "
            "topic creations, per process (Kafka). A burst explains a short lag spike.",
            "short",
            ("sum by (instance) (increase(danmaku_bus_reassignments_total[$__rate_interval]))", "reassigned {{instance}}"),
            ("sum by (instance) (increase(danmaku_bus_topic_creations_total[$__rate_interval]))", "topic created {{instance}}"),
            w=24,
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Gift incident: reliable lane"))
    for p in reliable_panels(ids, ""):
        d = d.with_panel(p)
    d = d.with_panel(
        ts(
            ids,
            "Store op latency p99",
            "Store latency by operation and backend at ingest (append is on every gift's path).",
            "s",
            (
                "histogram_quantile(0.99, sum by (op, backend, le) (rate(danmaku_ingest_store_op_seconds_bucket[$__rate_interval])))",
                "{{op}} {{backend}}",
            ),
            w=12,
        )
    ).with_panel(
        ts(
            ids,
            "Reliable frames awaiting ack (rate)",
            "Reliable frames sent minus acked per second, per edge (recording rule): "
            "persistently above 0 means unacked windows grow.",
            "cps",
            ("instance:danmaku_edge_reliable_unacked:rate5m", "{{instance}}"),
            w=12,
        )
    )

    d = d.with_row(row(ids, "Scheduler"))
    for p in [
        ts(
            ids,
            "Scheduler picks per edge",
            "How often each edge is handed to clients.",
            "cps",
            ("sum by (edge) (rate(danmaku_scheduler_picks_total[$__rate_interval]))", "{{edge}}"),
            w=12,
        ),
        ts(
            ids,
            "Edge load scores",
            "The load score the scheduler ranks edges by (0 idle, 1 full): the highest of "
            "connections/capacity, CPU and egress/egress capacity, plus clients handed out "
            "since the last reading.",
            "percentunit",
            ("max by (edge) (danmaku_scheduler_edge_load)", "{{edge}}"),
            w=12,
        ),
        ts(
            ids,
            "Edges by state",
            "The scheduler's registry by state: healthy (handed out), warming (registered, no "
            "load reading yet), not_ready (its /readyz fails: bus or store unavailable), "
            "draining, stale (no fresh heartbeat or reading). healthy 0 = GET /v1/edges answers 503.",
            "short",
            ("sum by (state) (danmaku_scheduler_edges)", "{{state}}"),
            stack=True,
        ),
        ts(
            ids,
            "Ejections and stale readings",
            "Edges taken out after 3 s without a heartbeat or a fresh load reading (by reason), "
            "and load readings not taken (scrape or Prometheus query failed, sample missing or old).",
            "cps",
            ("sum by (reason) (rate(danmaku_scheduler_ejections_total[$__rate_interval]))", "ejected: {{reason}}"),
            ("sum by (reason) (rate(danmaku_scheduler_stale_readings_total[$__rate_interval]))", "stale reading: {{reason}}"),
        ),
        ts(
            ids,
            "Registrations and refusals",
            "Edge registrations (created, replaced = an edge restarted, refused = bad token or "
            "body) and scheduler requests answered with an error, by code (no_edge = a client got 503).",
            "cps",
            ("sum by (result) (rate(danmaku_scheduler_registrations_total[$__rate_interval]))", "registration {{result}}"),
            ("sum by (code) (rate(danmaku_scheduler_refused_total[$__rate_interval]))", "refused {{code}}"),
        ),
        ts(
            ids,
            "Scheduler decision time p50 / p99",
            "Time to pick the edges of one GET /v1/edges answer (lock + power of two choices).",
            "s",
            *quantiles("danmaku_scheduler_decision_seconds", ""),
            w=12,
        ),
        ts(
            ids,
            "Edge calls to the scheduler",
            "Register, heartbeat, deregister and picks calls from edges, by result. "
            "heartbeat unknown_edge: the scheduler forgot the edge (restart), which re-registers; "
            "error: the scheduler is unreachable from that edge.",
            "cps",
            (
                "sum by (op, result) (rate(danmaku_edge_scheduler_requests_total[$__rate_interval]))",
                "{{op}} {{result}}",
            ),
            w=12,
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Hottest rooms"))
    for p in [
        bars(
            ids,
            "Online viewers of the biggest rooms",
            "Local members of each edge's biggest rooms by rank (top-N gauges; no room label). "
            "The room names of the ranks: GET /v1/top-rooms on that edge.",
            "short",
            "topk(10, danmaku_edge_top_room_members)",
            "{{instance}} #{{rank}}",
        ),
        bars(
            ids,
            "Busiest rooms by inbound rate",
            "Bus events per second into each edge's busiest rooms by rank. "
            "The room names of the ranks: GET /v1/top-rooms on that edge.",
            "cps",
            "topk(10, danmaku_edge_top_room_inbound_per_second)",
            "{{instance}} #{{rank}}",
        ),
        ts(
            ids,
            "Biggest room per edge",
            "Members of the rank-1 room of each edge over time: a hot room shows as a step.",
            "short",
            ('max by (instance) (danmaku_edge_top_room_members{rank="1"})', "{{instance}}"),
            w=12,
        ),
        ts(
            ids,
            "Busiest room per edge",
            "Inbound events per second of the rank-1 room of each edge over time.",
            "cps",
            ('max by (instance) (danmaku_edge_top_room_inbound_per_second{rank="1"})', "{{instance}}"),
            w=12,
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Errors"))
    for p in [
        ts(
            ids,
            "Errors by code",
            "Refused posts by error code (bad_channel, text_too_long, ...) and malformed client frames by code.",
            "cps",
            ("sum by (code) (rate(danmaku_ingest_rejected_total[$__rate_interval]))", "ingest {{code}}"),
            ("sum by (code) (rate(danmaku_edge_bad_frames_total[$__rate_interval]))", "edge {{code}}"),
        ),
        ts(
            ids,
            "Rate limited",
            "429s by which limit hit (user or channel).",
            "cps",
            ("sum by (scope) (rate(danmaku_ingest_rate_limited_total[$__rate_interval]))", "{{scope}}"),
        ),
        ts(
            ids,
            "HTTP responses by status",
            "Ingest posts by HTTP status: 2xx accepted, 4xx refused, 5xx unavailable.",
            "reqps",
            ("sum by (status) (rate(danmaku_ingest_requests_total[$__rate_interval]))", "{{status}}"),
        ),
    ]:
        d = d.with_panel(p)
    for p in refusal_panels(ids, ""):
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Account protection"))
    for p in account_panels(ids, ""):
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Moderation"))
    for p in moderation_panels(ids):
        d = d.with_panel(p)
    return d


def edge():
    ids = Ids()
    sel = '{instance=~"$edge"}'
    d = base(
        "danmaku / edge",
        "danmaku-edge",
        "One edge (the `edge` variable is its Prometheus `instance`, host:port of /metrics): "
        "connections, fan-out, latency, batching, bus, slow consumers, reliable lane, hottest rooms.",
    ).with_variable(
        dashboard.QueryVariable("edge")
        .label("edge")
        .description("Prometheus instance (host:port) of a process that serves edge metrics.")
        .datasource(DS)
        .query("label_values(danmaku_edge_connections, instance)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(False)
        .include_all(False)
    )

    d = d.with_row(row(ids, "Connections and fan-out"))
    for p in [
        ts(
            ids,
            "Connections by transport",
            "Open client connections of this edge by transport.",
            "short",
            (f"sum by (transport) (danmaku_edge_connections{sel})", "{{transport}}"),
            stack=True,
        ),
        ts(
            ids,
            "Channels and memberships",
            "Channels with local members and memberships on this edge.",
            "short",
            (f"sum(danmaku_edge_channels{sel})", "channels"),
            (f"sum(danmaku_edge_channel_members{sel})", "members"),
        ),
        ts(
            ids,
            "Frames pushed by transport",
            "Frame writes per second by transport: this edge's write budget being spent.",
            "cps",
            (f"sum by (transport) (rate(danmaku_edge_frames_pushed_total{sel}[$__rate_interval]))", "{{transport}}"),
            stack=True,
        ),
        ts(
            ids,
            "Delivery rate",
            "Events x members pushed per second by this edge.",
            "cps",
            (f"sum(rate(danmaku_edge_events_delivered_total{sel}[$__rate_interval]))", "delivered"),
        ),
        ts(
            ids,
            "Batches built",
            "Batches (one per channel per flush) per second.",
            "cps",
            (f"sum(rate(danmaku_edge_batches_total{sel}[$__rate_interval]))", "batches"),
        ),
        ts(
            ids,
            "Bad frames by code",
            "Malformed client frames (each closes its connection).",
            "cps",
            (f"sum by (code) (rate(danmaku_edge_bad_frames_total{sel}[$__rate_interval]))", "{{code}}"),
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Latency and batching"))
    for p in [
        ts(
            ids,
            "E2E latency p50 / p99",
            "Ingest accept to batch pushed on this edge.",
            "s",
            *quantiles("danmaku_edge_delivery_latency_seconds", "", sel),
        ),
        ts(
            ids,
            "Bus hop p50 / p99",
            "Ingest accept to consumed by this edge: the bus alone. E2E latency up with this "
            "flat: the edge is late (batching, a busy runtime); both up: look at the broker.",
            "s",
            *quantiles("danmaku_edge_bus_hop_seconds", "", sel),
        ),
        latency_heatmap(ids, "E2E latency heatmap", "Latency distribution on this edge.", sel),
        ts(
            ids,
            "Batch window",
            "Window chosen by the adaptive policy on this edge.",
            "s",
            *quantiles("danmaku_edge_batch_window_seconds", "", sel),
        ),
        ts(
            ids,
            "Events per batch",
            "Mean events per batch on this edge.",
            "short",
            (
                f"sum(rate(danmaku_edge_batch_events_sum{sel}[$__rate_interval])) / sum(rate(danmaku_edge_batch_events_count{sel}[$__rate_interval]))",
                "mean",
            ),
        ),
        ts(
            ids,
            "Compression ratio",
            "Raw / compressed batch bytes on this edge.",
            "suffix:x",
            (
                f"sum(rate(danmaku_edge_batch_raw_bytes_total{sel}[$__rate_interval])) / sum(rate(danmaku_edge_batch_compressed_bytes_total{sel}[$__rate_interval]))",
                "ratio",
            ),
        ),
        ts(
            ids,
            "Batch bytes",
            "Batch payload bytes before and after zstd.",
            "Bps",
            (f"sum(rate(danmaku_edge_batch_raw_bytes_total{sel}[$__rate_interval]))", "raw"),
            (f"sum(rate(danmaku_edge_batch_compressed_bytes_total{sel}[$__rate_interval]))", "compressed"),
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Bus and slow consumers"))
    for p in [
        ts(
            ids,
            "Bus up",
            "This process's bus health.",
            "bool",
            (f"min by (backend) (danmaku_bus_up{sel})", "{{backend}}"),
        ),
        ts(
            ids,
            "Bus consumer lag by partition",
            "Messages not yet consumed per partition (Kafka only).",
            "short",
            (f"sum by (partition) (danmaku_bus_consumer_lag{sel})", "p{{partition}}"),
        ),
        ts(
            ids,
            "Bus events by result",
            "What this edge did with each bus event.",
            "cps",
            (f"sum by (result) (rate(danmaku_edge_bus_events_total{sel}[$__rate_interval]))", "{{result}}"),
        ),
        ts(
            ids,
            "Slow-consumer drops",
            "Danmaku batches dropped for full send queues, and events skipped by a lagging subscription.",
            "cps",
            (f"sum(rate(danmaku_edge_slow_consumer_drops_total{sel}[$__rate_interval]))", "dropped batches"),
            (f"sum(rate(danmaku_edge_bus_lagged_total{sel}[$__rate_interval]))", "bus events skipped"),
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Reliable lane"))
    for p in reliable_panels(ids, sel)[2:]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Hottest rooms on this edge"))
    for p in [
        bars(
            ids,
            "Biggest rooms (members by rank)",
            "Local members of this edge's biggest rooms; names at GET /v1/top-rooms on the edge.",
            "short",
            f"sum by (rank) (danmaku_edge_top_room_members{sel})",
            "#{{rank}}",
        ),
        bars(
            ids,
            "Busiest rooms (inbound events/s by rank)",
            "Bus events per second into this edge's busiest rooms; names at GET /v1/top-rooms.",
            "cps",
            f"sum by (rank) (danmaku_edge_top_room_inbound_per_second{sel})",
            "#{{rank}}",
        ),
    ]:
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Capacity and process resources"))
    for p in capacity_panels(ids, sel, by=""):
        d = d.with_panel(p)

    d = d.with_row(row(ids, "Drain, online and refusals"))
    for p in drain_panels(ids, sel, by="") + refusal_panels(ids, sel)[:2]:
        d = d.with_panel(p)
    d = d.with_panel(
        ts(
            ids,
            "Connections closed by revocations and blocks",
            "Open connections of this edge closed because a token revocation (token_revoked) "
            "or a user block (user_blocked) covered them, and connections refused at connect "
            "for the same reasons.",
            "cps",
            (f"sum by (code) (rate(danmaku_edge_account_closes_total{sel}[$__rate_interval]))", "closed: {{code}}"),
            (f'sum by (code) (rate(danmaku_edge_refused_total{{code=~"token_revoked|user_blocked"{", " + sel[1:-1] if sel else ""}}}[$__rate_interval]))', "refused: {{code}}"),
        )
    )
    d = d.with_panel(
        ts(
            ids,
            "Calls to the scheduler",
            "This edge's register, heartbeat, deregister and picks calls by result.",
            "cps",
            (f"sum by (op, result) (rate(danmaku_edge_scheduler_requests_total{sel}[$__rate_interval]))", "{{op}} {{result}}"),
        )
    )
    return d


def render(builder):
    return json.dumps(builder.build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


DASHBOARDS = {"danmaku-overview.json": overview, "danmaku-edge.json": edge}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = ap.parse_args()
    stale = False
    OUT.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        text = render(build())
        path = OUT / name
        if args.check:
            old = path.read_text() if path.exists() else ""
            if old != text:
                stale = True
                sys.stdout.writelines(
                    difflib.unified_diff(old.splitlines(True), text.splitlines(True), f"committed/{name}", f"generated/{name}")
                )
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("grafana/dashboards is stale: run python3 grafana/generate.py and commit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
