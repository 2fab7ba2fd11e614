"""Local worker processes: lazy start on first submit, readiness, queues, logs, clean stop.

Every test here runs real ``celery worker`` subprocesses; every fixture stops them in teardown.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from flask_celerymon import StartError
from flask_celerymon.launch import import_target
from flask_celerymon.processes import ROLE_ENV, node_name, worker_args
from tests.apps import local
from tests.conftest import free_port

HOST = socket.gethostname()
FAST = {"concurrency": 1, "without_mingle": True, "without_gossip": True}
WORKERS = {
    "alpha": {**FAST, "pool": "prefork"},
    "beta": {**FAST, "pool": "solo", "queues": ["high-priority"]},
}


def _descendants(pids: list[int]) -> list[psutil.Process]:
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found.append(proc)
            found.extend(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    return found


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def cluster(own_redis, tmp_path_factory):
    """An app with two local workers started lazily by its first submit.

    The submit runs in a thread that ends at once, as a request thread does: the workers must
    outlive it (their parent-death signal is tied to the thread that started them).
    """
    env = local.app_env(tmp_path_factory.mktemp("proc"), own_redis.url(210), WORKERS)
    with local.environment(env):
        app = local.create_app()
        state = app.extensions["celerymon"]
        sent: list = []

        def request() -> None:
            with app.app_context():
                sent.append(local.celery.submit(local.add, 1, 2))

        try:
            thread = threading.Thread(target=request)
            thread.start()
            thread.join(60)
            first = sent[0]
            yield app, first
        finally:
            state.processes.stop(timeout=5)
            sent.clear()
            first = None
            gc.collect()  # results unsubscribe while the session's Redis is still up


def test_first_submit_starts_every_configured_worker_and_waits_for_all(cluster):
    app, first = cluster
    assert first.result(timeout=10) == 3
    with app.app_context():
        assert local.celery.status() == {f"alpha@{HOST}": "OK", f"beta@{HOST}": "OK"}
        procs = local.celery.processes
    assert sorted(procs) == ["alpha", "beta"]
    assert {p.status for p in procs.values()} == {"running"}


def test_worker_output_goes_to_a_log_file_per_worker_under_the_instance_folder(cluster):
    app, _ = cluster
    with app.app_context():
        procs = local.celery.processes
    log_dir = os.path.join(app.instance_path, "celery", "logs")
    for name, proc in procs.items():
        assert proc.log_path == os.path.join(log_dir, f"{name}.log")
        with open(proc.log_path, encoding="utf-8") as fh:
            assert f"{name}@{HOST} ready." in fh.read()


def test_workers_started_from_a_request_thread_outlive_it(cluster):
    app, _ = cluster
    time.sleep(0.5)
    with app.app_context():
        assert all(p.alive() for p in local.celery.processes.values())
        assert local.celery.status() == {f"alpha@{HOST}": "OK", f"beta@{HOST}": "OK"}


def test_queues_named_in_worker_options_are_declared_for_every_worker(cluster):
    app, _ = cluster
    with app.app_context():
        replies = local.celery.inspect.active_queues()
    assert {node: sorted(q["name"] for q in queues) for node, queues in replies.items()} == {
        f"alpha@{HOST}": ["celery", "high-priority"],  # no queues option: every queue
        f"beta@{HOST}": ["high-priority"],
    }


def test_submit_to_a_queue_reaches_only_the_workers_that_consume_it(cluster):
    app, _ = cluster
    with app.app_context():
        futures = [local.celery.submit(local.hostname, queue="celery") for _ in range(4)]
        assert [f.result(timeout=10) for f in futures] == [f"alpha@{HOST}"] * 4
        futures = [local.celery.submit(local.hostname, queue="high-priority") for _ in range(4)]
        assert {f.result(timeout=10) for f in futures} <= {f"alpha@{HOST}", f"beta@{HOST}"}


def test_submit_inside_a_worker_starts_no_local_processes(cluster):
    app, _ = cluster
    with app.app_context():
        assert local.celery.submit(local.local_process_count).result(timeout=10) == 0


def test_a_worker_already_running_under_the_same_name_is_not_started_twice(cluster):
    app, _ = cluster
    other = local.create_app()  # same config, its own LocalProcesses
    try:
        other.extensions["celerymon"].processes.start()
        procs = other.extensions["celerymon"].processes.processes
        assert {name: (p.status, p.pid) for name, p in procs.items()} == {
            "alpha": ("external", None),
            "beta": ("external", None),
        }
    finally:
        other.extensions["celerymon"].processes.stop()


def test_stop_ends_every_worker_and_its_pool_processes(own_redis, tmp_path):
    env = local.app_env(tmp_path, own_redis.url(211), {"solo1": {**FAST, "pool": "prefork"}})
    with local.environment(env):
        app = local.create_app()
        procs = app.extensions["celerymon"].processes
        try:
            with app.app_context():
                local.celery.start()
                tree = _descendants([p.pid for p in local.celery.processes.values()])
                assert len(tree) == 2  # the worker and its one pool process
                local.celery.stop(timeout=5)
                assert local.celery.processes == {}
            assert _alive(tree) == []
        finally:
            procs.stop(timeout=1)


def test_start_timeout_names_the_late_workers_and_their_logs(own_redis, tmp_path):
    env = local.app_env(tmp_path, own_redis.url(212), {"late": FAST}, start_timeout=0.3)
    with local.environment(env):
        app = local.create_app()
        procs = app.extensions["celerymon"].processes
        try:
            with pytest.raises(StartError) as err:
                procs.start()
            log = os.path.join(tmp_path, "celery", "logs", "late.log")
            assert str(err.value) == (
                "local Celery processes did not come up within 0.3s (CELERY_START_TIMEOUT): "
                f"late (log: {log})"
            )
            assert procs.processes == {}  # what did start was stopped again
        finally:
            procs.stop(timeout=1)


def test_a_worker_that_exits_while_starting_fails_fast_naming_its_log(own_redis, tmp_path):
    env = local.app_env(tmp_path, own_redis.url(213), {"broken": {"pool": "nonsense"}})
    with local.environment(env):
        app = local.create_app()
        procs = app.extensions["celerymon"].processes
        try:
            t0 = time.monotonic()
            with pytest.raises(StartError) as err:
                procs.start()
            assert time.monotonic() - t0 < 20
            log = os.path.join(tmp_path, "celery", "logs", "broken.log")
            assert str(err.value) == f"worker broken exited with code 2; see {log}"
            with open(log, encoding="utf-8") as fh:
                assert "Invalid value for '-P' / '--pool'" in fh.read()
        finally:
            procs.stop(timeout=1)


def test_start_with_an_unreachable_broker_names_it_with_the_password_masked(tmp_path):
    env = local.app_env(tmp_path, "redis://:s3cret@127.0.0.1:1/0")
    with local.environment(env):
        app = local.create_app()
    with pytest.raises(StartError) as err:
        app.extensions["celerymon"].processes.start()
    assert str(err.value) == (
        "cannot connect to the broker at redis://:**@127.0.0.1:1/0: "
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    )


def test_local_processes_are_not_started_in_a_process_started_by_us(tmp_path, monkeypatch):
    monkeypatch.setenv(ROLE_ENV, "worker")
    with local.environment(local.app_env(tmp_path, "redis://127.0.0.1:1/0")):
        app = local.create_app()
    state = app.extensions["celerymon"]
    state.processes.start()
    assert state.processes.started is True
    assert state.processes.processes == {}


def test_worker_options_become_celery_worker_flags():
    from flask_celerymon.config import WorkerSpec

    spec = WorkerSpec("foo", {
        "concurrency": 10, "loglevel": "error", "pidfile": "/run/%n.pid",
        "queues": ["low-priority", "high-priority"], "without_gossip": True,
        "without_mingle": False, "autoscale": [10, 3],
    })  # fmt: skip
    assert worker_args(spec, "info") == [
        "-n", "foo@%h", "--loglevel=info", "--concurrency=10", "--loglevel=error",
        "--pidfile=/run/%n.pid", "--queues=low-priority,high-priority", "--without-gossip",
        "--autoscale=10,3",
    ]  # fmt: skip
    assert node_name("foo") == f"foo@{HOST}"
    assert node_name("bar@box") == "bar@box"


def test_import_target_prefers_config_then_flask_app_then_import_name(tmp_path, monkeypatch):
    with local.environment(local.app_env(tmp_path, "redis://127.0.0.1:1/0")):
        app = local.create_app()
    monkeypatch.delenv("FLASK_APP", raising=False)
    assert import_target(app) == "tests.apps.local"
    monkeypatch.setenv("FLASK_APP", "tests.apps.local:create_app()")
    assert import_target(app) == "tests.apps.local:create_app()"
    assert import_target(app, "other:make()") == "other:make()"


def test_import_target_reads_flask_app_option_from_the_command_line():
    from flask_celerymon.launch import _flask_app_from_argv

    assert _flask_app_from_argv(["/venv/bin/flask", "--app", "shop:create_app()", "run"]) == (
        "shop:create_app()"
    )
    assert _flask_app_from_argv(["/venv/bin/flask", "-e", ".env", "-A", "shop", "run"]) == "shop"
    assert _flask_app_from_argv(["/x/flask/__main__.py", "--app=shop.wsgi", "run"]) == "shop.wsgi"
    assert _flask_app_from_argv(["/venv/bin/flask", "run", "--app", "late"]) is None
    assert _flask_app_from_argv(["/venv/bin/gunicorn", "--app", "shop"]) is None


def test_a_taken_monitor_port_means_the_monitor_is_already_running(own_redis, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = local.app_env(tmp_path, own_redis.url(214), 0, monitor_port=port)
        with local.environment(env):
            app = local.create_app()
        procs = app.extensions["celerymon"].processes
        try:
            procs.start()
            monitor = procs.processes["monitor"]
            assert (monitor.status, monitor.pid, monitor.detail) == (
                "external",
                None,
                f"port 127.0.0.1:{port} is taken; not started",
            )
        finally:
            procs.stop()


@pytest.mark.parametrize(("blueprint", "planned"), [(True, []), (False, ["monitor"])])
def test_no_standalone_monitor_is_started_for_an_app_that_mounts_the_blueprint(
    tmp_path, blueprint, planned
):
    from flask import Flask

    from flask_celerymon import Celery

    app = Flask("shop", instance_path=str(tmp_path))
    app.config.update(
        CELERY_BROKER_URL="redis://127.0.0.1:1/0", CELERY_WORKERS=0,
        CELERY_MONITOR=True, CELERY_MONITOR_BLUEPRINT=blueprint,
    )  # fmt: skip
    Celery(app)
    procs = app.extensions["celerymon"].processes
    assert procs.monitor_mounted is blueprint
    assert [p.name for p in procs._plan()] == planned


def test_a_monitor_that_fails_to_start_is_a_warning_not_an_error(
    own_redis, tmp_path, monkeypatch, caplog
):
    from flask_celerymon.processes import LocalProcesses, ManagedProcess

    env = local.app_env(tmp_path, own_redis.url(215), 0, monitor_port=free_port())
    with local.environment(env):
        app = local.create_app()
    procs = app.extensions["celerymon"].processes
    log = os.path.join(tmp_path, "monitor.log")
    broken = ManagedProcess(
        "monitor", "monitor", [sys.executable, "-c", "raise SystemExit(3)"], log
    )
    monkeypatch.setattr(LocalProcesses, "_plan", lambda self: [broken])
    try:
        procs.start()
        assert (broken.status, broken.detail) == ("failed", "exited with code 3")
        assert f"monitor exited with code 3; see {log}" in caplog.messages
        assert procs.started is True
    finally:
        procs.stop()


PARENT = textwrap.dedent("""
    import json, sys, time
    import psutil
    from tests.apps import local
    app = local.create_app()
    with app.app_context():
        local.celery.start()
    me = psutil.Process()
    print(json.dumps([p.pid for p in me.children(recursive=True)]), flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)
    time.sleep(60)
""")


@pytest.mark.parametrize("ending", ["exit", "SIGTERM", "SIGINT", "SIGKILL"])
def test_no_child_outlives_the_parent(ending, tmp_path):
    """Workers, their pool processes and the embedded broker all end with the web process."""
    env = {**os.environ, **local.app_env(tmp_path, None, {"w": {**FAST, "pool": "prefork"}})}
    env.pop("FLASK_APP", None)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, "exit" if ending == "exit" else "wait"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        pids = json.loads(line)
        children = [psutil.Process(p) for p in pids]
        # the embedded broker, the worker and its pool process
        assert len(children) == 3, line
        if ending != "exit":
            parent.send_signal(getattr(signal, ending))
        parent.wait(20)
        deadline = time.monotonic() + 15
        while _alive(children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(children) == []
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()  # type: ignore[union-attr]
        for child in _alive(children):
            child.kill()


def test_a_second_start_on_the_same_instance_finds_beat_running_and_starts_no_second_one(
    own_redis, tmp_path
):
    from flask_celerymon.processes import beat_pidfile, running_pid

    env = local.app_env(tmp_path, own_redis.url(231), {}, beat=True)
    with local.environment(env):
        first, second = local.create_app(), local.create_app()
    one, two = (a.extensions["celerymon"].processes for a in (first, second))
    pidfile = beat_pidfile(one.plan().beat_schedule_file)
    try:
        with local.environment(env):
            one.start()
            beat = one.processes["beat"]
            deadline = time.monotonic() + 30
            while running_pid(pidfile) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert running_pid(pidfile) is not None, beat.log_path
            two.start()
            again = two.processes["beat"]
            assert again.popen is None
            assert (again.status, again.detail) == (
                "external",
                f"already running (pid {running_pid(pidfile)}); not started",
            )
            # `flask celery beat` on the same instance is refused too, in one line
            result = second.test_cli_runner().invoke(args=["celery", "beat"])
            assert result.exit_code == 1
            assert result.output == (
                f"Error: beat already runs on {one.plan().beat_schedule_file} (pid "
                f"{running_pid(pidfile)}); a second one would send every periodic task twice\n"
            )
    finally:
        two.stop(timeout=5)
        one.stop(timeout=5)
    assert beat.returncode is not None
    assert running_pid(pidfile) is None  # gone with its beat: the next start starts one
