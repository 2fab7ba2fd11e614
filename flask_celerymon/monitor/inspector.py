"""Cached, concurrent, time-bounded ``inspect`` calls to workers.

Each method (``stats``, ``active_queues``...) runs as its own broadcast in a small thread pool,
so a full refresh takes one timeout, not eight. Results are cached per worker and method with
the time they arrived. A refresh already running for the same target and method is joined, not
repeated. When the number of workers expected to answer is known (from events), the broadcast
stops waiting as soon as all of them replied, so a healthy cluster answers in milliseconds.
A caller never waits longer than the timeout: it gets what the cache holds by then.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)

METHODS = (
    "stats",
    "active_queues",
    "registered",
    "scheduled",
    "active",
    "reserved",
    "revoked",
    "conf",
)
#: Queue names remembered from ``active_queues`` answers.
MAX_SEEN_QUEUES = 1_000
#: What a refresh of all workers asks for (the task lists only for one worker, as Flower).
GLOBAL_METHODS = ("stats", "active_queues", "registered", "conf")


class Inspector:
    """Inspect results per worker: ``get()`` reads the cache, ``refresh()`` updates it.

    ``expected_workers`` returns the hostnames believed online (from events); it lets a global
    refresh return as soon as each of them answered.
    """

    def __init__(
        self,
        app: Celery,
        timeout: float = 1.0,
        expected_workers: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.app = app
        self.timeout = timeout
        self.expected_workers = expected_workers
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str | None, str], cf.Future[Exception | None]] = {}
        self._executor: cf.ThreadPoolExecutor | None = None
        self.errors = 0
        self.last_refresh: float | None = None
        self._seen_queues: dict[str, None] = {}

    def _pool(self) -> cf.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(8, thread_name_prefix="celerymon-inspect")
            return self._executor

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread pool: queued calls are cancelled, running ones get ``timeout``
        seconds (default: the inspect timeout + 1 s) to finish before they are left behind."""
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is None:
            return
        ex.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + (self.timeout + 1.0 if timeout is None else timeout)
        for t in _pool_threads(ex):
            t.join(max(0.0, deadline - time.monotonic()))

    # -- reading ---------------------------------------------------------------------------

    def get(self, worker: str | None = None) -> dict[str, dict[str, Any]]:
        """Cached results: ``{hostname: {method: result, "timestamp": t}}`` (copies).

        ``timestamp`` is when the newest result of that worker arrived. Never blocks.
        """
        with self._lock:
            if worker is not None:
                d = self._cache.get(worker)
                return {} if d is None else {worker: dict(d)}
            return {w: dict(d) for w, d in self._cache.items()}

    def forget(self, worker: str) -> None:
        """Drop a worker's cached results (it was purged)."""
        with self._lock:
            self._cache.pop(worker, None)

    def seen_queues(self) -> list[str]:
        """Names of the queues workers were seen consuming since start, oldest first (at
        most :data:`MAX_SEEN_QUEUES`): a queue whose consumers left stays measured."""
        with self._lock:
            return list(self._seen_queues)

    def _saw_queues(self, queues: list[Any]) -> None:
        seen = self._seen_queues
        for q in queues:
            name = q.get("name") if isinstance(q, dict) else None
            if isinstance(name, str) and name and name not in seen:
                if len(seen) >= MAX_SEEN_QUEUES:
                    del seen[next(iter(seen))]
                seen[name] = None

    # -- refreshing ------------------------------------------------------------------------

    def refresh(
        self,
        worker: str | None = None,
        methods: Iterable[str] | None = None,
        wait: bool = True,
    ) -> dict[str, dict[str, Any]]:
        """Refresh ``methods`` (default: all for one worker, :data:`GLOBAL_METHODS` for all).

        With ``wait`` the call returns when the answers are in or after ``timeout`` seconds,
        whichever is first; then or without ``wait`` it returns :meth:`get`. Raises
        ``ValueError`` for an unknown method name and, with ``wait``, the broker's connection
        error (kombu's ``OperationalError``...) when no broadcast could be sent: an
        unreachable broker is a failure, not an empty answer.
        """
        if methods is None:
            methods = METHODS if worker is not None else GLOBAL_METHODS
        methods = tuple(methods)
        for m in methods:
            if m not in METHODS:
                raise ValueError(f"unknown inspect method {m!r}; use one of {', '.join(METHODS)}")
        futures = [self._start(worker, m) for m in methods]
        if wait:
            done, _ = cf.wait(futures, timeout=self.timeout)
            failures = [f.result() for f in done]
            if futures and len(done) == len(futures) and all(failures):
                raise failures[0]  # type: ignore[misc]
        return self.get(worker)

    def _start(self, worker: str | None, method: str) -> cf.Future[Exception | None]:
        key = (worker, method)
        pool = self._pool()
        with self._lock:
            fut = self._inflight.get(key)
            if fut is not None and not fut.done():
                return fut
            try:
                fut = pool.submit(self._call, worker, method)
            except RuntimeError as exc:
                # the pool is shut down: by close() racing this call, or by the interpreter
                # exiting under a daemon housekeeping thread. No call is made; the answer is
                # the last one kept, and a waiting caller gets the error.
                done: cf.Future[Exception | None] = cf.Future()
                done.set_result(exc)
                return done
            self._inflight[key] = fut
        return fut

    def _call(self, worker: str | None, method: str) -> Exception | None:
        """One broadcast; returns the exception that stopped it, or None."""
        limit = None
        if worker is not None:
            destination: list[str] | None = [worker]
            limit = 1
        else:
            destination = None
            if self.expected_workers is not None:
                expected = list(self.expected_workers())
                limit = len(expected) or None
        try:
            with self.app.connection_for_write() as conn:
                # Fail within the timeout when the broker is down (kombu's publish would
                # retry for seconds, long after the caller concluded "no workers").
                conn.ensure_connection(
                    max_retries=1, interval_start=0, interval_step=0, timeout=self.timeout
                )
                insp = self.app.control.inspect(
                    destination=destination,
                    timeout=self.timeout * 0.9,
                    limit=limit,
                    connection=conn,
                )
                replies = getattr(insp, method)() or {}
        except Exception as exc:  # noqa: BLE001 - a broker error must not escape the pool
            self.errors += 1
            log.warning("celerymon: inspect %s failed: %s", method, exc)
            return exc
        now = time.time()
        with self._lock:
            for host, value in replies.items():
                d = self._cache.setdefault(host, {})
                d[method] = value
                d["timestamp"] = now
                if method == "active_queues" and isinstance(value, list):
                    self._saw_queues(value)
            self.last_refresh = now
        return None


def _pool_threads(ex: cf.ThreadPoolExecutor) -> list[threading.Thread]:
    """The worker threads of ``ex``, to join them with a deadline.

    Private API, kept here only: ``ThreadPoolExecutor`` has no public list of its threads and
    ``shutdown(wait=True)`` waits without a timeout (an inspect call stuck on a dead broker
    would hold ``stop()``). Empty when the attribute is gone (nothing is joined then).
    """
    return list(getattr(ex, "_threads", ()))
