"""Who holds the gevent hub, and for how long: a greenlet switch tracer for the served bench.

Imported by ``bench/served_app.py`` when ``BENCH_HUB_TRACE=PATH`` is set. Every greenlet
switch is timed; a stretch a greenlet ran without switching longer than
``BENCH_HUB_TRACE_MS`` (default 2 ms) is appended to ``PATH`` as one JSON line:
``{"t": wall time, "ms": stretch, "where": the innermost flask_celerymon/gunicorn frames}``.
Diagnosis only (the tracer costs a call per switch).
"""

from __future__ import annotations

import json
import os
import sys
import time


def install(path: str) -> None:
    import greenlet

    threshold = float(os.environ.get("BENCH_HUB_TRACE_MS", "2")) / 1000
    out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    last = [time.perf_counter()]
    clock = time.perf_counter

    def where(f) -> list[str]:  # the frame the greenlet that ran yielded in
        names = []
        while f is not None and len(names) < 6:
            fn = f.f_code.co_filename
            if "flask_celerymon" in fn or "gunicorn" in fn or "flask/" in fn:
                names.append(f"{os.path.basename(fn)}:{f.f_code.co_name}:{f.f_lineno}")
            f = f.f_back
        return names

    def trace(event: str, args: tuple) -> None:
        now = clock()
        ran = now - last[0]
        last[0] = now
        if ran > threshold and event in ("switch", "throw"):
            origin = args[0]
            name = getattr(origin, "name", None) or type(origin).__name__
            rec = {
                "t": round(time.time(), 4),
                "ms": round(ran * 1000, 2),
                "g": str(name)[:40],
                "where": where(getattr(origin, "gr_frame", None) or sys._getframe()),
            }
            out.write(json.dumps(rec) + "\n")
            last[0] = clock()

    greenlet.settrace(trace)


def time_housekeeping(path: str) -> None:
    """Log each housekeeping step (flush, index, prune, ...) longer than 1 ms to ``path``."""
    import functools

    from flask_celerymon.monitor.housekeeping import Housekeeping

    out = open(path, "a", buffering=1)  # noqa: SIM115

    def wrap(name: str) -> None:
        fn = getattr(Housekeeping, name)

        @functools.wraps(fn)
        def timed(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                ms = (time.perf_counter() - t0) * 1000
                if ms > 1:
                    out.write(
                        json.dumps(
                            {
                                "t": round(time.time(), 4),
                                "step": name,
                                "ms": round(ms, 2),
                                "args": [str(x) for x in a],
                            }
                        )
                        + "\n"
                    )

        setattr(Housekeeping, name, timed)

    for name in (
        "_flush",
        "_index",
        "prune",
        "_mark_lost",
        "_purge_offline",
        "reconcile",
        "_enable_events",
    ):
        wrap(name)
