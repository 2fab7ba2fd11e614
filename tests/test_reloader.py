"""``celery.start()`` in an app factory under ``flask run --debug`` (Werkzeug's reloader).

The watcher process starts nothing; the serving child owns the workers, stops them when it exits
for a reload, and the next child's workers run the new code. Checked with a real ``flask run
--debug`` subprocess, a real worker and a real code change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import click
import psutil
import pytest
from flask.cli import run_command

from flask_celerymon.launch import reloader_watcher
from tests.conftest import free_port

APP = """
import os

from flask import Flask

from flask_celerymon import Celery

VERSION = {version}
celery = Celery()


def version():
    return VERSION


def create_app():
    app = Flask(__name__, instance_path=os.environ["RELOADAPP_INSTANCE"])
    app.config.update(
        CELERY_BROKER_URL=os.environ["RELOADAPP_BROKER"],
        CELERY_WORKERS={{"reloadw": {{"pool": "solo", "without_mingle": True,
                                    "without_gossip": True}}}},
        CELERY_MONITOR=False,
        CELERY_MONITOR_BLUEPRINT=False,
        CELERY_SCHEDULER=False,
    )
    celery.init_app(app)
    with app.app_context():
        celery.start()  # in the factory, as the issue reports

    @app.get("/version")
    def show_version():
        return {{"code": VERSION, "worker": celery.submit(version).result(timeout=20),
                "pid": os.getpid()}}

    return app
"""


def _write_app(path, version: int) -> None:
    path.write_text(textwrap.dedent(APP.format(version=version)))
    later = time.time() + 2 * version  # the stat reloader compares modification times
    os.utime(path, (later, later))


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=25) as reply:
            return json.loads(reply.read())
    except OSError:
        return None


def _wait_for(url: str, code: int, proc: subprocess.Popen, log, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"flask run exited with {proc.returncode}: {log.read_text()[-3000:]}")
        answer = _get(url)
        if answer is not None and answer["code"] == code:
            return answer
        time.sleep(0.2)
    pytest.fail(f"no answer with code {code} from {url}: {log.read_text()[-3000:]}")


def _workers(root: psutil.Process) -> list[psutil.Process]:
    """The ``celery worker`` main processes below ``root`` (not their pool children)."""
    found = []
    for proc in root.children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "celery" in cmd and "worker" in cmd:
            parent = proc.parent()
            if parent is None or "worker" not in parent.cmdline():
                found.append(proc)
    return found


def test_flask_run_debug_starts_workers_in_the_serving_child_and_restarts_them_on_reload(
    own_redis, tmp_path
):
    source = tmp_path / "reloadapp.py"
    _write_app(source, 1)
    port = free_port()
    log = tmp_path / "flask-run.log"
    env = {
        **os.environ,
        "RELOADAPP_BROKER": own_redis.url(216),
        "RELOADAPP_INSTANCE": str(tmp_path / "instance"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
    }
    for key in ("FLASK_APP", "FLASK_DEBUG", "WERKZEUG_RUN_MAIN", "FLASK_CELERYMON_ROLE"):
        env.pop(key, None)
    command = [sys.executable, "-m", "flask", "--app", "reloadapp:create_app", "run", "--debug",
               "--port", str(port)]  # fmt: skip
    with open(log, "wb") as out:
        watcher = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    seen: list[psutil.Process] = []
    try:
        watcher_ps = psutil.Process(watcher.pid)
        url = f"http://127.0.0.1:{port}/version"
        first = _wait_for(url, 1, watcher, log)
        assert first["worker"] == 1
        assert first["pid"] != watcher.pid  # served by the reloader's child
        workers = _workers(watcher_ps)
        seen += workers
        assert len(workers) == 1, [w.cmdline() for w in workers]
        assert workers[0].parent().pid == first["pid"]  # not the watcher's
        assert all("celery" not in c.cmdline() for c in watcher_ps.children())

        _write_app(source, 2)
        second = _wait_for(url, 2, watcher, log)
        assert second["pid"] != first["pid"]
        assert second["worker"] == 2  # the new worker runs the new code
        assert not workers[0].is_running()  # the old worker went with the old child
        now = _workers(watcher_ps)
        seen += now
        assert len(now) == 1 and now[0].parent().pid == second["pid"]
    finally:
        seen += watcher_ps.children(recursive=True) if watcher.poll() is None else []
        os.killpg(watcher.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            watcher.wait(30)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
        deadline = time.monotonic() + 20
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in seen):
            if time.monotonic() > deadline:
                for p in seen:
                    if p.is_running():
                        p.kill()
                pytest.fail("a process of flask run outlived it")
            time.sleep(0.1)


@pytest.mark.parametrize(
    ("reload", "debug", "run_main", "watcher"),
    [
        (None, "1", None, True),  # flask run --debug
        (True, "0", None, True),  # flask run --reload
        (None, "0", None, False),  # flask run: no reloader, one process
        (False, "1", None, False),  # flask run --debug --no-reload
        (None, "1", "true", False),  # the reloader's serving child
    ],
)
def test_reloader_watcher_is_the_flask_run_process_that_serves_nothing(
    monkeypatch, reload, debug, run_main, watcher
):
    monkeypatch.setenv("FLASK_DEBUG", debug)
    if run_main is None:
        monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    else:
        monkeypatch.setenv("WERKZEUG_RUN_MAIN", run_main)
    with click.Context(run_command) as ctx:
        ctx.params = {"reload": reload}
        assert reloader_watcher() is watcher


def test_reloader_watcher_is_false_outside_flask_run(monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    assert reloader_watcher() is False
    with click.Context(click.Command("shell")) as ctx:
        ctx.params = {"reload": True}
        assert reloader_watcher() is False
