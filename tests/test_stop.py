"""Stopping the local workers lets running tasks finish, says what it waits for, names what it cuts.

Real ``celery worker`` subprocesses on a real Redis; a task (``nap``) is running when the stop
begins.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from flask_celerymon import processes as processes_mod
from tests.apps import local

FAST = {"concurrency": 1, "without_mingle": True, "without_gossip": True, "pool": "prefork"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wait_started(future, timeout=30.0):
    deadline = time.monotonic() + timeout
    while future.state != "STARTED":
        assert time.monotonic() < deadline, f"task {future.id} did not start: {future.state}"
        time.sleep(0.05)


@pytest.fixture
def started(own_redis, tmp_path, request):
    """An app with one local worker, started; ``request.param``: (CELERY_STOP_TIMEOUT, db)."""
    stop_timeout, db = getattr(request, "param", (None, 212))
    env = local.app_env(tmp_path, own_redis.url(db), {"napper": FAST}, stop_timeout=stop_timeout)
    with local.environment(env):
        app = local.create_app()
        procs = app.extensions["celerymon"].processes
        try:
            with app.app_context():
                local.celery.start()
                yield app
        finally:
            procs.stop(timeout=1)


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "flask_celerymon.processes"]


def test_stop_waits_for_the_running_task_and_reports_it_while_waiting(started, caplog, monkeypatch):
    monkeypatch.setattr(processes_mod, "PROGRESS_INTERVAL", 0.5)
    caplog.set_level(logging.INFO, logger="flask_celerymon.processes")
    worker = local.celery.processes["napper"]
    future = local.celery.submit(local.nap, 2)
    _wait_started(future)
    local.celery.stop()  # CELERY_STOP_TIMEOUT: the default, 30 s
    assert not worker.alive()
    assert future.result(timeout=5) == 2  # finished, not cut off
    lines = _messages(caplog)
    assert (
        "stopping: waiting up to 30s (CELERY_STOP_TIMEOUT) for 1 task: "
        f"tests.apps.local:nap[{future.id}] on napper to finish"
    ) in lines
    still = [line for line in lines if line.startswith("stopping: still running (")]
    assert still and still[0].endswith(
        f"left): 1 task: tests.apps.local:nap[{future.id}] on napper"
    )
    assert not [line for line in lines if "cut" in line or "killing" in line]


@pytest.mark.parametrize("started", [(1, 213)], indirect=True)
def test_stop_timeout_kills_and_names_the_task_it_cut_off(started, caplog):
    caplog.set_level(logging.INFO, logger="flask_celerymon.processes")
    worker = local.celery.processes["napper"]
    tree = psutil.Process(worker.pid).children(recursive=True) + [psutil.Process(worker.pid)]
    future = local.celery.submit(local.nap, 60)
    _wait_started(future)
    began = time.monotonic()
    local.celery.stop()  # CELERY_STOP_TIMEOUT = 1
    assert time.monotonic() - began < 1 + 8  # the grace, the active() query, the kill
    psutil.wait_procs(tree, timeout=10)  # killed pool children go a moment after their parent
    assert [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert future.state == "STARTED"  # it never finished
    assert (
        f"worker napper (pid {worker.pid}) did not stop within 1s (CELERY_STOP_TIMEOUT); killing "
        f"it cuts off 1 task: tests.apps.local:nap[{future.id}] on napper"
    ) in _messages(caplog)


def test_ctrl_c_lets_the_running_task_finish_and_a_second_one_kills(own_redis, tmp_path):
    """SIGINT of a process that started local workers: warm stop; a second SIGINT: kill now."""
    script = textwrap.dedent(
        """
        import logging, sys, time
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        from tests.apps import local
        app = local.create_app()
        with app.app_context():
            local.celery.start()
            future = local.celery.submit(local.nap, float(sys.argv[1]))
            while future.state != "STARTED":
                time.sleep(0.05)
            print("STARTED", future.id, flush=True)
            try:
                time.sleep(120)
            except KeyboardInterrupt:
                print("INTERRUPTED", future.state, flush=True)
        """
    )
    for nap, signals, expect in ((2, 1, "SUCCESS"), (60, 2, "STARTED")):
        env = local.app_env(tmp_path / str(nap), own_redis.url(214), {"napper": FAST})
        out = tmp_path / f"out{nap}.log"
        with open(out, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-c", script, str(nap)],
                cwd=ROOT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 60
            while "STARTED" not in out.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
                time.sleep(0.1)
            task_id = out.read_text().split("STARTED ", 1)[1].split()[0]
            proc.send_signal(signal.SIGINT)
            if signals == 2:
                deadline = time.monotonic() + 20
                while "stopping: waiting up to" not in out.read_text():
                    assert time.monotonic() < deadline, out.read_text()
                    time.sleep(0.1)
                proc.send_signal(signal.SIGINT)
            assert proc.wait(40) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = out.read_text()
        assert (
            "stopping: waiting up to 30s (CELERY_STOP_TIMEOUT) for 1 task: "
            f"tests.apps.local:nap[{task_id}] on napper to finish"
        ) in text
        assert f"INTERRUPTED {expect}" in text
        if signals == 2:
            assert "stopping: interrupted again; killing the local processes now" in text
            assert f"cuts off 1 task: tests.apps.local:nap[{task_id}] on napper" in text
        else:
            assert "cuts off" not in text
