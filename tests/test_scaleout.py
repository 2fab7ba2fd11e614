"""One ingester per cluster: the app under gunicorn -w 4 with a real Redis and a real worker.

One process ingests (the others consume nothing), all four answer the same task count from
the shared store (SQLite and PostgreSQL), the store holds each task once, and killing the
ingester hands the lease over within the documented bound (``ttl * 4 / 3``). The same with
RabbitMQ as the broker, the lease and the fan-out then in PostgreSQL (``pg_lease.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
import redis

from flask_celerymon.monitor.stores import open_store
from tests.apps import basic
from tests.conftest import WorkerProcess, free_port, run_basic_tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTL = 3.0
#: The lease bound of lease.py, plus the polling step of this test.
HANDOVER_BOUND = TTL * 4 / 3 + 0.5


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.load(resp)


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout} s")


def _answers(port: int, n: int, ok: Any, timeout: float = 60) -> dict[int, dict]:
    """/whoami of ``n`` distinct processes, each one satisfying ``ok``, polled until so."""
    seen: dict[int, dict] = {}

    def poll() -> bool:
        try:
            a = _get(port, "/whoami")
        except OSError:
            return False
        seen[a["pid"]] = a
        return len(seen) >= n and all(ok(x) for x in seen.values())

    _wait(poll, timeout, f"{n} processes answering as expected (seen {seen})")
    return seen


def _gunicorn(env: dict[str, str], port: int, log_path: Any) -> subprocess.Popen:
    """``tests.apps.scaled`` under ``gunicorn -w 4`` on ``port``, its output in ``log_path``
    (stop it with :func:`_stop`)."""
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "4", "--threads", "2", "-b",
             f"127.0.0.1:{port}", "tests.apps.scaled:create_app()"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _cluster(
    env: dict[str, str], tmp_path: Any, hostname: str
) -> tuple[Any, WorkerProcess, int, subprocess.Popen]:
    """A client app on the broker of ``env``, a real worker ``hostname`` (started, not yet
    ready) and the four gunicorn processes: ``(client app, worker, port, server)``."""
    keys = [k for k in ("CELERYMON_TEST_BROKER", "CELERYMON_TEST_BACKEND") if k in env]
    os.environ.update({k: env[k] for k in keys})
    try:
        client_app = basic.create_app()
    finally:
        for k in keys:
            del os.environ[k]
    worker = WorkerProcess("tests.apps.basic:create_app", env["CELERYMON_TEST_BROKER"],
                           hostname, str(tmp_path / "worker.log"), args=("-P", "solo", "-E"),
                           env={k: env[k] for k in keys})  # fmt: skip
    port = free_port()
    return client_app, worker, port, _gunicorn(env, port, tmp_path / "gunicorn.log")


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


class Setup:
    """A cluster's broker, result backend and shared store, and where its lease is read."""

    def __init__(self, broker: str, backend: str | None, db: str, lease_db: bool) -> None:
        self.env = {**os.environ, "CELERYMON_TEST_BROKER": broker, "CELERYMON_TEST_DB": db,
                    "CELERYMON_TEST_LEASE_TTL": str(TTL)}  # fmt: skip
        if backend is not None:
            self.env["CELERYMON_TEST_BACKEND"] = backend
        self.db = db
        self.lease_db = lease_db
        self._redis = None if lease_db else redis.Redis.from_url(broker)

    def holder(self) -> str | None:
        """The id of the ingester lease's holder (``host:pid:random``), or None."""
        if self._redis is not None:
            h = self._redis.get("celerymon:tests.apps.basic:ingester")
            return h.decode() if h else None
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as c:
            row = c.execute(
                "SELECT holder FROM celerymon.celerymon_lease WHERE name = %s AND expires > now()",
                ("tests.apps.basic",),
            ).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


@pytest.fixture(params=["redis-sqlite", "redis-postgresql", "rabbitmq-postgresql"])
def setup(request, redis_url, tmp_path) -> Iterator[Setup]:
    """Redis as the broker with a SQLite or a PostgreSQL store (the lease in Redis), or
    RabbitMQ as the broker with Redis as the result backend and a PostgreSQL store (the lease
    in PostgreSQL)."""
    broker, _, store = request.param.partition("-")
    if store == "postgresql":
        db = request.getfixturevalue("postgres_server").create_database()
    else:
        db = str(tmp_path / "shared.sqlite3")
    if broker == "rabbitmq":
        rabbitmq = request.getfixturevalue("rabbitmq")
        s = Setup(rabbitmq.url(request.getfixturevalue("amqp_vhost")), redis_url, db, True)
    else:
        s = Setup(redis_url, None, db, False)
    yield s
    s.close()


def test_four_processes_share_one_ingester_and_hand_it_over(setup, tmp_path):
    env, shared_db = setup.env, setup.db
    client_app, worker, port, server = _cluster(env, tmp_path, "scaled@test")
    store = None
    try:
        worker.wait_ready(basic.celery.get_app(client_app))
        first = _answers(port, 4, lambda a: a["role"] in ("ingester", "follower"))
        holder = _wait(setup.holder, 30, "a lease holder")
        ingester_pid = int(holder.split(":")[1])
        assert ingester_pid in first

        with client_app.app_context():
            futures = [basic.celery.submit(basic.add, i, i) for i in range(20)]
            assert [f.result(timeout=30) for f in futures] == [2 * i for i in range(20)]

        # every process finds the 20 tasks; only the ingester consumed events
        answers = _answers(port, 4, lambda a: a["tasks"] == 20)
        roles = {pid: a["role"] for pid, a in answers.items()}
        assert sorted(roles.values()) == ["follower"] * (len(roles) - 1) + ["ingester"]
        assert roles[ingester_pid] == "ingester"
        for pid, a in answers.items():
            if pid != ingester_pid:
                assert a["events_received"] == 0, a
        assert answers[ingester_pid]["events_received"] > 0

        store = open_store(shared_db)
        assert store.count() == 20  # each task once
        ids = {f.id for f in futures}
        assert {r["uuid"] for r in store.query(_all())[1]} == ids

        # kill the ingester: a successor holds the lease within the bound...
        os.kill(ingester_pid, signal.SIGKILL)
        killed = time.monotonic()

        def successor() -> str | None:
            h = setup.holder()
            return h if h and h != holder else None

        new_holder = _wait(successor, HANDOVER_BOUND + 5, "a new lease holder")
        handover = time.monotonic() - killed
        assert handover <= HANDOVER_BOUND, handover
        # ...and ingests once connected to the event stream: tasks sent from now on reach the
        # store through it (events published before it connected are the reported gap)
        late: list[Any] = []

        def applied_by_successor() -> bool:
            with client_app.app_context():
                late.append(basic.celery.submit(basic.add, 100, len(late)))
            time.sleep(0.3)
            return any((t := store.get_task(f.id)) and t["state"] == "SUCCESS" for f in late)

        _wait(applied_by_successor, 30, f"the successor {new_holder} writing a new task")
        # once the tasks sent after that are stored (so are the events before them), all
        # four processes (the successor and gunicorn's replacement of the killed one
        # included) answer the store's count
        with client_app.app_context():
            final = [basic.celery.submit(basic.add, 200, i) for i in range(5)]
            assert [f.result(timeout=30) for f in final] == [200 + i for i in range(5)]
        _wait(lambda: all((t := store.get_task(f.id)) and t["state"] == "SUCCESS"
                          for f in final), 30, "the final tasks stored")  # fmt: skip
        stored = store.count()
        _answers(port, 4, lambda a: a["tasks"] == stored)
        print(f"lease handover {handover:.2f} s; first event stored by the successor "
              f"{time.monotonic() - killed:.2f} s after the kill")  # fmt: skip
    finally:
        if store is not None:
            store.close()
        _stop(server)
        worker.stop()
        client_app.extensions["celerymon"].shutdown()


def _all() -> Any:
    from flask_celerymon.monitor.store import TaskQuery

    return TaskQuery(limit=None)


#: Fields of the insight answers that are the time of the request itself.
NOW_FIELDS = ("since", "until")


def _by_process(port: int, path: str, n: int, ok: Any, timeout: float = 60) -> dict[int, Any]:
    """The JSON answer to ``path`` of ``n`` distinct processes (header ``X-Pid``), the last of
    each, polled until every one satisfies ``ok(answers)``."""
    seen: dict[int, Any] = {}

    def poll() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                data = json.load(resp)
                pid = int(resp.headers["X-Pid"])
        except OSError:
            return False
        for k in NOW_FIELDS:
            data.pop(k, None)
        seen[pid] = data
        return len(seen) >= n and ok(seen)

    _wait(poll, timeout, f"{n} processes answering {path} as expected (seen {seen})")
    return seen


@pytest.mark.parametrize("setup", ["redis-postgresql", "rabbitmq-postgresql"], indirect=True)
def test_four_processes_answer_the_same_error_groups_and_alert_once(setup, tmp_path):
    """Insight under gunicorn -w 4 over PostgreSQL (Redis or RabbitMQ as the broker): the
    ingester records a real worker's failures, every process answers the same error groups
    and alerts, and the alert rule configured in all four notifies a real webhook receiver
    exactly once."""
    from tests.web.test_insight_cluster import _Hook

    class Hook(_Hook):
        bodies: list[dict] = []

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = {**setup.env,
           "CELERYMON_TEST_ALERT_WEBHOOK": f"http://127.0.0.1:{hook.server_address[1]}/hook"}  # fmt: skip
    client_app, worker, port, server = _cluster(env, tmp_path, "insight@scaled")
    try:
        worker.wait_ready(basic.celery.get_app(client_app))
        # every process serves the monitor and its insight engine (started by a first request)
        _by_process(port, "/monitor/api/errors", 4, lambda seen: True)
        roles = _answers(port, 4, lambda a: a["role"] in ("ingester", "follower"))
        assert sorted(a["role"] for a in roles.values()) == ["follower"] * 3 + ["ingester"]

        run_basic_tasks(client_app, ok=4, bad=6)

        def same_groups(seen: dict[int, Any]) -> bool:
            answers = list(seen.values())
            groups = answers[0]["groups"]
            return (
                bool(groups)
                and groups[0]["failures"] == 6
                and all(a == answers[0] for a in answers)
            )

        errors = _by_process(port, "/monitor/api/errors", 4, same_groups)
        (group,) = next(iter(errors.values()))["groups"]
        assert (group["exception_type"], group["message"]) == ("ValueError", "order <n> failed")

        def one_alert(seen: dict[int, Any]) -> bool:
            answers = list(seen.values())
            alerts = answers[0]["alerts"]
            return (
                len(alerts) == 1
                and alerts[0]["notifications"] == 1
                and all(a == answers[0] for a in answers)
            )

        _by_process(port, "/monitor/api/alerts", 4, one_alert)
        time.sleep(2.0)  # several evaluations later: nothing sent again, nothing opened twice
        alerts = _by_process(port, "/monitor/api/alerts", 4, one_alert)
        (alert,) = next(iter(alerts.values()))["alerts"]
        assert (alert["status"], alert["rule"]) == ("firing", "failing")
        assert alert["subject"] == "tests.apps.basic:fail"
        assert [b["status"] for b in Hook.bodies] == ["firing"]
    finally:
        _stop(server)
        worker.stop()
        client_app.extensions["celerymon"].shutdown()
        hook.shutdown()
        hook.server_close()
