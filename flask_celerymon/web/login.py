"""OAuth2 / OpenID Connect login for the monitor (authlib's Flask client), and its cookie.

``CELERY_MONITOR_AUTH_PROVIDER`` picks the provider; ``CELERY_MONITOR_OAUTH2_KEY`` and
``CELERY_MONITOR_OAUTH2_SECRET`` are the client's credentials:

==========  =================================================================================
``google``  OpenID Connect at accounts.google.com (scopes ``openid email profile``)
``okta``    OpenID Connect at ``CELERY_MONITOR_OAUTH2_SERVER`` (the authorization server's
            base URL, e.g. ``https://dev-1.okta.com/oauth2/default``)
``oidc``    any OpenID Connect provider: ``CELERY_MONITOR_OAUTH2_SERVER`` is its issuer URL or
            its ``.well-known/openid-configuration`` URL (discovery)
``github``  OAuth2 at github.com, or GitHub Enterprise at ``CELERY_MONITOR_OAUTH2_SERVER``
            (scope ``user:email``; only verified addresses count)
``gitlab``  OAuth2 at gitlab.com or ``CELERY_MONITOR_OAUTH2_SERVER`` (scope ``read_api``);
            ``CELERY_MONITOR_GITLAB_GROUPS`` with ``CELERY_MONITOR_GITLAB_MIN_ACCESS_LEVEL``
            limit logins to members of those groups
==========  =================================================================================

Routes (relative to the prefix; all ``anyone``: they are how one logs in):

* ``GET /login?next=<path>``: the login page (404 when no provider is configured);
* ``GET /login/authorize?next=<path>``: redirect to the provider (authlib keeps the
  ``state`` and OIDC ``nonce`` in the Flask session);
* ``GET /login/callback``: the provider's redirect back; checks the state, the ID token, a
  verified e-mail, ``CELERY_MONITOR_AUTH`` and the role, then sets the login cookie and
  redirects to ``next`` (only a path on this host; anything else goes to the monitor's root).
  403 with the reason when the login is refused, 400 for a broken callback;
* ``GET /logout``: a page with a sign-out button; ``POST /logout`` clears the cookie.

The login cookie ``celerymon_login`` is signed with the app's ``SECRET_KEY`` (itsdangerous),
lives ``PERMANENT_SESSION_LIFETIME``, is scoped to the monitor's path and is ``HttpOnly``,
``SameSite=Lax`` and ``Secure`` when the request came over HTTPS (use werkzeug's ``ProxyFix``
behind a TLS-terminating proxy). It holds the user's name, e-mail, provider, groups and a
random CSRF token; the role is decided again on every request.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..appstate import get_state
from ..config import Settings
from ..errors import ConfigurationError
from .auth import ANYONE, AccessPolicy, MonitorUser, csrf_token, current_user, get_policy, requires

log = logging.getLogger(__name__)

COOKIE = "celerymon_login"
COOKIE_SALT = "celerymon-login"
#: Flask session key of the ``next`` path while the provider is asked.
NEXT_KEY = "_celerymon_next"


@dataclass(frozen=True)
class Provider:
    """How to talk to one kind of provider."""

    name: str
    title: str
    oidc: bool
    scope: str
    default_server: str | None


PROVIDERS = {
    p.name: p
    for p in (
        Provider("google", "Google", True, "openid email profile", "https://accounts.google.com"),
        Provider("okta", "Okta", True, "openid email profile", None),
        Provider("oidc", "OpenID Connect", True, "openid email profile", None),
        Provider("github", "GitHub", False, "user:email", "https://github.com"),
        Provider("gitlab", "GitLab", False, "read_api", "https://gitlab.com"),
    )
}


class LoginRefused(Exception):
    """A login that must not go through; the message says why (shown to the user)."""


def discovery_url(server: str) -> str:
    """The OIDC discovery document URL of an issuer (or the URL itself when it is one)."""
    if "/.well-known/" in server:
        return server
    return server.rstrip("/") + "/.well-known/openid-configuration"


def _own_oauth(app: Flask) -> Any:
    """authlib's Flask ``OAuth`` registry, kept off ``app.extensions`` (the host may use its own)."""
    from authlib.integrations.flask_client import OAuth

    class MonitorOAuth(OAuth):
        def init_app(self, app: Flask, *args: Any, **kwargs: Any) -> None:
            self.app = app

    return MonitorOAuth(app)


class Login:
    """The OAuth2/OIDC client of one app. Raises :class:`ConfigurationError` when incomplete."""

    def __init__(self, app: Flask, settings: Settings, policy: AccessPolicy) -> None:
        own = settings.own
        assert policy.provider is not None
        self.provider = PROVIDERS[policy.provider]
        missing = [
            k for k in ("CELERY_MONITOR_OAUTH2_KEY", "CELERY_MONITOR_OAUTH2_SECRET") if not own[k]
        ]
        if missing:
            raise ConfigurationError(
                f"CELERY_MONITOR_AUTH_PROVIDER = {policy.provider!r} needs "
                f"{' and '.join(missing)} (the OAuth2 client registered with the provider)"
            )
        if not app.config.get("SECRET_KEY"):
            raise ConfigurationError(
                "CELERY_MONITOR_AUTH_PROVIDER needs the app's SECRET_KEY: it signs the login "
                "cookie and the login state"
            )
        server = own["CELERY_MONITOR_OAUTH2_SERVER"] or self.provider.default_server
        if server is None:
            raise ConfigurationError(
                f"CELERY_MONITOR_AUTH_PROVIDER = {policy.provider!r} needs "
                "CELERY_MONITOR_OAUTH2_SERVER (the provider's issuer / base URL)"
            )
        self.server = server.rstrip("/")
        self.redirect_uri: str | None = own["CELERY_MONITOR_OAUTH2_REDIRECT_URI"]
        self.gitlab_groups: tuple[str, ...] = tuple(own["CELERY_MONITOR_GITLAB_GROUPS"] or ())
        self.gitlab_level: int = own["CELERY_MONITOR_GITLAB_MIN_ACCESS_LEVEL"]
        kwargs: dict[str, Any] = {
            "client_id": own["CELERY_MONITOR_OAUTH2_KEY"],
            "client_secret": own["CELERY_MONITOR_OAUTH2_SECRET"],
            "client_kwargs": {"scope": self.provider.scope, "timeout": 10},
        }
        if self.provider.oidc:
            kwargs["server_metadata_url"] = discovery_url(self.server)
        elif self.provider.name == "github":
            kwargs["authorize_url"] = f"{self.server}/login/oauth/authorize"
            kwargs["access_token_url"] = f"{self.server}/login/oauth/access_token"
            kwargs["api_base_url"] = (
                "https://api.github.com/"
                if self.server == "https://github.com"
                else f"{self.server}/api/v3/"
            )
        else:
            kwargs["authorize_url"] = f"{self.server}/oauth/authorize"
            kwargs["access_token_url"] = f"{self.server}/oauth/token"
            kwargs["api_base_url"] = f"{self.server}/api/v4/"
        self.client = _own_oauth(app).register(f"celerymon_{self.provider.name}", **kwargs)

    # -- who logged in
    def user_from_cookie(self, policy: AccessPolicy) -> MonitorUser | None:
        """The user of the current request's valid login cookie (see :func:`login_from_cookie`).

        The access check reaches it through ``AppState.login``, so :mod:`.auth` needs no import
        of this module (which imports it).
        """
        return login_from_cookie(policy)

    def identify(self, token: dict[str, Any]) -> tuple[str, str, tuple[str, ...]]:
        """``(name, verified e-mail, groups)`` of the user behind ``token``.

        Raises :class:`LoginRefused` when the provider vouches for no verified address.
        """
        if self.provider.oidc:
            claims = dict(token.get("userinfo") or {})
            if not claims.get("email") or "email_verified" not in claims:
                claims.update(self.client.userinfo(token=token))
            email = claims.get("email")
            if not email:
                raise LoginRefused("the provider gave no e-mail address (scope 'email')")
            if claims.get("email_verified") not in (True, "true"):
                raise LoginRefused(f"the provider has not verified the address {email}")
            return str(claims.get("name") or email), str(email), ()
        if self.provider.name == "github":
            resp = self.client.get("user/emails", token=token)
            resp.raise_for_status()
            verified = [e for e in resp.json() if e.get("verified") and e.get("email")]
            verified.sort(key=lambda e: not e.get("primary"))
            pattern = get_policy().email_pattern
            if pattern:
                from .auth import email_allowed

                matching = [e for e in verified if email_allowed(pattern, e["email"])]
                verified = matching or verified
            if not verified:
                raise LoginRefused("GitHub knows no verified e-mail address of this account")
            email = verified[0]["email"]
            return email, email, ()
        resp = self.client.get("user", token=token)
        resp.raise_for_status()
        user = resp.json()
        email = user.get("email")
        if not email:
            raise LoginRefused("GitLab gave no e-mail address of this account")
        groups: tuple[str, ...] = ()
        if self.gitlab_groups:
            resp = self.client.get(
                "groups", token=token, params={"min_access_level": self.gitlab_level}
            )
            resp.raise_for_status()
            groups = tuple(g["full_path"] for g in resp.json() if g.get("full_path"))
            if not set(groups) & set(self.gitlab_groups):
                raise LoginRefused(
                    f"{email} is not a member (access level {self.gitlab_level} or more) of "
                    f"any of the GitLab groups {', '.join(self.gitlab_groups)}"
                )
        return str(user.get("name") or email), str(email), groups


def init_login(app: Flask, settings: Settings, policy: AccessPolicy) -> None:
    """Set up the app's OAuth2/OIDC client when a provider is configured."""
    if policy.provider is not None:
        get_state(app).login = Login(app, settings, policy)


def get_login() -> Login | None:
    """The current app's :class:`Login` (``AppState.login``), or None when no provider is set."""
    return get_state().login


# -- the cookie -------------------------------------------------------------------------------


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt=COOKIE_SALT)  # type: ignore[arg-type]


def _cookie_path() -> str:
    return url_for("celerymon.index")


def login_from_cookie(policy: AccessPolicy) -> MonitorUser | None:
    """The user of a valid login cookie (role decided now), or None."""
    raw = request.cookies.get(COOKIE)
    if raw is None or policy.provider is None or not current_app.secret_key:
        return None
    max_age = current_app.permanent_session_lifetime.total_seconds()
    try:
        # itsdangerous annotates max_age as int but only compares it with the age in seconds
        data = _serializer().loads(raw, max_age=max_age)  # type: ignore[arg-type]
    except BadSignature:
        return None
    if not isinstance(data, dict) or data.get("p") != policy.provider:
        return None
    user = MonitorUser(
        name=str(data.get("n")),
        via="login",
        role=None,
        email=str(data.get("e")),
        provider=policy.provider,
        groups=tuple(data.get("g") or ()),
        csrf=str(data.get("c")),
    )
    return dataclasses.replace(user, role=policy.role_of(user, email=user.email))


def _set_cookie(resp: Response, user: MonitorUser) -> None:
    value = _serializer().dumps(
        {
            "n": user.name,
            "e": user.email,
            "p": user.provider,
            "g": list(user.groups),
            "c": user.csrf,
        }
    )
    resp.set_cookie(
        COOKIE,
        value,
        max_age=int(current_app.permanent_session_lifetime.total_seconds()),
        path=_cookie_path(),
        secure=request.is_secure,
        httponly=True,
        samesite="Lax",
    )


def safe_next(value: str | None) -> str:
    """``value`` when it is a path on this host (``/...``), else the monitor's root."""
    default = url_for("celerymon.index")
    if not value or any(c in value for c in "\\\r\n\t\x00") or not value.startswith("/"):
        return default
    if value.startswith("//"):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


# -- the routes -------------------------------------------------------------------------------


def _page(title: str, message: str, status: int) -> tuple[str, int]:
    return render_template("celerymon/error.html", title=title, message=message), status


@requires(ANYONE)
def login() -> Any:
    """The login page: a button to the provider. 200; 404 when no provider is configured."""
    client = get_login()
    nxt = safe_next(request.args.get("next"))
    if client is None:
        manager = getattr(current_app, "login_manager", None)
        if manager is not None and manager.login_view and get_policy().role_hook is not None:
            return redirect(url_for(manager.login_view, next=nxt))
        return _page(
            "No login here",
            "This monitor has no login provider (CELERY_MONITOR_AUTH_PROVIDER is not set).",
            404,
        )
    return render_template(
        "celerymon/login.html", provider=client.provider, next=nxt, user=current_user()
    )


@requires(ANYONE)
def login_authorize() -> Any:
    """Redirect to the provider's authorization page (302); 404 without a provider."""
    client = get_login()
    if client is None:
        return login()
    from requests import RequestException

    session[NEXT_KEY] = safe_next(request.args.get("next"))
    redirect_uri = client.redirect_uri or url_for("celerymon.login_callback", _external=True)
    try:  # OIDC: the first login fetches the provider's discovery document
        return client.client.authorize_redirect(redirect_uri)
    except (RequestException, ValueError) as exc:
        log.warning("celerymon: login provider unreachable: %s", exc)
        return _page("Login failed", f"the login provider could not be reached: {exc}", 503)


@requires(ANYONE)
def login_callback() -> Any:
    """The provider's redirect back: log in and go to ``next`` (302); 400, 403 or 404."""
    from authlib.integrations.base_client import OAuthError
    from requests import RequestException

    client = get_login()
    if client is None:
        return login()
    policy = get_policy()
    try:
        token = client.client.authorize_access_token()
        name, email, groups = client.identify(token)
    except OAuthError as exc:
        return _page("Login failed", f"the provider's answer was refused: {exc}", 400)
    except RequestException as exc:
        log.warning("celerymon: login provider unreachable: %s", exc)
        return _page("Login failed", f"the login provider could not be reached: {exc}", 400)
    except LoginRefused as exc:
        return _page("Login refused", str(exc), 403)
    except (KeyError, TypeError, ValueError) as exc:  # an answer of an unexpected shape
        log.warning("celerymon: unexpected answer of the login provider: %r", exc)
        return _page("Login failed", "the login provider's answer was not understood", 400)
    user = MonitorUser(
        name=name,
        via="login",
        role=None,
        email=email,
        provider=client.provider.name,
        groups=groups,
        csrf=secrets.token_urlsafe(32),
    )
    if policy.email_pattern is None and policy.role_hook is None:
        return _page(
            "Login refused",
            "nobody may log in: set CELERY_MONITOR_AUTH (an e-mail pattern) or a role hook "
            "(CELERY_MONITOR_ROLE or @celery.monitor_role)",
            403,
        )
    role = policy.role_of(user, email=email)
    if role is None:
        return _page("Login refused", f"{email} may not use this monitor", 403)
    log.info("celerymon: %s logged in with %s as %s", email, client.provider.name, role)
    # flask.redirect makes current_app.response_class (typed as werkzeug's base Response)
    resp = cast(Response, redirect(safe_next(session.pop(NEXT_KEY, None))))
    _set_cookie(resp, user)
    return resp


@requires(ANYONE)
def logout() -> Any:
    """GET: a page with a sign-out button. POST: clear the login cookie. 200."""
    if request.method == "GET":
        return render_template("celerymon/logout.html", user=current_user(), csrf=csrf_token())
    resp = Response(
        render_template("celerymon/logout.html", user=None, csrf=None, done=True),
        mimetype="text/html",
    )
    resp.delete_cookie(
        COOKIE, path=_cookie_path(), secure=request.is_secure, httponly=True, samesite="Lax"
    )
    return resp


def register(bp: Blueprint) -> None:
    """Add the login and logout routes to the monitor blueprint."""
    bp.add_url_rule("/login", "login", login)
    bp.add_url_rule("/login/authorize", "login_authorize", login_authorize)
    bp.add_url_rule("/login/callback", "login_callback", login_callback)
    bp.add_url_rule("/logout", "logout", logout, methods=["GET", "POST"])
