"""The browser surface in a real headless Chromium: the policy, framing, the feed's origin, polling.

The monitor is served on ``127.0.0.1`` and a hostile page on ``localhost`` (another origin) by
werkzeug's threaded server. No worker is needed: tasks sent to no worker are seen by the
monitor (``task-sent``) and stay PENDING. The rest of the pages' behaviour under the policy is
in ``test_ui.py``, whose every test fails on a console error (a CSP violation is one).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from flask_celerymon.web.hardening import CONTENT_SECURITY_POLICY
from tests.web.conftest import _dbs, make_monitored_app
from tests.web.test_ui import LIVE, Tab, browser, serving  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.browser

TASK = "tests.apps.basic.registered"
POLLING = '#live[data-state="polling"]'

#: Collects the page's CSP violations (``securitypolicyviolation`` events) before any script.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__violations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def _hostile_site(monitor: str) -> Any:
    """A WSGI app of another origin: ``/`` frames the monitor and a page of its own."""

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/own":
            body = b"<!doctype html><title>own</title><p id=own>a page of this site</p>"
        else:
            body = (
                "<!doctype html><title>hostile</title>"
                f'<iframe id="monitor" src="{monitor}/monitor/tasks"></iframe>'
                '<iframe id="own" src="/own"></iframe>'
            ).encode()
        start_response("200 OK", [("Content-Type", "text/html")])
        return [body]

    return app


@pytest.fixture(scope="module")
def site(redis_server, tmp_path_factory):
    """(monitor URL, hostile site URL, app) with default limits."""
    app = make_monitored_app(redis_server.url(next(_dbs)), str(tmp_path_factory.mktemp("sec")))
    try:
        with serving(app) as url, serving(_hostile_site(url)) as hostile:
            yield url, hostile.replace("127.0.0.1", "localhost"), app
    finally:
        app.extensions["celerymon"].shutdown()


def _send(app: Any) -> str:
    """Send a task to no worker; wait until the monitor knows it. Returns its id."""
    resp = app.test_client().post(f"/monitor/api/task/async-apply/{TASK}", json={"args": [1]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    task_id = resp.get_json()["task-id"]
    service = app.extensions["celerymon"].monitor
    deadline = time.monotonic() + 10
    while service.task(task_id) is None:
        assert time.monotonic() < deadline, "the monitor never saw the task"
        time.sleep(0.05)
    return task_id


def _send_as(app: Any, auth: tuple[str, str]) -> str:
    """Send a task to no worker with basic-auth ``auth``. Returns its id."""
    resp = app.test_client().post(
        f"/monitor/api/task/async-apply/{TASK}", json={"args": [1]}, auth=auth
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["task-id"]


@pytest.fixture
def tab(browser):  # noqa: F811 - the fixture imported above
    t = Tab(browser)
    t.page.add_init_script(RECORD_VIOLATIONS)
    yield t
    t.close()
    assert t.errors == []


def test_pages_work_under_the_policy_and_updates_stay_live(site, tab):
    url, _, app = site
    task_id = _send(app)
    pages = [
        (f"{url}/monitor/", True),
        (f"{url}/monitor/tasks", True),
        (f"{url}/monitor/task/{task_id}", True),
        (f"{url}/monitor/broker", True),
        (f"{url}/monitor/charts", False),
    ]
    for page_url, live in pages:
        resp = tab.page.goto(page_url)
        assert resp is not None and resp.status == 200
        assert resp.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert resp.headers["x-frame-options"] == "DENY"
        if live:
            tab.page.wait_for_selector(LIVE)
        # the theme script in <head> ran (it marks the page) under the policy
        assert tab.page.evaluate("document.documentElement.classList.contains('js')")
        assert tab.page.evaluate("window.__violations") == [], page_url
    # a live update reaches the task list through the websocket the policy allows
    page = tab.page
    page.goto(f"{url}/monitor/tasks")
    page.wait_for_selector(LIVE)
    page.evaluate("window.notReloaded = true")
    fresh = _send(app)
    page.wait_for_selector(f'tr[data-task="{fresh}"]')
    assert page.evaluate("window.notReloaded") is True
    page.click("#theme")  # a handler bound by the script file, not inline
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate("window.__violations") == []


def test_a_page_of_another_origin_cannot_frame_the_monitor(site, browser):  # noqa: F811
    url, hostile, _ = site
    t = Tab(browser)
    try:
        page = t.page
        page.goto(hostile)
        own = page.frame_locator("#own").locator("#own")
        own.wait_for()  # the control: this site's own page shows in a frame
        assert own.inner_text() == "a page of this site"
        frame = page.frame(url=lambda u: not u.startswith(hostile))
        deadline = time.monotonic() + 10
        while not any("frame-ancestors" in e for e in t.errors):
            assert time.monotonic() < deadline, t.errors
            page.wait_for_timeout(50)
        assert frame is None or frame.locator("#tasks-table").count() == 0
        assert page.frame_locator("#monitor").locator("nav.nav").count() == 0
    finally:
        t.close()


OPEN_FEED = """
(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onmessage = (e) => { resolve("message " + e.data); ws.close(); };
  ws.onclose = (e) => resolve("closed " + e.code);
})
"""


def test_a_page_of_another_origin_cannot_open_the_live_feed(site, browser):  # noqa: F811
    url, hostile, _ = site
    feed = url.replace("http://", "ws://") + "/monitor/ws?view=tasks"
    t = Tab(browser)
    try:
        t.page.goto(hostile)
        assert t.page.evaluate(OPEN_FEED, feed) == "closed 1006"
        assert any("403" in e for e in t.errors), t.errors
        # the control: the monitor's own page opens the same feed
        t.page.goto(f"{url}/monitor/charts")
        answer = t.page.evaluate(OPEN_FEED, feed)
        assert answer.startswith("message ")
        assert json.loads(answer.removeprefix("message ")) == {"type": "hello", "view": "tasks"}
    finally:
        t.close()


def test_a_page_beyond_the_live_socket_cap_polls_then_goes_live(redis_url, tmp_path, browser):  # noqa: F811
    app = make_monitored_app(
        redis_url,
        str(tmp_path),
        CELERY_MONITOR_MAX_LIVE_SOCKETS=1,
        CELERY_MONITOR_POLL_INTERVAL=0.5,
    )
    first, second = Tab(browser), Tab(browser)
    tabs = [first, second]
    try:
        with serving(app) as url:
            first.open(f"{url}/monitor/tasks")  # live: it holds the only socket
            page = second.open(f"{url}/monitor/tasks", live=False)
            page.wait_for_selector(POLLING)
            page.evaluate("window.notReloaded = true")
            task_id = _send(app)
            # the polling page shows the new task too, without being reloaded
            page.wait_for_selector(f'tr[data-task="{task_id}"]', timeout=10_000)
            first.page.wait_for_selector(f'tr[data-task="{task_id}"]')
            assert page.evaluate("window.notReloaded") is True
            assert page.evaluate("window.celerymon.polls") >= 1
            # the socket frees up when the first page goes away: the second goes live
            tabs.remove(first)
            first.close()
            page.wait_for_selector(LIVE, timeout=10_000)
        assert first.errors == second.errors == []
    finally:
        for t in tabs:
            t.close()
        app.extensions["celerymon"].shutdown()


def _forging_site(target: str) -> Any:
    """A WSGI app of another origin whose ``/`` posts a form to ``target`` on load."""

    def app(environ: dict, start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/forge.js":
            start_response("200 OK", [("Content-Type", "text/javascript")])
            return [b"document.getElementById('forged').submit();"]
        body = (
            "<!doctype html><title>forging</title>"
            f'<form id="forged" method="post" action="{target}">'
            '<input name="terminate" value="true"></form><script src="/forge.js"></script>'
        ).encode()
        start_response("200 OK", [("Content-Type", "text/html")])
        return [body]

    return app


def test_a_browser_with_basic_auth_credentials_cannot_be_made_to_act_by_another_site(
    redis_server,
    tmp_path,
    browser,  # noqa: F811 - the fixture imported above
):
    """Browsers send cached basic-auth credentials with a form another site posts: the
    Origin check refuses it (the credentials alone would have let it through)."""
    app = make_monitored_app(
        redis_server.url(next(_dbs)),
        str(tmp_path),
        CELERY_MONITOR_ALLOW_ANONYMOUS=False,
        CELERY_MONITOR_BASIC_AUTH="otto:o-pass:operator",
    )
    try:
        task_id = _send_as(app, ("otto", "o-pass"))
        with serving(app) as url:
            target = f"{url}/monitor/api/task/revoke/{task_id}"
            with serving(_forging_site(target)) as forging:
                t = Tab(browser, http_credentials={"username": "otto", "password": "o-pass"})
                try:
                    t.open(f"{url}/monitor/tasks")  # logged in: the browser has the password
                    t.page.goto(forging.replace("127.0.0.1", "localhost"))
                    t.page.wait_for_url(target)
                    answer = json.loads(t.page.locator("body").inner_text())
                finally:
                    t.close()
        # 403 from the cross-site check, not 401: the browser did send the credentials, and
        # the guard refused before the handler ran
        assert answer == {
            "error": "cross-site request refused: Sec-Fetch-Site is 'cross-site'; send it from "
            "the monitor's own pages or from a client that sends no Origin header"
        }
    finally:
        app.extensions["celerymon"].shutdown()
