"""Task analytics over a window, from the per-minute roll-ups of :mod:`.store`.

Pure functions over an :class:`~.store.InsightStore`: per task name, throughput, failure rate,
runtime p50/p95/p99, queue wait p50/p95 and retries over a window, and the same over the
window before it, with the ratios ("p95 2.1x slower than the previous 7 days").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .rollups import BUCKETS, percentile
from .store import AnyInsightStore

#: Windows the analytics answer: name -> seconds.
WINDOWS: dict[str, int] = {
    "15m": 900,
    "1h": 3600,
    "6h": 21600,
    "24h": 86400,
    "7d": 604800,
    "30d": 2592000,
}
#: Chart bucket (seconds) per window: 30 to 60 points, whole minutes or whole hours.
SERIES_BUCKETS: dict[str, int] = {
    "15m": 60,
    "1h": 60,
    "6h": 600,
    "24h": 3600,
    "7d": 3 * 3600,
    "30d": 12 * 3600,
}


def summary(tot: Mapping[str, Any] | None, seconds: float) -> dict[str, Any]:
    """One task's figures over ``seconds`` from a :meth:`InsightStore.totals` item.

    ``{"succeeded", "failed", "retried", "revoked", "finished", "throughput" (finished per
    minute), "failure_rate" (failed / finished, None without finished tasks), "runtime":
    {"p50", "p95", "p99", "mean", "max"}, "wait": {"p50", "p95", "mean", "max"}}``; times in
    seconds, None when nothing was measured.
    """
    t = tot or {}
    counts = {k: int(t.get(k) or 0) for k in ("succeeded", "failed", "retried", "revoked")}
    finished = counts["succeeded"] + counts["failed"] + counts["revoked"]
    rt = [int(t.get(f"rt{i}") or 0) for i in range(BUCKETS)]
    w = [int(t.get(f"w{i}") or 0) for i in range(BUCKETS)]
    rt_n, w_n = int(t.get("rt_n") or 0), int(t.get("w_n") or 0)
    rt_max = t.get("rt_max") if rt_n else None
    w_max = t.get("w_max") if w_n else None
    return {
        **counts,
        "finished": finished,
        "throughput": finished / (seconds / 60) if seconds > 0 else 0.0,
        "failure_rate": counts["failed"] / finished if finished else None,
        "runtime": {
            "p50": percentile(rt, 0.50, rt_max),
            "p95": percentile(rt, 0.95, rt_max),
            "p99": percentile(rt, 0.99, rt_max),
            "mean": (t.get("rt_sum") or 0) / rt_n if rt_n else None,
            "max": rt_max,
        },
        "wait": {
            "p50": percentile(w, 0.50, w_max),
            "p95": percentile(w, 0.95, w_max),
            "mean": (t.get("w_sum") or 0) / w_n if w_n else None,
            "max": w_max,
        },
    }


def _ratio(now: float | None, before: float | None) -> float | None:
    if now is None or before is None or before <= 0:
        return None
    return now / before


def compare(cur: Mapping[str, Any], prev: Mapping[str, Any]) -> dict[str, Any]:
    """Ratios current / previous (None when either is missing or the previous is 0):
    ``{"throughput", "runtime_p95", "runtime_p50", "wait_p95"}`` and ``failure_rate`` as the
    difference in points (0.03 = 3 points more)."""
    fr = None
    if cur["failure_rate"] is not None and prev["failure_rate"] is not None:
        fr = cur["failure_rate"] - prev["failure_rate"]
    return {
        "throughput": _ratio(cur["throughput"], prev["throughput"]),
        "runtime_p50": _ratio(cur["runtime"]["p50"], prev["runtime"]["p50"]),
        "runtime_p95": _ratio(cur["runtime"]["p95"], prev["runtime"]["p95"]),
        "wait_p95": _ratio(cur["wait"]["p95"], prev["wait"]["p95"]),
        "failure_rate": fr,
    }


def window_seconds(window: str) -> int:
    """Seconds of a window name; raises ``ValueError`` naming the choices."""
    try:
        return WINDOWS[window]
    except (KeyError, TypeError):
        raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}") from None


def task_analytics(
    store: AnyInsightStore, window: str, now: float, name: str | None = None
) -> dict[str, Any]:
    """Per task name over ``window`` ending at ``now`` and the window before it.

    ``{"window", "since", "until", "tasks": [{"name", "current": summary, "previous":
    summary, "change": compare}]}``, busiest first. Raises ``ValueError`` for an unknown
    window.
    """
    span = window_seconds(window)
    cur = store.totals(now - span, now, "task:", name)
    prev = store.totals(now - 2 * span, now - span, "task:", name)
    names = sorted(set(cur) | set(prev))
    tasks: list[dict[str, Any]] = []
    for n in names:
        c, p = summary(cur.get(n), span), summary(prev.get(n), span)
        tasks.append({"name": n, "current": c, "previous": p, "change": compare(c, p)})
    tasks.sort(key=lambda t: (-t["current"]["finished"], t["name"]))
    return {"window": window, "since": now - span, "until": now, "tasks": tasks}


def task_series(store: AnyInsightStore, name: str, window: str, now: float) -> dict[str, Any]:
    """One task's points over ``window``: ``{"bucket", "points": [{"start", "succeeded",
    "failed", "retried", "revoked", "runtime_p95", "wait_p95"}]}`` with every bucket present.
    """
    span = window_seconds(window)
    bucket = SERIES_BUCKETS[window]
    end = math.ceil(now / bucket) * bucket
    start = end - math.ceil(span / bucket) * bucket
    rows = dict(store.series(start, end, bucket, "task:" + name))
    points = []
    for b in range(int(start), int(end), bucket):
        s = summary(rows.get(b), bucket)
        points.append({"start": b, **{k: s[k] for k in ("succeeded", "failed", "retried",
                       "revoked")}, "runtime_p95": s["runtime"]["p95"],
                       "wait_p95": s["wait"]["p95"]})  # fmt: skip
    return {"bucket": bucket, "points": points}
