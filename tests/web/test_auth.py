"""Who may see and do what: the route x role matrix from the URL map, the closed default, the
basic-auth and e-mail pattern rules, the flask-login role hook, CSRF and safe redirects.

The matrix tests send real requests through the real guard of a real app; a stand-in placed
right after the guard answers ``guard passed`` instead of running the handler, so that what is
measured is the guard's decision for every route, without side effects on a broker.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.security import generate_password_hash

from flask_celerymon import Celery, ConfigurationError
from flask_celerymon.web.auth import (
    ADMIN,
    ANYONE,
    METRICS,
    OPERATOR,
    PUBLIC,
    VIEWER,
    declared_level,
    email_allowed,
    parse_basic_auth,
    role_allows,
)

PREFIX = "/monitor"
PASSED = "guard passed"
TASK_ID = str(uuid.UUID(int=7))

#: What each route of the blueprint needs. A new route fails the matrix test until it is
#: declared in its module (``@requires(...)``) and listed here.
EXPECTED: dict[str, str] = {
    "celerymon.healthcheck": PUBLIC,
    "celerymon.assets": ANYONE,
    "celerymon.login": ANYONE,
    "celerymon.login_authorize": ANYONE,
    "celerymon.login_callback": ANYONE,
    "celerymon.logout": ANYONE,
    "celerymon.metrics": METRICS,
    # pages and the live feed
    "celerymon.index": VIEWER,
    "celerymon.workers": VIEWER,
    "celerymon.worker": VIEWER,
    "celerymon.tasks": VIEWER,
    "celerymon.tasks_datatable": VIEWER,
    "celerymon.task": VIEWER,
    "celerymon.broker": VIEWER,
    "celerymon.charts": VIEWER,
    "celerymon.live": VIEWER,
    # the read API
    "celerymon.api_list_workers": VIEWER,
    "celerymon.api_list_tasks": VIEWER,
    "celerymon.api_task_types": VIEWER,
    "celerymon.api_queue_lengths": VIEWER,
    "celerymon.api_task_info": VIEWER,
    "celerymon.api_task_result": VIEWER,
    "celerymon.api_queue_messages": VIEWER,
    "celerymon.api_openapi_document": VIEWER,
    "celerymon.api_not_found": VIEWER,
    # acting on tasks
    "celerymon.api_task_revoke": OPERATOR,
    "celerymon.api_task_abort": OPERATOR,
    "celerymon.api_task_retry": OPERATOR,
    "celerymon.api_task_apply": OPERATOR,
    "celerymon.api_task_async_apply": OPERATOR,
    "celerymon.api_task_send": OPERATOR,
    "celerymon.api_task_timeout": OPERATOR,
    "celerymon.api_task_rate_limit": OPERATOR,
    # acting on workers and queues, bulk actions
    "celerymon.api_worker_shutdown": ADMIN,
    "celerymon.api_worker_pool_restart": ADMIN,
    "celerymon.api_worker_pool_grow": ADMIN,
    "celerymon.api_worker_pool_shrink": ADMIN,
    "celerymon.api_worker_pool_autoscale": ADMIN,
    "celerymon.api_worker_add_consumer": ADMIN,
    "celerymon.api_worker_cancel_consumer": ADMIN,
    "celerymon.api_tasks_revoke": ADMIN,
    "celerymon.api_tasks_retry": ADMIN,
    "celerymon.api_queue_purge": ADMIN,
    "celerymon.api_queue_remove_message": ADMIN,
    # insight (web/insight.py): error groups, analytics, beat, alerts, canvas
    "celerymon.errors": VIEWER,
    "celerymon.error_group": VIEWER,
    "celerymon.analytics": VIEWER,
    "celerymon.beat": VIEWER,
    "celerymon.alerts": VIEWER,
    "celerymon.canvas_fragment": VIEWER,
    "celerymon.api_errors": VIEWER,
    "celerymon.api_error_group": VIEWER,
    "celerymon.api_analytics": VIEWER,
    "celerymon.api_analytics_series": VIEWER,
    "celerymon.api_beat": VIEWER,
    "celerymon.api_alerts": VIEWER,
    "celerymon.api_task_canvas": VIEWER,
    "celerymon.api_error_group_retry": OPERATOR,
    "celerymon.api_error_group_revoke": OPERATOR,
    "celerymon.api_beat_run": OPERATOR,
}

#: A value for each URL argument of the blueprint's routes.
SAMPLE_ARGS = {
    "name": "w@h",
    "hostname": "w@h",
    "task_id": TASK_ID,
    "uuid": TASK_ID,
    "queue": "celery",
    "filename": "celerymon.css",
    "rest": "no/such/route",
    "gid": "0123456789abcdef",
    "entry": "tick",
}

USERS = {
    "vera": ("v-pass", VIEWER),
    "otto": ("o-pass", OPERATOR),
    "ada": ("a-pass", ADMIN),
}
BASIC_AUTH = [f"{name}:{password}:{role}" for name, (password, role) in USERS.items()]


def make_app(**config: Any) -> Flask:
    """A monitored app on an in-memory broker, its handlers replaced after the guard."""
    app = Flask(f"authtest{uuid.uuid4().hex[:8]}")
    app.config.update(
        CELERY_BROKER_URL="memory://",
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=False,
        SECRET_KEY="test-secret",
    )
    app.config.update(config)
    Celery(app)
    funcs = app.before_request_funcs["celerymon"]
    assert funcs[0].__name__ == "guard"
    funcs.insert(1, lambda: (PASSED, 200))
    return app


def routes(app: Flask) -> list[tuple[str, str, str]]:
    """(endpoint, method, URL) for every method of every route of the monitor blueprint."""
    adapter = app.url_map.bind("localhost")
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("celerymon."):
            continue
        unknown = set(rule.arguments) - set(SAMPLE_ARGS)
        assert not unknown, f"{rule.rule}: add a sample value for {unknown} to SAMPLE_ARGS"
        values = {k: SAMPLE_ARGS[k] for k in rule.arguments}
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            url = adapter.build(rule.endpoint, values, method=method)
            out.append((rule.endpoint, method, url))
    return out


def basic(name: str) -> dict[str, str]:
    import base64

    password = USERS[name][0]
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def passed(resp: Any) -> bool:
    return resp.status_code == 200 and resp.get_data(as_text=True) == PASSED


# -- the matrix ----------------------------------------------------------------------------------


def test_every_route_declares_its_level_and_the_table_lists_it():
    app = make_app(CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH)
    endpoints = {e for e, _, _ in routes(app)}
    undeclared = sorted(e for e in endpoints if declared_level(app.view_functions[e]) is None)
    assert undeclared == [], "declare these views' level with @requires(...)"
    assert sorted(endpoints - set(EXPECTED)) == [], "new routes: list their level in EXPECTED"
    assert sorted(set(EXPECTED) - endpoints) == []
    wrong = {e: declared_level(app.view_functions[e]) for e in endpoints}
    assert {e: lvl for e, lvl in wrong.items() if lvl != EXPECTED[e]} == {}


def test_route_by_role_matrix_with_basic_auth():
    app = make_app(CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH, CELERY_MONITOR_METRICS_TOKEN="scrape")
    client = app.test_client()
    checked = 0
    for endpoint, method, url in routes(app):
        need = EXPECTED[endpoint]
        anonymous = client.open(url, method=method)
        if need in (PUBLIC, ANYONE):
            assert passed(anonymous), (endpoint, method, anonymous.status_code)
        else:
            assert anonymous.status_code == 401, (endpoint, method)
            assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="celerymon"')
        for name, (_, role) in USERS.items():
            resp = client.open(url, method=method, headers=basic(name))
            if role_allows(role, need):
                assert passed(resp), (endpoint, method, name, resp.status_code)
            else:
                assert resp.status_code == 403, (endpoint, method, name)
                assert f"{name} has the role {role}; this needs the role {need}" in (
                    resp.get_data(as_text=True)
                ), (endpoint, method, name)
            checked += 1
    assert checked >= 3 * len(EXPECTED)


def test_a_wrong_password_is_refused_on_every_route_but_the_health_check():
    app = make_app(CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH)
    client = app.test_client()
    for endpoint, method, url in routes(app):
        resp = client.open(url, method=method, auth=("ada", "wrong"))
        if EXPECTED[endpoint] == PUBLIC:
            assert passed(resp)
        else:
            assert resp.status_code == 401, (endpoint, method)
            assert "wrong user name or password" in resp.get_data(as_text=True)


@pytest.mark.parametrize("mode", [{}, {"CELERY_MONITOR_READ_ONLY": True}])
def test_without_authentication_a_production_app_refuses_every_route_but_the_health_check(mode):
    app = make_app(**mode)
    assert not app.debug and not app.testing
    client = app.test_client()
    for endpoint, method, url in routes(app):
        resp = client.open(url, method=method)
        if endpoint == "celerymon.healthcheck":
            assert passed(resp)
            continue
        assert resp.status_code == 403, (endpoint, method, resp.status_code)
        body = resp.get_data(as_text=True)
        for setting in (
            "CELERY_MONITOR_BASIC_AUTH",
            "CELERY_MONITOR_AUTH_PROVIDER",
            "CELERY_MONITOR_ROLE",
            "CELERY_MONITOR_ALLOW_ANONYMOUS",
        ):
            assert setting in body, (endpoint, setting)


def test_the_refusal_of_an_unconfigured_monitor_is_json_for_the_api_and_a_page_for_pages():
    client = make_app().test_client()
    api = client.get(f"{PREFIX}/api/workers")
    assert api.status_code == 403 and api.is_json
    assert api.json["error"].startswith("the monitor has no authentication configured")
    page = client.get(f"{PREFIX}/tasks")
    assert page.status_code == 403 and page.mimetype == "text/html"
    assert "has no authentication configured" in page.get_data(as_text=True)


@pytest.mark.parametrize("mode", ["DEBUG", "TESTING"])
def test_debug_and_testing_apps_without_authentication_are_open(mode):
    app = make_app(**{mode: True})
    client = app.test_client()
    for endpoint, method, url in routes(app):
        assert passed(client.open(url, method=method)), (endpoint, method)


def test_debug_mode_does_not_open_a_monitor_that_has_authentication():
    client = make_app(DEBUG=True, CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH).test_client()
    assert client.get(f"{PREFIX}/api/workers").status_code == 401


def test_allow_anonymous_opens_everything_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="flask_celerymon.web.auth"):
        app = make_app(CELERY_MONITOR_ALLOW_ANONYMOUS=True)
    assert (
        "CELERY_MONITOR_ALLOW_ANONYMOUS is on: anyone who can reach the monitor may act as "
        "admin without logging in"
    ) in caplog.messages
    client = app.test_client()
    for endpoint, method, url in routes(app):
        assert passed(client.open(url, method=method)), (endpoint, method)


def test_allow_anonymous_as_a_role_gives_that_role_to_everyone_not_logged_in():
    app = make_app(CELERY_MONITOR_ALLOW_ANONYMOUS=VIEWER, CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH)
    client = app.test_client()
    assert passed(client.get(f"{PREFIX}/api/workers"))
    refused = client.post(f"{PREFIX}/api/task/revoke/{TASK_ID}")
    assert refused.status_code == 403
    assert refused.json["error"] == "anonymous has the role viewer; this needs the role operator"
    assert passed(client.post(f"{PREFIX}/api/task/revoke/{TASK_ID}", headers=basic("otto")))


def test_metrics_take_their_bearer_token_or_a_viewer_or_are_opened_by_a_setting():
    app = make_app(CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH, CELERY_MONITOR_METRICS_TOKEN="s3cret")
    client = app.test_client()
    url = f"{PREFIX}/metrics"
    assert passed(client.get(url, headers={"Authorization": "Bearer s3cret"}))
    assert client.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(url).status_code == 401
    assert passed(client.get(url, headers=basic("vera")))
    # the token opens the metrics only
    other = client.get(f"{PREFIX}/api/workers", headers={"Authorization": "Bearer s3cret"})
    assert other.status_code == 401
    public = make_app(CELERY_MONITOR_METRICS_PUBLIC=True).test_client()
    assert passed(public.get(url))
    assert public.get(f"{PREFIX}/api/workers").status_code == 403


def test_hashed_passwords_are_accepted():
    users = {
        "ada": {"password": generate_password_hash("a-pass"), "role": ADMIN},
        "vera": generate_password_hash("v-pass", method="pbkdf2:sha256"),
    }
    client = make_app(CELERY_MONITOR_BASIC_AUTH=users).test_client()
    url = f"{PREFIX}/api/worker/shutdown/w@h"
    assert passed(client.post(url, headers=basic("ada")))
    assert passed(client.post(url, headers=basic("ada")))  # remembered: same answer
    assert client.post(url, auth=("ada", "a-pas")).status_code == 401
    # vera has no role in her entry: CELERY_MONITOR_DEFAULT_ROLE (admin, as in Flower)
    assert passed(client.post(url, headers=basic("vera")))


# -- settings ------------------------------------------------------------------------------------


def test_flower_basic_auth_forms_parse_with_roles_and_hashes():
    hashed = generate_password_hash("pw")  # scrypt:32768:8:1$salt$hex: has colons
    users = parse_basic_auth(f"ann:one,bob:two:viewer,cy:{hashed}:operator,di:{hashed}", ADMIN)
    assert {n: (u.password, u.role) for n, u in users.items()} == {
        "ann": ("one", ADMIN),
        "bob": ("two", VIEWER),
        "cy": (hashed, OPERATOR),
        "di": (hashed, ADMIN),
    }
    assert users["cy"].check("pw") and not users["cy"].check("pw2")
    assert users["ann"].check("one") and not users["ann"].check("one ")
    assert parse_basic_auth(["x:a,b:c"], VIEWER)["x"].password == "a,b:c"
    assert "one" not in repr(users["ann"])


@pytest.mark.parametrize(
    "method", ["scrypt", "pbkdf2:sha256:600000", "pbkdf2:sha256:1000", "scrypt:16384:8:1"]
)
def test_every_refused_basic_auth_attempt_costs_one_hash_check_of_the_same_method(
    monkeypatch, method
):
    """An unknown name, a wrong plain password and a wrong hashed one cost the same: the
    time of a refusal does not tell which user names exist (they did: 3 ms vs 170 ms)."""
    from flask_celerymon.web import auth

    pwhash = generate_password_hash("h-pass", method)
    method = pwhash.split("$", 1)[0]  # with werkzeug's defaults filled in
    users = ["plain:p-pass:viewer", f"hashed:{pwhash}:admin"]
    app = make_app(CELERY_MONITOR_BASIC_AUTH=users)
    checks: list[str] = []
    real = auth.check_password_hash

    def counting(pwhash: str, password: str) -> bool:
        checks.append(pwhash.split("$", 1)[0])
        return real(pwhash, password)

    monkeypatch.setattr(auth, "check_password_hash", counting)
    client = app.test_client()
    url = f"{PREFIX}/api/workers"
    for name, password in [("nobody", "x"), ("plain", "wrong"), ("hashed", "wrong")]:
        checks.clear()
        resp = client.get(url, auth=(name, password))
        assert resp.status_code == 401, name
        assert checks == [method], name
    # the right passwords pass; a hashed one is checked once, then remembered
    for name, password, cost in [("plain", "p-pass", []), ("hashed", "h-pass", [method])]:
        for expected in (cost, []):
            checks.clear()
            assert client.get(url, auth=(name, password)).status_code == 200, name
            assert checks == expected, name


def test_plain_basic_auth_passwords_alone_cost_no_hash_check(monkeypatch):
    from flask_celerymon.web import auth

    app = make_app(CELERY_MONITOR_BASIC_AUTH="ann:one,bob:two")
    monkeypatch.setattr(auth, "check_password_hash", lambda *a: pytest.fail("hash checked"))
    client = app.test_client()
    for name, password, status in [("nobody", "x", 401), ("ann", "two", 401), ("ann", "one", 200)]:
        assert client.get(f"{PREFIX}/api/workers", auth=(name, password)).status_code == status


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nopassword", "CELERY_MONITOR_BASIC_AUTH: 'nopassword:***' is not 'user:password'"),
        (":pw", "CELERY_MONITOR_BASIC_AUTH: 'an entry' is not 'user:password'"),
        ("a:1,a:2", "CELERY_MONITOR_BASIC_AUTH names the user 'a' twice"),
        ({"a": {"password": "x", "role": "root"}}, "CELERY_MONITOR_BASIC_AUTH['a']: role must"),
        ({"a": {"pw": "x"}}, "CELERY_MONITOR_BASIC_AUTH['a'] must be a password or"),
    ],
)
def test_bad_basic_auth_entries_name_the_key_and_hide_the_password(value, message):
    with pytest.raises(ConfigurationError) as info:
        make_app(CELERY_MONITOR_BASIC_AUTH=value)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("CELERY_MONITOR_ALLOW_ANONYMOUS", "root", "CELERY_MONITOR_ALLOW_ANONYMOUS must be"),
        ("CELERY_MONITOR_AUTH_PROVIDER", "facebook", "CELERY_MONITOR_AUTH_PROVIDER must be"),
        ("CELERY_MONITOR_ROLE", "admin", "CELERY_MONITOR_ROLE must be None or a function"),
        ("CELERY_MONITOR_AUTH", ".*@a.com|b@c.com", "CELERY_MONITOR_AUTH '.*@a.com|b@c.com' mixes"),
        ("CELERY_MONITOR_AUTH", "a@*.com", "CELERY_MONITOR_AUTH 'a@*.com' has a '*' in the do"),
        ("CELERY_MONITOR_AUTH", ".*@.*.com", "CELERY_MONITOR_AUTH '.*@.*.com' has more than one"),
        ("CELERY_MONITOR_AUTH", "*@x.com", "CELERY_MONITOR_AUTH '*@x.com': a wildcard is"),
    ],
)
def test_bad_access_settings_fail_at_init_app(key, value, message):
    provider = {"CELERY_MONITOR_AUTH_PROVIDER": "google"} if key == "CELERY_MONITOR_AUTH" else {}
    with pytest.raises(ConfigurationError) as info:
        make_app(**{key: value, **provider})
    assert str(info.value).startswith(message)


def test_an_oauth_provider_needs_its_client_credentials_and_a_secret_key():
    with pytest.raises(ConfigurationError, match="needs CELERY_MONITOR_OAUTH2_KEY and"):
        make_app(CELERY_MONITOR_AUTH_PROVIDER="google", CELERY_MONITOR_AUTH=".*@x.com")
    with pytest.raises(ConfigurationError, match="needs CELERY_MONITOR_OAUTH2_SERVER"):
        make_app(
            CELERY_MONITOR_AUTH_PROVIDER="oidc",
            CELERY_MONITOR_OAUTH2_KEY="k",
            CELERY_MONITOR_OAUTH2_SECRET="s",
        )
    with pytest.raises(ConfigurationError, match="needs the app's SECRET_KEY"):
        make_app(
            SECRET_KEY=None,
            CELERY_MONITOR_AUTH_PROVIDER="github",
            CELERY_MONITOR_OAUTH2_KEY="k",
            CELERY_MONITOR_OAUTH2_SECRET="s",
        )
    with pytest.raises(ConfigurationError, match="CELERY_MONITOR_AUTH .an e-mail pattern. needs"):
        make_app(CELERY_MONITOR_AUTH=".*@x.com")


@pytest.mark.parametrize(
    ("pattern", "email", "allowed"),
    [
        ("alice@example.com", "alice@example.com", True),
        ("alice@example.com", "Alice@Example.com", True),
        ("alice@example.com", "alice@example.com.evil", False),
        ("alice@example.com|bob@example.com", "bob@example.com", True),
        ("alice@example.com|bob@example.com", "carol@example.com", False),
        (".*@example.com", "anyone.here@example.com", True),
        (".*@example.com", "x@example.com.evil.org", False),
        (".*@example.com", "x@sub.example.com", False),
        (".*@example.com", "@example.com", False),
        (".*@example.com", "a@b@example.com", False),
        ("a.b@example.com", "axb@example.com", False),
    ],
)
def test_flower_email_patterns(pattern, email, allowed):
    assert email_allowed(pattern, email) is allowed


# -- flask-login and CSRF --------------------------------------------------------------------------


class HostUser:
    def __init__(self, user_id: str, role: str | None) -> None:
        self.id = user_id
        self.name = user_id
        self.monitor_role = role
        self.is_authenticated = True
        self.is_active = True
        self.is_anonymous = False

    def get_id(self) -> str:
        return self.id


HOST_USERS = {"vic": VIEWER, "opal": OPERATOR, "nobody": None}


def make_host_app(use_decorator: bool = False, **config: Any) -> Flask:
    """A host app with flask-login; the monitor takes its users, roles from a hook."""
    from flask_login import LoginManager, login_user

    def role(user: HostUser) -> str | None:
        return user.monitor_role

    if not use_decorator:
        config.setdefault("CELERY_MONITOR_ROLE", role)
    app = Flask(f"host{uuid.uuid4().hex[:8]}")
    app.config.update(
        CELERY_BROKER_URL="memory://",
        CELERY_START_LOCAL_WORKERS=False,
        CELERY_MONITOR_BLUEPRINT=True,
        CELERY_MONITOR_DB=False,
        SECRET_KEY="host-secret",
        **config,
    )
    manager = LoginManager(app)
    manager.login_view = "login"
    manager.user_loader(lambda uid: HostUser(uid, HOST_USERS[uid]) if uid in HOST_USERS else None)

    @app.route("/login")
    def login() -> str:
        return "host login page"

    @app.post("/login/<uid>")
    def do_login(uid: str) -> str:
        login_user(HostUser(uid, HOST_USERS[uid]))
        return "ok"

    ext = Celery()
    if use_decorator:
        ext.monitor_role(role)
    ext.init_app(app)
    return app


def test_embedded_monitor_takes_the_host_flask_login_user_and_its_role_hook():
    app = make_host_app()
    client = app.test_client()
    page = client.get(f"{PREFIX}/tasks")
    assert page.status_code == 302
    assert page.headers["Location"].startswith("/login?next=")
    api = client.get(f"{PREFIX}/api/tasks")
    assert api.status_code == 401
    assert api.json == {"error": "log in first: logging in to the app"}
    client.post("/login/vic")
    assert client.get(f"{PREFIX}/api/task/types").status_code == 200
    refused = client.post(f"{PREFIX}/api/task/revoke/{TASK_ID}")
    assert refused.json == {"error": "vic has the role viewer; this needs the role operator"}
    client.post("/login/nobody")
    no_role = client.get(f"{PREFIX}/api/task/types")
    assert no_role.status_code == 403
    assert no_role.json["error"].startswith("nobody has no role in the monitor")


def test_the_role_decorator_works_like_the_setting():
    client = make_host_app(use_decorator=True).test_client()
    client.post("/login/opal")
    assert client.get(f"{PREFIX}/api/task/types").status_code == 200


def test_a_role_hook_answering_nonsense_is_a_clear_error():
    app = make_host_app(CELERY_MONITOR_ROLE=lambda user: "root")
    client = app.test_client()
    client.post("/login/vic")
    resp = client.get(f"{PREFIX}/api/task/types")
    assert resp.status_code == 403
    assert re.fullmatch(
        r"the monitor's role hook answered 'root' for <.*HostUser object at .*>; it must "
        r"answer one of viewer, operator, admin or None",
        resp.json["error"],
    )


def test_cookie_logins_need_the_pages_csrf_token_for_mutations():
    app = make_host_app()
    client = app.test_client()
    client.post("/login/opal")
    page = client.get(f"{PREFIX}/tasks")
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.get_data(as_text=True))
    assert token, "the pages carry the token for their fetch() calls"
    url = f"{PREFIX}/api/task/revoke/{TASK_ID}"
    missing = client.post(url)
    assert missing.status_code == 403
    assert missing.json["error"].startswith("CSRF token missing or wrong")
    assert client.post(url, headers={"X-CSRFToken": "forged"}).status_code == 403
    # with the guard's stand-in in place, a passing request reaches it
    passing = make_csrf_passing(app)
    assert passing(client.post(url, headers={"X-CSRFToken": token.group(1)}))
    assert passing(client.post(url, data={"_csrf_token": token.group(1)}))
    # reads need no token
    assert client.get(f"{PREFIX}/api/task/types").status_code == 200


def test_every_mutation_route_needs_the_csrf_token_of_a_cookie_login():
    """From the URL map, so a new action (the insight group retry, run now...) cannot skip it."""
    app = make_host_app()
    client = app.test_client()
    client.post("/login/opal")
    page = client.get(f"{PREFIX}/errors")
    assert page.status_code == 200
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.get_data(as_text=True))
    assert token, "the insight pages carry the token for the js-action forms"
    mutations = [
        (endpoint, url)
        for endpoint, method, url in routes(app)
        if method not in ("GET", "HEAD", "OPTIONS")
        and role_allows(OPERATOR, EXPECTED[endpoint])
        and not getattr(app.view_functions[endpoint], "_celerymon_safe", False)
    ]
    assert {"celerymon.api_error_group_retry", "celerymon.api_beat_run"} <= {
        e for e, _ in mutations
    }
    for endpoint, url in mutations:
        missing = client.post(url)
        assert missing.status_code == 403, endpoint
        assert missing.json["error"].startswith("CSRF token missing or wrong"), endpoint
    passing = make_csrf_passing(app)
    for endpoint, url in mutations:
        assert passing(client.post(url, headers={"X-CSRFToken": token.group(1)})), endpoint


def make_csrf_passing(app: Flask) -> Any:
    funcs = app.before_request_funcs["celerymon"]
    funcs.insert(1, lambda: (PASSED, 200))
    return passed


def test_header_authenticated_clients_need_no_csrf_token():
    app = make_app(CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH)
    client = app.test_client()
    resp = client.post(f"{PREFIX}/api/task/revoke/{TASK_ID}", headers=basic("otto"))
    assert passed(resp)


def test_buttons_the_role_cannot_use_are_not_shown():
    from flask_login import login_user

    from flask_celerymon.web import views
    from flask_celerymon.web.auth import check_access

    app = make_host_app()
    shown = {}
    for uid in ("vic", "opal"):
        with app.test_request_context(f"{PREFIX}/tasks"):
            login_user(HostUser(uid, HOST_USERS[uid]))
            assert check_access() is None
            shown[uid] = (views.can(f"task/revoke/{TASK_ID}"), views.can("worker/shutdown/w@h"))
    assert shown == {"vic": (False, False), "opal": (True, False)}


# -- safe redirects ------------------------------------------------------------------------------


@given(st.text(max_size=60))
def test_next_is_only_ever_a_path_on_this_host(value):
    from urllib.parse import urlsplit

    from flask_celerymon.web.login import safe_next

    app = _next_app()
    with app.test_request_context("/"):
        target = safe_next(value)
    parts = urlsplit(target)
    assert target.startswith("/") and not target.startswith("//")
    assert not parts.scheme and not parts.netloc and "\\" not in target
    assert target in (value, f"{PREFIX}/")


@pytest.mark.parametrize(
    "value",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)",
     "evil.example", "/%0d%0aSet-Cookie:x", "\t//evil.example"],
)  # fmt: skip
def test_next_refuses_other_hosts(value):
    from flask_celerymon.web.login import safe_next

    with _next_app().test_request_context("/"):
        assert safe_next(value) in (f"{PREFIX}/", value) and not safe_next(value).startswith("//")
        if "evil" in value and not value.startswith("/%"):
            assert safe_next(value) == f"{PREFIX}/"


_NEXT_APP: list[Flask] = []


def _next_app() -> Flask:
    if not _NEXT_APP:
        _NEXT_APP.append(make_app(CELERY_MONITOR_BASIC_AUTH=BASIC_AUTH))
    return _NEXT_APP[0]


_NAME = st.text(st.characters(blacklist_characters=":,", blacklist_categories=("Cs",)), min_size=1)
_PASSWORD = st.text(st.characters(blacklist_characters=",", blacklist_categories=("Cs",)),
                    min_size=1)  # fmt: skip


@given(st.dictionaries(_NAME.map(str.strip).filter(bool), st.tuples(_PASSWORD, st.sampled_from(
    (None, VIEWER, OPERATOR, ADMIN))), min_size=1, max_size=5))  # fmt: skip
def test_any_flower_basic_auth_string_parses_back_to_its_users(users):
    entries = []
    for name, (password, role) in users.items():
        if password != password.strip() or password.rpartition(":")[2] in (VIEWER, OPERATOR, ADMIN):
            password = f"x{password.strip()}x"  # Flower strips entries; a ':role' tail is a role
            users[name] = (password, role)
        entries.append(f"{name}:{password}" + (f":{role}" if role else ""))
    parsed = parse_basic_auth(",".join(entries), OPERATOR)
    assert {n: (u.password, u.role) for n, u in parsed.items()} == {
        n: (p, r or OPERATOR) for n, (p, r) in users.items()
    }


def test_an_unreachable_login_provider_is_a_503_page_not_a_500():
    from tests.conftest import free_port

    app = make_app(
        CELERY_MONITOR_AUTH_PROVIDER="oidc",
        CELERY_MONITOR_OAUTH2_SERVER=f"http://127.0.0.1:{free_port()}",
        CELERY_MONITOR_OAUTH2_KEY="k",
        CELERY_MONITOR_OAUTH2_SECRET="s",
        CELERY_MONITOR_AUTH=".*@example.com",
    )
    app.before_request_funcs["celerymon"].pop(1)  # the real handlers
    resp = app.test_client().get(f"{PREFIX}/login/authorize")
    assert resp.status_code == 503
    assert "the login provider could not be reached" in resp.get_data(as_text=True)
    page = app.test_client().get(f"{PREFIX}/tasks")
    assert page.status_code == 302
    assert page.headers["Location"] == f"{PREFIX}/login?next=/monitor/tasks"


@pytest.mark.parametrize(
    ("address", "config", "open_locally"),
    [
        ("127.0.0.1", {}, True),
        ("localhost", {}, True),
        ("::1", {}, True),
        ("0.0.0.0", {"CELERY_MONITOR_ALLOW_ANONYMOUS": True}, False),
        ("10.1.2.3", {"CELERY_MONITOR_BASIC_AUTH": "a:b"}, False),
        ("127.0.0.1", {"CELERY_MONITOR_BASIC_AUTH": "a:b"}, False),
    ],
)
def test_which_standalone_monitors_are_open_locally(address, config, open_locally):
    from flask_celerymon.cli import _check_exposure

    settings = make_app(**config).extensions["celerymon"].settings
    assert _check_exposure(settings, address) is open_locally
