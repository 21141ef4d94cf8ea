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
            "Gift and chat refusals (5xx)",
            "Reliable posts answered 5xx: store_unavailable or bus_unavailable. Nothing "
            "answered 200 is lost, but these senders must retry.",
            "reqps",
            (
                'sum by (kind, status) (rate(danmaku_ingest_requests_total{kind=~"gift|chat", status=~"5.."}[$__rate_interval]))',
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
            "Retransmits rising while acks fall: clients or links in trouble.",
            "cps",
            (f"sum(rate(danmaku_edge_reliable_sent_total{sel}[$__rate_interval]))", "sent"),
            (f"sum(rate(danmaku_edge_reliable_acked_total{sel}[$__rate_interval]))", "acked"),
            (f"sum(rate(danmaku_edge_reliable_retransmits_total{sel}[$__rate_interval]))", "retransmits"),
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
            "The load score the scheduler ranks edges by (0 idle, 1 full).",
            "percentunit",
            ("max by (edge) (danmaku_scheduler_edge_load)", "{{edge}}"),
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
