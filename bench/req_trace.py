"""Per-request figures of ``/api/tasks`` in the served bench: where a slow answer's time goes.

Imported by ``bench/served_app.py`` when ``BENCH_REQ_TRACE=PATH`` is set. Each request whose
path holds ``/api/tasks`` is appended to ``PATH`` as one JSON line:

* ``t``: wall time at the start of the WSGI call; ``qs``: the query string;
* ``wsgi_ms``: the Flask request's wall time (from ``request_started`` to
  ``request_finished``: the view, the query, JSON), ``wsgi_cpu_ms``: the process's CPU time
  over it (other greenlets included, if they ran);
* ``q_ms`` / ``q_cpu_ms``: the same for ``MonitorService.query_tasks``; ``source``:
  ``window`` or ``store``;
* for the window: ``search_path`` (``kept`` answered from the kept answer and the log,
  ``scan`` a full scan: ``miss`` no kept answer, ``place`` an older task matching only now,
  ``nolog``), ``logged`` (records re-checked), ``new`` (records created since);
* for the store: ``common`` (a common term, walked), ``top`` and ``unindexed`` (rows past the
  text index's watermark), read after the query, ``store_ms`` (its query's wall time: a
  search sample it takes included), ``probe_ms`` (the reading of those three figures, which
  ``q_ms`` and ``wsgi_ms`` include);
* ``gc``: the collections during the request (generation, ms).

Diagnosis only.
"""

from __future__ import annotations

import gc
import json
import time
from typing import Any


def install(path: str, app: Any) -> None:
    out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    cur: list[dict[str, Any] | None] = [None]
    gc_start = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        rec = cur[0]
        if phase == "start":
            gc_start[0] = time.perf_counter()
        elif rec is not None:
            rec.setdefault("gc", []).append(
                (info["generation"], round((time.perf_counter() - gc_start[0]) * 1000, 2))
            )

    gc.callbacks.append(on_gc)

    # The served app is made by the CLI (not ``app``): Flask's signals reach every app.
    from flask import request, request_finished, request_started

    def started(sender: Any, **_: Any) -> None:
        if "/api/tasks" not in request.path:
            return
        cur[0] = {
            "t": round(time.time(), 4),
            "qs": request.query_string.decode(),
            "_t0": time.perf_counter(),
            "_c0": time.process_time(),
        }

    def finished(sender: Any, **_: Any) -> None:
        rec = cur[0]
        if rec is None:
            return
        cur[0] = None
        rec["wsgi_ms"] = round((time.perf_counter() - rec.pop("_t0")) * 1000, 2)
        rec["wsgi_cpu_ms"] = round((time.process_time() - rec.pop("_c0")) * 1000, 2)
        out.write(json.dumps(rec) + "\n")

    request_started.connect(started, weak=False)
    request_finished.connect(finished, weak=False)

    from flask_celerymon.monitor import searchcache, service, sqlite_store

    qt = service.MonitorService.query_tasks

    def query_tasks(self: Any, **kw: Any) -> Any:
        rec = cur[0]
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return qt(self, **kw)
        finally:
            if rec is not None:
                rec["q_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                rec["q_cpu_ms"] = round((time.process_time() - c0) * 1000, 2)

    service.MonitorService.query_tasks = query_tasks  # type: ignore[method-assign]

    sq = sqlite_store.SQLiteStore.query

    def store_query(self: Any, q: Any) -> Any:
        rec = cur[0]
        t0 = time.perf_counter()
        try:
            return sq(self, q)
        finally:
            if rec is not None:
                rec["store_ms"] = round((time.perf_counter() - t0) * 1000, 2)
                rec["total_rows_exact"] = getattr(self._local, "exact", None)
                # probed after the query: before it, is_common took a stale sample outside
                # store_ms (the query's own cost); the probe's time is in q_ms and wsgi_ms
                t1 = time.perf_counter()
                rec["source"] = "store"
                c = self._reader
                top = c.execute("SELECT coalesce(max(id), 0) FROM tasks").fetchone()[0]
                upto = c.execute("SELECT upto FROM fts_state").fetchone()[0]
                rec["top"] = top
                rec["unindexed"] = top - upto
                rec["common"] = bool(q.search is not None and self._sample.is_common(q.search, top))
                rec["probe_ms"] = round((time.perf_counter() - t1) * 1000, 2)

    sqlite_store.SQLiteStore.query = store_query  # type: ignore[method-assign]

    up = searchcache.SearchCache._update
    ans = searchcache.SearchCache.answer

    def update(self: Any, entry: Any, log: Any, window: Any, matcher: Any) -> Any:
        res = up(self, entry, log, window, matcher)
        rec = cur[0]
        if rec is not None:
            rec["logged"] = len(log) - entry.changed_at
            rec["new"] = len(self.created) - entry.created_at
            rec["search_path"] = "kept" if res is not None else "place"
        return res

    def answer(self: Any, key: Any, window: Any, matcher: Any) -> Any:
        rec = cur[0]
        if rec is not None:
            rec["source"] = "window"
            rec["search_path"] = "nolog" if self.log is None else "miss"
        return ans(self, key, window, matcher)

    searchcache.SearchCache._update = update  # type: ignore[method-assign]
    searchcache.SearchCache.answer = answer  # type: ignore[method-assign]
