"""The monitor pages in a real headless Chromium, against a real Redis, worker and service.

The app is served by werkzeug's threaded server (flask-sock works on it) in a thread; the
browser is Debian's ``/usr/bin/chromium`` driven by Playwright. Screenshots of every page go to
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.serving import make_server

from tests.apps import basic
from tests.web.conftest import make_monitored_app

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
LIVE = '#live[data-state="live"]'


@contextmanager
def serving(wsgi_app: Any) -> Iterator[str]:
    """Serve ``wsgi_app`` on a free local port in a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="ui-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def behind_proxy(app_wsgi: Any, prefix: str) -> Any:
    """A stand-in reverse proxy: serves ``app_wsgi`` at ``prefix`` with X-Forwarded-Prefix."""

    def proxy(environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(prefix + "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not behind the proxy prefix"]
        environ["PATH_INFO"] = path[len(prefix) :]
        environ["HTTP_X_FORWARDED_PREFIX"] = prefix
        return app_wsgi(environ, start_response)

    return proxy


@pytest.fixture(scope="module")
def server(monitored):
    monitored.wait_for(lambda: monitored.service.worker(monitored.worker_name), timeout=30)
    with serving(monitored.app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, **context: Any) -> None:
        self.context = browser.new_context(
            **{"viewport": {"width": 1400, "height": 900}, **context}
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", lambda d: d.accept())

    def open(self, url: str, live: bool = True) -> Any:
        resp = self.page.goto(url)
        assert resp is not None and resp.status == 200, (url, resp and resp.status)
        if live:
            self.page.wait_for_selector(LIVE)
        return self.page

    def shot(self, name: str, full_page: bool = True) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser):
    t = Tab(browser)
    yield t
    t.close()
    assert t.errors == []


def submit(monitored, fn, *args, **options):
    with monitored.app.app_context():
        return basic.celery.submit(fn, *args, **options)


def seen(monitored, future, *states):
    return monitored.wait_for(
        lambda: (t := monitored.service.task(future.id)) and t["state"] in states and t
    )


@pytest.fixture(scope="module")
def history(monitored):
    """A few finished tasks so every page has something to show."""
    futures = [submit(monitored, basic.add, i, i) for i in range(4)]
    bad = submit(monitored, basic.fail, "broken on purpose")
    for f in futures:
        seen(monitored, f, "SUCCESS")
    return seen(monitored, bad, "FAILURE")


def test_every_page_loads_without_console_errors(monitored, server, browser, tab, history):
    base = f"{server}/monitor"
    worker = monitored.worker_name
    pages = [
        ("workers", f"{base}/", True),
        ("worker-pool", f"{base}/worker/{worker}", True),
        ("worker-queues", f"{base}/worker/{worker}?tab=queues", True),
        ("worker-tasks", f"{base}/worker/{worker}?tab=tasks", True),
        ("worker-limits", f"{base}/worker/{worker}?tab=limits", True),
        ("worker-config", f"{base}/worker/{worker}?tab=config", True),
        ("worker-system", f"{base}/worker/{worker}?tab=system", True),
        ("tasks", f"{base}/tasks", True),
        ("task-failed", f"{base}/task/{history['uuid']}", True),
        ("broker", f"{base}/broker", True),
        ("charts", f"{base}/charts?window=15m", False),
    ]
    for name, url, live in pages:
        page = tab.open(url, live=live)
        assert page.locator("main").inner_text().strip(), name
        tab.shot(name)
    assert tab.page.locator("#chart-throughput rect.bar-ok").count() >= 1
    # dark mode, and a phone
    tab.page.emulate_media(color_scheme="dark")
    tab.open(f"{base}/tasks")
    tab.shot("tasks-dark")
    tab.open(f"{base}/task/{history['uuid']}")
    tab.shot("task-failed-dark")
    tab.page.set_viewport_size({"width": 390, "height": 844})
    tab.open(f"{base}/")
    tab.shot("workers-phone-dark")
    tab.page.emulate_media(color_scheme="light")
    tab.open(f"{base}/tasks")
    tab.shot("tasks-phone")
    width = tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the page must not scroll sideways on a phone (tables scroll inside)"


def test_copy_buttons_copy_the_id_and_the_traceback(server, tab, history):
    tab.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = tab.open(f"{server}/monitor/task/{history['uuid']}")
    page.click("button:text('Copy id')")
    page.locator(".toast.ok").first.wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == history["uuid"]
    page.click("h2 >> button:text('Copy')")
    page.wait_for_function("navigator.clipboard.readText().then(t => t.includes('broken on'))")
    assert page.evaluate("navigator.clipboard.readText()").startswith("Traceback")


def test_theme_switch_forces_dark_and_is_remembered(server, tab):
    page = tab.open(f"{server}/monitor/")
    page.click("#theme")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.reload()
    page.wait_for_selector(LIVE)
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert (
        page.evaluate("getComputedStyle(document.body).backgroundColor") == bg == "rgb(18, 21, 17)"
    )


def test_running_task_appears_and_changes_state_live(monitored, server, tab):
    page = tab.open(f"{server}/monitor/tasks")
    page.evaluate("window.notReloaded = true")
    future = submit(monitored, basic.sleep, 1.5)
    row = page.locator(f'tr[data-task="{future.id}"]')
    row.wait_for()
    page.wait_for_selector(f'tr[data-task="{future.id}"][data-state="STARTED"]')
    tab.shot("tasks-live-started", full_page=False)
    page.wait_for_selector(f'tr[data-task="{future.id}"][data-state="SUCCESS"]', timeout=10_000)
    assert "SUCCESS" in row.inner_text()
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("tbody tr[data-task]").first.get_attribute("data-task") == future.id


def test_workers_dashboard_counts_change_live(monitored, server, tab):
    page = tab.open(f"{server}/monitor/")
    cell = page.locator(f'tr[data-worker="{monitored.worker_name}"] td').nth(5)
    before = int(cell.inner_text())
    seen(monitored, submit(monitored, basic.add, 1, 1), "SUCCESS")
    page.wait_for_function(
        "([sel, n]) => parseInt(document.querySelector(sel).cells[5].innerText) > n",
        arg=[f'tr[data-worker="{monitored.worker_name}"]', before],
    )
    row = page.locator(f'tr[data-worker="{monitored.worker_name}"]')
    page.fill("#worker-filter", "offline")
    row.wait_for(state="hidden")
    page.fill("#worker-filter", monitored.worker_name.split("@")[0])
    row.wait_for(state="visible")


def test_silent_worker_turns_offline_and_a_purged_one_disappears_live(monitored, server, tab):
    page = tab.open(f"{server}/monitor/")
    ghost = f"ghost-{time.monotonic_ns()}@nowhere"
    now = time.time()
    monitored.service.apply_events(
        [
            {"type": "worker-online", "hostname": ghost, "timestamp": now, "freq": 0.5},
            {"type": "worker-heartbeat", "hostname": ghost, "timestamp": now, "freq": 0.5},
        ]
    )
    page.wait_for_selector(f'tr[data-worker="{ghost}"][data-online="online"]')
    # no more heartbeats and no worker-offline event: it expires after 2 x freq
    page.wait_for_selector(f'tr[data-worker="{ghost}"][data-online="offline"]', timeout=8_000)
    tab.shot("workers-offline", full_page=False)
    assert monitored.service.purge_worker(ghost)
    page.wait_for_selector(f'tr[data-worker="{ghost}"]', state="detached")


def test_worker_page_counters_change_live(monitored, server, tab):
    page = tab.open(f"{server}/monitor/worker/{monitored.worker_name}?tab=queues")
    processed = page.locator(".stat", has_text="Processed").locator("b")
    before = int(processed.inner_text())
    seen(monitored, submit(monitored, basic.add, 3, 3), "SUCCESS")
    page.wait_for_function(
        "n => parseInt([...document.querySelectorAll('.stat')].find("
        "s => s.innerText.startsWith('Processed')).querySelector('b').innerText) > n",
        arg=before,
    )


def test_task_list_sorted_otherwise_offers_new_tasks_instead_of_inserting(monitored, server, tab):
    page = tab.open(f"{server}/monitor/tasks?sort=name")
    rows = page.locator("tbody tr[data-task]").count()
    future = submit(monitored, basic.add, 4, 4)
    page.wait_for_selector("#new-tasks:not([hidden])")
    assert page.locator(f'tr[data-task="{future.id}"]').count() == 0
    assert page.locator("tbody tr[data-task]").count() == rows
    page.click("#new-tasks")
    page.wait_for_selector(f'tr[data-task="{future.id}"]')


def test_task_page_updates_live_and_terminate_revokes_a_running_task(monitored, server, tab):
    future = submit(monitored, basic.sleep, 30)
    seen(monitored, future, "STARTED")
    page = tab.open(f"{server}/monitor/task/{future.id}")
    assert page.inner_text("#task-state") == "STARTED"
    tab.shot("task-started", full_page=False)
    page.click("#btn-terminate")
    page.wait_for_selector('#task-state:text-is("REVOKED")')
    page.locator(".toast").first.wait_for()
    tab.shot("task-terminated", full_page=False)
    assert seen(monitored, future, "REVOKED")


def test_revoke_button_revokes_a_waiting_task(monitored, server, tab):
    future = submit(monitored, basic.add, 5, 5, countdown=2)
    seen(monitored, future, "RECEIVED")
    page = tab.open(f"{server}/monitor/task/{future.id}")
    page.click("#btn-revoke")
    page.locator(".toast.ok").first.wait_for()
    page.wait_for_selector('#task-state:text-is("REVOKED")', timeout=10_000)


def test_retry_button_sends_the_task_again_and_follows_it(monitored, server, tab, history):
    page = tab.open(f"{server}/monitor/task/{history['uuid']}")
    page.click("#btn-retry")
    page.wait_for_url(lambda url: "/monitor/task/" in url and history["uuid"] not in url)
    page.wait_for_selector(LIVE)
    page.wait_for_selector('#task-state:text-is("FAILURE")')
    assert "broken on purpose" in page.inner_text("#task-args")


def test_pool_grow_button_grows_the_worker_pool(monitored, server, tab):
    name = monitored.worker_name
    page = tab.open(f"{server}/monitor/worker/{name}")
    size = int(page.inner_text("#pool-size"))
    page.click("#btn-grow")
    page.locator(".toast.ok").first.wait_for()
    page.wait_for_url("**refresh=1**")

    def pool_size() -> int:
        page.goto(f"{server}/monitor/worker/{name}?refresh=1")
        return int(page.inner_text("#pool-size"))

    monitored.wait_for(lambda: pool_size() == size + 1, timeout=10, interval=0.5)
    tab.shot("worker-pool-grown", full_page=False)
    page.wait_for_selector(LIVE)
    page.click("#btn-shrink")
    page.locator(".toast.ok").first.wait_for()
    monitored.wait_for(lambda: pool_size() == size, timeout=10, interval=0.5)


def test_pages_work_under_a_prefix_behind_a_reverse_proxy(monitored, browser, tmp_path):
    app = make_monitored_app(
        monitored.broker, str(tmp_path), CELERY_MONITOR_URL_PREFIX="/ops/celery"
    )
    t = Tab(browser)
    try:
        wsgi = behind_proxy(ProxyFix(app.wsgi_app, x_prefix=1), "/edge")
        with serving(wsgi) as url:
            page = t.open(f"{url}/edge/ops/celery/")
            page.wait_for_selector(f'tr[data-worker="{monitored.worker_name}"]')
            page.click("nav.nav >> text=Tasks")
            page.wait_for_url(f"{url}/edge/ops/celery/tasks")
            page.wait_for_selector(LIVE)
            future = submit(monitored, basic.add, 2, 3)
            page.wait_for_selector(f'tr[data-task="{future.id}"][data-state="SUCCESS"]')
            page.click(f'tr[data-task="{future.id}"] a.strong')
            page.wait_for_url(f"{url}/edge/ops/celery/task/{future.id}")
            page.wait_for_selector(LIVE)
            t.shot("prefixed-task")
            assert page.evaluate("getComputedStyle(document.body).margin") == "0px"
    finally:
        t.close()
        app.extensions["celerymon"].shutdown()
    assert t.errors == []


def test_pages_work_with_websockets_blocked(monitored, server, browser, history):
    t = Tab(browser)
    try:
        t.page.add_init_script("delete window.WebSocket")
        page = t.open(f"{server}/monitor/tasks", live=False)
        page.wait_for_selector('#live[data-state="off"]')
        assert page.locator("tbody tr[data-task]").count() >= 1
        page.fill("#search", "name:fail")
        page.click("button:text('Search')")
        page.wait_for_url("**search=name%3Afail**")
        assert history["uuid"] in page.inner_text("#tasks-table")
    finally:
        t.close()
    assert t.errors == []


def test_live_feed_reconnects_by_itself(server, tab):
    page = tab.open(f"{server}/monitor/")
    assert page.evaluate("window.celerymon.states") == ["reconnecting", "live"]
    page.evaluate("window.celerymon.socket.close()")
    page.wait_for_function("() => window.celerymon.connects === 2")  # no eval under the CSP
    page.wait_for_selector(LIVE)
    assert page.evaluate("window.celerymon.states") == [
        "reconnecting",
        "live",
        "reconnecting",
        "live",
    ]
