"""Who may see and do what in the monitor: identities, roles and the access decision.

Every route of the blueprint declares the least it needs with :func:`requires` (a view without
a declaration needs ``admin``: fail closed). :func:`check_access` is the first of the guard's
checks; it finds who is asking and compares their role with the route's declaration.

Levels a route can declare, weakest first:

============  ======================================================================
``public``    anyone, always (``/healthcheck``)
``anyone``    anyone, once the monitor has an access policy (assets, login, logout)
``metrics``   ``CELERY_MONITOR_METRICS_TOKEN`` as a bearer token, or a ``viewer``; anyone
              with ``CELERY_MONITOR_METRICS_PUBLIC``
``viewer``    read: pages, the read API, the websocket feed
``operator``  act on tasks: revoke, terminate, abort, retry, apply, rate and time limits
``admin``     act on workers and queues: shutdown, pool, consumers, purge, bulk actions
============  ======================================================================

Who is asking, tried in this order (the first that applies wins):

1. ``Authorization: Basic`` when ``CELERY_MONITOR_BASIC_AUTH`` is set (wrong credentials:
   401 at once); the role comes with the user's entry.
2. The monitor's own login cookie, set after an OAuth2/OIDC login (:mod:`.login`).
3. The host app's flask-login ``current_user``, when the app has a ``LoginManager`` and a
   role hook (``CELERY_MONITOR_ROLE`` or ``@celery.monitor_role``) decides its role.
4. Nobody: the role of ``CELERY_MONITOR_ALLOW_ANONYMOUS``; ``admin`` in debug or testing
   mode when no authentication is configured; otherwise refused (401 with a way to log in,
   or 403 naming the settings when the monitor has no authentication at all). Anonymous
   access is refused (403) under a DNS name unless trusted hosts are configured
   (:func:`.hardening.check_anonymous_host`, against DNS rebinding).

Refusals are ``{"error": ...}`` JSON for the API, the websocket and the metrics, and the
error page (or a redirect to the login page) for the HTML pages.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import quote

from flask import Flask, Response, current_app, g, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from ..appstate import get_state
from ..config import FLOWER_AUTH_PROVIDERS, ROLES, Settings
from ..errors import ConfigurationError, NotInitializedError

log = logging.getLogger(__name__)

VIEWER, OPERATOR, ADMIN = ROLES
PUBLIC = "public"
ANYONE = "anyone"
METRICS = "metrics"
#: Every level a route may declare, weakest first.
LEVELS = (PUBLIC, ANYONE, METRICS, VIEWER, OPERATOR, ADMIN)

#: Settings that turn authentication on, named in refusals.
AUTH_SETTINGS = (
    "CELERY_MONITOR_BASIC_AUTH, CELERY_MONITOR_AUTH_PROVIDER (OAuth2/OIDC) or "
    "CELERY_MONITOR_ROLE (with flask-login)"
)

F = TypeVar("F", bound=Callable[..., Any])


def requires(level: str) -> Callable[[F], F]:
    """Declare the least a view needs: one of :data:`LEVELS`. Raises ValueError for another."""
    if level not in LEVELS:
        raise ValueError(f"unknown access level {level!r}; use one of {', '.join(LEVELS)}")

    def mark(view: F) -> F:
        view._celerymon_requires = level  # type: ignore[attr-defined]
        return view

    return mark


def declared_level(view: Any) -> str | None:
    """The level ``view`` declares with :func:`requires`, or None when it declares none."""
    return getattr(view, "_celerymon_requires", None)


def required_level(endpoint: str | None) -> str:
    """The level the view of ``endpoint`` needs; ``admin`` when it declares none."""
    view = current_app.view_functions.get(endpoint) if endpoint else None
    return declared_level(view) or ADMIN


def role_allows(role: str | None, level: str) -> bool:
    """True when ``role`` (one of :data:`ROLES`, or None) meets ``level``."""
    if level in (PUBLIC, ANYONE):
        return True
    if role not in ROLES:
        return False
    need = VIEWER if level == METRICS else level
    return ROLES.index(role) >= ROLES.index(need)


# -- who is asking ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitorUser:
    """Who made the current request, as the monitor sees them.

    ``via`` is how they were recognised: ``"basic"``, ``"login"`` (the monitor's OAuth2/OIDC
    login cookie), ``"flask-login"``, ``"anonymous"``. ``role`` is one of :data:`ROLES` or
    None (known, but given no role). ``email`` and ``groups`` come from an OAuth2/OIDC login.
    """

    name: str
    via: str
    role: str | None
    email: str | None = None
    provider: str | None = None
    groups: tuple[str, ...] = ()
    csrf: str | None = field(default=None, repr=False)

    @property
    def uses_cookie(self) -> bool:
        """True when a browser sends the credential by itself (so mutations need a CSRF token)."""
        return self.via in ("login", "flask-login")


class Refusal(Exception):
    """Raised while identifying a request that must be refused (e.g. a wrong password)."""

    def __init__(self, status: int, message: str, challenge: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.challenge = challenge


# -- basic auth -------------------------------------------------------------------------------

_HASH = re.compile(r"^(scrypt|pbkdf2)(:[A-Za-z0-9]+)*\$[^$]+\$[0-9a-f]+$")


@dataclass(frozen=True)
class BasicUser:
    """One ``CELERY_MONITOR_BASIC_AUTH`` entry: a plain password or a werkzeug hash."""

    name: str
    password: str = field(repr=False)
    role: str

    @property
    def hashed(self) -> bool:
        return bool(_HASH.match(self.password))

    def check(self, password: str) -> bool:
        """Constant-time check of ``password`` (werkzeug's hash check for a hash)."""
        if self.hashed:
            return check_password_hash(self.password, password)
        return hmac.compare_digest(self.password.encode(), password.encode())


def parse_basic_auth(value: Any, default_role: str) -> dict[str, BasicUser]:
    """``CELERY_MONITOR_BASIC_AUTH`` -> users by name.

    Accepts Flower's ``"user:password,user2:password2"``, a list of ``"user:password"``, or a
    dict ``user -> password`` / ``user -> {"password": ..., "role": ...}``. A string entry
    may end with ``:viewer``, ``:operator`` or ``:admin``; an entry without a role gets
    ``default_role``. Passwords may be werkzeug hashes (``generate_password_hash``).
    Raises :class:`ConfigurationError` naming the bad entry.
    """
    key = "CELERY_MONITOR_BASIC_AUTH"
    if value is None:
        return {}
    users: dict[str, BasicUser] = {}
    if isinstance(value, Mapping):
        for name, spec in value.items():
            if isinstance(spec, Mapping):
                unknown = set(spec) - {"password", "role"}
                password, role = spec.get("password"), spec.get("role", default_role)
                if unknown or not isinstance(password, str) or not password:
                    raise ConfigurationError(
                        f"{key}[{name!r}] must be a password or {{'password': ..., 'role': "
                        f"...}}, not {spec!r}"
                    )
            else:
                password, role = spec, default_role
            if role not in ROLES or not password:
                raise ConfigurationError(
                    f"{key}[{name!r}]: role must be one of {', '.join(ROLES)} and the password "
                    "must not be empty"
                )
            users[name] = BasicUser(name, password, role)
        return users
    entries = value.split(",") if isinstance(value, str) else list(value)
    for entry in entries:
        entry = entry.strip()
        name, sep, rest = entry.partition(":")
        role = default_role
        head, colon, tail = rest.rpartition(":")
        if colon and tail in ROLES:
            rest, role = head, tail
        if not sep or not name or not rest:
            shown = f"{name}:***" if name else "an entry"
            raise ConfigurationError(
                f"{key}: {shown!r} is not 'user:password' or 'user:password:role' "
                "(roles: " + ", ".join(ROLES) + ")"
            )
        if name in users:
            raise ConfigurationError(f"{key} names the user {name!r} twice")
        users[name] = BasicUser(name, rest, role)
    return users


# -- Flower's e-mail pattern ------------------------------------------------------------------

#: What ``.*`` in a pattern stands for: the local part of an address (Flower's class).
_LOCAL_PART = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"


def validate_email_pattern(pattern: str) -> None:
    """Flower's ``validate_auth_option``: raise :class:`ConfigurationError` when it refuses."""
    key = "CELERY_MONITOR_AUTH"
    if pattern.count("*") > 1:
        raise ConfigurationError(f"{key} {pattern!r} has more than one '*'")
    if "*" in pattern and "|" in pattern:
        raise ConfigurationError(f"{key} {pattern!r} mixes '*' and '|'; use one of them")
    if "*" in pattern.rsplit("@", 1)[-1]:
        raise ConfigurationError(f"{key} {pattern!r} has a '*' in the domain; write it out")
    if "*" in pattern and ".*@" not in pattern:
        raise ConfigurationError(
            f"{key} {pattern!r}: a wildcard is written '.*@domain' (any local part)"
        )


def email_allowed(pattern: str, email: str) -> bool:
    """Flower's ``authenticate``: ``a@x|b@y`` lists addresses, ``.*@x`` any local part at x,
    anything else is one exact address. Case-insensitive (addresses are)."""
    pattern, email = pattern.strip().lower(), email.strip().lower()
    if "|" in pattern:
        return email in [p.strip() for p in pattern.split("|")]
    if "*" in pattern:
        regex = re.escape(pattern).replace(r"\.\*", _LOCAL_PART)
        return re.fullmatch(regex, email) is not None
    return pattern == email


# -- the policy of one app --------------------------------------------------------------------

#: Seconds a verified basic-auth password is remembered (a werkzeug hash check costs ~50 ms).
VERIFIED_TTL = 300.0
VERIFIED_MAX = 256


class AccessPolicy:
    """The access settings of one app, validated once at ``init_app``.

    Raises :class:`ConfigurationError` (naming the key) for an inconsistent set of settings.
    """

    def __init__(self, settings: Settings, extension: Any) -> None:
        own = settings.own
        self._extension = extension
        self.default_role: str = own["CELERY_MONITOR_DEFAULT_ROLE"]
        self.basic = parse_basic_auth(own["CELERY_MONITOR_BASIC_AUTH"], self.default_role)
        anonymous = own["CELERY_MONITOR_ALLOW_ANONYMOUS"]
        self.anonymous_role: str | None = (
            (ADMIN if anonymous is True else None) if isinstance(anonymous, bool) else anonymous
        )
        self.role_setting: Callable[[Any], Any] | None = own["CELERY_MONITOR_ROLE"]
        provider = own["CELERY_MONITOR_AUTH_PROVIDER"]
        self.provider: str | None = FLOWER_AUTH_PROVIDERS.get(provider, provider)
        self.email_pattern: str | None = own["CELERY_MONITOR_AUTH"]
        if self.email_pattern is not None:
            validate_email_pattern(self.email_pattern)
            if self.provider is None:
                raise ConfigurationError(
                    "CELERY_MONITOR_AUTH (an e-mail pattern) needs a login provider: set "
                    "CELERY_MONITOR_AUTH_PROVIDER to one of google, github, gitlab, okta, oidc"
                )
        self.metrics_token: str | None = own["CELERY_MONITOR_METRICS_TOKEN"]
        self.metrics_public: bool = own["CELERY_MONITOR_METRICS_PUBLIC"]
        # Every refused attempt costs the same, so the time of a refusal tells nothing about
        # which names exist: with hashed entries, an unknown name and a wrong plain password
        # spend one hash check of the (first) hashed entry's method, as a wrong password of a
        # hashed user does.
        hashed = next((u for u in self.basic.values() if u.hashed), None)
        self._dummy = (
            BasicUser(
                "",
                generate_password_hash(
                    secrets.token_hex(8), method=hashed.password.split("$", 1)[0]
                ),
                VIEWER,
            )
            if hashed is not None
            else BasicUser("", secrets.token_hex(16), VIEWER)
        )
        self._verified: OrderedDict[bytes, float] = OrderedDict()
        self._verified_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        if self.anonymous_role is not None:
            log.warning(
                "CELERY_MONITOR_ALLOW_ANONYMOUS is on: anyone who can reach the monitor may act "
                "as %s without logging in",
                self.anonymous_role,
            )

    # -- what is configured
    @property
    def role_hook(self) -> Callable[[Any], Any] | None:
        """The app's role hook: ``CELERY_MONITOR_ROLE`` or ``@celery.monitor_role``."""
        return self.role_setting or self._extension.monitor_role_hook

    def uses_flask_login(self, app: Flask) -> bool:
        """True when the host's flask-login users are recognised (LoginManager + role hook)."""
        return self.role_hook is not None and getattr(app, "login_manager", None) is not None

    def configured(self, app: Flask) -> bool:
        """True when some way to log in is configured (basic, OAuth2/OIDC, flask-login)."""
        return bool(self.basic) or self.provider is not None or self.uses_flask_login(app)

    def anonymous(self, app: Flask) -> str | None:
        """The role of a request nobody is logged in for, or None (refused)."""
        if self.anonymous_role is not None:
            return self.anonymous_role
        if (app.debug or app.testing) and not self.configured(app):
            return ADMIN
        return None

    # -- basic auth
    def check_basic(self, name: str, password: str) -> BasicUser | None:
        """The user when ``name``/``password`` is right, else None.

        A refusal costs the same whatever the name (unknown, plain or hashed entry): one
        password-hash check when any entry is hashed, a constant-time compare otherwise.
        A right password of a hashed entry is remembered for :data:`VERIFIED_TTL` seconds.
        """
        user = self.basic.get(name)
        if user is None:
            # spend as long as a real check, so a wrong name and a wrong password look alike
            self._dummy.check(password)
            return None
        if not user.hashed:
            if user.check(password):
                return user
            if self._dummy.hashed:
                self._dummy.check(password)
            return None
        digest = hmac.new(
            self._verified_key, f"{name}\0{password}".encode(), hashlib.sha256
        ).digest()
        now = time.monotonic()
        with self._lock:
            seen = self._verified.get(digest)
            if seen is not None and now - seen < VERIFIED_TTL:
                return user
        if not user.check(password):
            return None
        with self._lock:
            self._verified[digest] = now
            while len(self._verified) > VERIFIED_MAX:
                self._verified.popitem(last=False)
        return user

    # -- roles of session users
    def role_of(self, user: Any, email: str | None = None) -> str | None:
        """The role of a flask-login user or an OAuth2/OIDC login (``email`` set).

        The role hook decides when there is one (its answer must be one of :data:`ROLES` or
        None); otherwise an e-mail matching ``CELERY_MONITOR_AUTH`` gets
        ``CELERY_MONITOR_DEFAULT_ROLE``. Raises :class:`ConfigurationError` when the hook
        answers something else.
        """
        if (
            email is not None
            and self.email_pattern
            and not email_allowed(self.email_pattern, email)
        ):
            return None
        hook = self.role_hook
        if hook is not None:
            role = hook(user)
            if role is not None and role not in ROLES:
                raise ConfigurationError(
                    f"the monitor's role hook answered {role!r} for {user!r}; it must answer "
                    f"one of {', '.join(ROLES)} or None"
                )
            return role
        if email is not None and self.email_pattern:
            return self.default_role
        return None


def get_policy(app: Flask | None = None) -> AccessPolicy:
    """The :class:`AccessPolicy` of ``app`` (default: the current app): ``AppState.access``.

    Raises :class:`~flask_celerymon.errors.NotInitializedError` when flask_celerymon or its
    monitor blueprint is not set up on the app.
    """
    state = get_state(app)
    if state.access is None:
        raise NotInitializedError(
            f"the monitor blueprint is not mounted on app {state.app.name!r}: it has no access "
            "policy"
        )
    return state.access


def init_policy(app: Flask, settings: Settings, extension: Any) -> AccessPolicy:
    """Build and store the app's policy (``init_monitor`` calls it). Raises ConfigurationError."""
    policy = AccessPolicy(settings, extension)
    get_state(app).access = policy
    return policy


# -- the current request ----------------------------------------------------------------------

_G_USER = "_celerymon_user"


def current_user() -> MonitorUser | None:
    """Who the guard let through for the current request (None before it ran, or no one)."""
    return g.get(_G_USER)


def _identify(policy: AccessPolicy) -> MonitorUser | None:
    auth = request.authorization
    if auth is not None and auth.type == "basic" and policy.basic:
        user = policy.check_basic(auth.username or "", auth.password or "")
        if user is None:
            raise Refusal(401, "wrong user name or password", challenge=True)
        return MonitorUser(user.name, "basic", user.role)
    client = get_state().login  # the OAuth2/OIDC client, set when a provider is configured
    login = client.user_from_cookie(policy) if client is not None else None
    if login is not None:
        return login
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if policy.uses_flask_login(app):
        from flask_login import current_user as host_user

        if host_user.is_authenticated:
            name = str(getattr(host_user, "name", None) or host_user.get_id())
            role = policy.role_of(host_user._get_current_object())
            return MonitorUser(name, "flask-login", role, csrf=_session_csrf())
    return None


def _session_csrf() -> str:
    """A CSRF token kept in the host app's (signed) session, for flask-login users."""
    token = session.get("_celerymon_csrf")
    if not isinstance(token, str):
        token = session["_celerymon_csrf"] = secrets.token_urlsafe(32)
    return token


def _metrics_token_ok(policy: AccessPolicy) -> bool:
    auth = request.authorization
    if policy.metrics_token is None or auth is None or auth.type != "bearer":
        return False
    return hmac.compare_digest((auth.token or "").encode(), policy.metrics_token.encode())


def _is_page() -> bool:
    """True for the HTML pages (a refusal there is a page or a redirect, not JSON)."""
    from .common import PAGE_ENDPOINTS

    endpoint = request.endpoint or ""
    return request.method == "GET" and endpoint in PAGE_ENDPOINTS


def refuse(status: int, message: str, challenge: bool = False) -> Response:
    """A refusal in the form the route speaks: JSON, or the error page for pages."""
    from flask import render_template

    from .common import error

    if _is_page():
        title = "Log in required" if status == 401 else "Not allowed"
        resp = Response(
            render_template("celerymon/error.html", title=title, message=message),
            status=status,
            mimetype="text/html",
        )
    else:
        resp = error(status, message)
    if challenge:
        resp.headers["WWW-Authenticate"] = 'Basic realm="celerymon", charset="UTF-8"'
    return resp


def _challenge(policy: AccessPolicy) -> Response:
    """401 for a request nobody is logged in for, with the way to log in."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if _is_page() and policy.provider is not None:
        from flask import redirect

        here = request.full_path if request.query_string else request.path
        # flask.redirect makes current_app.response_class (typed as werkzeug's base Response)
        return cast(
            Response, redirect(url_for("celerymon.login") + "?next=" + quote(here, safe="/"))
        )
    if _is_page() and policy.uses_flask_login(app) and app.login_manager.login_view:
        return app.login_manager.unauthorized()
    ways = []
    if policy.basic:
        ways.append("HTTP basic auth")
    if policy.provider is not None:
        ways.append(f"logging in at {url_for('celerymon.login')}")
    if policy.uses_flask_login(app):
        ways.append("logging in to the app")
    return refuse(
        401, "log in first: " + (" or ".join(ways) or "no way"), challenge=bool(policy.basic)
    )


def check_access() -> Response | None:
    """The guard's first check: who is asking, and may their role use this route."""
    level = required_level(request.endpoint)
    if level == PUBLIC:
        return None
    policy = get_policy()
    if level == METRICS and (policy.metrics_public or _metrics_token_ok(policy)):
        return None
    try:
        user = _identify(policy)
    except Refusal as exc:
        return refuse(exc.status, exc.message, exc.challenge)
    except ConfigurationError as exc:  # the role hook answered nonsense: fail closed
        log.error("celerymon: %s", exc)
        return refuse(403, str(exc))
    if user is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        role = policy.anonymous(app)
        if role is None:
            if not policy.configured(app):
                return refuse(
                    403,
                    "the monitor has no authentication configured, so it refuses everyone "
                    f"outside debug and testing mode: set {AUTH_SETTINGS}, or "
                    "CELERY_MONITOR_ALLOW_ANONYMOUS = True (or a role) to open it to everyone "
                    "who can reach it",
                )
            if level == ANYONE:
                return None
            return _challenge(policy)
        from .hardening import check_anonymous_host

        rebindable = check_anonymous_host()
        if rebindable is not None:
            return refuse(403, rebindable)
        user = MonitorUser("anonymous", "anonymous", role)
    setattr(g, _G_USER, user)
    if role_allows(user.role, level):
        return None
    if user.role is None:
        return refuse(
            403,
            f"{user.name} has no role in the monitor (the role hook or CELERY_MONITOR_AUTH "
            "gives none)",
        )
    return refuse(403, f"{user.name} has the role {user.role}; this needs the role {_need(level)}")


def _need(level: str) -> str:
    return VIEWER if level == METRICS else level


def may(endpoint: str) -> bool:
    """True when the current user's role meets what ``endpoint`` needs (to show a button)."""
    user = current_user()
    return role_allows(user.role if user else None, required_level(endpoint))


# -- CSRF -------------------------------------------------------------------------------------

#: Where a CSRF token is read from: headers (the pages' fetch calls, Flower's UI) and a field.
CSRF_HEADERS = ("X-CSRFToken", "X-XSRFToken")
CSRF_FIELD = "_csrf_token"


def csrf_token() -> str | None:
    """The token the pages send with mutations, or None when the user needs none."""
    user = current_user()
    return user.csrf if user is not None and user.uses_cookie else None


def check_csrf() -> Response | None:
    """403 for a mutation by a cookie-authenticated user without the right CSRF token.

    Clients that authenticate with an ``Authorization`` header (basic auth, bearer tokens;
    curl scripts written for Flower) need no token. A browser does re-send cached basic-auth
    credentials with a form another site posts; :func:`.guard.check_same_origin`, which runs
    before this check, refuses such a request by its ``Origin``/``Sec-Fetch-Site``.
    """
    from .common import _view_is_safe, is_mutation

    if not is_mutation() or _view_is_safe():
        return None
    expected = csrf_token()
    if expected is None:
        return None
    sent = next((request.headers[h] for h in CSRF_HEADERS if h in request.headers), None)
    if sent is None and request.mimetype in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        sent = request.form.get(CSRF_FIELD)
    if sent is None or not hmac.compare_digest(sent.encode(), expected.encode()):
        return refuse(
            403,
            "CSRF token missing or wrong: send the X-CSRFToken header from the monitor's "
            "pages (reload the page), or authenticate with an Authorization header",
        )
    return None
