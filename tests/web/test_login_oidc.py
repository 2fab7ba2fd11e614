"""OpenID Connect login in real headless Chromium, against a local provider the test starts.

The provider (:mod:`tests.web.oidc_provider`) is authlib's server side on ``localhost``; the
monitored app (real Redis, real worker) is served by werkzeug on ``127.0.0.1``, so the browser
keeps the two apps' cookies apart. The app lets ``.*@example.com`` in; its role hook makes
alice an operator and everyone else a viewer.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from tests.apps import basic
from tests.web.conftest import run_monitored
from tests.web.oidc_provider import running
from tests.web.test_ui import Tab, browser, serving  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.browser

USERS = {
    "alice@example.com": {"email": "alice@example.com", "email_verified": True, "name": "Alice"},
    "bob@example.com": {"email": "bob@example.com", "email_verified": True, "name": "Bob"},
    "mallory@evil.org": {"email": "mallory@evil.org", "email_verified": True, "name": "M"},
    "eve@example.com": {"email": "eve@example.com", "email_verified": False, "name": "Eve"},
}


def role_of(user: Any) -> str:
    return "operator" if user.email == "alice@example.com" else "viewer"


@pytest.fixture(scope="module")
def idp():
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback, in tests only
    try:
        with running(USERS) as provider:
            yield provider
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def site(idp, redis_server, tmp_path_factory):
    with run_monitored(
        redis_server,
        tmp_path_factory,
        "oidc",
        CELERY_MONITOR_ALLOW_ANONYMOUS=False,
        CELERY_MONITOR_AUTH_PROVIDER="oidc",
        CELERY_MONITOR_OAUTH2_SERVER=idp.issuer,
        CELERY_MONITOR_OAUTH2_KEY=idp.client.client_id,
        CELERY_MONITOR_OAUTH2_SECRET=idp.client.secret,
        CELERY_MONITOR_AUTH=".*@example.com",
        CELERY_MONITOR_ROLE=role_of,
    ) as env:
        env.wait_for(lambda: env.service.worker(env.worker_name), timeout=30)
        with serving(env.app) as url:
            idp.client.redirect_uri = f"{url}/monitor/login/callback"
            yield env, url


def log_in(tab: Tab, url: str, email: str, start: str = "/monitor/tasks") -> Any:
    page = tab.page
    page.goto(url + start)
    assert re.search(r"/monitor/login\?next=", page.url), page.url
    page.click("#login-button")
    page.wait_for_url(re.compile(r"^http://localhost:\d+/authorize"))
    page.click(f"[id='as-{email}']")
    page.wait_for_load_state()
    return page


def test_login_flow_sets_a_strict_cookie_and_lands_on_the_page_asked_for(site, browser):  # noqa: F811
    env, url = site
    tab = Tab(browser)
    try:
        page = log_in(tab, url, "alice@example.com")
        assert page.url == f"{url}/monitor/tasks"
        assert page.locator("#user").inner_text() == "Alice · operator"
        cookie = next(
            c for c in tab.context.cookies(url + "/monitor/") if c["name"] == "celerymon_login"
        )
        assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (
            True,
            "Lax",
            "/monitor/",
        )
        assert cookie["secure"] is False  # plain http here; Secure over https
        assert tab.errors == []
    finally:
        tab.close()


def test_an_operator_revokes_from_the_page_and_a_forged_post_is_refused(site, browser):  # noqa: F811
    env, url = site
    tab = Tab(browser)
    try:
        page = log_in(tab, url, "alice@example.com")
        with env.app.app_context():
            future = basic.celery.submit(basic.sleep, 60)
        env.wait_for(lambda: (env.service.task(future.id) or {}).get("state") == "STARTED", 30)
        page.goto(f"{url}/monitor/task/{future.id}")
        # the same request without the page's CSRF token is refused
        forged = page.evaluate(
            """async (u) => { const r = await fetch(u, {method: "POST"});
                              return [r.status, (await r.json()).error]; }""",
            f"{url}/monitor/api/task/revoke/{future.id}",
        )
        assert forged[0] == 403 and forged[1].startswith("CSRF token missing or wrong")
        page.click("#btn-terminate")
        page.locator(".toast.ok").first.wait_for()
        env.wait_for(lambda: (env.service.task(future.id) or {}).get("state") == "REVOKED", 30)
    finally:
        tab.close()


def test_a_viewer_sees_no_controls_and_cannot_act(site, browser):  # noqa: F811
    env, url = site
    tab = Tab(browser)
    try:
        page = log_in(tab, url, "bob@example.com", start=f"/monitor/worker/{env.worker_name}")
        assert page.locator("#user").inner_text() == "Bob · viewer"
        assert page.locator("#btn-shutdown").count() == 0
        status = page.evaluate(
            """async (u) => { const t = document.querySelector('meta[name="csrf-token"]');
                              const r = await fetch(u, {method: "POST",
                                  headers: {"X-CSRFToken": t.content}});
                              return [r.status, (await r.json()).error]; }""",
            f"{url}/monitor/api/task/revoke/{'0' * 32}",
        )
        assert status == [403, "Bob has the role viewer; this needs the role operator"]
    finally:
        tab.close()


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        ("mallory@evil.org", "mallory@evil.org may not use this monitor"),
        ("eve@example.com", "the provider has not verified the address eve@example.com"),
    ],
)
def test_logins_outside_the_pattern_or_unverified_are_refused(site, browser, email, reason):  # noqa: F811
    _, url = site
    tab = Tab(browser)
    try:
        page = log_in(tab, url, email)
        assert "/monitor/login/callback" in page.url
        assert page.locator("h1").text_content() == "Login refused"
        assert reason in page.locator(".error-text").inner_text()
        assert [
            c for c in tab.context.cookies(url + "/monitor/") if c["name"] == "celerymon_login"
        ] == []
        assert page.goto(f"{url}/monitor/api/workers").status == 401
    finally:
        tab.close()


def test_logout_ends_the_session(site, browser):  # noqa: F811
    _, url = site
    tab = Tab(browser)
    try:
        page = log_in(tab, url, "alice@example.com")
        page.click("#logout")
        page.click("#logout-button")
        page.locator("#logged-out").wait_for()
        assert [
            c for c in tab.context.cookies(url + "/monitor/") if c["name"] == "celerymon_login"
        ] == []
        assert page.goto(f"{url}/monitor/api/workers").status == 401
    finally:
        tab.close()


def test_next_leads_only_to_this_host(site, browser):  # noqa: F811
    _, url = site
    tab = Tab(browser)
    try:
        page = log_in(tab, url, "alice@example.com",
                      start="/monitor/login?next=https://evil.example/x")  # fmt: skip
        assert page.url == f"{url}/monitor/"
    finally:
        tab.close()


def test_a_callback_without_the_login_state_is_refused(site):
    _, url = site
    resp = requests.get(f"{url}/monitor/login/callback?code=abc&state=forged", timeout=10)
    assert resp.status_code == 400
    assert "Login failed" in resp.text
    forged_cookie = {"celerymon_login": "eyJuIjoiYWRhIn0.forged.sig"}
    api = requests.get(f"{url}/monitor/api/workers", cookies=forged_cookie, timeout=10)
    assert api.status_code == 401
    assert api.json() == {"error": "log in first: logging in at /monitor/login"}
