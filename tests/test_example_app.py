"""README command 1: ``python -m example_app`` serves the app with its workers, beat and monitor.

Ctrl-C while a task runs lets it finish (warm shutdown) and says so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest

from flask_celerymon.monitor.settings import DB_FILENAME
from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_example_app_runs_tasks_on_the_embedded_broker_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("FLASK_APP", "CELERY_BROKER_URL")}
    env["EXAMPLE_APP_INSTANCE"] = str(tmp_path)
    log = tmp_path / "example.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "example_app", "--port", str(port)],
            cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while "Running on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert f"open {base}/  (monitor: {base}/monitor/)" in text
        assert re.search(r"default +running +pid \d+, answers as default@", text), text
        assert re.search(r"priority +running", text) and re.search(r"beat +running", text)
        tree = psutil.Process(proc.pid).children(recursive=True)

        request = urllib.request.Request(f"{base}/submit/add", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as resp:  # follows the redirect
            page = resp.read().decode()
        task_id = re.search(r'data-task="([0-9a-f-]{36})"', page).group(1)
        deadline = time.monotonic() + 20
        while True:
            task = json.loads(_get(f"{base}/tasks/{task_id}")[1])
            if task["state"] == "SUCCESS" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert task == {"id": task_id, "state": "SUCCESS", "info": 5}
        # the monitor started with the workers: it saw the task sent before anyone opened it
        deadline = time.monotonic() + 10
        while True:
            try:
                status, body = _get(f"{base}/monitor/api/task/info/{task_id}")
            except urllib.error.HTTPError as exc:  # 404 until the monitor has it
                status, body = exc.code, exc.read().decode()
            seen = json.loads(body)
            if seen.get("state") == "SUCCESS" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200
        assert seen["name"] == "example_app.tasks:add"
        assert seen["state"] == "SUCCESS"
        # it saw task-sent; not always first: Celery publishes task-sent after the message, so
        # the worker's task-received can come before it
        assert "PENDING" in [h["state"] for h in seen["history"]], seen
        assert _get(f"{base}/monitor/")[0] == 200
        # open on loopback, but not to a page that rebinds its own name to 127.0.0.1
        rebound = urllib.request.Request(
            f"{base}/monitor/api/task/async-apply/example_app.tasks:add",
            method="POST",
            data=b'{"args": [1, 2]}',
            headers={
                "Host": f"evil.example:{port}",
                "Origin": f"http://evil.example:{port}",
                "Content-Type": "application/json",
            },
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=10)
        assert refused.value.code == 403
        assert "DNS rebinding" in json.loads(refused.value.read())["error"]

        # Ctrl-C while a task runs: the worker finishes it (warm shutdown), saying so
        request = urllib.request.Request(f"{base}/submit/report", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10) as resp:
            page = resp.read().decode()
        report_id = re.search(r'data-task="([0-9a-f-]{36})"', page).group(1)
        deadline = time.monotonic() + 30
        while json.loads(_get(f"{base}/tasks/{report_id}")[1])["state"] != "PROGRESS":
            assert time.monotonic() < deadline, "the report did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        text = log.read_text()
        assert text.endswith("stopped\n")
        assert (
            "stopping: waiting up to 30s (CELERY_STOP_TIMEOUT) for 1 task: "
            f"example_app.tasks:build_report[{report_id}] on default to finish"
        ) in text
        assert "cuts off" not in text
        worker_log = (tmp_path / "celery" / "logs" / "default.log").read_text()
        assert f"Task example_app.tasks:build_report[{report_id}] succeeded" in worker_log
        deadline = time.monotonic() + 10
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree):
            assert time.monotonic() < deadline, "a child outlived the example app"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for child in tree:
            if child.is_running():
                child.kill()


def test_example_app_on_a_taken_port_starts_nothing_and_says_so_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("FLASK_APP", "CELERY_BROKER_URL")}
    env["EXAMPLE_APP_INSTANCE"] = str(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "example_app", "--port", str(port)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr == f"error: cannot serve on 127.0.0.1:{port}: the port is taken\n"
    assert "starting the workers" not in proc.stdout
    assert not (tmp_path / "celery").exists()  # no worker, beat or broker was started


def test_example_app_stopped_by_sigterm_stops_its_monitor_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("FLASK_APP", "CELERY_BROKER_URL")}
    env["EXAMPLE_APP_INSTANCE"] = str(tmp_path)
    log = tmp_path / "example.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "example_app", "--port", str(port)],
            cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while "Running on" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
        assert log.read_text().endswith("stopped\n"), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for child in tree:
            if child.is_running():
                child.kill()
    with sqlite3.connect(tmp_path / DB_FILENAME) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta.get("clean_stop") == "1", (meta, log.read_text())


def test_the_example_lets_the_monitor_run_only_its_tasks_module(tmp_path, monkeypatch):
    """The example's allowlist is ``example_app.tasks``, not the whole package: an operator
    cannot run its app factory (``create_app("this.s")`` would import any module on a worker)
    nor its views through the monitor's apply routes."""
    from example_app import create_app

    monkeypatch.setenv("EXAMPLE_APP_INSTANCE", str(tmp_path))
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app = create_app(open_monitor=True)
    assert app.config["CELERY_SUBMIT_ALLOWLIST"] == ["example_app.tasks"]
    client = app.test_client()
    for name in ("example_app:create_app", "example_app.views:submit", "example_app:Config"):
        for route in ("apply", "async-apply"):
            resp = client.post(f"/monitor/api/task/{route}/{name}", json={"args": ["this.s"]})
            assert resp.status_code == 404, (name, route, resp.json)
            assert resp.json == {"error": f"Unknown task '{name}'"}


def test_the_example_page_refuses_a_form_posted_from_another_site(tmp_path, monkeypatch):
    """Its own form (same origin, or a client with no browser headers) submits; another site's
    page cannot make the app submit work (nothing is recorded)."""
    from example_app import create_app

    monkeypatch.setenv("EXAMPLE_APP_INSTANCE", str(tmp_path))
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app = create_app(open_monitor=True)
    client = app.test_client()
    for headers in (
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ):
        resp = client.post("/submit/add", headers=headers)
        assert resp.status_code == 403, (headers, resp.status_code)
        assert resp.json["error"].startswith("cross-site request refused"), resp.json
    assert list(app.extensions["example_recent"]) == []
    resp = client.get("/", headers={"Origin": "http://evil.example"})
    assert resp.status_code == 200  # reading the page is not a mutation
