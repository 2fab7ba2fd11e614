"""p95 of task list / filter / search at a million stored tasks, from a process that does not
ingest, with the store idle and while an ingester writes.

    python bench/store_scale.py --db /tmp/cm-1m.sqlite3
    python bench/store_scale.py --db postgresql://postgres@127.0.0.1:5432/bench

``--db`` is a SQLite path or a PostgreSQL URL (as ``CELERY_MONITOR_DB``). An empty store is
filled with ``--tasks`` synthetic finished tasks (the rows of ``bench/store_queries.py``) in
one transaction: ``COPY`` for PostgreSQL, one ``executemany`` for SQLite, then the search
index is built and the tables analysed; ``--refill`` empties it first.

Then a reader process (a :class:`MonitorService` following the store: it never consumes
events) runs every query of :data:`QUERIES` ``--repeat`` times through ``query_tasks`` (the
path the API and pages take) and prints one JSON line per query with p50/p95 in ms, first
with the store idle, then while an ingester process writes ``--ingest-rate`` tasks/s the way
the service's flusher does (a batch every 0.5 s; each task written twice, received then
finished, so the rows change under the reader) and, for SQLite, indexes them for search in
between. The ingester's achieved rate is printed at the end.

``--http`` measures the same queries over HTTP instead (phase ``http``, store idle): a private
redis-server (broker and ingester lease) and two ``gunicorn -w 1`` servers of
``bench/store_scale_app.py`` on the store, the first started holding the lease (the ingester),
the second a follower (it consumes no events; as one worker of ``gunicorn -w 4``). Each query
is sent ``--repeat`` times to the follower as ``GET /monitor/api/tasks`` (a new connection
each, as gunicorn's sync workers close it), and p50/p95 are of the whole request: parsing,
the store's query, and the JSON answer of ``limit`` tasks.

``--plans`` (with ``--http``, SQLite) then prints ``EXPLAIN QUERY PLAN`` of each statement
the store runs for ``customer-12`` and ``kwargs:user_id=42`` from a fresh reader (phase
``plan``): the same list in every run means their figures moved with the machine, not with a
plan flip.

The store is cached: ``--db`` defaults to ``$TMPDIR/celerymon-store-scale/tasks-<N>.sqlite3``
(filled on the first run, about a minute for a million tasks, reused after).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid as uuidlib
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from store_queries import QUERIES as BASE_QUERIES  # noqa: E402
from store_queries import rows  # noqa: E402

from flask_celerymon.monitor.model import TASK_COLUMNS  # noqa: E402
from flask_celerymon.monitor.stores import POSTGRES_SCHEMES, open_store  # noqa: E402

#: (label, query_tasks keyword arguments): store_queries' list plus each search qualifier.
QUERIES: list[tuple[str, dict[str, Any]]] = [
    *BASE_QUERIES,
    ("search text rare", {"search": "PaymentDeclined(100339)", "limit": 100}),
    ("search state:", {"search": "state:failure", "limit": 100}),
    ("search args:", {"search": "args:customer-5", "limit": 100}),
    ("search kwargs: substring", {"search": "kwargs:\"'priority': 2\"", "limit": 100}),
    ("search result:", {"search": "result:\"'order': 5\"", "limit": 100}),
    ("search name: + state:", {"search": "name:payments state:failure", "limit": 100}),
]


def _copy_text(v: Any) -> str:
    if v is None:
        return "\\N"
    s = v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def fill(db: str, n: int) -> float:
    """Write ``n`` tasks in one transaction; returns seconds (including index and analyse)."""
    store = open_store(db)
    t0 = time.perf_counter()
    start = time.time() - n * 0.01
    hist = TASK_COLUMNS.index("history")
    names: set[str] = set()
    workers: set[str] = set()
    if db.startswith(POSTGRES_SCHEMES):
        cols = ", ".join(TASK_COLUMNS)
        with store._pool.connection() as c, c.transaction(), c.cursor() as cur:  # type: ignore[attr-defined]
            with cur.copy(f"COPY tasks ({cols}) FROM STDIN") as cp:
                buf = io.StringIO()
                for i, r in enumerate(rows(n, start)):
                    r = list(r)
                    r[hist] = json.dumps(list(r[hist]))
                    names.add(r[1])
                    workers.add(r[3])
                    buf.write("\t".join(_copy_text(v) for v in r) + "\n")
                    if i % 20_000 == 19_999:
                        cp.write(buf.getvalue())
                        buf = io.StringIO()
                cp.write(buf.getvalue())
            cur.executemany("INSERT INTO task_names VALUES (%s) ON CONFLICT DO NOTHING",
                            [(x,) for x in names])  # fmt: skip
            cur.executemany("INSERT INTO task_workers VALUES (%s) ON CONFLICT DO NOTHING",
                            [(x,) for x in workers])  # fmt: skip
        with store._pool.connection() as c:  # type: ignore[attr-defined]
            c.execute("VACUUM ANALYZE tasks")
    else:
        from flask_celerymon.monitor import sqlite_store

        c = store._writer  # type: ignore[attr-defined]
        c.execute("BEGIN IMMEDIATE")
        prepared = []
        for r in rows(n, start):
            r = list(r)
            r[hist] = json.dumps(list(r[hist]))
            names.add(r[1])
            workers.add(r[3])
            prepared.append(r)
        c.executemany(sqlite_store._UPSERT, prepared)
        c.executemany("INSERT OR IGNORE INTO task_names VALUES (?)", [(x,) for x in names])
        c.executemany("INSERT OR IGNORE INTO task_workers VALUES (?)", [(x,) for x in workers])
        c.execute("COMMIT")
        while store.index_pending(200_000):
            pass
        c.execute("ANALYZE")
    store.close()
    return time.perf_counter() - t0


def ingest(db: str, rate: float, stop: Any, out: Any) -> None:
    """Write ``rate`` new tasks/s in 0.5 s batches (received, then finished a batch later)."""
    store = open_store(db)
    rnd = random.Random(11)
    base = list(next(rows(1, time.time())))
    pending: list[list[Any]] = []
    written = 0
    t0 = time.monotonic()
    i = 0
    while not stop.is_set():
        tick = time.monotonic()
        now = time.time()
        batch = []
        for r in pending:  # finish the last batch's tasks
            r[2] = "SUCCESS"
            r[6] = now
            r[7] = now + 0.01
            r[12] = now + 0.01
            r[13] = 0.01
            r[16] = "{'status': 'ok'}"
            batch.append(tuple(r))
        pending = []
        for _ in range(int(rate * 0.5)):
            i += 1
            r = list(base)
            r[0] = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4))
            r[2] = "RECEIVED"
            r[5] = r[12] = now
            r[6] = r[7] = r[8] = r[13] = r[16] = None
            r[14] = f"({i}, 'fresh-{i % 977}')"
            r[-1] = ("RECEIVED", now)
            pending.append(r)
            batch.append(tuple(r))
        store.write_tasks(batch)
        store.index_pending(20_000)
        written += len(batch)
        time.sleep(max(0.0, 0.5 - (time.monotonic() - tick)))
    out.put(written / (time.monotonic() - t0))
    store.close()


def read(db: str, repeat: int, range_start: float, out: Any) -> None:
    """Run the queries from a service that follows the store (consumes no events)."""
    from celery import Celery

    from flask_celerymon.monitor import MonitorService, MonitorSettings

    settings = MonitorSettings(db=db, retention_tasks=10**9, retention_days=10**5)
    svc = MonitorService(Celery(broker="memory://"), settings, autostart=False)
    svc._store = open_store(db)  # noqa: SLF001 - a reader: the store, no event consumer
    svc._following = True  # noqa: SLF001
    for label, kw in QUERIES:
        kw = {k: (range_start if v == "RANGE_START" else v) for k, v in kw.items()}
        ts = []
        page = None
        for _ in range(repeat):
            t = time.perf_counter()
            page = svc.query_tasks(**kw)
            ts.append((time.perf_counter() - t) * 1000)
        first = ts[0]
        ts.sort()
        assert page is not None
        out.put({"query": label, "total": page.total, "exact": page.exact,
                 "first_ms": round(first, 1), "p50_ms": round(statistics.median(ts), 1),
                 "p95_ms": round(ts[int(0.95 * (len(ts) - 1))], 1)})  # fmt: skip
    svc._store.close()  # noqa: SLF001
    out.put(None)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: query_tasks keyword -> GET /api/tasks parameter (Flower's names)
API_PARAMS = {"state": "state", "name": "taskname", "worker": "workername"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, timeout: float = 60) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return json.load(r)


def _wait_role(port: int, proc: subprocess.Popen, seconds: float = 180) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server on port {port} exited ({proc.returncode})")
        try:
            return _get(port, "/whoami", timeout=120)
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the server on port {port} did not answer in {seconds:.0f} s")


def read_http(db: str, repeat: int, range_start: float) -> list[dict[str, Any]]:
    """Run :data:`QUERIES` over HTTP against a follower (see the module docstring); one dict
    per query (as :func:`read`'s, ``total`` being the number of tasks answered)."""
    work = tempfile.mkdtemp(prefix="cm-store-scale-")
    rport = _port()
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(rport), "--save", "",
         "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "CELERYMON_TEST_BROKER": f"redis://127.0.0.1:{rport}/0",
           "CELERYMON_TEST_DB": db, "PYTHONPATH": REPO}  # fmt: skip
    servers: list[subprocess.Popen] = []
    out: list[dict[str, Any]] = []
    try:
        ports = []
        for expected in ("ingester", "follower"):
            port = _port()
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}",
                 "--timeout", "300", "bench.store_scale_app:create_app()"],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            who = _wait_role(port, servers[-1])
            deadline = time.monotonic() + 30
            while who["role"] != expected and time.monotonic() < deadline:
                time.sleep(0.2)  # the lease is taken by the first one's service
                who = _get(port, "/whoami")
            if who["role"] != expected:
                sys.exit(f"the server on port {port} is {who['role']}, not {expected}")
            ports.append(port)
        port = ports[1]
        for label, kw in QUERIES:
            params = {API_PARAMS.get(k, k): (range_start if v == "RANGE_START" else v)
                      for k, v in kw.items()}  # fmt: skip
            path = "/monitor/api/tasks?" + urllib.parse.urlencode(params)
            ts = []
            answer: Any = None
            for _ in range(repeat):
                t = time.perf_counter()
                answer = _get(port, path)
                ts.append((time.perf_counter() - t) * 1000)
            first = ts[0]
            ts.sort()
            out.append({"query": label, "answered": len(answer), "first_ms": round(first, 1),
                        "p50_ms": round(statistics.median(ts), 1),
                        "p95_ms": round(ts[int(0.95 * (len(ts) - 1))], 1)})  # fmt: skip
        who = _get(port, "/whoami")
        if who["role"] != "follower":
            sys.exit("the measured server became the ingester during the run")
    finally:
        for proc in reversed(servers):
            proc.terminate()
            proc.wait(30)
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return out


def sqlite_plans(db: str, labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """SQLite's ``EXPLAIN QUERY PLAN`` of every statement the store runs for the queries of
    :data:`QUERIES` labelled ``labels``, as a fresh reader (its own search sample, as a new
    process has) runs them: one dict per query, ``plan`` a list of ``statement head ::
    plan rows`` strings, to compare between runs (a plan flip shows as a different list)."""
    from flask_celerymon.monitor.model import TaskQuery
    from flask_celerymon.monitor.query import parse

    store = open_store(db)
    out = []
    try:
        for label, kw in QUERIES:
            if label not in labels:
                continue
            q = TaskQuery(search=parse(kw["search"]), limit=kw.get("limit", 100))
            store.query(q)  # the sample taken
            c = store._reader  # type: ignore[attr-defined]
            stmts: list[str] = []
            c.set_trace_callback(stmts.append)
            try:
                store.query(q)
            finally:
                c.set_trace_callback(None)
            plan = [
                st.split(" WHERE")[0][:60] + " :: "
                + " / ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + st))
                for st in stmts
                if st.startswith(("SELECT count", "SELECT id FROM", "INSERT INTO temp"))
            ]  # fmt: skip
            out.append({"query": label, "plan": plan})
    finally:
        store.close()
    return out


def _is_empty(db: str, refill: bool) -> bool:
    store = open_store(db)
    empty = store.is_empty()
    if refill and not empty:
        if db.startswith(POSTGRES_SCHEMES):
            with store._pool.connection() as c:  # type: ignore[attr-defined]
                c.execute("TRUNCATE tasks, task_names, task_workers")
        else:
            store.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(db + suffix):
                    os.remove(db + suffix)
            return True
        empty = True
    store.close()
    return empty


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default=None, help="default: a SQLite file cached under $TMPDIR")
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--http", action="store_true", help="over HTTP from a follower (store idle)")
    p.add_argument("--refill", action="store_true")
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--ingest-rate", type=float, default=2000, help="tasks/s while reading")
    p.add_argument("--only", choices=("idle", "ingest"), default=None)
    p.add_argument("--plans", action="store_true",
                   help="with --http on SQLite: print EXPLAIN QUERY PLAN of the text searches")  # fmt: skip
    a = p.parse_args()
    if a.db is None:
        cache = os.path.join(tempfile.gettempdir(), "celerymon-store-scale")
        os.makedirs(cache, exist_ok=True)
        a.db = os.path.join(cache, f"tasks-{a.tasks}.sqlite3")
    kind = "postgresql" if a.db.startswith(POSTGRES_SCHEMES) else "sqlite"
    if _is_empty(a.db, a.refill):
        secs = fill(a.db, a.tasks)
        print(json.dumps({"store": kind, "filled": a.tasks, "seconds": round(secs, 1),
                          "rows_per_s": round(a.tasks / secs)}), flush=True)  # fmt: skip
    range_start = time.time() - a.tasks * 0.01 / 2
    if a.http:
        for r in read_http(a.db, a.repeat, range_start):
            print(json.dumps({"store": kind, "phase": "http", **r}), flush=True)
        if kind == "sqlite" and a.plans:
            for r in sqlite_plans(a.db, ("search customer-12", "search kwargs:user_id=42")):
                print(json.dumps({"store": kind, "phase": "plan", **r}), flush=True)
        print(json.dumps({"load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)
        return
    ctx = multiprocessing.get_context("spawn")
    for phase in ("idle", "ingest"):
        if a.only and phase != a.only:
            continue
        out = ctx.Queue()
        stop = ctx.Event()
        writer = None
        if phase == "ingest":
            writer = ctx.Process(target=ingest, args=(a.db, a.ingest_rate, stop, out), daemon=True)
            writer.start()
            time.sleep(2)
        reader = ctx.Process(target=read, args=(a.db, a.repeat, range_start, out))
        reader.start()
        while True:
            try:
                r = out.get(timeout=5)
            except queue.Empty:
                if not reader.is_alive():
                    sys.exit(f"the reader failed (exit code {reader.exitcode})")
                continue
            if r is None:
                break
            print(json.dumps({"store": kind, "phase": phase, **r}), flush=True)
        reader.join()
        if writer is not None:
            stop.set()
            rate = out.get()
            writer.join()
            print(json.dumps({"store": kind, "ingested_tasks_per_s": round(rate)}), flush=True)


if __name__ == "__main__":
    main()
