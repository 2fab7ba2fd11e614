"""A tiny but real OpenID Connect provider for the login tests, built from authlib's server side.

Authorization code flow with ID tokens signed RS256 by a key generated per provider, discovery
(``/.well-known/openid-configuration``), JWKS, userinfo. The same server also answers at the
paths of GitHub Enterprise (``/login/oauth/*``, ``/api/v3/user/emails``) and of a self-hosted
GitLab (``/oauth/*``, ``/api/v4/user``, ``/api/v4/groups``), from each user's ``emails`` (GitHub's
list) and ``groups`` (path -> access level). Its "login page" lists the known users
as buttons (no passwords: the tests choose who logs in); the provider then redirects back with
a code, as a real one does. It keeps everything in memory and is served by werkzeug's server
in a thread (see :func:`running`).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.models import AuthorizationCodeMixin
from flask import Flask, jsonify, request
from joserfc.jwk import RSAKey
from markupsafe import escape
from werkzeug.serving import make_server

SCOPES = {"openid", "email", "profile", "user:email", "read_api"}
#: the claims of a user that go into ID tokens and userinfo
CLAIMS = ("email", "email_verified", "name")


@dataclass
class Client(ClientMixin):
    client_id: str
    secret: str
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict[str, Any]
    nonce: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass
class Token:
    access_token: str
    scope: str
    user: dict[str, Any]
    expires_at: float

    def check_client(self, client: Any) -> bool:
        return True

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - time.time())

    def is_expired(self) -> bool:
        return time.time() > self.expires_at

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> dict[str, Any]:
        return self.user


class Provider:
    """One provider: its users (by e-mail), its one client, its signing key, its Flask app."""

    def __init__(self, users: dict[str, dict[str, Any]]) -> None:
        self.users = users
        #: the one client; the test sets its ``redirect_uri`` once the app's port is known
        self.client = Client(secrets.token_hex(8), secrets.token_urlsafe(24), "")
        self.codes: dict[str, Code] = {}
        self.tokens: dict[str, Token] = {}
        self.used_nonces: set[str] = set()
        self.key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8)})
        self.issuer = ""
        self.app = self._make_app()

    def _make_app(self) -> Flask:
        provider = self
        app = Flask("oidc_provider")
        app.config.update(SECRET_KEY=secrets.token_hex(16), SESSION_COOKIE_NAME="idp_session")

        def query_client(client_id: str) -> Client | None:
            c = provider.client
            return c if c.client_id == client_id else None

        def save_token(token: dict[str, Any], req: Any) -> None:
            provider.tokens[token["access_token"]] = Token(
                token["access_token"], token.get("scope", ""), req.user,
                time.time() + token.get("expires_in", 3600),
            )  # fmt: skip

        class CodeGrant(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                provider.codes[code] = Code(
                    code, req.client.get_client_id(), req.payload.redirect_uri, req.scope,
                    req.user, req.payload.data.get("nonce"),
                )  # fmt: skip

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                found = provider.codes.get(code)
                return found if found and found.client_id == client.get_client_id() else None

            def delete_authorization_code(self, code: Code) -> None:
                provider.codes.pop(code.code, None)
                if code.nonce:
                    provider.used_nonces.add(code.nonce)

            def authenticate_user(self, code: Code) -> dict[str, Any]:
                return code.user

        class OIDCCode(OpenIDCode):
            def exists_nonce(self, nonce: str, req: Any) -> bool:
                issued = any(c.nonce == nonce for c in provider.codes.values())
                return issued or nonce in provider.used_nonces

            def resolve_client_private_key(self, client: Client) -> Any:
                return provider.key

            def get_client_algorithm(self, client: Client) -> str:
                return "RS256"

            def get_encode_header(self, client: Client) -> dict[str, Any]:
                return {"alg": "RS256", "kid": provider.key.kid}

            def get_client_claims(self, client: Client) -> dict[str, Any]:
                return {"iss": provider.issuer, "aud": [client.get_client_id()]}

            def generate_user_info(self, user: dict[str, Any], scope: str) -> UserInfo:
                return UserInfo(sub=user["email"], **{k: user[k] for k in CLAIMS if k in user})

        server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
        server.register_grant(CodeGrant, [OIDCCode(require_nonce=True)])

        class Validator(BearerTokenValidator):
            def authenticate_token(self, token_string: str) -> Token | None:
                return provider.tokens.get(token_string)

        protect = ResourceProtector()
        protect.register_token_validator(Validator())

        @app.get("/.well-known/openid-configuration")
        def discovery() -> Any:
            base = provider.issuer
            return jsonify(
                issuer=base,
                authorization_endpoint=f"{base}/authorize",
                token_endpoint=f"{base}/token",
                userinfo_endpoint=f"{base}/userinfo",
                jwks_uri=f"{base}/jwks",
                response_types_supported=["code"],
                subject_types_supported=["public"],
                id_token_signing_alg_values_supported=["RS256"],
                scopes_supported=sorted(SCOPES),
                token_endpoint_auth_methods_supported=["client_secret_basic"],
            )

        @app.get("/favicon.ico")
        def favicon() -> Any:
            return "", 204

        @app.get("/jwks")
        def jwks() -> Any:
            return jsonify(keys=[provider.key.as_dict(private=False)])

        @app.route("/authorize", methods=["GET", "POST"])
        @app.route("/login/oauth/authorize", methods=["GET", "POST"], endpoint="gh_authorize")
        @app.route("/oauth/authorize", methods=["GET", "POST"], endpoint="gl_authorize")
        def authorize() -> Any:
            if request.method == "GET":
                server.get_consent_grant(end_user=None)  # validates client, redirect, nonce
                buttons = "".join(
                    f'<button name="email" value="{escape(e)}" id="as-{escape(e)}">'
                    f"Log in as {escape(e)}</button>"
                    for e in provider.users
                )
                return f'<!doctype html><title>Test IdP</title><form method="post">{buttons}</form>'
            user = provider.users.get(request.form.get("email", ""))
            grant = server.get_consent_grant(end_user=user)
            return server.create_authorization_response(grant_user=user, grant=grant)

        @app.post("/token")
        @app.post("/login/oauth/access_token", endpoint="gh_token")
        @app.post("/oauth/token", endpoint="gl_token")
        def token() -> Any:
            return server.create_token_response()

        @app.get("/userinfo")
        @protect("openid")
        def userinfo() -> Any:
            user = current_token.user
            return jsonify(sub=user["email"], **{k: user[k] for k in CLAIMS if k in user})

        @app.get("/api/v3/user/emails")
        @protect("user:email")
        def github_emails() -> Any:
            return jsonify(current_token.user.get("emails", []))

        @app.get("/api/v4/user")
        @protect("read_api")
        def gitlab_user() -> Any:
            user = current_token.user
            return jsonify(id=1, username=user["name"], name=user["name"], email=user["email"])

        @app.get("/api/v4/groups")
        @protect("read_api")
        def gitlab_groups() -> Any:
            level = int(request.args.get("min_access_level", 10))
            groups = current_token.user.get("groups", {})
            return jsonify([{"full_path": g} for g, lvl in groups.items() if lvl >= level])

        return app


@contextmanager
def running(users: dict[str, dict[str, Any]], host: str = "localhost") -> Iterator[Provider]:
    """A provider served on a free port of ``host`` in a thread; ``provider.issuer`` is its URL.

    Serve it on another host name than the app under test: browsers share cookies between
    ports of one host.
    """
    provider = Provider(users)
    server = make_server("127.0.0.1", 0, provider.app, threaded=True)
    provider.issuer = f"http://{host}:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, name="oidc-provider", daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
