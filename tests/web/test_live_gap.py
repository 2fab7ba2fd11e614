"""A live page never misses a change made between its rendering and its websocket subscription
(issue 12, case 11), in real headless Chromium.

The change is forced into that gap: a WSGI middleware applies it when the page's websocket
request arrives, before the feed subscribes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from tests.web.conftest import make_monitored_app
from tests.web.test_ui import Tab, browser, serving  # noqa: F401 - the browser fixture

W = "gap@h"


@pytest.fixture
def app(tmp_path) -> Iterator[Flask]:
    app = make_monitored_app("memory://", str(tmp_path), CELERY_MONITOR_ENABLE_EVENTS=False)
    try:
        yield app
    finally:
        app.extensions["celerymon"].shutdown()


def in_the_gap(app: Flask, change: Callable[[], None]) -> Any:
    """``app``'s WSGI app, calling ``change()`` once when the first websocket request comes."""
    inner = app.wsgi_app
    done: list[bool] = []

    def wsgi(environ: dict, start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").endswith("/ws") and not done:
            done.append(True)
            change()
        return inner(environ, start_response)

    return wsgi


def ev(etype: str, uuid: str | None = None, **fields: Any) -> dict[str, Any]:
    d = {"type": etype, "hostname": W, "timestamp": time.time(), **fields}
    if uuid is not None:
        d["uuid"] = uuid
    return d


def test_a_task_that_ends_between_render_and_subscribe_shows_its_end(app, browser):  # noqa: F811
    svc = app.extensions["celerymon"].monitor
    svc.apply_events([ev("worker-online", freq=60.0), ev("task-received", "t1", name="app.job"),
                      ev("task-started", "t1")])  # fmt: skip
    wsgi = in_the_gap(app, lambda: svc.apply_events([ev("task-succeeded", "t1", result="42")]))
    tab = Tab(browser)
    try:
        with serving(wsgi) as url:
            page = tab.open(f"{url}/monitor/task/t1")
            page.wait_for_selector('#task-state:text-is("SUCCESS")', timeout=5_000)
            assert page.inner_text("#task-result") == "42"
        assert tab.errors == []
    finally:
        tab.close()


def test_a_task_list_shows_a_change_and_a_task_from_the_gap(app, browser):  # noqa: F811
    svc = app.extensions["celerymon"].monitor
    svc.apply_events([ev("worker-online", freq=60.0), ev("task-received", "old", name="app.job"),
                      ev("task-started", "old")])  # fmt: skip
    wsgi = in_the_gap(
        app,
        lambda: svc.apply_events(
            [ev("task-succeeded", "old"), ev("task-received", "new", name="app.job")]
        ),
    )
    tab = Tab(browser)
    try:
        with serving(wsgi) as url:
            page = tab.open(f"{url}/monitor/tasks")
            page.wait_for_selector('tr[data-task="new"]', timeout=5_000)
            page.wait_for_selector('tr[data-task="old"] :text-is("SUCCESS")', timeout=5_000)
            ids = page.eval_on_selector_all("tr[data-task]", "rs => rs.map(r => r.dataset.task)")
            assert ids == ["new", "old"]
        assert tab.errors == []
    finally:
        tab.close()
