"""One ingester per cluster: a lease in the broker's Redis, and the fan-out to the others.

With ``CELERY_MONITOR_SINGLE_INGESTER`` every process of the app (gunicorn ``-w N``, several
hosts) runs a :class:`Coordinator` instead of consuming events itself:

* **The lease** is the Redis key ``celerymon:<cluster>:ingester`` in the broker's database,
  holding the holder's id (``host:pid:random``). A process takes it with ``SET NX PX ttl``;
  the holder renews it every ``ttl / 3`` with a script that extends it only while it still
  holds it, and stops ingesting as soon as a renewal fails. A process that holds the lease
  is the **ingester**: it consumes the event stream and writes the shared history store.
* **Followers** consume nothing. They answer pages, the API and metrics from the shared store,
  and learn what changed from the **fan-out channel** ``celerymon:<cluster>:changes`` (Redis
  pub/sub): after each write to the store the ingester publishes the ids of the tasks and
  workers it wrote, and each follower passes them to its live subscribers (websockets) and
  reloads the workers from the store. The insight engine announces the same way which of its
  topics (``analytics``, ``errors``, ``canvas``, ``alerts``) it wrote to the shared tables,
  so a follower's live insight pages are pushed once per write too. A message is the JSON
  ``{"tasks": [ids], "workers": [hostnames], "topics": [names]}`` (each key optional).
* **Failover bound**: when the ingester dies its key expires after at most ``ttl``; every
  follower tries to take it every ``ttl / 3``, so a successor holds it at most
  ``ttl * 4 / 3`` seconds after the death, and consumes events once it has connected to the
  broker (well under a second on a live broker). With the default ``ttl`` of 6 s: 8 s plus
  the connection. Events published during that gap are lost for the monitor (Redis' event
  fan-out does not keep them); the successor counts the gap in ``figures()["handovers"]``.

Without a Redis broker (RabbitMQ) and with a PostgreSQL history, the lease, the channel and
the metrics' copy live in that database instead (:mod:`.pg_lease`: a lease row, ``NOTIFY`` /
``LISTEN``), with the same rules and bound; :func:`open_cluster` chooses. With neither there
is no lease: run one standalone monitor.

Threads: ``celerymon-lease`` (acquire / renew) and, in followers, ``celerymon-fanout``
(listens on the channel). Neither starts before :meth:`Coordinator.start`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from celery import Celery

from ..errors import CeleryMonError

log = logging.getLogger(__name__)

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_SET_IF_HELD = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('set', KEYS[2], ARGV[2]) and 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def redis_client(app: Celery) -> Any:
    """A redis-py client on ``app``'s Redis broker (its database, TLS and socket settings).

    Raises :class:`CeleryMonError` for a broker that is not Redis.
    """
    import redis

    url = app.conf.broker_url or ""
    scheme = url.partition("://")[0]
    if scheme == "redis+socket":
        url = "unix://" + url.partition("://")[2]
    elif scheme not in ("redis", "rediss"):
        raise CeleryMonError(
            f"CELERY_MONITOR_SINGLE_INGESTER needs a Redis broker for its lease, not {scheme}://;"
            " run one standalone monitor (flask celery monitor) instead"
        )
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


class RedisLease:
    """A lease on one Redis key: :meth:`acquire`, :meth:`renew`, :meth:`release`.

    ``ttl`` is in seconds. Every method talks to Redis once and raises redis-py's errors
    when Redis does not answer.
    """

    def __init__(self, client: Any, key: str, ttl: float, ident: str | None = None) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1, int(ttl * 1000))
        self.ident = ident or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._set_if_held = client.register_script(_SET_IF_HELD)

    def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when we hold it now."""
        return bool(self.client.set(self.key, self.ident, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """Extend our lease by ``ttl``; False when it is no longer ours."""
        return bool(self._renew(keys=[self.key], args=[self.ident, self.ttl_ms]))

    def release(self) -> None:
        """Give the lease up (only if it is still ours)."""
        self._release(keys=[self.key], args=[self.ident])

    def set_if_held(self, key: str, value: bytes) -> bool:
        """Set ``key`` to ``value`` (no expiry) only while we hold the lease, in one atomic
        step; True when written. A holder that lost the lease (paused past its ``ttl``)
        cannot overwrite what its successor wrote."""
        return bool(self._set_if_held(keys=[self.key, key], args=[self.ident, value]))

    def holder(self) -> str | None:
        """The id of the current holder, or None."""
        v = self.client.get(self.key)
        return v.decode() if isinstance(v, bytes) else v


class RedisCluster:
    """The lease, fan-out channel and cluster values of ``cluster`` in ``app``'s Redis broker
    (see the module). Raises :class:`CeleryMonError` for a broker that is not Redis; later
    calls raise redis-py's errors when Redis does not answer."""

    #: A message may be of any size.
    max_message: int | None = None

    def __init__(self, app: Celery, cluster: str, ttl: float) -> None:
        self.client = redis_client(app)
        self.lease = RedisLease(self.client, f"celerymon:{cluster}:ingester", ttl)
        self.channel = f"celerymon:{cluster}:changes"
        self.ident = self.lease.ident

    def acquire(self) -> bool:
        return self.lease.acquire()

    def renew(self) -> bool:
        return self.lease.renew()

    def release(self) -> None:
        self.lease.release()

    def holder(self) -> str | None:
        return self.lease.holder()

    def set_if_held(self, key: str, value: bytes) -> bool:
        return self.lease.set_if_held(key, value)

    def get(self, key: str) -> bytes | None:
        """The value of the Redis key ``key``, or None."""
        value = self.client.get(key)
        return None if value is None else bytes(value)

    def publish(self, message: str) -> None:
        self.client.publish(self.channel, message)

    def messages(self, stop: threading.Event) -> Iterator[str | bytes]:
        """The messages published on the channel from now on, until ``stop`` is set (checked
        every second)."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            while not stop.is_set():
                msg = pubsub.get_message(timeout=1.0)
                if msg is not None:
                    yield msg["data"]
        finally:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self.client.close()


def open_cluster(app: Celery, cluster: str, ttl: float, db: str | None) -> Any:
    """Where the lease of ``cluster`` lives: the broker's Redis (:class:`RedisCluster`) when
    the broker is Redis, else the PostgreSQL history ``db`` (:class:`.pg_lease.PgCluster`).
    Raises :class:`CeleryMonError` with neither (the message says what to do), and what the
    chosen one raises when it cannot connect."""
    scheme = (app.conf.broker_url or "").partition("://")[0]
    if scheme not in ("redis", "rediss", "redis+socket") and db is not None:
        from .stores import POSTGRES_SCHEMES

        if db.startswith(POSTGRES_SCHEMES):
            from .pg_lease import PgCluster

            return PgCluster(db, cluster, ttl)
    return RedisCluster(app, cluster, ttl)


def _messages(
    tasks: list[str], workers: list[str], topics: Sequence[str], limit: int | None
) -> Iterator[str]:
    """The fan-out message(s) of these ids and topics: one, or (a ``limit`` in bytes) as many
    as keep each under it, the ids split between them."""
    msg: dict[str, list[str]] = {"tasks": tasks, "workers": workers}
    if topics:
        msg["topics"] = list(topics)
    text = json.dumps(msg)
    if limit is None or len(text.encode()) <= limit:
        yield text
        return
    if len(tasks) + len(workers) <= 1:
        # one id too long for a notification (a uuid is any string a client sent; PostgreSQL
        # refused the payload and the rest of the flush went unsent): it is not sent, the
        # followers read it from the store
        if tasks or workers:
            yield from _messages([], [], topics, limit)
        return
    if len(tasks) > 1 or not workers:
        half = len(tasks) // 2
        yield from _messages(tasks[:half], [], topics, limit)
        yield from _messages(tasks[half:], workers, (), limit)
    else:
        half = len(workers) // 2
        yield from _messages(tasks, workers[:half], topics, limit)
        yield from _messages([], workers[half:], (), limit)


class Coordinator:
    """Runs the lease for one service and tells it when to ingest.

    ``on_lead()`` is called (lease thread) when this process becomes the ingester,
    ``on_follow()`` when it stops being it; ``on_changes(tasks, workers, topics)`` is called
    (fan-out thread) in followers with the ids the ingester wrote and the insight topics it
    changed.
    """

    def __init__(
        self,
        lease: Any,
        ttl: float,
        on_lead: Callable[[], None],
        on_follow: Callable[[], None],
        on_changes: Callable[[list[str], list[str], list[str]], None],
    ) -> None:
        #: :class:`RedisCluster` or :class:`.pg_lease.PgCluster` (see :func:`open_cluster`)
        self.lease = lease
        self.ttl = ttl
        self._on_lead = on_lead
        self._on_follow = on_follow
        self._on_changes = on_changes
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.leading = False
        self.handovers = 0
        self.errors = 0

    def start(self) -> None:
        for target, name in ((self._run_lease, "celerymon-lease"),
                             (self._run_fanout, "celerymon-fanout")):  # fmt: skip
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and give the lease up, so a successor need not wait for it."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        if self.leading:
            self.leading = False
            try:
                self.lease.release()
            except Exception:  # noqa: BLE001 - it expires by itself
                log.info("celerymon: could not release the ingester lease", exc_info=True)
        self.lease.close()

    def publish(self, tasks: list[str], workers: list[str], topics: Sequence[str] = ()) -> None:
        """Ingester: tell the followers which tasks and workers were just written, and which
        insight ``topics`` changed. Raises redis-py's (psycopg's) errors when Redis (PostgreSQL)
        does not answer."""
        if tasks or workers or topics:
            for message in _messages(tasks, workers, topics, self.lease.max_message):
                self.lease.publish(message)

    def _run_lease(self) -> None:
        interval = self.ttl / 3
        while not self._stop.is_set():
            try:
                if self.leading:
                    if not self.lease.renew():
                        log.warning("celerymon: lost the ingester lease; following")
                        self.leading = False
                        self._on_follow()
                elif self.lease.acquire():
                    self.leading = True
                    self.handovers += 1
                    log.info("celerymon: this process is the ingester (%s)", self.lease.ident)
                    self._on_lead()
            except Exception:  # noqa: BLE001 - Redis down: stop ingesting, try again
                self.errors += 1
                log.warning("celerymon: ingester lease check failed", exc_info=True)
                if self.leading:
                    self.leading = False
                    self._on_follow()
            self._stop.wait(interval)

    def _run_fanout(self) -> None:
        while not self._stop.is_set():
            try:
                for data in self.lease.messages(self._stop):
                    if self.leading:
                        continue
                    try:
                        msg = json.loads(data)
                        tasks = [str(t) for t in msg.get("tasks", ())]
                        workers = [str(w) for w in msg.get("workers", ())]
                        topics = [str(t) for t in msg.get("topics", ())]
                    except (ValueError, TypeError, AttributeError):
                        self.errors += 1
                        continue
                    self._on_changes(tasks, workers, topics)
            except Exception:  # noqa: BLE001 - reconnect
                self.errors += 1
                log.warning("celerymon: fan-out channel failed", exc_info=True)
                self._stop.wait(1.0)
