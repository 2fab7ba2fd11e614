"""Diagnosis only (bench): memory figures of the served bench app (``BENCH_MEMSTATS=path``).

Write a JSON object of args to ``path.req``; the serving process answers in ``path.json``: the glibc heap per arena (``malloc_info``: bytes the arena holds from the
system, bytes free in it), CPython's small-object allocator (``sys._debugmallocstats``:
arenas, bytes in used and free blocks), SQLite's own heap (``sqlite_mb``: MB in use and
high-water), the history store's connections (``store_conns``: all, idle), the insight
queue's length at each of its flushes (``insight_flushes``: monotonic time, items), the
object counts of the largest types, the service's self-figures, and the RSS
(``/proc/self/status``). ``{"trim": "1"}`` calls
``malloc_trim(0)`` and reports the RSS before and after it (how much the heap could give back
at that moment); ``{"gc": "1"}`` runs a full collection first. Never part of the product.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

from flask import Flask


def _rss_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def _malloc_info(libc: Any) -> dict[str, Any]:
    fd, path = tempfile.mkstemp(prefix="memstats-")
    os.close(fd)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    with open(path) as fh:
        xml = fh.read()
    os.unlink(path)
    heaps = []
    for m in re.finditer(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S):
        body = m.group(2)
        free = sum(
            int(x)
            for x in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"', body)
        )
        cur = re.search(r'<system type="current" size="(\d+)"', body)
        heaps.append(
            {
                "nr": int(m.group(1)),
                "system_mb": round(int(cur.group(1)) / 2**20, 1) if cur else None,
                "free_mb": round(free / 2**20, 1),
            }
        )
    tail = xml.rsplit("</heap>", 1)[-1]
    totals = {
        k: round(int(v) / 2**20, 1)
        for k, v in re.findall(
            r'<(?:total|system) type="([a-z]+)"(?: count="\d+")? size="(\d+)"', tail
        )
    }
    return {"heaps": heaps, "totals_mb": totals}


def _pymalloc() -> dict[str, Any]:
    fd, path = tempfile.mkstemp(prefix="pymalloc-")
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    with open(path) as fh:
        text = fh.read()
    os.unlink(path)
    out: dict[str, Any] = {}
    for key in (
        "arenas allocated current",
        "arenas allocated total",
        "arenas reclaimed",
        "arenas highwater mark",
        "bytes in allocated blocks",
        "bytes in available blocks",
        "unused pools",
        "bytes lost to pool headers",
        "bytes lost to quantization",
        "bytes lost to arena alignment",
        "Total",
    ):
        m = re.search(r"# " + re.escape(key) + r"\s*=\s*([\d,]+)", text) or re.search(
            re.escape(key) + r"\s*=\s*([\d,]+)", text
        )
        if m:
            out[key] = int(m.group(1).replace(",", ""))
    return out


def _sqlite_mem() -> dict[str, Any]:
    """SQLite's own heap (the library Python's ``sqlite3`` is linked to): bytes in use now and
    at the high-water mark, the page caches' share (``sqlite3_status64``: MEMORY_USED 0,
    PAGECACHE_OVERFLOW 2, the page caches' memory when no PAGECACHE buffer is set)."""
    lib = ctypes.CDLL("libsqlite3.so.0")
    out: dict[str, Any] = {}
    cur, hi = ctypes.c_int64(), ctypes.c_int64()
    for name, op in (("memory_used", 0), ("pagecache_overflow", 2), ("malloc_count", 9)):
        if lib.sqlite3_status64(op, ctypes.byref(cur), ctypes.byref(hi), 0) == 0:
            div = 1 if name == "malloc_count" else 2**20
            out[name] = (round(cur.value / div, 2), round(hi.value / div, 2))
    return out


def report(args: dict[str, str]) -> dict[str, Any]:
    """The figures described in the module docstring; ``args``: ``trim``, ``gc``, ``types``."""
    libc = ctypes.CDLL("libc.so.6")
    res: dict[str, Any] = {}
    if args.get("gc"):
        res["gc_collected"] = gc.collect()
    res["rss_kb"] = _rss_kb()
    if args.get("trim"):
        libc.malloc_trim(0)
        res["rss_after_trim_kb"] = _rss_kb()
    res["malloc"] = _malloc_info(libc)
    res["pymalloc"] = _pymalloc()
    res["sqlite_mb"] = _sqlite_mem()
    if args.get("types"):
        c = Counter(type(o).__name__ for o in gc.get_objects())
        res["types"] = c.most_common(15)
    for ref in list(_SERVICES):
        svc = ref()
        if svc is not None and svc.running:
            f = svc.figures()
            store = getattr(svc, "_store", None)
            if store is not None and hasattr(store, "_all"):
                res["store_conns"] = {"all": len(store._all), "idle": len(store._idle)}
            res["figures"] = {k: f.get(k) for k in (
                "events_received", "events_applied", "backlog_bytes", "store_pending", "flushes",
                "indexed", "tasks", "evicted")}  # fmt: skip
    for ref in list(_INSIGHTS):
        ins = ref()
        if ins is not None:
            res["insight_pending"] = ins.figures()["pending"]
    res["trims"] = list(_TRIMS)
    res["insight_flushes"] = [f for f in _INSIGHT_FLUSHES if f[1]]
    return res


_SERVICES: list[Any] = []
_INSIGHTS: list[Any] = []
#: monotonic times of the malloc_trim calls (the event consumer's and the housekeeping's)
_TRIMS: list[float] = []
#: (monotonic time, events pending) at each call of Insight.flush
_INSIGHT_FLUSHES: list[tuple[float, int]] = []


def _serve(base: str) -> None:
    """Poll for ``base.req`` (a JSON object of args), answer in ``base.json``."""
    while True:
        req = base + ".req"
        if os.path.exists(req):
            with open(req) as fh:
                args = json.load(fh)
            os.unlink(req)
            try:
                out = report(args)
            except Exception as exc:  # noqa: BLE001 - diagnosis: say why
                import traceback

                out = {"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}
            with open(base + ".tmp", "w") as fh:
                json.dump(out, fh)
            os.replace(base + ".tmp", base + ".json")
        time.sleep(0.05)


def install(app: Flask, base: str) -> None:
    """Record the monitor services made from now on, and answer requests at ``base`` in the
    serving process (started with the first service started there)."""
    import weakref

    from flask_celerymon.monitor.service import MonitorService

    init = MonitorService.__init__

    def recording_init(self: Any, *a: Any, **kw: Any) -> None:
        init(self, *a, **kw)
        _SERVICES.append(weakref.ref(self))

    MonitorService.__init__ = recording_init  # type: ignore[method-assign]

    from flask_celerymon.monitor import events
    from flask_celerymon.monitor.insight.engine import Insight

    iinit = Insight.__init__

    def recording_iinit(self: Any, *a: Any, **kw: Any) -> None:
        iinit(self, *a, **kw)
        _INSIGHTS.append(weakref.ref(self))

    Insight.__init__ = recording_iinit  # type: ignore[method-assign]
    iflush = Insight.flush

    def recording_iflush(self: Any) -> int:
        _INSIGHT_FLUSHES.append((round(time.monotonic(), 2), len(self._pending)))
        del _INSIGHT_FLUSHES[:-400]
        return int(iflush(self))

    Insight.flush = recording_iflush  # type: ignore[method-assign]
    release = events._release_memory

    def counted_release() -> None:
        _TRIMS.append(time.monotonic())
        release()

    events._release_memory = counted_release
    start = MonitorService.start
    started: set[int] = set()

    def start_and_serve(self: Any, *a: Any, **kw: Any) -> Any:
        if os.getpid() not in started:  # once in the serving process
            started.add(os.getpid())
            threading.Thread(target=_serve, args=(base,), daemon=True).start()
        return start(self, *a, **kw)

    MonitorService.start = start_and_serve  # type: ignore[method-assign]
