"""Flask config -> Celery settings and flask_celerymon settings.

Reading rules:

* ``CELERY_<NAME>`` where ``<name>`` is one of Celery's lowercase settings maps to it
  (``CELERY_BROKER_URL`` -> ``broker_url``, ``CELERY_TASK_ALWAYS_EAGER`` -> ``task_always_eager``).
* Celery's legacy upper-case names that start with ``CELERY`` are accepted and renamed
  (``CELERY_ALWAYS_EAGER``, ``CELERYBEAT_SCHEDULE``, ``CELERYD_CONCURRENCY`` ...). When both the
  legacy and the new name are given the new one wins.
* Our own keys (:data:`OWN_KEYS`) are validated and never reach Celery's conf.
* Every other Flask key (``SECRET_KEY``, database URLs ...) is ignored; an unknown ``CELERY_*``
  key is most likely a typo: it is logged as a warning naming the closest known key ("did you
  mean CELERY_BROKER_URL?"), or refused with :class:`ConfigurationError` when
  ``CELERY_STRICT_CONFIG`` is on.
* The broker and result backend URLs are checked without connecting: a scheme kombu (broker) or
  Celery (backend) knows, ``://`` after it, and a parseable host and port.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from celery.app.defaults import _TO_NEW_KEY, DEFAULTS

from .errors import ConfigurationError
from .monitor.settings import MonitorSettings as _MONITOR

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "fatal")

# Keys whose values are understood by the worker CLI when given per worker in CELERY_WORKERS.
WORKER_OPTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "concurrency": int,
    "loglevel": str,
    "queues": (list, tuple, str),
    "pidfile": str,
    "pool": str,
    "autoscale": (str, list, tuple),
    "max_tasks_per_child": int,
    "max_memory_per_child": int,
    "prefetch_multiplier": int,
    "time_limit": (int, float),
    "soft_time_limit": (int, float),
    "without_heartbeat": bool,
    "without_mingle": bool,
    "without_gossip": bool,
    "hostname": str,
}


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_pos_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _is_nonneg_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_port(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _is_opt_str(v: Any) -> bool:
    return v is None or _is_str(v)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)


def _is_opt_str_list(v: Any) -> bool:
    return v is None or _is_str_list(v)


def _is_nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_log_level(v: Any) -> bool:
    return isinstance(v, str) and v.lower() in LOG_LEVELS


def _is_prefix(v: Any) -> bool:
    return isinstance(v, str) and (v == "" or (v.startswith("/") and not v.endswith("/")))


def _is_db(v: Any) -> bool:
    return v is None or v is False or (isinstance(v, str) and v != "")


#: The monitor's roles, weakest first (each may do what the ones before it may).
ROLES = ("viewer", "operator", "admin")

#: ``CELERY_MONITOR_AUTH_PROVIDER`` values, with Flower's ``auth_provider`` class paths.
AUTH_PROVIDERS = ("google", "github", "gitlab", "okta", "oidc")
FLOWER_AUTH_PROVIDERS = {
    "flower.views.auth.GoogleAuth2LoginHandler": "google",
    "flower.views.auth.GithubLoginHandler": "github",
    "flower.views.auth.GitLabLoginHandler": "gitlab",
    "flower.views.auth.OktaLoginHandler": "okta",
}


def _is_anonymous(v: Any) -> bool:
    return isinstance(v, bool) or v in ROLES


def _is_role(v: Any) -> bool:
    return v in ROLES


def _is_basic_auth(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() != ""
    if isinstance(v, Mapping):
        return bool(v) and all(
            isinstance(k, str) and k and isinstance(p, (str, Mapping)) for k, p in v.items()
        )
    return _is_str_list(v) and len(v) > 0


def _is_provider(v: Any) -> bool:
    return v is None or v in AUTH_PROVIDERS or v in FLOWER_AUTH_PROVIDERS


def _is_opt_callable(v: Any) -> bool:
    return v is None or callable(v)


def _is_url(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.startswith(("https://", "http://")))


def _is_alert_rules(v: Any) -> bool:
    """Valid alert rules; raises :class:`ConfigurationError` naming the rule and key at fault."""
    from .monitor.insight.alerts import parse_rules

    parse_rules(v)
    return True


def _is_opt_http_url(v: Any) -> bool:
    return v is None or (
        isinstance(v, str) and v.startswith(("http://", "https://")) and len(v) > 8
    )


# name -> (default, validator, what a valid value is). The one place our defaults are written:
# those of the monitor service's keys are MonitorSettings' own (monitor/settings.py).
OWN_KEYS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
    # local processes
    "CELERY_WORKERS": (1, lambda v: True, "a number, a list of names or a dict of name -> options"),
    "CELERY_START_LOCAL_WORKERS": (True, _is_bool, "True or False"),
    "CELERY_START_TIMEOUT": (30, _is_pos_number, "a number of seconds > 0"),
    "CELERY_STOP_TIMEOUT": (30, _is_nonneg_number, "a number of seconds >= 0"),
    "CELERY_LOG_LEVEL": ("info", _is_log_level, "one of " + ", ".join(LOG_LEVELS)),
    "CELERY_LOG_DIR": (None, _is_opt_str, "a directory path or None"),
    "CELERY_SCHEDULER": (True, _is_bool, "True or False"),
    "CELERY_MONITOR": (True, _is_bool, "True or False"),
    "CELERY_MONITOR_PORT": (5555, _is_port, "a port number 0-65535"),
    "CELERY_MONITOR_ADDRESS": ("127.0.0.1", _is_str, "a host address"),
    "CELERY_APP_IMPORT": (None, _is_opt_str, "None or an import like 'module:create_app()'"),
    "CELERY_EAGER_CALLER_CONTEXT": (False, _is_bool, "True or False"),
    # safe submit
    "CELERY_SUBMIT_ALLOWLIST": (
        None,
        _is_opt_str_list,
        "a list of module prefixes or 'module:function' references",
    ),
    "CELERY_ALLOW_PICKLE": (False, _is_bool, "True or False"),
    "CELERY_SEND_TIMEOUT": (5.0, _is_pos_number, "a number of seconds > 0"),
    # reading the config
    "CELERY_STRICT_CONFIG": (False, _is_bool, "True or False"),
    # embedded broker
    "CELERY_EMBEDDED_BROKER_DIR": (None, _is_opt_str, "a directory path or None"),
    # monitor
    "CELERY_MONITOR_URL_PREFIX": ("/monitor", _is_prefix, "'' or a path like '/monitor'"),
    "CELERY_MONITOR_BLUEPRINT": (True, _is_bool, "True or False"),
    "CELERY_MONITOR_MAX_TASKS": (_MONITOR.max_tasks, _is_pos_int, "an integer > 0"),
    "CELERY_MONITOR_MAX_WORKERS": (_MONITOR.max_workers, _is_pos_int, "an integer > 0"),
    "CELERY_MONITOR_DB": (
        None,
        _is_db,
        "a SQLite path, a postgresql:// URL, False to disable, or None",
    ),
    "CELERY_MONITOR_DB_CACHE_KB": (_MONITOR.db_cache_kb, _is_pos_int, "a number of KiB > 0"),
    "CELERY_MONITOR_EVENT_BACKLOG_MB": (
        _MONITOR.event_backlog_mb,
        _is_pos_int,
        "a number of MiB > 0",
    ),
    "CELERY_MONITOR_SINGLE_INGESTER": (_MONITOR.single_ingester, _is_bool, "True or False"),
    "CELERY_MONITOR_LEASE_TTL": (_MONITOR.lease_ttl, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_RETENTION_TASKS": (_MONITOR.retention_tasks, _is_pos_int, "an integer > 0"),
    "CELERY_MONITOR_RETENTION_DAYS": (
        _MONITOR.retention_days,
        _is_pos_number,
        "a number of days > 0",
    ),
    "CELERY_MONITOR_INSPECT_TIMEOUT": (
        _MONITOR.inspect_timeout,
        _is_pos_number,
        "a number of seconds > 0",
    ),
    "CELERY_MONITOR_INSPECT_INTERVAL": (
        _MONITOR.inspect_interval,
        _is_pos_number,
        "a number of seconds > 0",
    ),
    "CELERY_MONITOR_ENABLE_EVENTS": (_MONITOR.enable_events, _is_bool, "True or False"),
    "CELERY_MONITOR_ENABLE_EVENTS_INTERVAL": (
        _MONITOR.enable_events_interval,
        _is_pos_number,
        "a number of seconds > 0",
    ),
    "CELERY_MONITOR_WORKER_OFFLINE_AFTER": (
        _MONITOR.worker_offline_after,
        lambda v: v is None or _is_pos_number(v),
        "a number of seconds > 0 or None (heartbeat expiry)",
    ),
    "CELERY_MONITOR_PURGE_OFFLINE_WORKERS": (
        _MONITOR.purge_offline_workers,
        lambda v: v is None or _is_pos_number(v),
        "a number of seconds > 0 or None (never)",
    ),
    "CELERY_MONITOR_READ_ONLY": (False, _is_bool, "True or False"),
    "CELERY_MONITOR_BROKER_API": (
        _MONITOR.broker_api,
        _is_opt_str,
        "a RabbitMQ management API URL or None",
    ),
    "CELERY_MONITOR_QUEUES": (_MONITOR.queues, _is_str_list, "a list of queue names"),
    # who may see and do what (flask_celerymon.web.auth, docs/security.rst)
    "CELERY_MONITOR_ALLOW_ANONYMOUS": (
        False,
        _is_anonymous,
        "False, True (anyone may do everything) or a role: " + ", ".join(ROLES),
    ),
    "CELERY_MONITOR_BASIC_AUTH": (
        None,
        _is_basic_auth,
        "None, 'user:password[:role],...', a list of 'user:password[:role]' or a dict "
        "user -> password or {'password': ..., 'role': ...}",
    ),
    "CELERY_MONITOR_ROLE": (
        None,
        _is_opt_callable,
        "None or a function user -> 'viewer', 'operator', 'admin' or None",
    ),
    "CELERY_MONITOR_DEFAULT_ROLE": ("admin", _is_role, "one of " + ", ".join(ROLES)),
    "CELERY_MONITOR_AUTH": (None, _is_opt_str, "None or an e-mail pattern (Flower's --auth)"),
    "CELERY_MONITOR_AUTH_PROVIDER": (
        None,
        _is_provider,
        "None or one of " + ", ".join(AUTH_PROVIDERS),
    ),
    "CELERY_MONITOR_OAUTH2_KEY": (None, _is_opt_str, "the OAuth2 client id or None"),
    "CELERY_MONITOR_OAUTH2_SECRET": (None, _is_opt_str, "the OAuth2 client secret or None"),
    "CELERY_MONITOR_OAUTH2_REDIRECT_URI": (
        None,
        _is_url,
        "None (the monitor's /login/callback) or an http(s) URL",
    ),
    "CELERY_MONITOR_OAUTH2_SERVER": (
        None,
        _is_url,
        "None or the provider's base URL (https://...)",
    ),
    "CELERY_MONITOR_GITLAB_GROUPS": (
        None,
        _is_opt_str_list,
        "None or a list of GitLab group paths",
    ),
    "CELERY_MONITOR_GITLAB_MIN_ACCESS_LEVEL": (
        20,
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "a GitLab access level (10, 20, 30, 40, 50)",
    ),
    "CELERY_MONITOR_METRICS_TOKEN": (None, _is_opt_str, "None or a bearer token string"),
    "CELERY_MONITOR_METRICS_PUBLIC": (False, _is_bool, "True or False"),
    # monitor: browser surface and limits (web/hardening.py)
    "CELERY_MONITOR_TRUSTED_HOSTS": (
        None,
        _is_opt_str_list,
        "None or a list of host names like ['monitor.example.com', '.example.org']",
    ),
    "CELERY_MONITOR_MAX_LIVE_SOCKETS": (8, _is_nonneg_int, "an integer >= 0"),
    "CELERY_MONITOR_POLL_INTERVAL": (5.0, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_MAX_CONCURRENT_WAITS": (4, _is_nonneg_int, "an integer >= 0"),
    "CELERY_MONITOR_MAX_WAIT_SECONDS": (30.0, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_MAX_CONTENT_LENGTH": (1024 * 1024, _is_pos_int, "a number of bytes > 0"),
    "CELERY_MONITOR_MAX_JSON_DEPTH": (64, _is_pos_int, "an integer > 0"),
    # insight: alerts
    "CELERY_MONITOR_ALERTS": ((), _is_alert_rules, "a list of alert rules (dicts)"),
    "CELERY_MONITOR_ALERT_WEBHOOK": (None, _is_opt_http_url, "None or an http(s):// URL"),
    "CELERY_MONITOR_ALERT_FORMAT": ("json", lambda v: v in ("json", "slack"), "'json' or 'slack'"),
    "CELERY_MONITOR_ALERT_INTERVAL": (15.0, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_ALERT_LINK": (None, _is_opt_http_url, "None or an http(s):// URL"),
}

# Keys Celery knows in their new lowercase form, addressed with the CELERY_ prefix.
_CELERY_SETTINGS = frozenset(DEFAULTS)
# Celery's legacy upper-case names that are safe to read from a Flask config.
_LEGACY = {old: new for old, new in _TO_NEW_KEY.items() if old.startswith("CELERY")}


@dataclass(frozen=True)
class WorkerSpec:
    """One local worker: its node name and the CLI options it is started with."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def queues(self) -> list[str]:
        q = self.options.get("queues") or []
        return [s.strip() for s in q.split(",")] if isinstance(q, str) else list(q)


def attribute_name(key: str) -> str:
    """The :class:`Settings` attribute of one of our keys: ``CELERY_MONITOR_PORT`` -> ``monitor_port``.

    Three keys are read into more than their value: ``CELERY_WORKERS`` -> ``workers`` (the
    parsed :class:`WorkerSpec` tuple), ``CELERY_LOG_DIR`` -> ``log_dir`` and
    ``CELERY_EMBEDDED_BROKER_DIR`` -> ``embedded_broker_dir`` (the folder used, default filled
    in); ``settings["CELERY_WORKERS"]`` gives the value as configured.
    """
    return key[len("CELERY_") :].lower()


@dataclass(frozen=True, eq=False)
class Settings:
    """Validated flask_celerymon settings of one Flask app, read once by :func:`load`.

    One typed, read-only attribute per key of :data:`OWN_KEYS` (named by
    :func:`attribute_name`; seconds are numbers, lists become tuples). ``settings["CELERY_X"]``
    is the same value as configured (a read-only mapping view, :attr:`own`). The defaults live
    in :data:`OWN_KEYS` only; :func:`load` puts them in ``app.config`` with ``setdefault``.
    """

    #: our keys -> their validated values as configured (``CELERY_LOG_LEVEL`` lowercased)
    own: Mapping[str, Any]
    #: Celery's settings by their lowercase names (``broker_url`` ...), legacy names renamed
    celery: Mapping[str, Any]
    instance_path: str
    #: our keys that ``app.config`` set before ``init_app`` (the others got their default)
    explicit: frozenset[str]
    #: ``CELERY_WORKERS`` parsed: one spec per local worker
    workers: tuple[WorkerSpec, ...]
    #: ``CELERY_LOG_DIR``, or ``<instance_path>/celery/logs`` when it is None
    log_dir: str
    start_local_workers: bool
    start_timeout: float
    stop_timeout: float
    log_level: str
    scheduler: bool
    monitor: bool
    monitor_port: int
    monitor_address: str
    app_import: str | None
    eager_caller_context: bool
    submit_allowlist: tuple[str, ...] | None
    allow_pickle: bool
    send_timeout: float
    strict_config: bool
    #: ``CELERY_EMBEDDED_BROKER_DIR``, or ``<instance_path>/celery/broker``; absolute
    embedded_broker_dir: str
    monitor_url_prefix: str
    monitor_blueprint: bool
    monitor_max_tasks: int
    monitor_max_workers: int
    monitor_db: str | bool | None
    monitor_db_cache_kb: int
    monitor_event_backlog_mb: int
    monitor_single_ingester: bool
    monitor_lease_ttl: float
    monitor_retention_tasks: int
    monitor_retention_days: float
    monitor_inspect_timeout: float
    monitor_inspect_interval: float
    monitor_enable_events: bool
    monitor_enable_events_interval: float
    monitor_worker_offline_after: float | None
    monitor_purge_offline_workers: float | None
    monitor_read_only: bool
    monitor_broker_api: str | None
    monitor_queues: tuple[str, ...]
    monitor_allow_anonymous: bool | str
    monitor_basic_auth: Any
    monitor_role: Callable[[Any], str | None] | None
    monitor_default_role: str
    monitor_auth: str | None
    monitor_auth_provider: str | None
    monitor_oauth2_key: str | None
    monitor_oauth2_secret: str | None
    monitor_oauth2_redirect_uri: str | None
    monitor_oauth2_server: str | None
    monitor_gitlab_groups: tuple[str, ...] | None
    monitor_gitlab_min_access_level: int
    monitor_metrics_token: str | None
    monitor_metrics_public: bool
    monitor_trusted_hosts: tuple[str, ...] | None
    monitor_max_live_sockets: int
    monitor_poll_interval: float
    monitor_max_concurrent_waits: int
    monitor_max_wait_seconds: float
    monitor_max_content_length: int
    monitor_max_json_depth: int
    monitor_alerts: tuple[Any, ...]
    monitor_alert_webhook: str | None
    monitor_alert_format: str
    monitor_alert_interval: float
    monitor_alert_link: str | None

    def __getitem__(self, key: str) -> Any:
        return self.own[key]


#: Celery settings read again from ``app.config`` at each send, so that setting them after
#: ``init_app`` (the usual pytest fixture) still works; every other key is read once.
LATE_SETTINGS = ("task_always_eager", "task_eager_propagates", "task_store_eager_result")
#: The Flask keys of :data:`LATE_SETTINGS`: new names, then legacy ones (the new name wins).
LATE_KEYS: tuple[tuple[str, str], ...] = tuple(
    [(f"CELERY_{name.upper()}", name) for name in LATE_SETTINGS]
    + [(old, new) for old, new in _LEGACY.items() if new in LATE_SETTINGS]
)


def late_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`LATE_SETTINGS` that ``config`` sets now, by Celery name."""
    found: dict[str, Any] = {}
    for key, name in LATE_KEYS:
        if name not in found and key in config:
            found[name] = config[key]
    return found


def celery_key(flask_key: str) -> str | None:
    """The Celery setting a Flask config key names, or None if it names none."""
    if flask_key in _LEGACY:
        return _LEGACY[flask_key]
    if flask_key.startswith("CELERY_"):
        name = flask_key[len("CELERY_") :].lower()
        if name in _CELERY_SETTINGS:
            return name
    return None


def parse_workers(value: Any) -> tuple[WorkerSpec, ...]:
    """Turn ``CELERY_WORKERS`` into worker specs; raise ConfigurationError when malformed."""
    key = "CELERY_WORKERS"
    if isinstance(value, bool):
        raise ConfigurationError(f"{key} must be {OWN_KEYS[key][2]}, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigurationError(f"{key} must be a number >= 0, not {value!r}")
        return tuple(WorkerSpec(f"worker{i + 1}") for i in range(value))
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not _is_str_list(value):
            raise ConfigurationError(f"{key} as a list must hold worker names (strings): {value!r}")
        value = {name: {} for name in value}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{key} must be {OWN_KEYS[key][2]}, not {value!r}")
    specs = []
    for name, options in value.items():
        if not isinstance(name, str) or not name or "@" in name and name.endswith("@"):
            raise ConfigurationError(f"{key}: worker name {name!r} is not a valid node name")
        options = dict(options or {})
        for opt, val in options.items():
            expected = WORKER_OPTION_TYPES.get(opt)
            if expected is None:
                known = ", ".join(sorted(WORKER_OPTION_TYPES))
                raise ConfigurationError(
                    f"{key}[{name!r}]: unknown worker option {opt!r}; known options: {known}"
                )
            if not isinstance(val, expected) or (expected is int and isinstance(val, bool)):
                raise ConfigurationError(f"{key}[{name!r}][{opt!r}] has the wrong type: {val!r}")
        if "loglevel" in options and not _is_log_level(options["loglevel"]):
            raise ConfigurationError(
                f"{key}[{name!r}]['loglevel'] must be one of {', '.join(LOG_LEVELS)}"
            )
        specs.append(WorkerSpec(name, options))
    if len({s.name for s in specs}) != len(specs):
        raise ConfigurationError(f"{key} names the same worker twice: {value!r}")
    return tuple(specs)


#: Keys whose value is read into something else than its own attribute (see attribute_name).
_DERIVED = ("CELERY_WORKERS", "CELERY_LOG_DIR", "CELERY_EMBEDDED_BROKER_DIR")


def load(config: MutableMapping[str, Any], instance_path: str) -> Settings:
    """Read and validate a Flask config once. Raises :class:`ConfigurationError` naming the key.

    Each of our keys missing from ``config`` is set there to its default (``setdefault``, as
    Flask-SQLAlchemy does), so ``app.config`` shows every value in effect.
    """
    explicit = frozenset(key for key in OWN_KEYS if key in config)
    own: dict[str, Any] = {}
    for key, (default, valid, what) in OWN_KEYS.items():
        value = config.setdefault(key, default)
        if not valid(value):
            raise ConfigurationError(f"{key} must be {what}, not {value!r}")
        own[key] = value
    own["CELERY_LOG_LEVEL"] = own["CELERY_LOG_LEVEL"].lower()
    workers = parse_workers(own["CELERY_WORKERS"])

    legacy: dict[str, Any] = {}
    new: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in config.items():
        if key in OWN_KEYS or not key.startswith("CELERY"):
            continue
        name = celery_key(key)
        if name is None:
            unknown.append(key)
            continue
        (legacy if key in _LEGACY else new)[name] = value
    celery_conf = {**legacy, **new}

    _check_unknown_keys(unknown, strict=own["CELERY_STRICT_CONFIG"])
    _check_serializers(celery_conf, own["CELERY_ALLOW_PICKLE"])
    check_broker_url(celery_conf.get("broker_url"))
    check_backend_url(celery_conf.get("result_backend"))
    _check_single_ingester(own, celery_conf)
    typed: dict[str, Any] = {
        attribute_name(key): tuple(value) if isinstance(value, list) else value
        for key, value in own.items()
        if key not in _DERIVED
    }
    return Settings(
        own=MappingProxyType(own),
        celery=MappingProxyType(celery_conf),
        instance_path=instance_path,
        explicit=explicit,
        workers=workers,
        log_dir=own["CELERY_LOG_DIR"] or os.path.join(instance_path, "celery", "logs"),
        embedded_broker_dir=os.path.abspath(
            own["CELERY_EMBEDDED_BROKER_DIR"] or os.path.join(instance_path, "celery", "broker")
        ),
        **typed,
    )


def _check_single_ingester(own: Mapping[str, Any], conf: Mapping[str, Any]) -> None:
    """The ingester lease lives in the broker's Redis (no broker URL: the embedded Redis), or
    in the PostgreSQL history when the broker is not Redis (see ``monitor/lease.py``)."""
    url = conf.get("broker_url")
    scheme = url.partition("://")[0] if isinstance(url, str) else "redis"
    db = own["CELERY_MONITOR_DB"]
    in_store = isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))
    if (
        own["CELERY_MONITOR_SINGLE_INGESTER"]
        and scheme not in ("redis", "rediss", "redis+socket")
        and not in_store
    ):
        raise ConfigurationError(
            f"CELERY_MONITOR_SINGLE_INGESTER needs a Redis broker or a PostgreSQL "
            f"CELERY_MONITOR_DB for its lease, not {scheme}:// with CELERY_MONITOR_DB = {db!r}; "
            "run one standalone monitor (flask celery monitor) instead"
        )


_SERIALIZER_KEYS = ("task_serializer", "result_serializer", "event_serializer")
_CONTENT_KEYS = ("accept_content", "result_accept_content")


def _check_serializers(conf: dict[str, Any], allow_pickle: bool) -> None:
    """Keep JSON unless the app opted in to pickle with CELERY_ALLOW_PICKLE."""
    uses_pickle = any(conf.get(k) == "pickle" for k in _SERIALIZER_KEYS) or any(
        "pickle" in (conf.get(k) or ()) or "application/x-python-serialize" in (conf.get(k) or ())
        for k in _CONTENT_KEYS
    )
    if uses_pickle and not allow_pickle:
        raise ConfigurationError(
            "pickle is configured in a CELERY_*_SERIALIZER or CELERY_ACCEPT_CONTENT key, but "
            "pickle lets anyone who can write to the broker run code on your workers; set "
            "CELERY_ALLOW_PICKLE = True to opt in"
        )
    if allow_pickle:
        log.warning(
            "CELERY_ALLOW_PICKLE is on: anyone who can write to the broker or the result "
            "backend can run code in this process; use it only on a trusted network"
        )
        conf.setdefault("task_serializer", "pickle")
        conf.setdefault("result_serializer", "pickle")
        conf.setdefault("accept_content", ["json", "pickle"])
        conf.setdefault("result_accept_content", ["json", "pickle"])


def known_keys() -> list[str]:
    """Every Flask config key flask_celerymon reads: ours, Celery's new and legacy names."""
    return sorted({*OWN_KEYS, *(f"CELERY_{name.upper()}" for name in _CELERY_SETTINGS), *_LEGACY})


def suggest_key(key: str) -> str | None:
    """The known config key closest to ``key`` (a typo), or None when none is close."""
    matches = difflib.get_close_matches(key, known_keys(), n=1, cutoff=0.85)
    return matches[0] if matches else None


def _check_unknown_keys(keys: list[str], strict: bool) -> None:
    """Warn about (or, with ``CELERY_STRICT_CONFIG``, refuse) ``CELERY*`` keys nobody reads."""
    messages = []
    for key in sorted(keys):
        near = suggest_key(key)
        hint = f"did you mean {near}?" if near else "it is not a Celery setting nor ours"
        messages.append(f"Flask config key {key} is unknown; {hint}")
    if not messages:
        return
    if strict:
        raise ConfigurationError(
            "; ".join(messages) + " (CELERY_STRICT_CONFIG is on: fix or remove the key)"
        )
    for message in messages:
        log.warning("%s; ignored", message)


def _scheme(url: str) -> str:
    """``sqla+postgresql://...`` -> ``sqla``; ``redis+socket://`` -> ``redis``."""
    return url.partition("://")[0].partition("+")[0].lower()


def mask_url(url: str) -> str:
    """``url`` as written, with the password of its user part replaced by ``**``.

    Unlike kombu's ``maybe_sanitize_url`` it never normalises the URL and never fails, so the
    value shown in an error is the value in the config.
    """
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1**@", url)


def _check_url(key: str, url: str, known: Iterable[str], what: str) -> None:
    shown = mask_url(url)
    if "://" not in url:
        raise ConfigurationError(
            f"{key} = {shown!r} is not a URL: write it as scheme://host:port/... "
            f"(e.g. redis://127.0.0.1:6379/0)"
        )
    scheme = _scheme(url)
    if scheme not in known:
        raise ConfigurationError(
            f"{key} = {shown!r}: {scheme!r} is not a {what} scheme; use one of "
            + ", ".join(sorted(known))
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number 0-65535
    except ValueError as exc:
        raise ConfigurationError(f"{key} = {shown!r} cannot be parsed: {exc}") from None


def check_broker_url(value: Any) -> None:
    """Raise :class:`ConfigurationError` for a ``CELERY_BROKER_URL`` kombu cannot use.

    ``value`` is None (the embedded broker), a URL, a ``;``-separated failover list or a list of
    URLs. Nothing is imported and nothing connects.
    """
    if value is None or value == "":
        return
    key = "CELERY_BROKER_URL"
    if isinstance(value, str):
        urls = [u.strip() for u in value.split(";")]
    elif isinstance(value, (list, tuple)) and all(isinstance(u, str) for u in value):
        urls = list(value)
    else:
        raise ConfigurationError(f"{key} must be a URL string or a list of them, not {value!r}")
    from kombu.transport import TRANSPORT_ALIASES

    for url in urls:
        _check_url(key, url, TRANSPORT_ALIASES, "broker (kombu transport)")


def check_backend_url(value: Any) -> None:
    """Raise :class:`ConfigurationError` for a ``CELERY_RESULT_BACKEND`` Celery cannot use.

    A URL needs a scheme Celery knows (``redis://``, ``db+sqlite://``, ``cache+memory://``...);
    without ``://`` the value must be a backend alias (``rpc``, ``disabled``) or an import path
    of a backend class (``package.module:Backend``), which Celery resolves when first used.
    """
    if value is None or value == "" or not isinstance(value, str):
        return
    from celery.app.backends import BACKEND_ALIASES

    key = "CELERY_RESULT_BACKEND"
    if (
        "://" in value
        or "//" in value
        or value.lower() not in BACKEND_ALIASES
        and not ("." in value or ":" in value)
    ):
        _check_url(key, value, BACKEND_ALIASES, "result backend")
