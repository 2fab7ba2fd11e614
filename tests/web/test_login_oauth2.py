"""GitHub (Enterprise) and GitLab logins against the local provider, driven with ``requests``.

The provider (:mod:`tests.web.oidc_provider`) answers at GitHub Enterprise's and GitLab's paths;
the app (in-memory broker, production mode) is served by werkzeug in a thread. Each login walks
the real redirects: the app's authorize URL, the provider's login form, the callback.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from flask import Flask

from flask_celerymon import Celery
from tests.web.oidc_provider import running
from tests.web.test_ui import serving

USERS = {
    "alice@example.com": {
        "email": "alice@example.com",
        "name": "Alice",
        "emails": [
            {"email": "alice@private.org", "verified": True, "primary": True},
            {"email": "alice@example.com", "verified": True, "primary": False},
        ],
        "groups": {"acme/ops": 30, "acme": 10},
    },
    "bob@example.com": {
        "email": "bob@example.com",
        "name": "Bob",
        "emails": [
            {"email": "bob@example.com", "verified": False, "primary": False},
            {"email": "bob@other.org", "verified": True, "primary": True},
        ],
        "groups": {"acme/ops": 20},
    },
}


@pytest.fixture(scope="module")
def idp():
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback, in tests only
    try:
        with running(USERS) as provider:
            yield provider
    finally:
        mp.undo()


def served_app(idp: Any, **config: Any) -> Any:
    app = Flask(f"oauth{uuid.uuid4().hex[:8]}")
    app.config.update(
        CELERY_BROKER_URL="memory://",
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=False,
        SECRET_KEY="oauth-test",
        CELERY_MONITOR_OAUTH2_SERVER=idp.issuer,
        CELERY_MONITOR_OAUTH2_KEY=idp.client.client_id,
        CELERY_MONITOR_OAUTH2_SECRET=idp.client.secret,
        CELERY_MONITOR_AUTH=".*@example.com",
        **config,
    )
    Celery(app)
    return app


def log_in(idp: Any, url: str, email: str) -> tuple[requests.Session, requests.Response]:
    """Walk the login redirects as a browser would; returns the session and the callback answer."""
    idp.client.redirect_uri = f"{url}/monitor/login/callback"
    s = requests.Session()
    start = s.get(f"{url}/monitor/login/authorize?next=/monitor/tasks", allow_redirects=False,
                  timeout=10)  # fmt: skip
    assert start.status_code == 302 and start.headers["Location"].startswith(idp.issuer)
    back = s.post(start.headers["Location"], data={"email": email}, allow_redirects=False,
                  timeout=10)  # fmt: skip
    assert back.status_code == 302, back.text
    callback = s.get(back.headers["Location"], allow_redirects=False, timeout=10)
    return s, callback


def test_github_enterprise_login_uses_a_verified_address_matching_the_pattern(idp):
    app = served_app(idp, CELERY_MONITOR_AUTH_PROVIDER="github")
    with serving(app) as url:
        session, callback = log_in(idp, url, "alice@example.com")
        assert callback.status_code == 302
        assert callback.headers["Location"] == "/monitor/tasks"
        page = session.get(f"{url}/monitor/tasks", timeout=10)
        assert page.status_code == 200
        assert "alice@example.com · admin" in page.text  # CELERY_MONITOR_DEFAULT_ROLE
    app.extensions["celerymon"].shutdown()


def test_github_ignores_unverified_addresses(idp):
    app = served_app(idp, CELERY_MONITOR_AUTH_PROVIDER="github")
    with serving(app) as url:
        session, callback = log_in(idp, url, "bob@example.com")
        assert callback.status_code == 403
        assert "bob@other.org may not use this monitor" in callback.text
        assert session.get(f"{url}/monitor/api/tasks", timeout=10).status_code == 401
    app.extensions["celerymon"].shutdown()


def test_gitlab_login_needs_a_group_at_the_access_level(idp):
    app = served_app(
        idp,
        CELERY_MONITOR_AUTH_PROVIDER="gitlab",
        CELERY_MONITOR_GITLAB_GROUPS=["acme/ops"],
        CELERY_MONITOR_GITLAB_MIN_ACCESS_LEVEL=30,
        CELERY_MONITOR_ROLE=lambda user: "operator" if "acme/ops" in user.groups else None,
    )
    with serving(app) as url:
        session, callback = log_in(idp, url, "alice@example.com")
        assert callback.status_code == 302
        assert "Alice · operator" in session.get(f"{url}/monitor/tasks", timeout=10).text
        _, refused = log_in(idp, url, "bob@example.com")
        assert refused.status_code == 403
        assert (
            "bob@example.com is not a member (access level 30 or more) of any of the GitLab "
            "groups acme/ops"
        ) in refused.text
    app.extensions["celerymon"].shutdown()
