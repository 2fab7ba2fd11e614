"""One ingester per cluster without Redis: the lease and the fan-out in the PostgreSQL store.

With ``CELERY_MONITOR_SINGLE_INGESTER``, a broker that is not Redis (RabbitMQ) and a
PostgreSQL ``CELERY_MONITOR_DB``, :class:`~.lease.Coordinator` runs on :class:`PgCluster`
instead of Redis. Same rules, same bound (see :mod:`.lease`):

* **The lease** is the row ``name = <cluster>`` of the table ``celerymon_lease`` in the
  store's schema: ``(name, holder, expires)``. A process takes it with one ``INSERT ... ON
  CONFLICT DO UPDATE ... WHERE expires < now()`` (so only when nobody holds it or the
  holder's time ran out), renews it while it is still its own and unexpired, and deletes it
  when it stops. Times are the database server's (``now()``), so the hosts' clocks do not
  matter.
* **The fan-out** is PostgreSQL's ``NOTIFY`` on a channel named from the cluster (the
  ingester) and ``LISTEN`` on a connection of its own (each follower). A notification holds at
  most :data:`MAX_MESSAGE` bytes: the coordinator splits a larger message.
* **Cluster values** (the metrics' copy, :meth:`set_if_held` and :meth:`get`) are rows of
  ``celerymon_cluster (key, value)``, written only while the writer holds the lease.

Connections: one for the lease, the values and the notifications sent (psycopg serializes
threads on it), one per follower for listening. Raises what :func:`.pg_store.parse_url` and
psycopg raise (see :class:`PgCluster`).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from .pg_store import POOL_TIMEOUT, _driver, parse_url, reaching
from .store import redact

#: The largest notification payload sent, in bytes (PostgreSQL's limit is 8000).
MAX_MESSAGE = 7900

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS celerymon_lease (name text PRIMARY KEY, holder text NOT NULL, "
    "expires timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS celerymon_cluster (key text PRIMARY KEY, value bytea NOT NULL)",
)
_TTL = "now() + %s * interval '1 millisecond'"


class PgCluster:
    """The lease, fan-out channel and cluster values of ``cluster`` in the PostgreSQL database
    of ``url`` (a ``CELERY_MONITOR_DB`` URL; the tables go in its schema). ``ttl`` in seconds.

    Raises :class:`~flask_celerymon.errors.CeleryMonError` when psycopg is missing or the
    schema name is not valid, and :class:`~.pg_store.StoreUnavailable` when the server cannot
    be reached within ``POOL_TIMEOUT`` seconds. Later calls raise psycopg's errors when the
    server does not answer (the coordinator then stops ingesting and tries again).
    """

    max_message = MAX_MESSAGE

    def __init__(self, url: str, cluster: str, ttl: float, ident: str | None = None) -> None:
        psycopg, _pool = _driver()
        self._psycopg = psycopg
        self.url, self.schema = parse_url(url)
        self.name = cluster
        self.ttl_ms = max(1, int(ttl * 1000))
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        digest = hashlib.sha1(f"{self.schema}:{cluster}".encode()).hexdigest()[:20]
        self.channel = f"celerymon_{digest}"
        self._lock = threading.Lock()
        with reaching(self.url, "lease"):
            self._conn = self._connect()
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                                   (f"celerymon-cluster:{self.schema}",))  # fmt: skip
                for stmt in _SCHEMA:
                    self._conn.execute(stmt)

    def __repr__(self) -> str:
        return f"PgCluster({redact(self.url)!r}, {self.name!r})"

    def _connect(self) -> Any:
        conn = self._psycopg.connect(
            self.url, autocommit=True, connect_timeout=int(POOL_TIMEOUT),
            options=f"-c search_path={self.schema}",
        )  # fmt: skip
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        return conn

    def _one(self, sql: str, params: tuple[Any, ...]) -> Any:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    # -- the lease (the interface of lease.RedisLease) -----------------------------------

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (or its holder's time ran out); True when we
        hold it now."""
        row = self._one(
            f"INSERT INTO celerymon_lease (name, holder, expires) VALUES (%s, %s, {_TTL}) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires = excluded.expires WHERE celerymon_lease.expires < now() RETURNING holder",
            (self.name, self.ident, self.ttl_ms),
        )
        return row is not None and row[0] == self.ident

    def renew(self) -> bool:
        """Extend our lease by ``ttl``; False when it is no longer ours (or ran out)."""
        row = self._one(
            f"UPDATE celerymon_lease SET expires = {_TTL} WHERE name = %s AND holder = %s "
            "AND expires > now() RETURNING 1",
            (self.ttl_ms, self.name, self.ident),
        )
        return row is not None

    def release(self) -> None:
        """Give the lease up (only if it is still ours)."""
        self._one(
            "DELETE FROM celerymon_lease WHERE name = %s AND holder = %s RETURNING 1",
            (self.name, self.ident),
        )

    def holder(self) -> str | None:
        """The id of the current holder, or None."""
        row = self._one(
            "SELECT holder FROM celerymon_lease WHERE name = %s AND expires > now()",
            (self.name,),
        )
        return None if row is None else str(row[0])

    def set_if_held(self, key: str, value: bytes) -> bool:
        """Set the cluster value ``key`` only while we hold the lease (one statement)."""
        row = self._one(
            "INSERT INTO celerymon_cluster (key, value) SELECT %s, %s WHERE EXISTS (SELECT 1 "
            "FROM celerymon_lease WHERE name = %s AND holder = %s AND expires > now()) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value RETURNING 1",
            (key, value, self.name, self.ident),
        )
        return row is not None

    def get(self, key: str) -> bytes | None:
        """The cluster value ``key``, or None."""
        row = self._one("SELECT value FROM celerymon_cluster WHERE key = %s", (key,))
        return None if row is None else bytes(row[0])

    # -- the fan-out -----------------------------------------------------------------------

    def publish(self, message: str) -> None:
        """Send ``message`` (at most :data:`MAX_MESSAGE` bytes) to every listener."""
        self._one("SELECT pg_notify(%s, %s)", (self.channel, message))

    def messages(self, stop: threading.Event) -> Iterator[str]:
        """The messages sent on the channel from now on, until ``stop`` is set (checked every
        second), on a connection of their own."""
        conn = self._connect()
        try:
            conn.execute(f'LISTEN "{self.channel}"')
            while not stop.is_set():
                for note in conn.notifies(timeout=1.0):
                    yield note.payload
                    if stop.is_set():
                        break
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
