"""Roles against a real served app: werkzeug's threaded server in a thread, a real Redis and a
real prefork worker, driven with ``requests`` (and a websocket client) as a Flower script would.

The standalone monitor (``flask celery monitor``, gunicorn) is driven as a subprocess too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests
import simple_websocket
from werkzeug.security import generate_password_hash

from tests.apps import basic, local
from tests.conftest import free_port
from tests.web.conftest import run_monitored
from tests.web.test_ui import serving

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIEWER = ("vera", "v-pass")
OPERATOR = ("otto", "o-pass")
ADMIN = ("ada", "a-pass")
TOKEN = "scrape-token"


@pytest.fixture(scope="module")
def served(redis_server, tmp_path_factory):
    users = [
        "vera:v-pass:viewer",
        "otto:o-pass:operator",
        f"ada:{generate_password_hash('a-pass')}:admin",
    ]
    with run_monitored(
        redis_server,
        tmp_path_factory,
        "authsrv",
        CELERY_MONITOR_ALLOW_ANONYMOUS=False,
        CELERY_MONITOR_BASIC_AUTH=users,
        CELERY_MONITOR_METRICS_TOKEN=TOKEN,
    ) as env:
        assert not env.app.debug and not env.app.testing
        env.wait_for(lambda: env.service.worker(env.worker_name), timeout=30)
        with serving(env.app) as url:
            yield env, url + "/monitor"


def test_anonymous_requests_are_refused_with_a_basic_challenge(served):
    env, base = served
    for path in ("/", "/tasks", "/api/workers", "/api/tasks", "/metrics", "/charts"):
        resp = requests.get(base + path, timeout=10)
        assert resp.status_code == 401, path
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="celerymon", charset="UTF-8"'
    assert requests.get(base + "/healthcheck", timeout=10).status_code in (200, 503)
    resp = requests.post(f"{base}/api/worker/shutdown/{env.worker_name}", timeout=10)
    assert resp.status_code == 401
    assert resp.json() == {"error": "log in first: HTTP basic auth"}


def test_a_viewer_reads_but_cannot_act(served):
    env, base = served
    workers = requests.get(base + "/api/workers", auth=VIEWER, timeout=20)
    assert workers.status_code == 200 and env.worker_name in workers.json()
    page = requests.get(f"{base}/worker/{env.worker_name}", auth=VIEWER, timeout=20)
    assert page.status_code == 200
    assert "Shut down" not in page.text and "Restart pool" not in page.text
    resp = requests.post(f"{base}/api/task/revoke/{'0' * 32}", auth=VIEWER, timeout=10)
    assert resp.status_code == 403
    assert resp.json() == {"error": "vera has the role viewer; this needs the role operator"}


def test_an_operator_terminates_a_running_task_but_cannot_control_workers(served):
    env, base = served
    with env.app.app_context():
        future = basic.celery.submit(basic.sleep, 60)
    env.wait_for(lambda: (env.service.task(future.id) or {}).get("state") == "STARTED", 30)
    resp = requests.post(
        f"{base}/api/task/revoke/{future.id}",
        data={"terminate": "true", "signal": "SIGKILL"},
        auth=OPERATOR,
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"message": f"Revoked '{future.id}'"}
    env.wait_for(lambda: (env.service.task(future.id) or {}).get("state") == "REVOKED", 30)
    grow = requests.post(f"{base}/api/worker/pool/grow/{env.worker_name}", auth=OPERATOR,
                         timeout=10)  # fmt: skip
    assert grow.status_code == 403
    assert grow.json() == {"error": "otto has the role operator; this needs the role admin"}


def test_an_admin_with_a_hashed_password_grows_the_pool(served):
    env, base = served

    def pool_size() -> int:
        stats = env.celery_app.control.inspect([env.worker_name], timeout=2).stats() or {}
        return len(stats[env.worker_name]["pool"]["processes"])

    before = pool_size()
    resp = requests.post(f"{base}/api/worker/pool/grow/{env.worker_name}", data={"n": "1"},
                         auth=ADMIN, timeout=20)  # fmt: skip
    assert resp.status_code == 200, resp.text
    try:
        env.wait_for(lambda: pool_size() == before + 1, 20)
    finally:
        requests.post(f"{base}/api/worker/pool/shrink/{env.worker_name}", data={"n": "1"},
                      auth=ADMIN, timeout=20)  # fmt: skip
    assert requests.post(f"{base}/api/worker/pool/grow/{env.worker_name}",
                         auth=("ada", "a-pas"), timeout=10).status_code == 401  # fmt: skip


def test_the_websocket_handshake_goes_through_the_guard(served):
    _, base = served
    url = base.replace("http://", "ws://") + "/ws?view=workers"
    with pytest.raises(simple_websocket.ConnectionError) as refused:
        simple_websocket.Client.connect(url)
    assert refused.value.status_code == 401
    import base64

    auth = "Basic " + base64.b64encode(b"vera:v-pass").decode()
    ws = simple_websocket.Client.connect(url, headers={"Authorization": auth})
    try:
        assert json.loads(ws.receive(timeout=10)) == {"type": "hello", "view": "workers"}
    finally:
        ws.close()


def test_a_scraper_reads_the_metrics_with_its_bearer_token(served):
    _, base = served
    ok = requests.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200
    assert "# TYPE flower_events_total counter" in ok.text
    bad = requests.get(base + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert bad.status_code == 401
    assert requests.get(base + "/metrics", auth=VIEWER, timeout=10).status_code == 200


# -- the standalone monitor (``flask celery monitor`` on gunicorn) --------------------------------


def test_the_standalone_monitor_refuses_a_public_address_without_authentication(tmp_path):
    with local.environment(local.app_env(tmp_path, "redis://127.0.0.1:1/0")):
        app = local.create_app()
    result = app.test_cli_runner().invoke(args=["celery", "monitor", "--address", "0.0.0.0"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: refusing to serve the monitor on 0.0.0.0 without authentication: set "
        "CELERY_MONITOR_BASIC_AUTH or CELERY_MONITOR_AUTH_PROVIDER, bind a loopback address "
        "(--address 127.0.0.1), or set CELERY_MONITOR_ALLOW_ANONYMOUS = True to open it on "
        "purpose\n"
    )


def test_the_standalone_monitor_on_a_public_address_with_basic_auth(own_redis, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        **local.app_env(tmp_path, own_redis.url(230), 0),
        "CELERYMON_TEST_MONITOR_AUTH": "ada:a-pass:admin",
        "FLASK_APP": "tests.apps.local:create_app()",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "monitor.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "celery", "monitor", "--address", "0.0.0.0",
             "--port", str(port), "--threads", "4"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/monitor"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                first = requests.get(base + "/api/workers", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert first.status_code == 401
        assert first.headers["Server"].startswith("gunicorn")
        assert requests.get(base + "/api/workers", auth=ADMIN, timeout=10).status_code == 200
        assert "no authentication configured" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)
