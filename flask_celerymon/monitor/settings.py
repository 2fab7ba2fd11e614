"""Settings of one monitor service: a frozen dataclass built from our ``CELERY_MONITOR_*`` keys.

The Flask side validates the keys (:data:`flask_celerymon.config.OWN_KEYS`, which takes the
defaults of the monitor's keys from this class: they are written here only); this module only
maps them to typed attributes, so the service can also be built directly in tests or in a
standalone process with ``MonitorSettings()`` defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

#: ``db`` values: a path, ``None`` for ``<instance_path>/celerymon.sqlite3``, ``False`` for none.
DbSetting = Union[str, None, bool]

DB_FILENAME = "celerymon.sqlite3"


@dataclass(frozen=True)
class MonitorSettings:
    """How the monitor service runs. Every attribute has a usable default.

    ``db`` is the history store: a SQLite file path, a ``postgresql://`` URL (see
    :func:`~.stores.open_store`), or ``False`` for an in-memory service without history. ``None`` means "no file" here too when the settings are built directly; it only
    means ``<instance_path>/celerymon.sqlite3`` in :meth:`from_config`, which resolves it.
    """

    max_tasks: int = 100_000
    max_workers: int = 5_000
    db: DbSetting = False
    #: SQLite page cache per connection of the history store, KiB (``PRAGMA cache_size``):
    #: the writer's and each reader's (see :class:`~.sqlite_store.SQLiteStore`).
    db_cache_kb: int = 2_000
    #: MiB of the Redis event stream read ahead of the decoder, at most; past it the reader
    #: stops reading and Redis buffers (up to its pub/sub output limit).
    event_backlog_mb: int = 256
    retention_tasks: int = 1_000_000
    retention_days: float = 30
    inspect_timeout: float = 1.0
    inspect_interval: float = 10.0
    enable_events: bool = True
    enable_events_interval: float = 30.0
    worker_offline_after: float | None = None
    purge_offline_workers: float | None = None
    broker_api: str | None = None
    queues: tuple[str, ...] = ()
    #: Seconds between batched writes to the history store.
    flush_interval: float = 0.5
    #: Queued updates per live subscriber before it is dropped as too slow.
    subscriber_buffer: int = 1_000
    #: One process of the cluster ingests, chosen by a lease in the broker's Redis; the others
    #: read the shared store (see :mod:`.lease`).
    single_ingester: bool = False
    #: Seconds the ingester's lease lasts without renewal (failover takes at most 4/3 of it).
    lease_ttl: float = 6.0

    @property
    def db_path(self) -> str | None:
        """The SQLite file or PostgreSQL URL to use, or None when the history store is off."""
        return self.db if isinstance(self.db, str) else None

    @classmethod
    def from_config(
        cls, own: Mapping[str, Any], instance_path: str, app_queues: Iterable[str] = ()
    ) -> MonitorSettings:
        """Build settings from validated ``CELERY_MONITOR_*`` keys (missing keys get defaults).

        ``CELERY_MONITOR_DB = None`` puts the store at ``<instance_path>/celerymon.sqlite3``.
        ``queues`` are ``CELERY_MONITOR_QUEUES`` and then ``app_queues`` (the queues the app
        configures, e.g. in ``CELERY_WORKERS``): watched even while no worker consumes them.
        """
        d = cls()

        def get(key: str, default: Any) -> Any:
            return own.get(key, default)

        db = get("CELERY_MONITOR_DB", None)
        if db is None:
            db = os.path.join(instance_path, DB_FILENAME)
        return cls(
            max_tasks=get("CELERY_MONITOR_MAX_TASKS", d.max_tasks),
            max_workers=get("CELERY_MONITOR_MAX_WORKERS", d.max_workers),
            db=db,
            db_cache_kb=get("CELERY_MONITOR_DB_CACHE_KB", d.db_cache_kb),
            event_backlog_mb=get("CELERY_MONITOR_EVENT_BACKLOG_MB", d.event_backlog_mb),
            retention_tasks=get("CELERY_MONITOR_RETENTION_TASKS", d.retention_tasks),
            retention_days=float(get("CELERY_MONITOR_RETENTION_DAYS", d.retention_days)),
            inspect_timeout=float(get("CELERY_MONITOR_INSPECT_TIMEOUT", d.inspect_timeout)),
            inspect_interval=float(get("CELERY_MONITOR_INSPECT_INTERVAL", d.inspect_interval)),
            enable_events=get("CELERY_MONITOR_ENABLE_EVENTS", d.enable_events),
            enable_events_interval=float(
                get("CELERY_MONITOR_ENABLE_EVENTS_INTERVAL", d.enable_events_interval)
            ),
            worker_offline_after=get("CELERY_MONITOR_WORKER_OFFLINE_AFTER", d.worker_offline_after),
            purge_offline_workers=get(
                "CELERY_MONITOR_PURGE_OFFLINE_WORKERS", d.purge_offline_workers
            ),
            broker_api=get("CELERY_MONITOR_BROKER_API", d.broker_api),
            queues=tuple(dict.fromkeys([*get("CELERY_MONITOR_QUEUES", ()), *app_queues])),
            single_ingester=get("CELERY_MONITOR_SINGLE_INGESTER", d.single_ingester),
            lease_ttl=float(get("CELERY_MONITOR_LEASE_TTL", d.lease_ttl)),
        )
