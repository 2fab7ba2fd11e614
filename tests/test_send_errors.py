"""A broker or result backend that does not answer: a clear error, fast, and no traceback logged.

The matrix: every call of the public API that reaches the network (submit, map, get, status,
inspect, control and the Future methods) against a port where nothing listens (refused) and a
port that accepts connections but never answers (silent), in production mode.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest
from flask import Flask

from flask_celerymon import Celery, ConnectionFailed, Future, SubmitConnectionError, SubmitError
from tests.apps import basic
from tests.conftest import free_port

SEND_TIMEOUT = 1.0
#: what the bound may overrun by on a loaded machine (one connect attempt, scheduling)
SLACK = 1.5


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections (in the kernel's backlog) and never answers."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        yield srv.getsockname()[1]


@pytest.fixture(params=["refused", "silent"])
def dead_url(request):
    port = free_port() if request.param == "refused" else request.getfixturevalue("silent_port")
    return f"redis://:s3cret@127.0.0.1:{port}/0"


def production_app(**config):
    app = Flask("tests.apps.basic")
    app.config.update(
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=False,
        CELERY_SEND_TIMEOUT=SEND_TIMEOUT,
        **config,
    )
    ext = Celery(app)
    return app, ext


def _no_traceback_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


CALLS = {
    "submit()": lambda ext: ext.submit(basic.add, 1, 2),
    "map()": lambda ext: ext.map(basic.add, [1, 2], [3, 4]),
    "get()": lambda ext: ext.get("0f6c1c0e-0000-0000-0000-000000000000"),
    "status()": lambda ext: ext.status(timeout=0.5),
    "celery.inspect.ping()": lambda ext: ext.inspect.ping(timeout=0.5),
    "celery.control.ping()": lambda ext: ext.control.ping(timeout=0.5),
}
PART = {"get()": "result backend", "status()": "broker"}


@pytest.mark.parametrize("call", list(CALLS))
def test_every_network_call_fails_fast_naming_the_masked_url(call, dead_url, caplog):
    caplog.set_level(logging.DEBUG)
    app, ext = production_app(CELERY_BROKER_URL=dead_url)
    shown = dead_url.replace("s3cret", "**")
    with app.app_context():
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            CALLS[call](ext)
        elapsed = time.monotonic() - started
    assert elapsed < SEND_TIMEOUT + SLACK, elapsed
    text = str(info.value)
    # the send writes the PENDING record first: the backend (here the same server) fails first
    part = PART.get(call, "result backend" if call in ("submit()", "map()") else "broker")
    key = "CELERY_RESULT_BACKEND" if part == "result backend" else "CELERY_BROKER_URL"
    assert text.startswith(
        f"{call} could not reach the {part} at {shown} within 1 s (CELERY_SEND_TIMEOUT): "
    ), text
    assert text.endswith(
        f"; check that the server is running and reachable from this host, and that {key} names it"
    )
    assert "s3cret" not in text
    assert isinstance(info.value, ConnectionError)
    if call in ("submit()", "map()"):
        assert isinstance(info.value, SubmitConnectionError) and isinstance(info.value, SubmitError)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert _no_traceback_logged(caplog) == []


def test_a_dead_broker_behind_a_working_result_backend_is_named(dead_url, redis_url, caplog):
    caplog.set_level(logging.DEBUG)
    dead = dead_url.replace("s3cret", "**")
    app, ext = production_app(CELERY_BROKER_URL=dead_url, CELERY_RESULT_BACKEND=redis_url)
    with app.app_context():
        started = time.monotonic()
        with pytest.raises(SubmitConnectionError) as info:
            ext.submit(basic.add, 1, 2)
        assert time.monotonic() - started < SEND_TIMEOUT + SLACK
    assert str(info.value).startswith(
        f"submit() could not reach the broker at {dead} within 1 s (CELERY_SEND_TIMEOUT): "
    )
    assert "CELERY_BROKER_URL names it" in str(info.value)
    assert _no_traceback_logged(caplog) == []


FUTURE_CALLS = {
    "state": lambda f: f.state,
    "info": lambda f: f.info,
    "done": lambda f: f.done(),
    "running": lambda f: f.running(),
    "cancelled": lambda f: f.cancelled(),
    "cancel": lambda f: f.cancel(),
    "result": lambda f: f.result(timeout=5),
    "exception": lambda f: f.exception(timeout=5),
}


@pytest.mark.parametrize("method", list(FUTURE_CALLS))
def test_every_future_method_names_a_backend_that_does_not_answer(method, dead_url, caplog):
    caplog.set_level(logging.DEBUG)
    app, ext = production_app(CELERY_BROKER_URL=dead_url)
    future = Future(ext.get_app(app).AsyncResult("0f6c1c0e-0000-0000-0000-000000000000"))
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        FUTURE_CALLS[method](future)
    assert time.monotonic() - started < SEND_TIMEOUT + SLACK
    assert str(info.value).startswith(
        f"Future.{method}() could not reach the result backend at "
        f"{dead_url.replace('s3cret', '**')} within 1 s (CELERY_SEND_TIMEOUT): "
    )
    assert _no_traceback_logged(caplog) == []


def test_arguments_are_checked_before_the_first_network_call(redis_url, caplog):
    """submit(add, 1, object()): a SubmitError at once, nothing written, nothing logged."""
    import redis

    caplog.set_level(logging.DEBUG)
    app = basic.create_app(CELERY_BROKER_URL=redis_url)
    ext = basic.celery
    client = redis.Redis.from_url(redis_url)
    with app.app_context():
        for send in (
            lambda: ext.submit(basic.add, 1, object()),
            lambda: ext.submit(basic.add, 1, y={1, 2}),
            lambda: ext.map(basic.add, [1, 2], [3, object()]),
            lambda: ext.submit(basic.registered, object()),  # a registered task, too
        ):
            started = time.monotonic()
            with pytest.raises(SubmitError) as info:
                send()
            assert time.monotonic() - started < 0.5
            assert "cannot be serialised as JSON" in str(info.value)
            assert not isinstance(info.value, ConnectionError)
    assert client.dbsize() == 0  # no PENDING record, no message
    assert _no_traceback_logged(caplog) == []
    client.close()


def test_submit_to_a_live_broker_still_works_with_the_bounded_settings(redis_url):
    app, ext = production_app(CELERY_BROKER_URL=redis_url)
    conf = ext.get_app(app).conf
    assert conf.redis_socket_connect_timeout == 0.5 and conf.redis_socket_timeout == 0.5
    assert conf.result_backend_transport_options["retry_policy"]["timeout"] == SEND_TIMEOUT
    assert conf.broker_transport_options == {
        "socket_connect_timeout": 0.5,
        "socket_timeout": 1,
        "connect_retries_timeout": 0.25,
        "interval_start": 0,
        "interval_step": 0.125,
        "interval_max": 0.25,
    }
    with app.app_context():
        future = ext.submit(basic.add, 1, 2)
        assert future.state == "PENDING"  # recorded, waiting for a worker


def test_settings_the_app_gives_win_over_the_bounded_defaults():
    app, ext = production_app(
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CELERY_REDIS_SOCKET_TIMEOUT=30,
        CELERY_BROKER_TRANSPORT_OPTIONS={"socket_timeout": 9},
        CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS={"retry_policy": {"max_retries": 20}},
    )
    conf = ext.get_app(app).conf
    assert conf.redis_socket_timeout == 30
    assert conf.broker_transport_options["socket_timeout"] == 9
    assert conf.broker_transport_options["socket_connect_timeout"] == 0.5
    assert conf.result_backend_transport_options == {"retry_policy": {"max_retries": 20}}


def test_control_ping_with_a_live_broker_and_no_worker_answers_empty(redis_url):
    app, ext = production_app(CELERY_BROKER_URL=redis_url)
    with app.app_context():
        assert ext.control.ping(timeout=0.2) == {}
        assert ext.inspect.ping(timeout=0.2) == {}
        assert ext.status(timeout=0.2) == {}


def test_delay_of_a_registered_task_names_the_result_backend(dead_url, caplog):
    """Celery's own API (``delay``) gets the same clear error for the PENDING record."""
    caplog.set_level(logging.DEBUG)
    app = basic.create_app(CELERY_BROKER_URL=dead_url, CELERY_SEND_TIMEOUT=SEND_TIMEOUT)
    with app.app_context():
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            basic.registered.delay(2)
        assert time.monotonic() - started < SEND_TIMEOUT + SLACK
    assert str(info.value).startswith(
        "apply_async() could not reach the result backend at "
        f"{dead_url.replace('s3cret', '**')} within 1 s (CELERY_SEND_TIMEOUT): "
    )
    assert _no_traceback_logged(caplog) == []


def test_arguments_are_checked_with_the_configured_serializer():
    import threading

    app, ext = production_app(CELERY_BROKER_URL="memory://", CELERY_ALLOW_PICKLE=True)
    with app.app_context(), pytest.raises(SubmitError) as info:
        ext.submit(basic.add, 1, threading.Lock())
    assert str(info.value).startswith(
        "the arguments of tests.apps.basic:add cannot be serialised with pickle ("
    )


def _remote_methods():
    """Every public method of Celery's Inspect and Control, as celery.inspect/control offer it."""
    import inspect as pyinspect

    from celery.app.control import Control, Inspect

    from flask_celerymon.extension import _NOT_COMMANDS

    out = []
    for kind, cls in (("inspect", Inspect), ("control", Control)):
        for name, fn in sorted(vars(cls).items()):
            if name.startswith("_") or not callable(fn) or name in _NOT_COMMANDS:
                continue
            params = list(pyinspect.signature(fn).parameters.values())[1:]
            required = [
                p
                for p in params
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            out.append(pytest.param(kind, name, ["x"] * len(required), id=f"{kind}.{name}"))
    return out


@pytest.mark.parametrize(("kind", "method", "args"), _remote_methods())
def test_every_remote_control_call_names_a_broker_that_does_not_answer(kind, method, args, caplog):
    """The kind, generated from Celery's own classes: no remote call escapes as a raw error."""
    caplog.set_level(logging.DEBUG)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app, ext = production_app(CELERY_BROKER_URL=dead, CELERY_RESULT_BACKEND="cache+memory://")
    with app.app_context():
        call = getattr(getattr(ext, kind), method)
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as info:
            call(*args, timeout=0.2)
        assert time.monotonic() - started < SEND_TIMEOUT + SLACK
    assert str(info.value).startswith(
        f"celery.{kind}.{method}() could not reach the broker at {dead} within 1 s"
    )
    assert _no_traceback_logged(caplog) == []


def test_every_public_future_member_is_covered_by_the_dead_backend_matrix():
    """A new Future method that reads the backend must join FUTURE_CALLS (or be pure)."""
    pure = {"id", "name", "async_result", "status", "add_done_callback"}
    public = {n for n in vars(Future) if not n.startswith("_")}
    assert public - pure == set(FUTURE_CALLS)


def test_the_result_watcher_logs_one_line_per_backend_outage(caplog):
    """Nobody receives the watcher's errors, so it logs them: once, without a traceback."""
    from flask_celerymon.futures import ResultWatcher

    caplog.set_level(logging.DEBUG, logger="flask_celerymon.futures")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app, ext = production_app(CELERY_BROKER_URL=dead)
    celery_app = ext.get_app(app)
    watcher = ResultWatcher(celery_app)
    polls = []
    fetch = watcher._fetch

    def counting_fetch(ids):
        polls.append(ids)
        return fetch(ids)

    watcher._fetch = counting_fetch
    try:
        future = Future(celery_app.AsyncResult("0f6c1c0e-0000-0000-0000-000000000000"), watcher)
        future.add_done_callback(lambda f: None)
        deadline = time.monotonic() + 20
        while len(polls) < 3:  # three failed polls, one second apart
            assert time.monotonic() < deadline, polls
            time.sleep(0.05)
    finally:
        watcher.stop()
    records = [r for r in caplog.records if r.name == "flask_celerymon.futures"]
    assert [r.getMessage() for r in records] == [
        "polling the result backend for 1 futures failed (Error 111 connecting to "
        f"{dead[len('redis://') : -2]}. Connection refused.); retrying every second"
    ]
    assert not records[0].exc_info
