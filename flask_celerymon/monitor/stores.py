"""Opening the history store a ``CELERY_MONITOR_DB`` value names.

Apart from :mod:`.store` (the interface) so that the stores import the interface and this
module imports the stores: no import cycle.
"""

from __future__ import annotations

from .store import HistoryStore

#: URL schemes that select the PostgreSQL store.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(target: str, cache_kb: int | None = None) -> HistoryStore:
    """The store for a ``CELERY_MONITOR_DB`` value: a ``postgresql://`` URL opens
    :class:`~.pg_store.PostgresStore`, anything else is a SQLite file path.

    ``cache_kb`` is the SQLite page cache per connection in KiB (``CELERY_MONITOR_DB_CACHE_KB``;
    None: its default); PostgreSQL's cache is the server's, so it is ignored there.

    Raises :class:`~flask_celerymon.errors.CeleryMonError` when the PostgreSQL driver is missing
    (the message says what to install) and the driver's errors when the server cannot be
    reached.
    """
    if target.startswith(POSTGRES_SCHEMES):
        from .pg_store import PostgresStore

        return PostgresStore(target)
    from .sqlite_store import SQLiteStore

    return SQLiteStore(target, cache_kb)
