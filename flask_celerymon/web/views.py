"""The monitor's HTML pages: workers, one worker, tasks, one task, broker and charts.

Every page is rendered on the server from the app's monitor service, so it works without
JavaScript; ``static/celerymon/celerymon.js`` adds the live feed (:mod:`.live`), the buttons
that call the JSON API with ``fetch()``, copy buttons and the theme switch.

Routes (relative to ``CELERY_MONITOR_URL_PREFIX``), all ``GET``:

==========================  =========================================================
``/``, ``/workers``          workers dashboard (200); Flower's ``?json=1`` and
                             ``?refresh=1`` too
``/worker/<hostname>``       one worker, ``?tab=pool|broker|queues|tasks|limits|config|system``
                             and ``?refresh=1`` (200; 404 unknown worker; 400 bad tab)
``/tasks``                   the task list; see :class:`TaskFilter` for the parameters
                             (200; 400 with the reason for a bad parameter or search)
``/task/<uuid>``             one task (200; 404 unknown task)
``/broker``                  queue lengths (200; 503 when the broker is unreachable)
``/charts``                  per-minute counts and runtime percentiles, ``?window=`` and
                             ``?name=`` (200; 400 bad window)
``/tasks/datatable``         Flower's JSON for DataTables, GET or POST (200; 400 JSON error)
``/celerymon-static/<f>``    the pages' CSS, JS and icon (200; 404)
==========================  =========================================================

Pages never answer 500 for bad input: the error page says what to fix. Control buttons are
left out in read-only mode (``CELERY_MONITOR_READ_ONLY``) and when the JSON API route they
would call is not there.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from markupsafe import Markup
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..appstate import get_state
from ..errors import InvalidInput, NotFoundError
from ..monitor.control import FINISHED
from ..monitor.query import STATES, SearchError, compile_python, parse, parse_sort
from .auth import ANYONE, VIEWER, csrf_token, current_user, may, requires
from .guard import safe
from .params import (
    Bool,
    Choice,
    Int,
    Param,
    Range,
    Text,
    UtcTime,
    parse_args,
    schema,
)
from .params import utc_seconds as _utc_seconds

log = logging.getLogger(__name__)

#: Columns the task list can show (Flower's ``tasks_columns`` choices) and their titles.
TASK_COLUMNS: dict[str, str] = {
    "name": "Name",
    "uuid": "UUID",
    "state": "State",
    "args": "Args",
    "kwargs": "Kwargs",
    "result": "Result",
    "received": "Received",
    "started": "Started",
    "succeeded": "Succeeded",
    "runtime": "Runtime",
    "worker": "Worker",
    "exchange": "Exchange",
    "routing_key": "Routing key",
    "retries": "Retries",
    "revoked": "Revoked",
    "exception": "Exception",
    "expires": "Expires",
    "eta": "ETA",
}
DEFAULT_COLUMNS = ("name", "uuid", "state", "received", "runtime", "worker")
SORTABLE = frozenset({"name", "state", "received", "started", "runtime", "succeeded"})
PAGE_SIZES = (15, 30, 50, 100)
#: Quick time ranges of the task list and the charts: label and seconds.
RANGES: dict[str, tuple[str, int]] = {
    "15m": ("15 min", 900),
    "1h": ("1 hour", 3600),
    "6h": ("6 hours", 21600),
    "24h": ("24 hours", 86400),
    "7d": ("7 days", 604800),
}
#: Chart bucket per window: about 60 bars whatever the window.
CHART_BUCKETS = {"15m": 30, "1h": 60, "6h": 300, "24h": 1800, "7d": 3 * 3600}
#: The state filter buttons of the task list.
STATE_BUTTONS = (
    ("All", ""),
    ("Received", "RECEIVED"),
    ("Started", "STARTED"),
    ("Succeeded", "SUCCESS"),
    ("Failed", "FAILURE"),
    ("Retried", "RETRY"),
    ("Revoked", "REVOKED"),
)
WORKER_TABS = ("pool", "broker", "queues", "tasks", "limits", "config", "system")
#: A page parameter is not valid; the message says which one and what it takes (400).
BadInput = InvalidInput


# -- formatting -------------------------------------------------------------------------------


def fmt_time(ts: float | None) -> Markup:
    """A Unix time as a ``<time>`` in UTC (the page's script shows it in local time)."""
    if ts is None:
        return Markup("")
    try:
        d = datetime.fromtimestamp(ts, timezone.utc)
    except (ValueError, OverflowError, OSError):  # a sender's clock outside years 1-9999
        return Markup("<time>{}</time>").format(f"{ts!r}")
    text = d.strftime("%Y-%m-%d %H:%M:%S.") + f"{d.microsecond // 1000:03d}"
    return Markup('<time datetime="{}" data-ts="{}">{} UTC</time>').format(
        d.isoformat(), f"{ts:.3f}", text
    )


def fmt_runtime(seconds: float | None) -> str:
    """A duration for people: ``0.13 ms``, ``2.50 s``, ``3 min 4 s``."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def fmt_span(seconds: float) -> str:
    """A whole chart bucket for people: ``30 s``, ``5 min``, ``3 h``."""
    if seconds < 60:
        return f"{seconds:g} s"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def fmt_loadavg(value: Any) -> str:
    if not value:
        return ""
    return "  ".join(f"{v:.2f}" if isinstance(v, (int, float)) else str(v) for v in value)


def fmt_value(value: Any) -> str:
    """Any inspect value as short text (lists and dicts as JSON-like text)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in value.items())
    return str(value)


def fmt_hhmm(ts: float, with_day: bool = False) -> str:
    """A Unix time as UTC ``HH:MM`` (``MM-DD HH:MM`` ``with_day``), for chart axes."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%m-%d %H:%M" if with_day else "%H:%M")


def _cell(task: dict[str, Any], column: str) -> Any:
    """A task's value for a column of the task list, ready for the template."""
    value = task.get(column)
    if column in ("received", "started", "succeeded", "revoked", "expires", "eta"):
        if isinstance(value, (int, float)):
            return fmt_time(value)
        return value or ""
    if column == "runtime":
        return fmt_runtime(value)
    return "" if value is None else value


def _state_class(state: str | None) -> str:
    return {
        "SUCCESS": "ok",
        "FAILURE": "bad",
        "REVOKED": "warn",
        "REJECTED": "bad",
        "LOST": "bad",
        "RETRY": "warn",
        "STARTED": "info",
        "RECEIVED": "muted",
        "PENDING": "muted",
        "PROGRESS": "info",
    }.get(state or "", "muted")


FMT = SimpleNamespace(
    time=fmt_time,
    hhmm=fmt_hhmm,
    span=fmt_span,
    runtime=fmt_runtime,
    loadavg=fmt_loadavg,
    value=fmt_value,
    cell=_cell,
    state_class=_state_class,
)


# -- URLs and the page context ----------------------------------------------------------------


def base_url() -> str:
    """The monitor's root URL path with a trailing slash (prefix and SCRIPT_NAME included)."""
    return url_for("celerymon.index")


def api_url(path: str) -> str:
    """The URL of the JSON API route ``path`` (e.g. ``task/revoke/<id>``)."""
    return base_url() + "api/" + path


def has_api(path: str) -> bool:
    """True when the app serves ``POST <prefix>/api/<path>`` and the user's role may call it
    (a button can call it)."""
    cache = _request_cache()
    hit = cache.get(path)
    if hit is None:
        prefix = get_state().settings["CELERY_MONITOR_URL_PREFIX"] or ""
        adapter = current_app.url_map.bind("localhost")
        try:
            endpoint, _ = adapter.match(f"{prefix}/api/{path}", method="POST")
            hit = (
                endpoint.startswith("celerymon.")
                and endpoint != "celerymon.api_not_found"
                and may(endpoint)
            )
        except (NotFound, MethodNotAllowed):
            hit = False
        except Exception:  # noqa: BLE001 - a redirect or a converter error: no button
            hit = False
        cache[path] = hit
    return hit


def _request_cache() -> dict[str, bool]:
    from flask import g

    cache = g.get("_celerymon_api_routes")
    if cache is None:
        cache = g._celerymon_api_routes = {}
    return cache


def read_only() -> bool:
    return bool(get_state().settings["CELERY_MONITOR_READ_ONLY"])


def can(path: str) -> bool:
    """A control button for API route ``path`` is shown (not read-only, route exists)."""
    return not read_only() and has_api(path)


def q(value: str) -> str:
    """``value`` quoted for a URL path segment (worker names keep their ``@``)."""
    return quote(value, safe="@")


#: The pages' own CSS, JS and icon.
ASSETS_DIR = Path(__file__).resolve().parent.parent / "static" / "celerymon"


def asset_url(filename: str) -> str:
    """URL of one of the pages' assets, with its change time so browsers never run stale JS."""
    try:
        version = int(os.stat(ASSETS_DIR / filename).st_mtime)
    except OSError:
        version = 0
    return url_for("celerymon.assets", filename=filename, v=version)


@requires(ANYONE)
def assets(filename: str) -> Response:
    """The pages' assets (``static/celerymon/``), under a path of their own.

    Not the blueprint's ``<prefix>/static``: with an empty prefix that path is the app's own
    ``/static`` and would never reach the blueprint. 200; 404 unknown file.
    """
    return send_from_directory(ASSETS_DIR, filename, max_age=3600)


def _context() -> dict[str, Any]:
    return {
        "cm": SimpleNamespace(
            asset=asset_url,
            base=base_url(),
            api=api_url,
            can=can,
            read_only=read_only(),
            q=q,
            ws_path=base_url() + "ws",
            poll_ms=round(get_state().limits.poll_interval * 1000),
            app_name=current_app.name,
            user=current_user(),
            csrf=csrf_token(),
        ),
        "fmt": FMT,
    }


# -- the task list's parameters ---------------------------------------------------------------


class _States(Param):
    """``state``: states, comma-separated and/or repeated, any case; empty or ``All`` for any.
    Given as a tuple of upper-case states without repeats."""

    repeat = True

    def __init__(self) -> None:
        super().__init__(default=())

    def parse(self, value: Any) -> tuple[str, ...]:
        states: list[str] = []
        for s in str(value).split(","):
            s = s.strip().upper()
            if not s or s == "ALL":
                continue
            if s not in STATES and s != "PROGRESS":
                raise BadInput(f"state must be one of {', '.join(STATES)}, not {s!r}")
            states.append(s)
        return tuple(dict.fromkeys(states))


class _Sort(Text):
    """``sort``: a column of :data:`SORTABLE`, ``-`` for descending (default ``-received``)."""

    def __init__(self) -> None:
        super().__init__(strip=False, default="-received")

    def parse(self, value: Any) -> str:
        sort = super().parse(value)
        try:
            key, _ = parse_sort(sort)
        except SearchError as exc:
            raise BadInput(str(exc)) from None
        if key not in SORTABLE:
            raise BadInput(f"sort must be one of {', '.join(sorted(SORTABLE))}, not {sort!r}")
        return sort


class _Columns(Text):
    """``columns``: a comma list of :data:`TASK_COLUMNS`, as a tuple."""

    def parse(self, value: Any) -> tuple[str, ...]:  # type: ignore[override]
        cols = tuple(c.strip() for c in super().parse(value).split(",") if c.strip())
        if not cols or [c for c in cols if c not in TASK_COLUMNS]:
            raise BadInput(
                f"columns must be a comma list of {', '.join(TASK_COLUMNS)}, not {value!r}"
            )
        return cols


class _Column(Param):
    """``column``, repeated: the form of the column picker (unknown names are left out)."""

    repeat = True

    def __init__(self) -> None:
        super().__init__(default=())

    def parse(self, value: Any) -> tuple[str, ...]:
        return tuple(c for c in str(value).split(",") if c in TASK_COLUMNS)


class _Search(Text):
    """``search``: the search language, checked here (``search: <what is wrong>``)."""

    def __init__(self) -> None:
        super().__init__(default="")

    def parse(self, value: Any) -> str:
        search = super().parse(value)
        try:
            parse(search)
        except SearchError as exc:
            raise BadInput(f"search: {exc}") from None
        return search


#: The task list's parameters (see :class:`TaskFilter`).
TASK_LIST = schema(
    state=_States(),
    since=Choice(tuple(RANGES), default=""),
    **{"from": UtcTime(), "to": UtcTime()},
    worker=Text(default=""),
    name=Text(default=""),
    sort=_Sort(),
    columns=_Columns(),
    column=_Column(),
    search=_Search(),
    page=Int(Range(1, 1_000_000), default=1),
    per_page=Int(Range(1, 500), default=15),
)
#: Flower's ``/tasks/datatable`` (DataTables' server-side parameters).
DATATABLE = schema(
    draw=Int(Range(0, 2**31), default=0),
    start=Int(Range(0, 10**9), default=0),
    length=Int(Range(-1, 10_000), default=15),
    **{
        "order[0][column]": Int(Range(0, 100)),
        "order[0][dir]": Text(default="asc"),
        "search[value]": Text(),
    },
)
#: The pages' flags: Flower's ``?refresh=1`` and ``?json=1`` (any other text is false).
FLAGS = schema(refresh=Bool(lenient=True), json=Bool(lenient=True))
WORKER_PAGE = schema(tab=Choice(WORKER_TABS, default="pool"), refresh=Text())
CHARTS_PAGE = schema(window=Choice(tuple(RANGES), default="1h"), name=Text())


def _parse_time(name: str, value: str) -> float:
    return _utc_seconds(name, value)


@dataclass(frozen=True)
class TaskFilter:
    """What the task list shows, from its query string (so every view is a bookmark).

    ``state`` (one state or a comma list; empty or ``All`` for any), ``worker``, ``name``
    (exact), ``search`` (the search language), ``since`` (``15m 1h 6h 24h 7d``) or
    ``from``/``to`` (UTC ``YYYY-MM-DD HH:MM``), ``sort`` (a column, ``-`` for descending;
    default ``-received``), ``page`` (from 1), ``per_page`` (1-500, default 15) and
    ``columns`` (comma list of :data:`TASK_COLUMNS`). :meth:`from_args` raises
    :class:`BadInput` for a value it cannot use.
    """

    state: tuple[str, ...] = ()
    worker: str = ""
    name: str = ""
    search: str = ""
    since: str = ""
    start: str = ""
    end: str = ""
    sort: str = "-received"
    page: int = 1
    per_page: int = 15
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    now: float = field(default_factory=time.time, compare=False)

    @classmethod
    def from_args(cls, args: Any) -> TaskFilter:
        """The filter of the query string ``args`` (:data:`TASK_LIST`); raises
        :class:`BadInput` naming the first bad parameter."""
        p = parse_args(TASK_LIST, args)
        return cls(
            state=p["state"],
            worker=p["worker"],
            name=p["name"],
            search=p["search"],
            since=p["since"],
            start=p["from"],
            end=p["to"],
            sort=p["sort"],
            page=p["page"],
            per_page=p["per_page"],
            columns=p["columns"] or p["column"] or DEFAULT_COLUMNS,
        )

    def bounds(self) -> tuple[float | None, float | None]:
        """The received-time range as Unix times (None for open)."""
        if self.since:
            return self.now - RANGES[self.since][1], None
        lo = _parse_time("from", self.start) if self.start else None
        hi = _parse_time("to", self.end) if self.end else None
        return lo, hi

    def service_query(self) -> dict[str, Any]:
        """Keyword arguments of ``MonitorService.query_tasks`` for this page."""
        lo, hi = self.bounds()
        return {
            "state": self.state or None,
            "worker": self.worker or None,
            "name": self.name or None,
            "received_start": lo,
            "received_end": hi,
            "search": self.search or None,
            "sort_by": self.sort,
            "offset": (self.page - 1) * self.per_page,
            "limit": self.per_page,
        }

    @property
    def live_inserts(self) -> bool:
        """New tasks belong at the top of this page (first page, newest first, no end)."""
        return self.page == 1 and self.sort == "-received" and not self.end

    def matches(self, task: dict[str, Any]) -> bool:
        """True when the task dict passes this page's filters (used by the live feed)."""
        if self.state and task.get("state") not in self.state:
            return False
        if self.worker and task.get("worker") != self.worker:
            return False
        if self.name and task.get("name") != self.name:
            return False
        lo, hi = self.bounds()
        if lo is not None or hi is not None:
            received = task.get("received")
            if received is None:
                return False
            if (lo is not None and received < lo) or (hi is not None and received > hi):
                return False
        if self.search:
            rec = SimpleNamespace(
                uuid=task["uuid"],
                name=task.get("name") or "",
                state=task.get("state") or "",
                worker=task.get("worker") or "",
                args=task.get("args") or "",
                kwargs=task.get("kwargs") or "",
                result=task.get("result") or "",
            )
            rec.text = "\x00".join((rec.args, rec.kwargs, rec.result))
            return bool(self._search_filter([rec]))
        return True

    @cached_property
    def _search_filter(self) -> Any:
        """The compiled search (compiled once per page: the live feed tests every change)."""
        return compile_python(parse(self.search))

    def params(self, **changes: Any) -> dict[str, str]:
        """The query string of this view with ``changes`` applied (defaults left out)."""
        f = replace(self, **changes) if changes else self
        out = {
            "state": ",".join(f.state),
            "worker": f.worker,
            "name": f.name,
            "search": f.search,
            "since": f.since,
            "from": f.start,
            "to": f.end,
            "sort": "" if f.sort == "-received" else f.sort,
            "page": "" if f.page == 1 else str(f.page),
            "per_page": "" if f.per_page == 15 else str(f.per_page),
            "columns": "" if f.columns == DEFAULT_COLUMNS else ",".join(f.columns),
        }
        return {k: v for k, v in out.items() if v}

    def url(self, **changes: Any) -> str:
        qs = _qs(self.params(**changes))
        return url_for("celerymon.tasks") + ("?" + qs if qs else "")

    def sort_url(self, column: str) -> str:
        """The URL sorting by ``column``: descending first, then toggling."""
        new = "-" + column if self.sort != "-" + column else column
        return self.url(sort=new, page=1)


def _qs(params: dict[str, str]) -> str:
    """A readable query string: ``@``, ``,`` and ``:`` stay as they are."""
    return urlencode(params, safe="@,:", quote_via=quote)


def tasks_url(**params: str) -> str:
    """The task list filtered by ``params`` (worker, state, name...)."""
    qs = _qs({k: v for k, v in params.items() if v})
    return url_for("celerymon.tasks") + ("?" + qs if qs else "")


# -- data for the pages -----------------------------------------------------------------------


def worker_rows(workers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows of the workers table and the totals (also the summary cards)."""
    rows = []
    totals = {"online": 0, "active": 0, "processed": 0, "failed": 0, "succeeded": 0, "retried": 0}
    for w in workers:
        row = {
            "hostname": w["hostname"],
            "status": bool(w.get("status")),
            "active": w.get("active") or 0,
            "processed": w.get("task-received", 0),
            "failed": w.get("task-failed", 0),
            "succeeded": w.get("task-succeeded", 0),
            "retried": w.get("task-retried", 0),
            "loadavg": w.get("loadavg"),
            "sw": " ".join(str(w.get(k) or "") for k in ("sw_ident", "sw_ver")).strip(),
        }
        rows.append(row)
        totals["online"] += row["status"]
        if row["status"]:
            totals["active"] += row["active"]
        for k in ("processed", "failed", "succeeded", "retried"):
            totals[k] += row[k]
    return rows, totals


def render_workers_body() -> str:
    rows, totals = worker_rows(get_state().monitor.workers())
    return render_template(
        "celerymon/_workers_body.html", rows=rows, totals=totals, tasks_url=tasks_url
    )


def render_worker_row(hostname: str) -> str | None:
    w = get_state().monitor.worker(hostname)
    if w is None:
        return None
    rows, _ = worker_rows([w])
    return render_template("celerymon/_worker_row.html", w=rows[0], tasks_url=tasks_url)


def render_task_row(task: dict[str, Any], flt: TaskFilter) -> str:
    return render_template("celerymon/_task_row.html", t=task, f=flt)


def render_task_detail(task: dict[str, Any]) -> str:
    return render_template("celerymon/_task_detail.html", t=task, **_task_extras(task))


def render_worker_head(hostname: str) -> str | None:
    w = get_state().monitor.worker(hostname)
    if w is None:
        return None
    rows, _ = worker_rows([w])
    return render_template("celerymon/_worker_head.html", w=rows[0], raw=w, tasks_url=tasks_url)


def render_queues() -> str:
    return render_template("celerymon/_queues.html", **_queues())


def _queues() -> dict[str, Any]:
    svc = get_state().monitor
    try:
        queues = svc.queues()
        error = None
    except Exception as exc:  # noqa: BLE001 - the broker's own connection errors vary
        queues, error = None, f"the broker is unreachable: {exc}"
    extra = []
    if queues:
        keys = ("messages_unacknowledged", "messages_ready", "consumers", "idle_since")
        extra = [k for k in keys if any(k in q for q in queues)]
    return {"queues": queues, "error": error, "extra": extra}


def _task_extras(task: dict[str, Any]) -> dict[str, Any]:
    state = task.get("state") or ""
    uuid = task["uuid"]
    hist = task.get("history") or []
    t0 = hist[0]["timestamp"] if hist else None
    return {
        "timeline": [{**h, "delta": None if t0 is None else h["timestamp"] - t0} for h in hist],
        "can_revoke": state not in FINISHED and can(f"task/revoke/{uuid}"),
        "can_terminate": state in ("STARTED", "PROGRESS", "RETRY") and can(f"task/revoke/{uuid}"),
        "can_retry": state in ("FAILURE", "REVOKED", "REJECTED") and can(f"task/retry/{uuid}"),
        "tasks_url": tasks_url,
    }


# -- charts -----------------------------------------------------------------------------------


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def chart_data(window: str, name: str | None, now: float | None = None) -> dict[str, Any]:
    """Bars of finished tasks per bucket and runtime percentiles over ``window``."""
    svc = get_state().monitor
    now = time.time() if now is None else now
    span = RANGES[window][1]
    bucket = CHART_BUCKETS[window]
    end = (now // bucket + 1) * bucket
    start = end - math.ceil(span / bucket) * bucket
    rows = svc.task_stats(since=start, until=end, bucket=bucket)
    per: dict[float, dict[str, int]] = {}
    for r in rows:
        b = per.setdefault(r["start"], {"succeeded": 0, "failed": 0, "retried": 0, "revoked": 0})
        for k in b:
            b[k] += r[k]
    n = int((end - start) // bucket)
    bars = []
    for i in range(n):
        t = start + i * bucket
        b = per.get(t, {"succeeded": 0, "failed": 0, "retried": 0, "revoked": 0})
        bars.append({"start": t, **b, "total": sum(b.values())})
    top = _nice_max(max((b["total"] for b in bars), default=0))
    names = svc.task_stats(since=start, until=end, bucket=1e12)
    names.sort(key=lambda r: -(r["succeeded"] + r["failed"] + r["retried"] + r["revoked"]))
    # by default the busiest task that has a name (a task revoked before any worker received
    # it has none, and no runtime to chart)
    selected = name or next((r["name"] for r in names if r["name"]), None)
    series = []
    if selected:
        series = [r for r in svc.task_stats(since=start, until=end, bucket=bucket, name=selected)]
    rt_top = _nice_max(max((r["runtime_p95"] or 0 for r in series), default=0))
    return {
        "bars": bars,
        "top": top,
        "start": start,
        "end": end,
        "bucket": bucket,
        "names": names,
        "selected": selected,
        "series": series,
        "rt_top": rt_top,
    }


# -- the routes -------------------------------------------------------------------------------


@requires(VIEWER)
def index() -> str:
    return workers()


@requires(VIEWER)
def workers() -> Any:
    """Workers dashboard: summary cards and a table with totals. 200.

    As in Flower, ``?refresh=1`` asks the workers again (inspect) first and ``?json=1``
    answers ``{"data": [worker, ...]}`` (the service's ``workers()`` items) instead of HTML.
    """
    svc = get_state().monitor
    flags = parse_args(FLAGS, request.args)
    if flags["refresh"]:
        _refresh(svc)
    if flags["json"]:
        return jsonify(data=svc.workers())
    day_ago = time.time() - 86400
    gaps = [g for g in svc.figures()["gaps"] if g["end"] >= day_ago]
    return render_template("celerymon/workers.html", body=Markup(render_workers_body()), gaps=gaps)


def _refresh(svc: Any, hostname: str | None = None) -> dict[str, Any]:
    """Ask the workers again; with the broker unreachable, log it and keep the cached data
    (the page still renders and its broker figures say the broker is down)."""
    try:
        return svc.inspect(hostname, refresh=True)
    except Exception as exc:  # noqa: BLE001 - a page shows what is known
        log.warning("celerymon: could not ask the workers: %s", exc)
        return svc.inspect(hostname)


@requires(VIEWER)
def tasks_datatable() -> Any:
    """Flower's ``/tasks/datatable`` for scripts written against it (GET or POST).

    DataTables' server-side parameters: ``draw``, ``start``, ``length``, ``search[value]``
    (the search language), ``order[0][column]`` and ``order[0][dir]`` with
    ``columns[<i>][data]`` naming the column. Answers ``{"draw", "data": [task dicts],
    "recordsTotal", "recordsFiltered"}``; ``length=-1`` (all) gives at most 10,000 rows. 200;
    400 ``{"error": ...}`` (raised, answered by :mod:`.errors`) for a bad parameter or search
    (Flower answers 200 with ``searchError``; a 4xx tells a script it asked wrong).
    """
    args = request.values
    p = parse_args(DATATABLE, args)
    draw, start, length = p["draw"], p["start"], p["length"]
    sort_by = None
    col = p["order[0][column]"]
    if col is not None:  # the column's name is a parameter named by the index
        key = args.get(f"columns[{col}][data]", "")
        if key in SORTABLE:
            desc = p["order[0][dir]"] == "desc"
            sort_by = ("-" if desc else "") + key
    svc = get_state().monitor
    page = svc.query_tasks(
        search=p["search[value]"],
        sort_by=sort_by,
        offset=start,
        limit=10_000 if length == -1 else length,
    )
    total = svc.query_tasks(limit=0).total
    return jsonify(draw=draw, data=page.tasks, recordsTotal=total, recordsFiltered=page.total)


@requires(VIEWER)
def worker(hostname: str) -> Any:
    """One worker's tabs from inspect; 404 unknown worker, 400 bad tab."""
    svc = get_state().monitor
    p = parse_args(WORKER_PAGE, request.args)
    tab = p["tab"]
    w = svc.worker(hostname)
    if w is None:
        raise NotFoundError(f"No worker named {hostname!r} is known.", title="Unknown worker")
    info = svc.inspect(hostname).get(hostname) or {}
    if p["refresh"] or (w.get("status") and "active" not in info):
        info = _refresh(svc, hostname).get(hostname) or info
    return render_template(
        "celerymon/worker.html",
        hostname=hostname,
        w=w,
        info=info,
        tab=tab,
        tabs=WORKER_TABS,
        head=Markup(render_worker_head(hostname) or ""),
        tasks_url=tasks_url,
    )


@requires(VIEWER)
def tasks() -> Any:
    """The task list: filters, search, sort, columns, paging; 400 for a bad parameter."""
    try:
        flt = TaskFilter.from_args(request.args)
        page = get_state().monitor.query_tasks(**flt.service_query())
    except InvalidInput as exc:  # a bad filter or search: the list shows why, with its form
        flt = TaskFilter(search=request.args.get("search", "")[:500])
        return (
            render_template(
                "celerymon/tasks.html", f=flt, page=None, error=str(exc), **_tasks_ctx()
            ),
            400,
        )
    return render_template("celerymon/tasks.html", f=flt, page=page, error=None, **_tasks_ctx())


def _tasks_ctx() -> dict[str, Any]:
    return {
        "columns": TASK_COLUMNS,
        "sortable": SORTABLE,
        "state_buttons": STATE_BUTTONS,
        "ranges": RANGES,
        "page_sizes": PAGE_SIZES,
    }


@requires(VIEWER)
def task(uuid: str) -> Any:
    """One task with its timeline and actions; 404 unknown task."""
    t = get_state().monitor.task(uuid)
    if t is None:
        raise NotFoundError(f"No task with id {uuid!r} is known.", title="Unknown task")
    return render_template("celerymon/task.html", t=t, detail=Markup(render_task_detail(t)))


@requires(VIEWER)
def broker() -> Any:
    """Queues and their lengths; 503 when the broker is unreachable."""
    data = _queues()
    url = get_state().celery_app.connection_for_read().as_uri()
    body = render_template("celerymon/_queues.html", **data)
    return (
        render_template("celerymon/broker.html", body=Markup(body), broker_url=url),
        503 if data["error"] else 200,
    )


def charts_context(args: Any) -> dict[str, Any]:
    """The charts page's template context from its query ``args`` (``window``, ``name``).

    Raises :class:`BadInput` for an unknown window.
    """
    p = parse_args(CHARTS_PAGE, args)
    window = p["window"]
    data = chart_data(window, p["name"])
    return {"window": window, "ranges": RANGES, "tasks_url": tasks_url, **data}


@requires(VIEWER)
def charts() -> Any:
    """Finished tasks per bucket and runtime p50/p95 per task name; 400 bad window."""
    return render_template("celerymon/charts.html", **charts_context(request.args))


def register(bp: Blueprint) -> None:
    """Add the HTML pages and their template context to the monitor blueprint."""
    bp.context_processor(_context)
    bp.add_url_rule("/", "index", index)
    bp.add_url_rule("/workers", "workers", workers)
    bp.add_url_rule("/worker/<hostname>", "worker", worker)
    bp.add_url_rule("/tasks", "tasks", tasks)
    bp.add_url_rule(
        "/tasks/datatable", "tasks_datatable", safe(tasks_datatable), methods=["GET", "POST"]
    )
    bp.add_url_rule("/task/<uuid>", "task", task)
    bp.add_url_rule("/broker", "broker", broker)
    bp.add_url_rule("/charts", "charts", charts)
    bp.add_url_rule("/celerymon-static/<path:filename>", "assets", assets)
