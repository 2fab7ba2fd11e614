"""The beat schedule as people read it: every entry, in words, its next and last run.

Pure functions over a Celery app's ``beat_schedule`` (``@celery.schedule`` and
``CELERY_BEAT_SCHEDULE`` both end there) and the monitor's task history. Crontab
expressions are put in words by ``cron-descriptor``.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery
from celery.schedules import crontab, maybe_schedule, schedule, solar
from cron_descriptor import get_description

#: Extra seconds an entry may be late before it counts as missed (plus 10 % of its period).
GRACE = 10.0


def crontab_expression(c: crontab) -> str:
    """The five-field cron expression of a Celery ``crontab`` (``"0 0 * * *"``)."""
    fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
    return " ".join(str(getattr(c, f"_orig_{f}", "*")) for f in fields)


def describe(sched: Any) -> str:
    """A schedule in words: ``every 30 seconds``, ``At 12:00 AM``, ``at sunset in
    48.85,2.35``."""
    if isinstance(sched, dt.timedelta):
        sched = schedule(sched)
    if isinstance(sched, crontab):
        expr = crontab_expression(sched)
        try:
            return str(get_description(expr))
        except Exception:  # noqa: BLE001 - cron-descriptor has its own errors; show the cron
            return f"cron {expr}"
    if isinstance(sched, solar):
        return f"at {sched.event} in {sched.lat:g},{sched.lon:g}"
    if isinstance(sched, schedule):
        return "every " + _human_seconds(sched.run_every.total_seconds())
    if isinstance(sched, (int, float)):
        return "every " + _human_seconds(float(sched))
    return str(sched)


def _human_seconds(s: float) -> str:
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n and s % n == 0:
            k = int(s // n)
            return f"{k} {unit}{'s' if k != 1 else ''}"
    return f"{s:g} second{'s' if s != 1 else ''}"


def next_run(app: Celery, sched: Any, after: float) -> float | None:
    """The first time (Unix) the schedule is due after ``after``; None for a schedule class
    that cannot tell. May be in the past (an overdue run)."""
    s = maybe_schedule(sched, app=app)
    base = dt.datetime.fromtimestamp(after, dt.timezone.utc)
    try:
        # Celery's estimate is "next due after ``base``" minus the present moment.
        remaining = s.remaining_estimate(base)
    except Exception:  # noqa: BLE001 - a custom schedule class
        return None
    return time.time() + float(remaining.total_seconds())


def period(app: Celery, sched: Any, now: float) -> float | None:
    """Seconds between two runs (for intervals exactly; for others, two runs from ``now``)."""
    s = maybe_schedule(sched, app=app)
    if isinstance(s, schedule) and not isinstance(s, (crontab, solar)):
        return float(s.run_every.total_seconds())
    first = next_run(app, s, now)
    if first is None:
        return None
    second = next_run(app, s, first + 1)
    return None if second is None else max(1.0, second - first)


def entries(
    app: Celery,
    last_task: Callable[[str], Mapping[str, Any] | None],
    now: float,
    watching_since: float,
) -> list[dict[str, Any]]:
    """Every entry of ``app.conf.beat_schedule``, by name.

    ``last_task(task_name)`` gives the newest task of that name from the history (a task dict)
    or None. Items: ``{"name", "task", "schedule" (in words), "args", "kwargs", "options",
    "next_run", "last_run" ({"uuid", "state", "received", "runtime", "exception"} or None),
    "late" (True when a run is overdue by more than :data:`GRACE` + 10 % of the period)}``.
    ``watching_since`` is when the monitor started seeing tasks: an entry that never ran is
    only late when it was due after that.
    """
    out = []
    for name, entry in sorted((app.conf.beat_schedule or {}).items()):
        sched = entry.get("schedule")
        task_name = entry.get("task", "")
        last = last_task(task_name) if task_name else None
        last_at = None
        if last is not None:
            last_at = last.get("received") or last.get("sent") or last.get("timestamp")
        base = last_at if last_at is not None else watching_since
        due = next_run(app, sched, base)
        upcoming = next_run(app, sched, last_at if last_at is not None else now)
        per = period(app, sched, now) or 0.0
        late = due is not None and now > due + GRACE + 0.1 * per
        out.append(
            {
                "name": name,
                "task": task_name,
                "schedule": describe(sched),
                "args": list(entry.get("args") or ()),
                "kwargs": dict(entry.get("kwargs") or {}),
                "options": {
                    k: v
                    for k, v in (entry.get("options") or {}).items()
                    if isinstance(v, (str, int, float, bool))
                },  # fmt: skip
                "next_run": None if upcoming is None else max(now, upcoming),
                "period": per or None,
                "last_run": None
                if last is None
                else {
                    k: last.get(k) for k in ("uuid", "state", "received", "runtime", "exception")
                },  # fmt: skip
                "late": late,
            }
        )
    return out


def beat_status(items: list[dict[str, Any]], local: bool | None) -> dict[str, Any]:
    """Whether beat runs: ``{"running": True | False | None, "how": reason}``.

    ``local`` is the state of a beat process this app started (None when it started none).
    Otherwise it is inferred from the history: running when an entry ran and none is late,
    stopped when every entry is late, unknown (None) when nothing tells.
    """
    if local is not None:
        return {"running": local, "how": "local beat process " + ("alive" if local else "exited")}
    if not items:
        return {"running": None, "how": "the app has no beat schedule"}
    late = [e for e in items if e["late"]]
    ran = [e for e in items if e["last_run"] is not None and not e["late"]]
    if late and len(late) == len(items):
        return {"running": False, "how": "every entry is overdue: " + ", ".join(
            e["name"] for e in late)}  # fmt: skip
    if ran and not late:
        return {"running": True, "how": "entries run on schedule"}
    if late:
        return {"running": None, "how": "some entries are overdue: " + ", ".join(
            e["name"] for e in late)}  # fmt: skip
    return {"running": None, "how": "no entry has run yet since the monitor started"}
