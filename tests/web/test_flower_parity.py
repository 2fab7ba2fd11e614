"""Flower 2.2 and the monitor watch the same cluster and list the same workers (issue 12).

Flower runs as a real subprocess on the same broker as the ``monitored`` app's worker; the
tasks are sent from this process (a client, ``gen<pid>@host``), which neither lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

from tests.apps import basic
from tests.conftest import free_port


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


@pytest.fixture(scope="module")
def flower(monitored, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "--broker", monitored.broker, "flower",
             f"--port={port}", "--address=127.0.0.1", "--persistent=False"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        monitored.wait_for(lambda: _get(f"{url}/api/workers?status=1") is not None, 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_and_the_monitor_list_the_same_workers(monitored, flower):
    with monitored.app.app_context():
        futures = [basic.celery.submit(basic.add, i, i) for i in range(3)]
        assert [f.result(timeout=30) for f in futures] == [0, 2, 4]
    client = monitored.client()
    # both have seen the worker's events for these tasks
    monitored.wait_for(
        lambda: (s := _get(f"{flower}/api/workers?status=1")) and monitored.worker_name in s, 30
    )
    ours = client.get("/monitor/api/workers?status=1").json
    theirs = _get(f"{flower}/api/workers?status=1")
    assert ours == theirs == {monitored.worker_name: True}
    ours = client.get("/monitor/api/workers?refresh=1").json
    theirs = _get(f"{flower}/api/workers?refresh=1")
    assert set(ours) == set(theirs) == {monitored.worker_name}
    for key in ("stats", "active_queues", "registered", "conf"):
        assert key in ours[monitored.worker_name] and key in theirs[monitored.worker_name]
