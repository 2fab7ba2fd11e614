"""Roll-up arithmetic of the insight tables: histogram buckets, percentiles, per-minute
roll-ups and how they add up to hours and days, and the failures recorded in error groups.

Pure functions and small records, no SQL: :mod:`.sql` writes them to the tables of either
store (:mod:`.store` for SQLite, :mod:`.pg_store` for PostgreSQL).

Roll-ups (``insight_minutes``, ``insight_hours`` and ``insight_days``) hold, per ``key`` and
period start (Unix seconds): finished counts, and two histograms, task runtime and queue
wait, as :data:`BUCKETS` integer columns each (``rt0`` ... and ``w0`` ...). Bucket ``i``
counts values up to :func:`bucket_bound` ``(i)``; the bounds grow by √2 from 0.1 ms, so a
percentile read from them is within about 19 % of the exact one. Keys are
``task:<task name>`` and ``queue:<queue name>`` (queue wait only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Histogram buckets per measure.
BUCKETS = 56
#: Upper bound of bucket 0, seconds.
BASE = 1e-4
COUNTS = ("succeeded", "failed", "retried", "revoked")
_RT = [f"rt{i}" for i in range(BUCKETS)]
_W = [f"w{i}" for i in range(BUCKETS)]
#: Columns added up across periods, and the two kept as maxima.
SUM_COLUMNS = [*COUNTS, "rt_n", "rt_sum", *_RT, "w_n", "w_sum", *_W]
MAX_COLUMNS = ["rt_max", "w_max"]
ROLLUP_COLUMNS = (*SUM_COLUMNS, *MAX_COLUMNS)

#: Roll-up tables by period (seconds): minutes, hours and days (UTC).
LEVELS = {60: "insight_minutes", 3600: "insight_hours", 86400: "insight_days"}


def bucket_bound(i: int) -> float:
    """Upper bound (seconds) of histogram bucket ``i``; the last bucket has none (inf)."""
    return math.inf if i >= BUCKETS - 1 else BASE * 2 ** (i / 2)


def bucket_of(value: float) -> int:
    """The histogram bucket of a duration in seconds (negative values count as 0)."""
    if value <= BASE:
        return 0
    return min(BUCKETS - 1, math.ceil(2 * math.log2(value / BASE) - 1e-9))


def percentile(hist: list[int], p: float, vmax: float | None = None) -> float | None:
    """The ``p`` (0-1) percentile of a histogram: the geometric middle of its bucket.

    Never above ``vmax`` (the exact maximum) when given. None for an empty histogram.
    """
    n = sum(hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(p * n))
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank:
            hi = BASE * 2 ** (i / 2)
            value = hi if i == 0 else hi / 2**0.25
            return min(value, vmax) if vmax is not None else value
    return vmax  # pragma: no cover - unreachable: seen reaches n


_INDEX = {c: i for i, c in enumerate(ROLLUP_COLUMNS)}


@dataclass
class Rollup:
    """Counts and histograms of one key over one period, being accumulated."""

    values: list[float] = field(default_factory=lambda: [0] * len(ROLLUP_COLUMNS))

    def count(self, column: str) -> None:
        self.values[_INDEX[column]] += 1

    def runtime(self, seconds: float) -> None:
        v = self.values
        v[_INDEX["rt_n"]] += 1
        v[_INDEX["rt_sum"]] += seconds
        v[_INDEX[_RT[bucket_of(seconds)]]] += 1
        v[_INDEX["rt_max"]] = max(v[_INDEX["rt_max"]], seconds)

    def wait(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        v = self.values
        v[_INDEX["w_n"]] += 1
        v[_INDEX["w_sum"]] += seconds
        v[_INDEX[_W[bucket_of(seconds)]]] += 1
        v[_INDEX["w_max"]] = max(v[_INDEX["w_max"]], seconds)


@dataclass
class Failure:
    """One failure or retry, for its error group."""

    group: str
    name: str
    exc_type: str
    message: str
    exception: str
    traceback: str
    uuid: str
    worker: str
    ts: float
    kind: str  # "failure" | "retry" (later "retried": a failure sent again)


def merge_levels(rollups: Mapping[tuple[str, int], Rollup]) -> dict[str, list[tuple[Any, ...]]]:
    """Per-minute ``rollups`` ``{(key, minute start): Rollup}`` as the rows to add to each
    roll-up table: ``{table: [(key, period start, *ROLLUP_COLUMNS values)]}``."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for period, table in LEVELS.items():
        acc: dict[tuple[str, int], list[float]] = {}
        for (key, start), r in rollups.items():
            k = (key, start - start % period)
            a = acc.get(k)
            if a is None:
                acc[k] = list(r.values)
            else:
                for i, col in enumerate(ROLLUP_COLUMNS):
                    a[i] = max(a[i], r.values[i]) if col in MAX_COLUMNS else a[i] + r.values[i]
        rows[table] = [(k, s, *v) for (k, s), v in acc.items()]
    return rows


def spans(since: float, until: float) -> list[tuple[str, int, int]]:
    """(table, start, end) pieces covering [since, until) rounded out to minutes: whole days
    from the day table, whole hours around them, minutes at the edges."""
    lo = int(since // 60 * 60)
    hi = int(-(-until // 60) * 60)
    out: list[tuple[str, int, int]] = []

    def cover(a: int, b: int, periods: list[int]) -> None:
        period, rest = periods[0], periods[1:]
        if not rest:
            if a < b:
                out.append((LEVELS[period], a, b))
            return
        p0 = -(-a // period) * period
        p1 = b // period * period
        if p1 <= p0:
            cover(a, b, rest)
            return
        out.append((LEVELS[period], p0, p1))
        cover(a, p0, rest)
        cover(p1, b, rest)

    cover(lo, hi, [86400, 3600, 60])
    return out
