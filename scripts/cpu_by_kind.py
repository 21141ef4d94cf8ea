#!/usr/bin/env python3
"""CPU by kind of process, every STEP seconds for DURATION seconds, from /proc.

    python3 scripts/cpu_by_kind.py DURATION STEP

Prints one line per step in units of one core (200% = both cores of this box):
`idle` and `irq` (irq + softirq, where loopback's receive work lands) from
/proc/stat, and per kind the utime + stime of every process: a `danmaku*` binary
counts under its subcommand (edge, ingest, scheduler, loadtest-worker, …), tansu
under `tansu`, kernel threads under `kernel`, anything else under `other`.
Used beside `scripts/bench.sh room-100k` to see who fills the box (BENCHMARKS.md).
"""
import collections
import os
import sys
import time


def kinds():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        exe = os.path.basename(cmd[0].decode(errors="ignore")) if cmd and cmd[0] else ""
        if exe.startswith("danmaku") and len(cmd) > 1:
            kind = cmd[1].decode(errors="ignore")
        elif "tansu" in exe:
            kind = "tansu"
        elif not exe:
            kind = "kernel"
        else:
            kind = "other"
        out[pid] = (kind, int(stat[11]) + int(stat[12]))
    return out


def totals():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v), v[3] + v[4], v[5] + v[6]


def main():
    duration, step = float(sys.argv[1]), float(sys.argv[2])
    tick = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    prev, (pt, pidle, pirq) = kinds(), totals()
    start = time.time()
    while time.time() - start < duration:
        time.sleep(step)
        cur, (ct, cidle, cirq) = kinds(), totals()
        used = collections.Counter()
        for pid, (kind, cpu) in cur.items():
            if pid in prev:
                used[kind] += cpu - prev[pid][1]
        all_ticks = max(ct - pt, 1)
        share = lambda t: 100 * t / all_ticks * cores  # noqa: E731
        line = " ".join(f"{k}={100 * v / tick / step:.0f}%" for k, v in sorted(used.items()) if v)
        print(f"{time.strftime('%T')} idle={share(cidle - pidle):.0f}% irq={share(cirq - pirq):.0f}% {line}", flush=True)
        prev, pt, pidle, pirq = cur, ct, cidle, cirq


if __name__ == "__main__":
    main()
