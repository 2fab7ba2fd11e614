"""The Flask app ``bench/served_monitor.py`` serves with ``flask celery monitor``.

Everything on, as a user runs it: the SQLite history store (with its search index), metrics,
the live feed. Settings travel in environment variables: ``BENCH_BROKER_URL``, ``BENCH_DB``
(the store's file), ``BENCH_MAX_TASKS`` and ``BENCH_EVENT_BACKLOG_MB`` (optional);
``BENCH_MEMSTATS=path`` adds the diagnosis of :mod:`bench.memstats`.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_celerymon import Celery

celery = Celery()


def create_app() -> Flask:
    env = os.environ
    app = Flask(__name__, instance_path=os.path.dirname(env["BENCH_DB"]))
    app.config.update(
        CELERY_BROKER_URL=env["BENCH_BROKER_URL"],
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR=True,
        CELERY_MONITOR_BLUEPRINT=False,
        CELERY_MONITOR_DB=env["BENCH_DB"],
        CELERY_MONITOR_MAX_TASKS=int(env.get("BENCH_MAX_TASKS", "100000")),
    )
    if env.get("BENCH_EVENT_BACKLOG_MB"):  # the read-ahead bound, when a run tries another
        app.config["CELERY_MONITOR_EVENT_BACKLOG_MB"] = int(env["BENCH_EVENT_BACKLOG_MB"])
    celery.init_app(app)
    if env.get("BENCH_HUB_TRACE"):  # diagnosis: who holds the gevent hub (bench/hub_trace.py)
        from bench.hub_trace import install, time_housekeeping

        install(env["BENCH_HUB_TRACE"])
        time_housekeeping(env["BENCH_HUB_TRACE"] + ".steps")
    if env.get("BENCH_REQ_TRACE"):  # diagnosis: per-request figures (bench/req_trace.py)
        from bench.req_trace import install as trace_requests

        trace_requests(env["BENCH_REQ_TRACE"], app)
    if env.get("BENCH_MEMSTATS"):  # diagnosis: where the process's memory is (bench/rss_probe.py)
        from bench.memstats import install as install_memstats

        install_memstats(app, env["BENCH_MEMSTATS"])
    return app
