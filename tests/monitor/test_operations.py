"""The monitor's operations without Flask: worker and task control, queues, the send path.

They run here on a plain Celery app, a :class:`MonitorService` and a real worker on the
session's Redis, exactly as the JSON API calls them, and raise the typed errors the API maps
to its statuses.
"""

from __future__ import annotations

import ast
import json
import pathlib
import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

import flask_celerymon.monitor as monitor_pkg
from flask_celerymon.dispatch import Allowlist
from flask_celerymon.errors import (
    CeleryMonError,
    ConflictError,
    InvalidInput,
    NoReplyError,
    NotFoundError,
    OperationError,
    RefusedError,
    UnavailableError,
)
from flask_celerymon.monitor import MonitorService, MonitorSettings, SearchError
from flask_celerymon.monitor.control import FINISHED, Control, signal_name
from flask_celerymon.monitor.queues import Queues, message_summary
from flask_celerymon.monitor.send import Sender, record_pending

from .conftest import WorkerProcess, wait_for

WORKER = "monworker@test"
#: A queue no worker consumes: messages sent to it wait there.
IDLE = "ops-idle"


@pytest.fixture(scope="module")
def service(
    worker_app: Celery, real_worker: WorkerProcess, tmp_path_factory
) -> Iterator[MonitorService]:
    db = str(tmp_path_factory.mktemp("ops") / "celerymon.sqlite3")
    svc = MonitorService(
        worker_app,
        MonitorSettings(db=db, enable_events_interval=0.3, flush_interval=0.05,
                        inspect_timeout=1.0, queues=(IDLE,)),
    )  # fmt: skip
    assert svc.wait_connected(10)
    wait_for(lambda: svc.worker(WORKER), timeout=15)
    yield svc
    svc.stop()


def test_no_flask_is_needed_by_the_operation_modules():
    """The operation modules import neither Flask nor the package's Flask side."""
    root = pathlib.Path(monitor_pkg.__file__).parent
    for name in ("control", "queues", "send"):
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not {m for m in imported if m.split(".")[0] in ("flask", "werkzeug")}, name
        assert not {m for m in imported if m.lstrip(".").startswith(("web", "extension"))}, name


def test_the_error_hierarchy_is_one_family_with_the_builtins_callers_catch():
    assert issubclass(OperationError, CeleryMonError)
    assert issubclass(InvalidInput, ValueError) and issubclass(SearchError, InvalidInput)
    assert issubclass(RefusedError, PermissionError)
    assert issubclass(NotFoundError, LookupError)
    assert issubclass(ConflictError, RuntimeError)
    assert issubclass(UnavailableError, ConnectionError)
    assert issubclass(NoReplyError, UnavailableError) and issubclass(NoReplyError, TimeoutError)
    err = NotFoundError("Unknown worker 'x'", title="Unknown worker")
    assert (str(err), err.title) == ("Unknown worker 'x'", "Unknown worker")


def test_signal_names_are_normalised_and_unknown_ones_refused():
    assert signal_name(None) == "SIGTERM"
    assert signal_name("kill") == "SIGKILL"
    assert signal_name("SIGINT") == "SIGINT"
    with pytest.raises(InvalidInput, match="signal must be a signal name such as SIGTERM"):
        signal_name("SIGNOPE")


def test_unknown_worker_task_and_task_name_are_not_found(worker_app, service):
    ctl = Control(worker_app, service)
    with pytest.raises(NotFoundError, match="Unknown worker 'ghost@nowhere'"):
        ctl.shutdown("ghost@nowhere")
    with pytest.raises(NotFoundError, match="Unknown worker 'ghost@nowhere'"):
        ctl.add_consumer("ghost@nowhere", "q")
    with pytest.raises(NotFoundError, match="Unknown task 'nope'"):
        ctl.known_task("nope")
    with pytest.raises(NotFoundError, match="Unknown task 'no.such.task'"):
        ctl.rate_limit("no.such.task", WORKER, "1/s")


def test_consumer_and_limits_reach_the_real_worker(worker_app, service):
    ctl = Control(worker_app, service)
    assert "add consumer" in ctl.add_consumer(WORKER, "ops-extra").lower()
    wait_for(
        lambda: any(
            q.get("name") == "ops-extra"
            for q in (worker_app.control.inspect(destination=[WORKER], timeout=1).active_queues()
                      or {}).get(WORKER, [])
        ),
        timeout=10,
    )  # fmt: skip
    assert "no longer consuming" in ctl.cancel_consumer(WORKER, "ops-extra").lower()
    assert "new rate limit set successfully" in ctl.rate_limit("mon.add", WORKER, "100/s")
    assert "time limits set successfully" in ctl.time_limit("mon.add", WORKER, 30.0, 60.0)


def test_a_solo_pool_refuses_to_grow_with_its_reason(worker_app, service):
    ctl = Control(worker_app, service)
    with pytest.raises(RefusedError, match="Failed to grow 'monworker@test' worker's pool: "):
        ctl.pool_resize(WORKER, 1, grow=True)


def test_abort_needs_a_result_backend(worker_app, service):
    with pytest.raises(UnavailableError, match="no result backend is configured; abort needs one"):
        Control(worker_app, service).abort("some-id")


def test_queues_list_purge_and_remove_waiting_messages(worker_app, service):
    queues = Queues(worker_app, service)
    assert IDLE in queues.names() and "celery" in queues.names()
    with pytest.raises(NotFoundError, match="Unknown queue 'nowhere'"):
        queues.purge("nowhere")
    queues.purge(IDLE)
    first = worker_app.send_task("mon.add", (1, 2), queue=IDLE)
    second = worker_app.send_task("mon.add", (3, 4), queue=IDLE)
    listed = queues.messages(IDLE, 10)
    assert [m["task-id"] for m in listed] == [first.id, second.id]  # next to be taken first
    assert listed[0]["name"] == "mon.add" and listed[0]["args"] == "(1, 2)"
    assert {q["name"]: q["messages"] for q in queues.lengths()}[IDLE] == 2
    queues.remove(IDLE, first.id)
    assert [m["task-id"] for m in queues.messages(IDLE, 10)] == [second.id]
    with pytest.raises(NotFoundError, match=f"no message of task '{first.id}' waits"):
        queues.remove(IDLE, first.id)
    assert queues.purge(IDLE) == 1
    assert queues.messages(IDLE, 10) == []


def test_revoke_reaches_the_worker_and_shows_as_requested(worker_app, service):
    ctl = Control(worker_app, service)
    waiting = worker_app.send_task("mon.add", (5, 6), queue=IDLE)
    ctl.revoke([waiting.id], terminate=False, signal=signal_name(None))
    revoked = wait_for(
        lambda: (worker_app.control.inspect(destination=[WORKER], timeout=1).revoked() or {}).get(
            WORKER
        ),
        timeout=10,
    )
    assert waiting.id in revoked
    Queues(worker_app, service).purge(IDLE)


def test_message_summary_skips_what_is_not_a_celery_message():
    assert message_summary(b"not json") is None
    assert message_summary(b"[1, 2]") is None
    raw = json.dumps({"headers": {"id": "t1", "task": "a.b", "argsrepr": "(1,)"},
                      "properties": {"priority": 3}})  # fmt: skip
    assert message_summary(raw) == {"task-id": "t1", "name": "a.b", "args": "(1,)",
                                    "kwargs": None, "eta": None, "expires": None,
                                    "retries": None, "priority": 3}  # fmt: skip


@pytest.fixture
def backend_app(redis_url: str) -> Celery:
    app = Celery("ops_send", broker=redis_url, backend=redis_url)
    app.conf.broker_connection_retry_on_startup = True
    app.conf.result_extended = True  # as the extension sets it: the record keeps the arguments

    @app.task(name="ops.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def _sender(app: Celery) -> Sender:
    from flask_celerymon.dispatch import DISPATCH_TASK_NAME, run_reference

    allowlist = Allowlist(["posixpath"])

    def dispatch(ref: str, args: list, kwargs: dict) -> object:
        return run_reference(allowlist, ref, args, kwargs, app.tasks)

    if DISPATCH_TASK_NAME not in app.tasks:
        app.task(name=DISPATCH_TASK_NAME, shared=False)(dispatch)
    svc = MonitorService(app, MonitorSettings(db=False, queues=(IDLE,)), autostart=False)
    return Sender(app, svc, allowlist, app.tasks[DISPATCH_TASK_NAME])


def test_send_by_name_records_pending_with_the_arguments(backend_app):
    sender = _sender(backend_app)
    result = sender.send("remote.only", [1, "a"], {"k": 2}, {"queue": IDLE})
    meta = backend_app.backend.get_task_meta(result.id)
    assert (meta["status"], meta["name"], meta["args"], meta["kwargs"]) == (
        "PENDING", "remote.only", [1, "a"], {"k": 2},
    )  # fmt: skip
    assert meta["queue"] == IDLE
    # known now, unfinished: no retry, and its id is taken
    with pytest.raises(ConflictError, match="is PENDING, not finished"):
        sender.retry(result.id)
    with pytest.raises(ConflictError, match="is taken by an existing task"):
        sender.check_new_task_id({"task_id": result.id})
    sender.check_new_task_id({"task_id": str(uuid.uuid4())})


def test_send_checks_names_and_arguments_before_sending(backend_app):
    sender = _sender(backend_app)
    with pytest.raises(NotFoundError, match="Unknown task 'not.here'"):
        sender.apply("not.here", [], {}, {})
    with pytest.raises(NotFoundError, match="Unknown task 'evil:thing'"):
        sender.apply("evil:thing", [], {}, {})
    with pytest.raises(InvalidInput, match="the arguments do not fit task 'ops.add'"):
        sender.apply("ops.add", [1], {}, {})
    with pytest.raises(InvalidInput, match="Celery refused to send task 'remote.x'"):
        sender.send("remote.x", [object()], {}, {"serializer": "json"})
    result = sender.apply("posixpath:join", ["a", "b"], {}, {"queue": IDLE})
    waiting = Queues(backend_app, sender.service).messages(IDLE, 10)
    assert [(m["task-id"], m["name"]) for m in waiting] == [(result.id, "posixpath:join")]
    with pytest.raises(NotFoundError, match="Unknown task 'never-sent'"):
        sender.retry("never-sent")


def test_record_pending_skips_backends_that_cannot_store_a_state(backend_app):
    assert record_pending(None, "t", "n", [], {}) is False
    rpc = Celery("rpc", broker="memory://", backend="rpc://")
    assert record_pending(rpc.backend, "t", "n", [], {}) is False
    assert record_pending(backend_app.backend, "t-ok", "n", (1,), None, queue="q") is True
    assert backend_app.backend.get_task_meta("t-ok")["args"] == [1]


def test_record_pending_raises_unavailable_for_a_dead_backend():
    dead = Celery("dead", broker="memory://", backend="redis://127.0.0.1:1/0")
    dead.conf.redis_socket_connect_timeout = 0.2
    dead.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 0}}
    with pytest.raises(UnavailableError, match="did not answer while recording task t"):
        record_pending(dead.backend, "t", "n", [], {})


def test_finished_states_are_the_ready_ones_and_the_monitors():
    assert {"SUCCESS", "FAILURE", "REVOKED", "REJECTED", "IGNORED", "LOST"} == FINISHED
