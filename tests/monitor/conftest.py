"""Fixtures of the monitor tests: Celery apps on the session Redis, services, a real worker."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings
from tests.conftest import WorkerProcess

# Logical databases 200-249 are left to the module-scoped fixtures below.
_module_dbs = itertools.count(200)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    msg: Callable[[], Any] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout (with
    ``msg()`` in the message, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = "" if msg is None else f": {msg()}"
            pytest.fail(f"condition not met within {timeout} s: {predicate}{extra}")
        time.sleep(interval)


@pytest.fixture
def celery_app(redis_url: str) -> Celery:
    app = Celery("monitor_test", broker=redis_url)
    app.conf.broker_connection_retry_on_startup = True
    return app


@pytest.fixture
def make_service(tmp_path: Any) -> Iterator[Callable[..., MonitorService]]:
    """Build services that are stopped after the test: make_service(app, **settings)."""
    made: list[MonitorService] = []

    def make(app: Celery, db: Any = "default", **kw: Any) -> MonitorService:
        if db == "default":
            db = str(tmp_path / "celerymon.sqlite3")
        kw.setdefault("enable_events_interval", 0.5)
        kw.setdefault("flush_interval", 0.05)
        kw.setdefault("inspect_timeout", 0.3)
        svc = MonitorService(app, MonitorSettings(db=db, **kw))
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()


def service_pair(
    make_service: Callable[..., MonitorService], broker: str, db: str, name: str = "pair"
) -> tuple[MonitorService, MonitorService]:
    """Two started services of Celery app ``name`` on ``broker`` sharing the history ``db``
    with ``single_ingester`` (lease TTL 0.6 s, no ``enable_events``): ``(ingester,
    follower)`` once one holds the lease."""
    svcs = [
        make_service(
            Celery(name, broker=broker),
            db=db,
            single_ingester=True,
            lease_ttl=0.6,
            enable_events=False,
        )  # fmt: skip
        for _ in range(2)
    ]
    for s in svcs:
        s.start()
    wait_for(lambda: sorted(s.role for s in svcs) == ["follower", "ingester"], timeout=10)
    ingester = next(s for s in svcs if s.role == "ingester")
    follower = next(s for s in svcs if s.role == "follower")
    return ingester, follower


def monitor_worker(broker_url: str, hostname: str, logfile: str, events: bool) -> WorkerProcess:
    """A real ``celery worker`` (solo pool) for tests.monitor.worker_app."""
    args = ("-P", "solo", "--heartbeat-interval", "1", *(("-E",) if events else ()))
    return WorkerProcess(
        None, broker_url, hostname, logfile, args=args, celery_app="tests.monitor.worker_app",
        env={"CELERYMON_MONITOR_TEST_BROKER": broker_url}, loglevel="warning",
    )  # fmt: skip


@pytest.fixture(scope="module")
def module_broker(redis_server: Any) -> str:
    """A Redis URL on a logical database private to the test module."""
    if redis_server.proc is None:
        redis_server.start()
    return redis_server.url(next(_module_dbs))


@pytest.fixture(scope="module")
def worker_app(module_broker: str) -> Celery:
    from tests.monitor.worker_app import app

    app.conf.broker_url = module_broker
    # The app is one object for every module: drop what an earlier module made for its own
    # broker, or control and inspect calls still go there: the connection pool, the producer
    # pool (app.amqp) and the control mailbox that keeps it (app.amqp and app.control are
    # cached properties; popping them makes the next access build new ones)
    app.close()
    app.__dict__.pop("control", None)
    app.__dict__.pop("amqp", None)
    return app


@pytest.fixture(scope="module")
def real_worker(
    module_broker: str, worker_app: Celery, tmp_path_factory: Any
) -> Iterator[WorkerProcess]:
    """A real worker started WITHOUT -E: the service has to switch its events on."""
    logfile = str(tmp_path_factory.mktemp("worker") / "worker.log")
    w = monitor_worker(module_broker, "monworker@test", logfile, events=False)
    try:
        w.wait_ready(worker_app)
        yield w
    finally:
        w.stop()


def task_events(n: int, start: float = 1_700_000_000.0) -> list[dict[str, Any]]:
    """Events of ``n`` tasks with varied names, args, kwargs, results and states."""
    names = ["app.add", "app.fail_customer", "app.user_id_check"]
    events: list[dict[str, Any]] = []
    for i in range(n):
        uuid = f"{i:08x}-0000-4000-8000-000000000000"
        ts = start + i
        host = f"w-{i % 3}@host"
        events.append({"type": "task-received", "uuid": uuid, "hostname": host, "timestamp": ts,
                       "name": names[i % 3], "args": f"({i}, 'customer-{i % 7}')",
                       "kwargs": f"{{'user_id': {i % 10}, 'tag': '{'xy'[i % 2]}'}}",
                       "root_id": uuid, "parent_id": None, "retries": 0})  # fmt: skip
        if i % 5 == 4:
            continue  # stays RECEIVED
        events.append({"type": "task-started", "uuid": uuid, "hostname": host,
                       "timestamp": ts + 0.1})  # fmt: skip
        if i % 4 == 3:
            events.append({"type": "task-failed", "uuid": uuid, "hostname": host,
                           "timestamp": ts + 0.2, "exception": "ValueError('abc')",
                           "traceback": "Traceback..."})  # fmt: skip
        else:
            events.append({"type": "task-succeeded", "uuid": uuid, "hostname": host,
                           "timestamp": ts + 0.3, "result": f"{{'ok'}}: {i}",
                           "runtime": (i * 37 % 101) / 1000})  # fmt: skip
    return events


#: The history stores every store test runs against.
STORE_KINDS = ("sqlite", "postgresql")


def store_target(request: pytest.FixtureRequest, folder: Any) -> str:
    """A ``CELERY_MONITOR_DB`` value for the store kind in ``request.param``: a SQLite file in
    ``folder`` or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_server").create_database()
    return str(folder / "celerymon.sqlite3")


@pytest.fixture(params=STORE_KINDS)
def store_db(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty history store of each kind, as a ``CELERY_MONITOR_DB`` value."""
    return store_target(request, tmp_path)


@pytest.fixture(scope="module", params=STORE_KINDS)
def populated(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[MonitorService]:
    """A started service (in-memory broker) holding 120 tasks in its window and its store,
    once per store kind."""
    app = Celery("populated", broker="memory://")
    db = store_target(request, tmp_path_factory.mktemp("populated"))
    # task_events are decades old: without a long retention the housekeeping thread prunes
    # them all 5 s after the start (the module's tests failed when slower than that)
    settings = MonitorSettings(
        db=db, enable_events=False, inspect_timeout=0.2, retention_days=100_000
    )
    svc = MonitorService(app, settings)
    svc.start()
    svc.apply_events(task_events(120))
    svc.flush()
    store = svc._store
    assert store is not None
    store.index_pending(60)  # half indexed for search, half scanned
    yield svc
    svc.stop()
