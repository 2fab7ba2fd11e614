"""The browser surface and the limits (``web/hardening.py``) through Flask's test client.

No worker is needed: everything here is decided before a request reaches a worker. The
broker and result backend are a real Redis. Route matrices are built from the app's URL map,
so a new route cannot slip past the headers, the body cap or the JSON depth limit. Real
browsers and a real served app are in ``test_ui_security.py`` and ``test_limits_served.py``.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.cli import make_monitor_app, monitor_limits
from flask_celerymon.errors import ConfigurationError
from flask_celerymon.web.hardening import (
    LOOPBACK_HOSTS,
    SECURITY_HEADERS,
    Gate,
    JSONTooDeep,
    host_is_pinned,
    host_is_trusted,
    json_depth,
    load_json,
)
from tests.web.conftest import make_monitored_app

TEMPLATES = Path(__file__).resolve().parents[2] / "flask_celerymon" / "templates" / "celerymon"
ADD = "tests.apps.basic.registered"
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.fixture
def make_app(redis_url, tmp_path):
    """Build monitored apps (extra config) on an emptied Redis database; shut them down after."""
    apps = []

    def make(**config: Any) -> Any:
        app = make_monitored_app(redis_url, str(tmp_path), **config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["celerymon"].shutdown()


def _sample_path(rule: Any) -> str:
    """A concrete path for ``rule``, each variable filled with a harmless value."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: "x", rule.rule)


def _monitor_rules(app: Any, method: str) -> list[Any]:
    return [
        r
        for r in app.url_map.iter_rules()
        if r.endpoint.startswith("celerymon.") and method in r.methods and not r.websocket
    ]


# -- headers ----------------------------------------------------------------------------------


def test_every_monitor_route_sends_the_security_headers_and_the_host_app_keeps_its_own(make_app):
    app = make_app()
    app.add_url_rule("/hello", "hello", lambda: "hi")
    client = app.test_client()
    rules = _monitor_rules(app, "GET")
    assert len(rules) > 20  # pages, API, metrics, assets
    for rule in rules:
        resp = client.get(_sample_path(rule))
        for name, value in SECURITY_HEADERS.items():
            assert resp.headers.get(name) == value, (rule.rule, resp.status_code, name)
    own = client.get("/hello")
    assert not set(SECURITY_HEADERS) & set(own.headers.keys())


def test_the_policy_forbids_framing_and_inline_script():
    csp = dict(
        part.strip().split(" ", 1)
        for part in SECURITY_HEADERS["Content-Security-Policy"].split(";")
    )
    assert csp["frame-ancestors"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["default-src"] == "'none'"
    assert "unsafe" not in SECURITY_HEADERS["Content-Security-Policy"]
    assert SECURITY_HEADERS["X-Frame-Options"] == "DENY"


class _InlineFinder(HTMLParser):
    """Collects what a strict CSP blocks: inline scripts, ``on*`` handlers, style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}={value!r}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.found.append(f"<{tag} {name}={value!r}>")
        if tag == "script":
            a = dict(attrs)
            if not a.get("src") and a.get("type") != "application/json":
                self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style> block")


def _inline(html: str) -> list[str]:
    finder = _InlineFinder()
    finder.feed(html)
    return finder.found


def test_the_inline_finder_finds_what_csp_blocks():
    html = (
        '<script>x()</script><a onclick="x()">a</a><p style="color:red">'
        '<a href="javascript:x()">b</a><style>p{}</style>'
        '<script src="/a.js"></script><script type="application/json">{}</script>'
    )
    assert len(_inline(html)) == 5


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_no_template_holds_inline_script_handlers_or_styles(template):
    source = (TEMPLATES / template).read_text(encoding="utf-8")
    source = re.sub(r"\{[{%#].*?[}%#]\}", "X", source, flags=re.S)  # Jinja out of the way
    assert _inline(source) == []


def test_every_rendered_page_holds_no_inline_script_handlers_or_styles(make_app):
    app = make_app()
    client = app.test_client()
    sent = client.post(f"/monitor/api/task/async-apply/{ADD}", json={"args": [1]})
    assert sent.status_code == 200, sent.get_data(as_text=True)
    task_id = sent.get_json()["task-id"]
    state = app.extensions["celerymon"]
    deadline = time.monotonic() + 30
    while state.monitor.task(task_id) is None:
        assert time.monotonic() < deadline, "the monitor never saw the task"
        time.sleep(0.05)
    pages = [
        "/monitor/",
        "/monitor/workers",
        "/monitor/tasks",
        f"/monitor/task/{task_id}",
        "/monitor/broker",
        "/monitor/charts",
        "/monitor/worker/nobody@nowhere",  # the error page
        # insight (web/insight.py); the beat page shows its "Run now" forms
        "/monitor/errors",
        "/monitor/errors/0123456789abcdef",  # its error page
        "/monitor/analytics",
        f"/monitor/analytics?window=15m&name={ADD}",
        "/monitor/beat",
        "/monitor/alerts",
        f"/monitor/canvas/{task_id}",
    ]
    for path in pages:
        resp = client.get(path)
        assert resp.mimetype == "text/html", path
        assert _inline(resp.get_data(as_text=True)) == [], path


# -- host names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "trusted", "expected"),
    [
        ("localhost:5555", LOOPBACK_HOSTS, True),
        ("127.0.0.1:5555", LOOPBACK_HOSTS, True),
        ("[::1]:5555", LOOPBACK_HOSTS, True),
        ("[::1]", ["[::1]"], True),
        ("LocalHost:5555", LOOPBACK_HOSTS, True),
        ("localhost.:5555", LOOPBACK_HOSTS, True),
        ("evil.example:5601", LOOPBACK_HOSTS, False),
        ("localhost.evil.example", LOOPBACK_HOSTS, False),
        ("127.0.0.1.nip.io", LOOPBACK_HOSTS, False),
        ("user@localhost", LOOPBACK_HOSTS, False),
        ("localhost:99999", LOOPBACK_HOSTS, False),
        ("localhost/x", LOOPBACK_HOSTS, False),
        ("", LOOPBACK_HOSTS, False),
        ("monitor.example.com", [".example.com"], True),
        ("example.com", [".example.com"], True),
        ("badexample.com", [".example.com"], False),
        ("monitor.example.com", ["example.com"], False),
    ],
)
def test_host_is_trusted(host, trusted, expected):
    assert host_is_trusted(host, trusted) is expected


def test_trusted_hosts_refuse_another_host_name_on_every_monitor_route(make_app):
    app = make_app(CELERY_MONITOR_TRUSTED_HOSTS=["monitor.example.com"])
    app.add_url_rule("/hello", "hello", lambda: "hi")
    client = app.test_client()
    for rule in _monitor_rules(app, "GET"):
        resp = client.get(_sample_path(rule), headers={"Host": "evil.example:5601"})
        assert resp.status_code == 400, rule.rule
        assert resp.get_json() == {
            "error": "host 'evil.example:5601' is not served by this monitor (it serves "
            "monitor.example.com); add the name to CELERY_MONITOR_TRUSTED_HOSTS if it is yours"
        }
    # a rebinding page sends its own name as Host and the same Origin: still refused
    resp = client.post(
        f"/monitor/api/task/async-apply/{ADD}",
        json={"args": [1]},
        headers={"Host": "evil.example:5601", "Origin": "http://evil.example:5601"},
    )
    assert resp.status_code == 400
    assert client.get("/monitor/", headers={"Host": "monitor.example.com"}).status_code == 200
    # the host app's own routes are its business
    assert client.get("/hello", headers={"Host": "evil.example"}).status_code == 200


def test_flask_trusted_hosts_is_honoured_for_the_monitor(make_app):
    app = make_app(TRUSTED_HOSTS=["monitor.example.com"])
    client = app.test_client()
    assert client.get("/monitor/", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/monitor/", headers={"Host": "monitor.example.com"}).status_code == 200


# -- anonymous access under a DNS name (rebinding) --------------------------------------------

#: Every way the monitor lets a request in without credentials.
ANONYMOUS_WAYS = [
    {"CELERY_MONITOR_ALLOW_ANONYMOUS": True},
    {"CELERY_MONITOR_ALLOW_ANONYMOUS": "viewer"},
    {"CELERY_MONITOR_ALLOW_ANONYMOUS": False, "TESTING": True},
    {"CELERY_MONITOR_ALLOW_ANONYMOUS": False, "DEBUG": True},
]

#: The 403 of an anonymous request under the name ``evil.example:5601``.
REBINDING_REFUSAL = (
    "anonymous access to the monitor is served only under an IP address or localhost, not "
    "under the name 'evil.example:5601': a hostile page can make any name it owns point here "
    "(DNS rebinding); list the names you serve the monitor under in "
    "CELERY_MONITOR_TRUSTED_HOSTS (or Flask's TRUSTED_HOSTS), or configure authentication"
)


@pytest.mark.parametrize("config", ANONYMOUS_WAYS, ids=lambda c: "-".join(map(str, c.values())))
def test_anonymous_access_under_a_dns_name_is_refused_on_every_monitor_route(make_app, config):
    app = make_app(**config)
    app.add_url_rule("/hello", "hello", lambda: "hi")
    client = app.test_client()
    for rule in _monitor_rules(app, "GET"):
        if rule.endpoint == "celerymon.healthcheck":
            continue  # public: it carries no task data and drives nothing
        resp = client.get(_sample_path(rule), headers={"Host": "evil.example:5601"})
        assert resp.status_code == 403, rule.rule
        assert REBINDING_REFUSAL in html.unescape(resp.get_data(as_text=True)), rule.rule
    # a rebinding page acting: its own name as Host, the same Origin
    resp = client.post(
        f"/monitor/api/task/async-apply/{ADD}",
        json={"args": [1]},
        headers={"Host": "evil.example:5601", "Origin": "http://evil.example:5601"},
    )
    assert resp.status_code == 403
    assert resp.get_json() == {"error": REBINDING_REFUSAL}
    resp = client.get(
        "/monitor/ws", headers={**UPGRADE, "Host": "evil.example:5601"}
    )  # the live feed's handshake too
    assert resp.status_code == 403
    # names no other site can own stay open, and the host app's routes are its business
    for host in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "myapp.localhost", "10.1.2.3"):
        assert client.get("/monitor/api/workers", headers={"Host": host}).status_code == 200, host
    assert client.get("/hello", headers={"Host": "evil.example"}).status_code == 200


@pytest.mark.parametrize("key", ["CELERY_MONITOR_TRUSTED_HOSTS", "TRUSTED_HOSTS"])
def test_anonymous_access_under_a_listed_trusted_name_is_served(make_app, key):
    app = make_app(**{key: ["monitor.example.com"]})
    client = app.test_client()
    assert client.get("/monitor/", headers={"Host": "monitor.example.com"}).status_code == 200


def test_credentials_work_under_any_name_when_anonymous_access_is_also_open(make_app):
    app = make_app(
        CELERY_MONITOR_ALLOW_ANONYMOUS="viewer", CELERY_MONITOR_BASIC_AUTH="ada:a-pass:admin"
    )
    client = app.test_client()
    headers = {"Host": "monitor.example.com"}
    assert client.get("/monitor/api/workers", headers=headers).status_code == 403
    auth = {**headers, "Authorization": "Basic YWRhOmEtcGFzcw=="}  # ada:a-pass
    assert client.get("/monitor/api/workers", headers=auth).status_code == 200


@given(
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True),
    port=st.none() | st.integers(1, 65535),
)
@settings(max_examples=300, deadline=None)
def test_only_ip_addresses_and_localhost_names_are_pinned(name, port):
    host = name if port is None else f"{name}:{port}"
    expected = name == "localhost" or name.endswith(".localhost")
    assert host_is_pinned(host) is expected


@given(address=st.ip_addresses(), port=st.none() | st.integers(1, 65535))
@settings(max_examples=300, deadline=None)
def test_every_ip_address_is_pinned(address, port):
    shown = f"[{address}]" if address.version == 6 else str(address)
    assert host_is_pinned(shown if port is None else f"{shown}:{port}")


@pytest.mark.parametrize(
    "config",
    [
        {"CELERY_MONITOR_TRUSTED_HOSTS": "localhost"},
        {"CELERY_MONITOR_TRUSTED_HOSTS": [""]},
        {"CELERY_MONITOR_MAX_LIVE_SOCKETS": -1},
        {"CELERY_MONITOR_MAX_CONCURRENT_WAITS": 1.5},
        {"CELERY_MONITOR_MAX_WAIT_SECONDS": 0},
        {"CELERY_MONITOR_POLL_INTERVAL": 0},
        {"CELERY_MONITOR_MAX_CONTENT_LENGTH": 0},
        {"CELERY_MONITOR_MAX_JSON_DEPTH": True},
    ],
)
def test_bad_limit_settings_fail_at_init_naming_the_key(make_app, config):
    key, value = next(iter(config.items()))
    with pytest.raises(
        ConfigurationError, match=f"^{key} must be .*, not {re.escape(repr(value))}$"
    ):
        make_app(**config)


# -- the standalone monitor -------------------------------------------------------------------


def test_a_loopback_standalone_monitor_serves_only_loopback_host_names(make_app):
    user = make_app()
    app = make_monitor_app(user.extensions["celerymon"], address="127.0.0.1", threads=8)
    try:
        client = app.test_client()
        for path in ("/", "/monitor/", "/monitor/api/workers"):
            resp = client.get(path, headers={"Host": "evil.example:5555"})
            assert resp.status_code == 400, path
            assert "not served by this monitor" in resp.get_json()["error"]
        for host in ("localhost:5555", "127.0.0.1:5555", "[::1]:5555"):
            assert client.get("/monitor/", headers={"Host": host}).status_code == 200, host
        limits = app.extensions["celerymon"].limits
        assert (limits.sockets.size, limits.waits.size) == (4, 1)
    finally:
        app.extensions["celerymon"].shutdown()


@pytest.mark.parametrize(
    ("address", "config", "expected"),
    [
        ("0.0.0.0", {}, None),
        ("192.168.1.10", {}, None),
        ("127.0.0.1", {"CELERY_MONITOR_TRUSTED_HOSTS": ["mon.example.com"]}, ["mon.example.com"]),
        ("127.0.0.1", {"TRUSTED_HOSTS": ["mon.example.com"]}, None),
        ("localhost", {}, list(LOOPBACK_HOSTS)),
    ],
)
def test_the_standalone_monitor_keeps_the_configured_host_names(
    make_app, address, config, expected
):
    user = make_app(**config)
    app = make_monitor_app(user.extensions["celerymon"], address=address)
    try:
        assert app.extensions["celerymon"].settings["CELERY_MONITOR_TRUSTED_HOSTS"] == expected
    finally:
        app.extensions["celerymon"].shutdown()


def test_the_standalone_monitor_derives_its_caps_from_its_threads_unless_configured(make_app):
    assert monitor_limits(32) == {
        "CELERY_MONITOR_MAX_LIVE_SOCKETS": 16,
        "CELERY_MONITOR_MAX_CONCURRENT_WAITS": 4,
    }
    assert monitor_limits(1) == {
        "CELERY_MONITOR_MAX_LIVE_SOCKETS": 0,
        "CELERY_MONITOR_MAX_CONCURRENT_WAITS": 0,
    }
    user = make_app(CELERY_MONITOR_MAX_LIVE_SOCKETS=3)
    app = make_monitor_app(user.extensions["celerymon"], address="127.0.0.1", threads=32)
    try:
        limits = app.extensions["celerymon"].limits
        assert (limits.sockets.size, limits.waits.size) == (3, 4)
    finally:
        app.extensions["celerymon"].shutdown()


# -- the websocket handshake ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Origin": "http://evil.example"}, "Origin 'http://evil.example' is not this server"),
        ({"Origin": "null"}, "Origin 'null' is not this server"),
        ({"Origin": "http://localhost:1234"}, "Origin 'http://localhost:1234' is not this server"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site is 'cross-site'"),
    ],
)
def test_the_live_feed_refuses_a_handshake_from_another_origin(make_app, headers, reason):
    app = make_app(CELERY_MONITOR_READ_ONLY=True)
    resp = app.test_client().get("/monitor/ws?view=tasks", headers={**UPGRADE, **headers})
    assert resp.status_code == 403
    assert resp.get_json()["error"].startswith(f"live feed refused: {reason}")


# -- request bodies ---------------------------------------------------------------------------


def test_every_monitor_route_refuses_a_body_over_the_cap_with_413(make_app):
    app = make_app(CELERY_MONITOR_MAX_CONTENT_LENGTH=1000)
    client = app.test_client()
    message = (
        "the request body is larger than 1000 bytes (CELERY_MONITOR_MAX_CONTENT_LENGTH); "
        "send less, or raise the setting"
    )
    rules = _monitor_rules(app, "POST")
    assert len(rules) > 15
    for rule in rules:
        resp = client.post(
            _sample_path(rule),
            data=json.dumps({"args": ["x" * 2000]}),
            content_type="application/json",
        )
        assert resp.status_code == 413, rule.rule
        assert resp.get_json() == {"error": message}, rule.rule
    ok = client.post(f"/monitor/api/task/async-apply/{ADD}", json={"args": [1]})
    assert ok.status_code == 200


# -- JSON depth -------------------------------------------------------------------------------


def test_deep_json_gets_400_on_every_route_never_500(make_app):
    app = make_app()
    client = app.test_client()
    deep = '{"args": ' + "[" * 1000 + "]" * 1000 + "}"
    message = (
        "the JSON body nests deeper than 64 levels (CELERY_MONITOR_MAX_JSON_DEPTH); "
        "send a flatter document"
    )
    for method in ("GET", "POST"):
        for rule in _monitor_rules(app, method):
            resp = client.open(
                _sample_path(rule), method=method, data=deep, content_type="application/json"
            )
            assert resp.status_code < 500, (rule.rule, resp.get_data(as_text=True)[:300])
    for name in (ADD, "x"):
        for route in ("apply", "async-apply", "send-task"):
            resp = client.post(
                f"/monitor/api/task/{route}/{name}", data=deep, content_type="application/json"
            )
            assert resp.status_code == 400, route
            assert resp.get_json() == {"error": message}
    for method, path in (("GET", "/monitor/api/tasks"), ("POST", "/monitor/api/tasks/revoke")):
        resp = client.open(path, method=method, data=deep, content_type="application/json")
        assert (resp.status_code, resp.get_json()) == (400, {"error": message}), path


def test_json_at_the_depth_limit_is_accepted(make_app):
    app = make_app(CELERY_MONITOR_MAX_JSON_DEPTH=5)
    client = app.test_client()
    at_limit = {"args": [[[[1]]]]}  # 5 levels
    resp = client.post(f"/monitor/api/task/async-apply/{ADD}", json=at_limit)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    resp = client.post(f"/monitor/api/task/async-apply/{ADD}", json={"args": [[[[[1]]]]]})
    assert resp.status_code == 400
    assert "nests deeper than 5 levels" in resp.get_json()["error"]


def _reference_depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_reference_depth(v) for v in value), default=0)
    return 0


_tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\ab:,\u00e9\u2603\n'), max_size=8)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_tricky_text, inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=_json_values, indent=st.sampled_from([None, 1]), ascii_=st.booleans())
def test_json_depth_matches_the_parsed_structure(value, indent, ascii_):
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_)
    expected = _reference_depth(value)
    assert json_depth(text) == expected
    assert json_depth(text.encode("utf-8")) == expected
    assert json_depth(text.encode("utf-16")) == expected
    assert load_json(text.encode("utf-8"), max_depth=expected) == value
    if expected:
        with pytest.raises(JSONTooDeep):
            load_json(text, max_depth=expected - 1)


def test_load_json_refuses_deep_documents_without_recursing():
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(JSONTooDeep, match="nests deeper than 64 levels"):
        load_json(deep, 64)
    with pytest.raises(ValueError, match="Expecting value"):
        load_json("[1,", 64)


# -- gates ------------------------------------------------------------------------------------


def test_a_gate_never_lets_more_than_its_size_in_at_once():
    gate = Gate(3)
    inside: list[int] = []
    most = [0]
    lock = threading.Lock()
    refused = [0]
    start = threading.Barrier(16)

    def visitor() -> None:
        start.wait()
        for _ in range(200):
            with gate.hold() as entered:
                if not entered:
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    inside.append(1)
                    most[0] = max(most[0], len(inside))
                time.sleep(0)
                with lock:
                    inside.pop()

    threads = [threading.Thread(target=visitor) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] <= 3
    assert refused[0] > 0
    assert gate.held == 0
    assert Gate(0).enter() is False
    with pytest.raises(RuntimeError, match="without a matching enter"):
        Gate(1).leave()


def test_result_waits_beyond_the_cap_answer_at_once_and_each_wait_is_cut(make_app):
    app = make_app(CELERY_MONITOR_MAX_CONCURRENT_WAITS=1, CELERY_MONITOR_MAX_WAIT_SECONDS=1.5)
    client = app.test_client()
    sent = client.post(f"/monitor/api/task/async-apply/{ADD}", json={"args": [1]})
    task_id = sent.get_json()["task-id"]  # no worker: it stays PENDING
    state = app.extensions["celerymon"]
    deadline = time.monotonic() + 10
    while state.monitor.task(task_id) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    url = f"/monitor/api/task/result/{task_id}?timeout=40"

    # one wait holds the only place for its cut 1.5 s; the others answer at once
    answers: dict[str, Any] = {}

    def first() -> None:
        t0 = time.monotonic()
        resp = app.test_client().get(url)
        answers["first"] = (resp.status_code, resp.get_json(), time.monotonic() - t0)

    holder = threading.Thread(target=first)
    holder.start()
    deadline = time.monotonic() + 10
    while state.limits.waits.held == 0:
        assert time.monotonic() < deadline, "the first wait never started"
        time.sleep(0.01)
    t0 = time.monotonic()
    others = [client.get(url) for _ in range(5)]
    assert time.monotonic() - t0 < 1.0
    assert [(r.status_code, r.get_json()) for r in others] == [
        (200, {"task-id": task_id, "state": "PENDING"})
    ] * 5
    holder.join(10)
    status, body, took = answers["first"]
    assert (status, body) == (200, {"task-id": task_id, "state": "PENDING"})
    assert 1.4 <= took < 5, took
    assert state.limits.waits.held == 0
