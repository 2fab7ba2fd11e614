"""Flask config -> Celery settings and flask_celerymon settings.

Reading rules:

* ``CELERY_<NAME>`` where ``<name>`` is one of Celery's lowercase settings maps to it
  (``CELERY_BROKER_URL`` -> ``broker_url``, ``CELERY_TASK_ALWAYS_EAGER`` -> ``task_always_eager``).
* Celery's legacy upper-case names that start with ``CELERY`` are accepted and renamed
  (``CELERY_ALWAYS_EAGER``, ``CELERYBEAT_SCHEDULE``, ``CELERYD_CONCURRENCY`` ...). When both the
  legacy and the new name are given the new one wins.
* Our own keys (:data:`OWN_KEYS`) are validated and never reach Celery's conf.
* Every other Flask key (``SECRET_KEY``, database URLs ...) is ignored; an unknown ``CELERY_*``
  key is logged as a warning because it is most likely a typo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery.app.defaults import _TO_NEW_KEY, DEFAULTS

from .errors import ConfigurationError

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


def _is_opt_str(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v != "")


def _is_str_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)


def _is_opt_str_list(v: Any) -> bool:
    return v is None or _is_str_list(v)


def _is_log_level(v: Any) -> bool:
    return isinstance(v, str) and v.lower() in LOG_LEVELS


def _is_prefix(v: Any) -> bool:
    return isinstance(v, str) and (v == "" or (v.startswith("/") and not v.endswith("/")))


def _is_db(v: Any) -> bool:
    return v is None or v is False or (isinstance(v, str) and v != "")


# name -> (default, validator, what a valid value is)
OWN_KEYS: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
    # local processes
    "CELERY_WORKERS": (1, lambda v: True, "a number, a list of names or a dict of name -> options"),
    "CELERY_START_LOCAL_WORKERS": (True, _is_bool, "True or False"),
    "CELERY_START_TIMEOUT": (30, _is_pos_number, "a number of seconds > 0"),
    "CELERY_LOG_LEVEL": ("info", _is_log_level, "one of " + ", ".join(LOG_LEVELS)),
    "CELERY_LOG_DIR": (None, _is_opt_str, "a directory path or None"),
    "CELERY_SCHEDULER": (True, _is_bool, "True or False"),
    "CELERY_MONITOR": (True, _is_bool, "True or False"),
    "CELERY_MONITOR_PORT": (5555, _is_port, "a port number 0-65535"),
    "CELERY_MONITOR_ADDRESS": ("127.0.0.1", _is_opt_str, "a host address"),
    "CELERY_APP_IMPORT": (None, _is_opt_str, "None or an import like 'module:create_app()'"),
    # safe submit
    "CELERY_SUBMIT_ALLOWLIST": (
        None,
        _is_opt_str_list,
        "a list of module prefixes or 'module:function' references",
    ),
    "CELERY_ALLOW_PICKLE": (False, _is_bool, "True or False"),
    # embedded broker
    "CELERY_EMBEDDED_BROKER_DIR": (None, _is_opt_str, "a directory path or None"),
    # monitor
    "CELERY_MONITOR_URL_PREFIX": ("/monitor", _is_prefix, "'' or a path like '/monitor'"),
    "CELERY_MONITOR_BLUEPRINT": (True, _is_bool, "True or False"),
    "CELERY_MONITOR_MAX_TASKS": (100_000, _is_pos_int, "an integer > 0"),
    "CELERY_MONITOR_MAX_WORKERS": (5_000, _is_pos_int, "an integer > 0"),
    "CELERY_MONITOR_DB": (
        None,
        _is_db,
        "a SQLite path, a postgresql:// URL, False to disable, or None",
    ),
    "CELERY_MONITOR_SINGLE_INGESTER": (False, _is_bool, "True or False"),
    "CELERY_MONITOR_LEASE_TTL": (6.0, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_RETENTION_TASKS": (1_000_000, _is_pos_int, "an integer > 0"),
    "CELERY_MONITOR_RETENTION_DAYS": (30, _is_pos_number, "a number of days > 0"),
    "CELERY_MONITOR_INSPECT_TIMEOUT": (1.0, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_INSPECT_INTERVAL": (10.0, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_ENABLE_EVENTS": (True, _is_bool, "True or False"),
    "CELERY_MONITOR_ENABLE_EVENTS_INTERVAL": (30.0, _is_pos_number, "a number of seconds > 0"),
    "CELERY_MONITOR_WORKER_OFFLINE_AFTER": (
        None,
        lambda v: v is None or _is_pos_number(v),
        "a number of seconds > 0 or None (heartbeat expiry)",
    ),
    "CELERY_MONITOR_PURGE_OFFLINE_WORKERS": (
        None,
        lambda v: v is None or _is_pos_number(v),
        "a number of seconds > 0 or None (never)",
    ),
    "CELERY_MONITOR_READ_ONLY": (False, _is_bool, "True or False"),
    "CELERY_MONITOR_BROKER_API": (None, _is_opt_str, "a RabbitMQ management API URL or None"),
    "CELERY_MONITOR_QUEUES": ((), _is_str_list, "a list of queue names"),
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


@dataclass(frozen=True)
class Settings:
    """Validated flask_celerymon settings of one Flask app (our own keys, lowercased)."""

    own: Mapping[str, Any]
    celery: Mapping[str, Any]
    workers: tuple[WorkerSpec, ...]
    instance_path: str

    def __getitem__(self, key: str) -> Any:
        return self.own[key]

    @property
    def log_dir(self) -> str:
        return self.own["CELERY_LOG_DIR"] or os.path.join(self.instance_path, "celery", "logs")


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


def load(config: Mapping[str, Any], instance_path: str) -> Settings:
    """Read and validate a Flask config. Raises :class:`ConfigurationError` naming the key."""
    own: dict[str, Any] = {}
    for key, (default, valid, what) in OWN_KEYS.items():
        value = config.get(key, default)
        if not valid(value):
            raise ConfigurationError(f"{key} must be {what}, not {value!r}")
        own[key] = value
    own["CELERY_LOG_LEVEL"] = own["CELERY_LOG_LEVEL"].lower()
    workers = parse_workers(own["CELERY_WORKERS"])

    legacy: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for key, value in config.items():
        if key in OWN_KEYS or not key.startswith("CELERY"):
            continue
        name = celery_key(key)
        if name is None:
            log.warning("Flask config key %s is not a Celery setting nor ours; ignored", key)
            continue
        (legacy if key in _LEGACY else new)[name] = value
    celery_conf = {**legacy, **new}

    _check_serializers(celery_conf, own["CELERY_ALLOW_PICKLE"])
    _check_single_ingester(own, celery_conf)
    return Settings(own=own, celery=celery_conf, workers=workers, instance_path=instance_path)


def _check_single_ingester(own: Mapping[str, Any], conf: Mapping[str, Any]) -> None:
    """The ingester lease lives in the broker's Redis (no broker URL: the embedded Redis)."""
    url = conf.get("broker_url")
    scheme = url.partition("://")[0] if isinstance(url, str) else "redis"
    if own["CELERY_MONITOR_SINGLE_INGESTER"] and scheme not in ("redis", "rediss", "redis+socket"):
        raise ConfigurationError(
            f"CELERY_MONITOR_SINGLE_INGESTER needs a Redis broker for its lease, not {scheme}://; "
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
