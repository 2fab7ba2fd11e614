"""Insight end to end: real failures from a real worker, a real beat, a real webhook receiver.

One module-scoped stack (Redis, a prefork worker of ``tests.apps.insight_app``, the monitored
app with an alert rule pointing at a webhook receiver started here); the tests run in file
order and build on what the earlier ones sent.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.apps import insight_app
from tests.conftest import WorkerProcess
from tests.web.conftest import Monitored, feed_close

FLAKY = "tests.apps.insight_app.flaky"
RETRYING = "tests.apps.insight_app.retrying"
TOTAL = "tests.apps.insight_app.total"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Receiver:
    """A webhook receiver on a free loopback port that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length") or 0)
                bodies.append((self.headers.get("Content-Type"), json.loads(self.rfile.read(n))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def env(redis_server, tmp_path_factory, receiver):
    broker = redis_server.url(98)
    tmp = tmp_path_factory.mktemp("insight")
    os.environ["CELERYMON_TEST_BROKER"] = broker
    try:
        app = insight_app.create_app(
            CELERY_MONITOR_BLUEPRINT=True,
            CELERY_MONITOR_DB=str(tmp / "monitor.sqlite3"),
            CELERY_MONITOR_ALERTS=[
                {
                    "kind": "failure_rate",
                    "task": FLAKY,
                    "threshold": 0.5,
                    "min_tasks": 3,
                    "repeat": 0,
                    "name": "flaky-failing",
                },
                # fires only in the live-pages test, which makes ``total`` fail
                {
                    "kind": "failure_rate",
                    "task": TOTAL,
                    "threshold": 0.3,
                    "min_tasks": 1,
                    "repeat": 0,
                    "name": "total-failing",
                },
            ],  # fmt: skip
            CELERY_MONITOR_ALERT_WEBHOOK=receiver.url,
            CELERY_MONITOR_ALERT_INTERVAL=0.3,
            # the monitor refuses everyone without authentication outside debug/testing mode
            CELERY_MONITOR_ALLOW_ANONYMOUS=True,
            # pages poll only without a websocket: an hour, so what updates them is the socket
            CELERY_MONITOR_POLL_INTERVAL=3600,
        )
    finally:
        del os.environ["CELERYMON_TEST_BROKER"]
    app.instance_path = str(tmp)
    name = f"insight-{os.getpid()}@{socket.gethostname()}"
    worker = WorkerProcess(
        "tests.apps.insight_app:create_app", broker, name, str(tmp / "worker.log"),
        args=("-P", "prefork", "-c", "2", "-E"),
    )  # fmt: skip
    e = Monitored(app, broker, worker, name)
    e.tmp = tmp  # type: ignore[attr-defined]
    try:
        worker.wait_ready(e.celery_app)
        e.service.ensure_started()
        assert e.service.wait_connected(10)
        assert e.client().get("/monitor/errors").status_code == 200  # starts the insight thread
        yield e
    finally:
        e.state.shutdown()
        worker.stop()


def _groups(env, name: str) -> list[dict[str, Any]]:
    data = env.client().get("/monitor/api/errors").get_json()
    return [g for g in data["groups"] if g["name"] == name]


def _one_group(env, name: str, **want: Any) -> dict[str, Any] | None:
    gs = _groups(env, name)
    if len(gs) == 1 and all(gs[0].get(k) == v for k, v in want.items()):
        return gs[0]
    return None


def test_real_failures_form_one_group_with_workers_traceback_and_links(env):
    with env.app.app_context():
        results = [insight_app.flaky.delay(-i) for i in (1, 22, 333)]
    for r in results:
        r.get(timeout=30, propagate=False)
    g = env.wait_for(lambda: _one_group(env, FLAKY, failures=3), timeout=20)
    assert g["exception_type"] == "ValueError"
    assert g["message"] == "order <n> failed"
    assert g["workers"] == {env.worker_name: 3}
    assert "ValueError: order" in g["sample_traceback"]
    assert g["status"] == "open" and sum(g["sparkline"]) == 3
    assert g["last_seen"] >= g["first_seen"]

    detail = env.client().get(f"/monitor/api/errors/{g['id']}").get_json()
    assert {t["uuid"] for t in detail["tasks"]} == {r.id for r in results}
    assert {t["state"] for t in detail["tasks"]} == {"FAILURE"}

    page = env.client().get("/monitor/errors").get_data(as_text=True)
    assert f"/monitor/errors/{g['id']}" in page and "order &lt;n&gt; failed" in page
    page = env.client().get(f"/monitor/errors/{g['id']}").get_data(as_text=True)
    for r in results:
        assert f"/monitor/task/{r.id}" in page
    assert 'id="btn-group-retry"' in page


def test_the_failure_rate_alert_is_posted_once_to_the_webhook(env, receiver):
    firing = env.wait_for(
        lambda: [b for _, b in receiver.bodies if b["status"] == "firing"], timeout=20
    )
    assert len(firing) == 1
    body = firing[0]
    assert (body["rule"], body["kind"], body["subject"]) == ("flaky-failing", "failure_rate", FLAKY)
    assert body["value"] == 1.0 and body["threshold"] == 0.5
    assert receiver.bodies[0][0] == "application/json"
    alerts = env.client().get("/monitor/api/alerts?status=firing").get_json()["alerts"]
    assert [a["subject"] for a in alerts] == [FLAKY]
    assert alerts[0]["delivery"] == "sent (200)"
    assert "flaky-failing" in env.client().get("/monitor/alerts").get_data(as_text=True)


def test_retrying_a_group_sends_its_failed_tasks_again(env, receiver):
    gid = _groups(env, FLAKY)[0]["id"]
    dry = env.client().post(f"/monitor/api/errors/{gid}/retry?dry_run=1").get_json()
    assert (dry["count"], dry["retried"]) == (3, {})
    out = env.client().post(f"/monitor/api/errors/{gid}/retry").get_json()
    assert out["count"] == 3 and out["failed"] == {}
    assert set(out["retried"]) == set(dry["task_ids"])
    env.wait_for(lambda: _one_group(env, FLAKY, failures=6), timeout=30)
    again = env.client().post(f"/monitor/api/errors/{gid}/retry?dry_run=1").get_json()
    assert set(again["task_ids"]) == set(out["retried"].values())  # only the new failures
    for old, new in out["retried"].items():  # same arguments as the task retried
        before, after = env.service.task(old), env.service.task(new)
        assert list(ast.literal_eval(before["args"])) == list(ast.literal_eval(after["args"]))
        assert after["state"] == "FAILURE"
    # the alert rule never repeats: still exactly one firing notification
    assert len([b for _, b in receiver.bodies if b["status"] == "firing"]) == 1


def test_a_success_resolves_the_group_and_the_alert(env, receiver):
    with env.app.app_context():
        results = [insight_app.flaky.delay(i) for i in range(10)]
    for r in results:
        assert r.get(timeout=30) is not None
    env.wait_for(lambda: _one_group(env, FLAKY, status="resolved"), timeout=20)
    resolved = env.wait_for(
        lambda: [b for _, b in receiver.bodies if b["status"] == "resolved"], timeout=20
    )
    assert resolved[0]["rule"] == "flaky-failing" and resolved[0]["resolved"] is not None
    firing = env.client().get("/monitor/api/alerts?status=firing").get_json()["alerts"]
    assert [a for a in firing if a["rule"] == "total-failing"] == []


def test_revoking_a_group_revokes_its_tasks_waiting_for_a_retry(env):
    with env.app.app_context():
        r = insight_app.retrying.delay(7)
    g = env.wait_for(lambda: _one_group(env, RETRYING, retries=1), timeout=30)
    assert g["exception_type"] == "KeyError" and g["failures"] == 0
    env.wait_for(lambda: (env.service.task(r.id) or {}).get("state") == "RETRY")
    out = env.client().post(f"/monitor/api/errors/{g['id']}/revoke").get_json()
    assert out["task_ids"] == [r.id] and out["count"] == 1

    def revoked() -> bool:
        replies = env.celery_app.control.inspect([env.worker_name], timeout=1).revoked() or {}
        return r.id in replies.get(env.worker_name, [])

    env.wait_for(revoked, timeout=15)


def test_analytics_count_the_real_tasks_and_compare_windows(env):
    data = env.client().get("/monitor/api/analytics?window=15m").get_json()
    (t,) = [t for t in data["tasks"] if t["name"] == FLAKY]
    cur = t["current"]
    assert (cur["succeeded"], cur["failed"]) == (10, 6)
    assert cur["failure_rate"] == pytest.approx(6 / 16)
    assert cur["runtime"]["p50"] is not None and cur["runtime"]["p99"] is not None
    assert cur["wait"]["p50"] is not None and cur["wait"]["p50"] >= 0
    assert t["previous"]["finished"] == 0 and t["change"]["runtime_p95"] is None
    series = env.client().get(f"/monitor/api/analytics/series?name={FLAKY}&window=15m").get_json()
    assert sum(p["failed"] for p in series["points"]) == 6 and series["bucket"] == 60
    page = env.client().get(f"/monitor/analytics?window=15m&name={FLAKY}").get_data(as_text=True)
    assert FLAKY in page and 'id="analytics-throughput"' in page
    bad = env.client().get("/monitor/api/analytics?window=2w")
    assert bad.status_code == 400 and "window must be one of" in bad.get_json()["error"]


@pytest.fixture
def beat_process(env):
    cmd = [sys.executable, "-m", "celery", "-A", "flask_celerymon.celery", "beat", "-l", "info",
           "-s", str(env.tmp / "celerybeat-schedule")]  # fmt: skip
    child_env = {**os.environ, "FLASK_APP": "tests.apps.insight_app:create_app",
                 "CELERYMON_TEST_BROKER": env.broker}  # fmt: skip
    with open(env.tmp / "beat.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    yield proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def _entry(env, name: str) -> tuple[dict, dict]:
    data = env.client().get("/monitor/api/beat").get_json()
    return data["beat"], {e["name"]: e for e in data["entries"]}[name]


def test_the_beat_page_shows_a_real_beat_running_its_schedule(env, beat_process):
    def ran() -> Any:
        status, e = _entry(env, "tick")
        last = e["last_run"]
        return status["running"] and last and last["state"] == "SUCCESS" and (status, e)

    status, tick = env.wait_for(ran, timeout=40)
    assert status["how"] == "entries run on schedule"
    assert tick["schedule"] == "every 1 second" and tick["task"] == "tests.apps.insight_app.tick"
    assert time.time() - 1 <= tick["next_run"] <= time.time() + 2 and tick["late"] is False
    page = env.client().get("/monitor/beat").get_data(as_text=True)
    assert "every 1 second" in page and "running" in page

    sent = env.client().post("/monitor/api/beat/run/tick").get_json()
    env.wait_for(lambda: (env.service.task(sent["task-id"]) or {}).get("state") == "SUCCESS")
    missing = env.client().post("/monitor/api/beat/run/nope")
    assert missing.status_code == 404 and "no beat entry 'nope'" in missing.get_json()["error"]

    beat_process.terminate()
    beat_process.wait(10)
    status = env.wait_for(
        lambda: (s := _entry(env, "tick")[0])["running"] is False and s, timeout=40
    )
    assert status["how"].startswith("every entry is overdue")


def test_every_insight_page_is_in_the_navigation(env):
    home = env.client().get("/monitor/").get_data(as_text=True)
    for path in ("/monitor/errors", "/monitor/analytics", "/monitor/beat", "/monitor/alerts"):
        assert f'href="{path}"' in home
        assert env.client().get(path).status_code == 200
    assert env.client().get("/monitor/errors/zzz").status_code == 404
    assert env.client().get("/monitor/errors?since=1y").status_code == 400


def test_the_task_page_draws_the_chain_group_and_chord_a_task_belongs_to(env):
    from celery import chord, group

    f, total = insight_app.flaky, insight_app.total
    with env.app.app_context():
        c = (f.s(1) | f.s() | group(f.s(), f.s())).apply_async()
        ch = (f.s(2) | chord([f.s(), f.s()], total.s())).apply_async()
    assert c.get(timeout=30) == [1, 1] and ch.get(timeout=30) == 4
    first, second = c.parent.parent.id, c.parent.id
    members = [r.id for r in c.results]

    def graph(task_id: str, n: int) -> Any:
        g = env.client().get(f"/monitor/api/task/canvas/{task_id}").get_json()
        return (
            len(g.get("nodes", ())) == n and all(x["state"] == "SUCCESS" for x in g["nodes"]) and g
        )

    g = env.wait_for(lambda: graph(members[0], 4), timeout=20)
    assert g["root"] == first and g["task"] == members[0] and g["final"] is True
    edges = {tuple(e) for e in g["edges"]}
    assert edges == {(first, second), (second, members[0]), (second, members[1])}
    assert {n["id"]: n["depth"] for n in g["nodes"]} == {first: 0, second: 1, members[0]: 2,
                                                         members[1]: 2}  # fmt: skip

    # chain -> chord: the header tasks and the callback are all in the root's graph
    g = env.wait_for(lambda: graph(ch.id, 4), timeout=20)
    names = sorted(n["name"].rsplit(".", 1)[-1] for n in g["nodes"])
    assert names == ["flaky", "flaky", "flaky", "total"]
    assert g["nodes"][0]["depth"] == 0 and g["nodes"][0]["id"] == g["root"]

    page = env.client().get(f"/monitor/task/{members[0]}").get_data(as_text=True)
    assert 'id="canvas"' in page and 'data-final="1"' in page
    for tid in (first, second, *members):
        assert f'data-node="{tid}"' in page
    assert 'data-live="task"' in page and "data-refresh" not in page  # live over the socket
    fragment = env.client().get(f"/monitor/canvas/{members[0]}").get_data(as_text=True)
    assert fragment.lstrip().startswith('<div class="card pad" id="canvas"')
    lone = env.client().get(f"/monitor/task/{env.service.query_tasks(limit=1).tasks[0]['uuid']}")
    assert lone.status_code == 200
    missing = env.client().get("/monitor/api/task/canvas/nope")
    assert missing.status_code == 404 and missing.get_json() == {"error": "Unknown task 'nope'"}


@pytest.mark.browser
def test_the_insight_pages_in_a_real_browser_and_the_canvas_live(env):
    from playwright.sync_api import sync_playwright

    from tests.web.test_ui import CHROMIUM, CHROMIUM_ARGS, Tab, serving

    with serving(env.app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = Tab(browser)
        try:
            base = f"{url}/monitor"
            page = tab.open(f"{base}/", live=False)
            for label in ("Errors", "Analytics", "Beat", "Alerts"):
                page.click(f"nav.nav >> text={label}")
                page.wait_for_load_state()
                assert page.locator("nav.nav a.active").inner_text() == label
                assert page.locator("main").inner_text().strip()
                tab.shot(f"insight-{label.lower()}")
            page = tab.open(f"{base}/analytics?window=15m&name={FLAKY}")
            assert page.locator("#analytics-throughput rect.bar-ok").count() >= 1
            cell = f'#analytics-table tr[data-task="{FLAKY}"] td:nth-child(2)'
            shown = int(page.locator(cell).inner_text())
            with env.app.app_context():
                insight_app.flaky.delay(1).get(timeout=30)
            # the table follows without a reload (pushed over the websocket)
            page.wait_for_function(
                "([sel, n]) => parseInt(document.querySelector(sel).textContent) === n",
                arg=[cell, shown + 1], timeout=30_000,
            )  # fmt: skip

            page = tab.open(f"{base}/errors?since=1h", live=False)
            row = page.locator("#error-groups tr", has_text="order <n> failed")
            row.locator("a", has_text="ValueError").click()
            page.wait_for_selector("#group-traceback")
            g = _groups(env, FLAKY)[0]
            dry = env.client().post(f"/monitor/api/errors/{g['id']}/retry?dry_run=1").get_json()
            assert 0 < dry["count"] < g["failures"]  # the failures not retried before
            page.click("#btn-group-retry")  # the confirm dialog is accepted
            page.locator(".toast.ok").first.wait_for()
            want = g["failures"] + dry["count"]
            env.wait_for(lambda: _groups(env, FLAKY)[0]["failures"] == want, timeout=30)

            with env.app.app_context():
                c = (insight_app.nap.si(3) | insight_app.flaky.si(5)).apply_async()
            first = c.parent.id
            env.wait_for(lambda: env.service.task(first), timeout=10)
            page = tab.open(f"{base}/task/{first}")
            env.wait_for(lambda: env.service.task(c.id), timeout=20)
            # drawn while running, then updated in place (no reload) until every node is done
            page.wait_for_selector(f'#canvas [data-node="{c.id}"][data-state="SUCCESS"]',
                                   timeout=20_000)  # fmt: skip
            page.wait_for_selector('#canvas[data-final="1"]')
            assert page.evaluate("window.celerymon.connects") == 1  # one socket, no reload
            tab.shot("insight-canvas")
        finally:
            tab.close()
            browser.close()
        assert tab.errors == []


LIVE_PAGES = {
    # view: (path, a JS condition on the page, true once the new failures are shown)
    "errors": (
        "/errors?since=1h",
        "[...document.querySelectorAll('#error-groups tr')]"
        ".some(r => r.textContent.includes('TypeError') && r.textContent.includes('total'))",
    ),
    "error-group": (
        "/errors/{flaky_group}",
        "parseInt([...document.querySelectorAll("
        "'#live-root table.kv tr')].find(r => r.textContent.startsWith('Failures'))"
        ".querySelector('td').textContent) === {flaky_failures} + 1",
    ),
    "analytics": (
        f"/analytics?window=15m&name={TOTAL}",
        "(c => !!c && parseFloat(c.textContent) > 0)(document.querySelector("
        f"'#analytics-table tr[data-task=\"{TOTAL}\"] td:nth-child(4)'))",
    ),
    "charts": (
        f"/charts?window=1h&name={TOTAL}",
        "[...document.querySelectorAll("
        "'#runtime-table tr')].some(r => r.textContent.includes('total') && "
        "r.querySelector('td:nth-child(3)').textContent.trim() === '1')",
    ),
    "alerts": (
        "/alerts",
        "document.querySelector('#alerts-firing').textContent.includes('total-failing')",
    ),
}


@pytest.mark.browser
def test_insight_pages_opened_before_a_failure_show_it_over_the_websocket(env):
    """The kind: every insight page the live feed serves (``live.PAGES``), opened before new
    failures, shows them without a reload and without polling (an hour apart here)."""
    from playwright.sync_api import sync_playwright

    from flask_celerymon.web.live import PAGES
    from tests.web.test_ui import CHROMIUM, CHROMIUM_ARGS, Tab, serving

    assert set(LIVE_PAGES) == set(PAGES)
    g = _groups(env, FLAKY)[0]
    fill = {"flaky_group": g["id"], "flaky_failures": g["failures"]}
    firing = env.client().get("/monitor/api/alerts?status=firing").get_json()["alerts"]
    assert [a for a in firing if a["rule"] == "total-failing"] == []
    with serving(env.app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tabs = {view: Tab(browser) for view in LIVE_PAGES}
        try:
            for view, (path, shown) in LIVE_PAGES.items():
                page = tabs[view].open(f"{url}/monitor{path.format(**fill)}")
                assert page.locator("body").get_attribute("data-live") == view
                assert not page.evaluate(f"() => {shown.format(**fill)}"), view
                page.evaluate("window.openedOnce = true")
            with env.app.app_context():
                bad = insight_app.total.delay(5)  # TypeError: a new group of ``total``
                insight_app.flaky.delay(-9).get(timeout=30, propagate=False)
            bad.get(timeout=30, propagate=False)
            for view, (_, shown) in LIVE_PAGES.items():
                page = tabs[view].page
                page.wait_for_function(f"() => {shown.format(**fill)}", timeout=30_000)
                # the same document (no reload), one socket, never polled
                assert page.evaluate("window.openedOnce") is True, view
                assert page.evaluate("[window.celerymon.connects, window.celerymon.polls]") == [
                    1,
                    None,
                ], view
                assert page.locator("#live").get_attribute("data-state") == "live"
            tabs["errors"].shot("insight-errors-live")
        finally:
            for t in tabs.values():
                t.close()
            browser.close()
        assert {v: t.errors for v, t in tabs.items() if t.errors} == {}


def test_the_live_feed_sends_each_insight_page_on_subscribe_and_refuses_bad_parameters(env):
    """The kind: every view of ``live.PAGES`` answers hello, then its current ``#live-root``
    (rendered by the page's own partial); a bad parameter closes the socket with 1008."""
    import simple_websocket

    from flask_celerymon.web.live import PAGES
    from tests.web.test_ui import serving

    # its own failure, waited for: earlier tests' groups may be resolved, or not written yet
    with env.app.app_context():
        insight_app.flaky.delay(-4444).get(timeout=30, propagate=False)
    gid = env.wait_for(lambda: _groups(env, FLAKY), timeout=20)[0]["id"]
    args = {"charts": "window=1h", "analytics": "window=15m", "errors": "since=1h",
            "error-group": f"id={gid}", "alerts": ""}  # fmt: skip
    bad = {"charts": ("window=2w", "window must be one of"),
           "analytics": ("window=2w", "window must be one of"),
           "errors": ("since=2w", "since must be one of"),
           "error-group": ("id=nope", "no error group 'nope'"),
           "alerts": None}  # fmt: skip
    assert set(args) == set(bad) == set(PAGES)
    sockets = env.state.limits.sockets

    def released() -> bool:  # the feeds of closed pages end and give back their place
        return sockets.held == 0

    env.wait_for(released, timeout=10)
    with serving(env.app) as url:
        ws_url = url.replace("http://", "ws://") + "/monitor/ws?view="
        for view in PAGES:
            ws = simple_websocket.Client.connect(f"{ws_url}{view}&{args[view]}")
            try:
                assert json.loads(ws.receive(timeout=10)) == {"type": "hello", "view": view}
                first = json.loads(ws.receive(timeout=10))
                assert first["type"] == "batch" and [m["type"] for m in first["items"]] == ["page"]
                assert first["items"][0]["html"].strip()
            finally:
                ws.close()
            env.wait_for(released, timeout=10)
            if bad[view] is None:
                continue
            value, message = bad[view]
            code, reason = feed_close(f"{ws_url}{view}&{value}")
            assert code == 1008 and message in reason, (code, reason)


@pytest.mark.browser
def test_without_a_live_socket_an_insight_page_polls_and_shows_a_new_failure(env):
    """``CELERY_MONITOR_MAX_LIVE_SOCKETS=0``: every feed is refused (4503), the page reloads its
    ``#live-root`` every ``CELERY_MONITOR_POLL_INTERVAL`` seconds instead."""
    from playwright.sync_api import sync_playwright

    from tests.web.test_ui import CHROMIUM, CHROMIUM_ARGS, Tab, serving

    os.environ["CELERYMON_TEST_BROKER"] = env.broker
    try:
        app = insight_app.create_app(
            CELERY_MONITOR_BLUEPRINT=True, CELERY_MONITOR_ALLOW_ANONYMOUS=True,
            CELERY_MONITOR_DB=str(env.tmp / "polling.sqlite3"),
            CELERY_MONITOR_MAX_LIVE_SOCKETS=0, CELERY_MONITOR_POLL_INTERVAL=0.5,
        )  # fmt: skip
    finally:
        del os.environ["CELERYMON_TEST_BROKER"]
    state = app.extensions["celerymon"]
    try:
        state.monitor.ensure_started()
        assert state.monitor.wait_connected(10)
        with serving(app) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            tab = Tab(browser)
            try:
                page = tab.open(f"{url}/monitor/errors?since=1h", live=False)
                page.wait_for_selector('#live[data-state="polling"]')
                assert page.locator("#error-groups tr", has_text="total").count() == 0
                page.evaluate("window.openedOnce = true")
                with env.app.app_context():
                    insight_app.total.delay({"no": "sum"}).get(timeout=30, propagate=False)
                page.locator("#error-groups tr", has_text="total").first.wait_for(timeout=20_000)
                assert page.evaluate("window.openedOnce") is True
                assert page.evaluate("window.celerymon.connects") == 0
                assert page.evaluate("window.celerymon.polls") >= 1
            finally:
                tab.close()
                browser.close()
            # the browser reports the refused sockets as console errors; nothing else
            assert [e for e in tab.errors if "WebSocket" not in e] == []
    finally:
        state.shutdown()


def test_read_only_refuses_every_insight_action_and_hides_its_buttons(redis_url, tmp_path):
    """The kind: every POST route of the insight module, from its own route table."""
    from flask_celerymon.web import insight
    from flask_celerymon.web.auth import declared_level

    os.environ["CELERYMON_TEST_BROKER"] = redis_url
    try:
        app = insight_app.create_app(CELERY_MONITOR_BLUEPRINT=True, CELERY_MONITOR_READ_ONLY=True,
                                     CELERY_MONITOR_ALLOW_ANONYMOUS=True,
                                     CELERY_MONITOR_DB=str(tmp_path / "m.db"))  # fmt: skip
    finally:
        del os.environ["CELERYMON_TEST_BROKER"]
    client = app.test_client()
    posts = [rule for rule, _, _, methods in insight.ROUTES if "POST" in methods]
    assert len(posts) == 3
    for rule in posts:
        path = "/monitor" + rule.replace("<gid>", "0123456789abcdef").replace(
            "<celerymon_path:entry>", "tick"
        )
        resp = client.post(path)
        assert resp.status_code == 403, path
        assert resp.get_json() == {
            "error": "the monitor is read-only (CELERY_MONITOR_READ_ONLY is on)"
        }
    try:
        page = client.get("/monitor/beat").get_data(as_text=True)
        assert "tick" in page and "Run now" not in page
    finally:
        app.extensions["celerymon"].shutdown()
    # who may call them is declared on the views (tests/web/test_auth.py has the whole matrix)
    levels = {e: declared_level(view) for _, e, view, _ in insight.ROUTES}
    assert {e: lvl for e, lvl in levels.items() if lvl not in ("viewer", "operator")} == {}
    assert {levels[e] for _, e, _, m in insight.ROUTES if "POST" in m} == {"operator"}
