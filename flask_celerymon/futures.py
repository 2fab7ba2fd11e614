"""``Future`` and ``FuturePool``: Celery results with the ``concurrent.futures`` API.

A :class:`Future` *is* a :class:`concurrent.futures.Future`, so ``concurrent.futures.wait`` and
``as_completed`` accept it. Its internal state follows the Celery task: ``result()`` waits on the
result backend directly, and a per-app :class:`ResultWatcher` thread (started only while somebody
waits through ``wait``/``as_completed`` or has a done-callback) polls the backend in batches and
completes the future, so callbacks run once when the task finishes even if nobody waits.

In eager mode Celery hands back an :class:`~celery.result.EagerResult`, which is finished when
it is created and has no result backend: its future is completed at once, so every method
answers from it without a backend call.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from celery import states
from celery.result import AsyncResult, EagerResult

from . import network

if TYPE_CHECKING:
    import celery

log = logging.getLogger(__name__)

#: Celery's own states; any other state was set by the running task (``update_state``).
_CELERY_STATES = frozenset(states.ALL_STATES) | {states.REJECTED, states.IGNORED}

__all__ = ["Future", "FuturePool", "ResultWatcher"]


class _NotifyingList(list):
    """``Future._waiters`` replacement: tells the watcher when ``wait``/``as_completed`` start."""

    def __init__(self, on_append: Callable[[], None]) -> None:
        super().__init__()
        self._on_append = on_append

    def append(self, item: Any) -> None:
        super().append(item)
        self._on_append()


def _notify_on_wait(future: cf.Future[Any], on_wait: Callable[[], None]) -> None:
    """Call ``on_wait()`` each time ``concurrent.futures.wait``/``as_completed`` (or anything
    else that registers a waiter) starts waiting on ``future``.

    Private API, kept here only: the standard library registers a waiter by appending to the
    future's private ``_waiters`` list and offers no public hook; a Celery future must learn
    that someone waits so the result watcher starts polling the backend for it.
    """
    future._waiters = _NotifyingList(on_wait)


def _reads_backend(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Raise ConnectionFailed, naming the result backend, when it does not answer."""

    @functools.wraps(fn)
    def wrapper(self: Future, *args: Any, **kwargs: Any) -> Any:
        with network.translated(self._async.app, f"Future.{fn.__name__}()", network.BACKEND):
            return fn(self, *args, **kwargs)

    return wrapper


class Future(cf.Future):
    """The future of one Celery task.

    ``running()`` is true only while the task is STARTED (not while PENDING), ``cancel()``
    revokes a task that has not started, ``done()`` is true for SUCCESS, FAILURE and REVOKED.
    Every method that asks the result backend (or, for ``cancel``, the broker) raises
    :class:`~flask_celerymon.errors.ConnectionFailed` naming it when it does not answer.
    """

    def __init__(
        self,
        result: AsyncResult,
        watcher: ResultWatcher | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self._async = result
        self._watcher = watcher
        self._name = name
        self._finish_lock = threading.Lock()
        _notify_on_wait(self, self._watch)
        if isinstance(result, EagerResult):  # finished before it was returned; no backend to poll
            self._sync()

    # -- Celery-side properties -------------------------------------------------------
    @property
    def id(self) -> str:
        return self._async.id

    @property
    @_reads_backend
    def state(self) -> str:
        if super().cancelled():
            return states.REVOKED
        return self._async.state

    status = state

    @property
    def name(self) -> str | None:
        return self._name or getattr(self._async, "name", None)

    @property
    def async_result(self) -> AsyncResult:
        """The underlying :class:`celery.result.AsyncResult`."""
        return self._async

    @property
    @_reads_backend
    def info(self) -> Any:
        """The task's current meta (e.g. progress set with ``update_state``)."""
        return self._async.info

    def __repr__(self) -> str:
        return f"<Future {self.id} {self.name or ''} state={self.state}>"

    # -- concurrent.futures API -------------------------------------------------------
    @_reads_backend
    def cancel(self) -> bool:
        """Revoke the task unless it already started; True when it is (now) cancelled."""
        if super().done():
            return super().cancelled()
        state = self._async.state
        if state == states.REVOKED:
            return self._finish_cancelled()
        if state in (states.STARTED, states.RETRY) or state in states.READY_STATES:
            self._sync(state)
            return False
        with network.translated(self._async.app, "Future.cancel()", network.BROKER):
            self._async.revoke()
        return self._finish_cancelled()

    @_reads_backend
    def cancelled(self) -> bool:
        if super().cancelled():
            return True
        return self._sync() == states.REVOKED

    @_reads_backend
    def running(self) -> bool:
        """True while the task runs: ``STARTED``, or a custom state it set (``PROGRESS``...)."""
        if super().done():
            return False
        state = self._async.state
        return state == states.STARTED or state not in _CELERY_STATES

    @_reads_backend
    def done(self) -> bool:
        if super().done():
            return True
        self._sync()
        return super().done()

    @_reads_backend
    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        return super().result(0)

    @_reads_backend
    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(0)

    def add_done_callback(self, fn: Callable[[cf.Future], object]) -> None:
        """Call ``fn(future)`` once when the task finishes, whether or not anyone waits."""
        super().add_done_callback(fn)
        if not super().done():
            self._watch()

    # -- internals ----------------------------------------------------------------------
    def _watch(self) -> None:
        if self._watcher is not None and not super().done():
            self._watcher.watch(self)

    def _wait(self, timeout: float | None) -> None:
        """Block until the task is ready; cf.TimeoutError after ``timeout`` seconds.

        Without a timeout Celery's own wait is used (pub/sub on Redis). With one, the backend
        is polled with a growing interval (2 ms to 50 ms), because Celery's wait only checks its
        timeout once a second.
        """
        if super().done():
            return
        if self._async.backend is None:  # nothing to wait on: what we have is all there is
            self._sync()
            return
        if timeout is None:
            self._async.get(propagate=False, disable_sync_subtasks=False)
            self._sync()
            return
        deadline = time.monotonic() + timeout
        delay = 0.002
        backend = self._async.backend
        while True:
            meta = backend.get_task_meta(self.id)
            if self._sync(meta=meta) in states.READY_STATES or super().done():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise network.WaitTimeout(f"task {self.id} did not finish within {timeout} s")
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.05)

    def _sync(self, state: str | None = None, meta: dict[str, Any] | None = None) -> str:
        """Complete the concurrent side once the Celery task is in a ready state."""
        if meta is not None:
            state = meta.get("status")
        if state is None:
            state = self._async.state
        if state in states.READY_STATES and not super().done():
            if state == states.SUCCESS:
                value = self._async.result if meta is None else self._decode(meta)
                self._finish(value=value)
            elif state == states.REVOKED:
                self._finish_cancelled()
            else:
                exc = self._async.result if meta is None else self._decode(meta)
                if not isinstance(exc, BaseException):
                    exc = RuntimeError(f"task {self.id} failed: {exc!r}")
                self._finish(exc=exc)
        return state

    def _decode(self, meta: dict[str, Any]) -> Any:
        backend = self._async.backend
        if meta.get("status") in states.EXCEPTION_STATES:
            return backend.exception_to_python(meta.get("result"))
        return meta.get("result")

    def _finish(self, value: Any = None, exc: BaseException | None = None) -> None:
        with self._finish_lock:
            if super().done():
                return
            if exc is None:
                self.set_result(value)
            else:
                self.set_exception(exc)

    def _finish_cancelled(self) -> bool:
        with self._finish_lock:
            if not super().done():
                super().cancel()
                self.set_running_or_notify_cancel()
        return super().cancelled()


class FuturePool:
    """The futures of a group of tasks sent by ``map``; every method aggregates."""

    def __init__(self, futures: Iterable[Future], group_id: str | None = None) -> None:
        self._futures = list(futures)
        self.id = group_id

    def __iter__(self) -> Iterator[Future]:
        return iter(self._futures)

    def __len__(self) -> int:
        return len(self._futures)

    def __getitem__(self, index: int) -> Future:
        return self._futures[index]

    def __repr__(self) -> str:
        return f"<FuturePool {len(self)} futures state={self.state}>"

    @property
    def futures(self) -> list[Future]:
        return list(self._futures)

    @property
    def state(self) -> str:
        """The least advanced state of the pool (PENDING before STARTED before ... SUCCESS)."""
        found = {f.state for f in self._futures}
        order = (
            states.PENDING,
            states.RECEIVED,
            states.STARTED,
            states.RETRY,
            states.REVOKED,
            states.FAILURE,
            states.SUCCESS,
        )
        for state in order:
            if state in found:
                return state
        return next(iter(found), states.SUCCESS)

    status = state

    def cancel(self) -> bool:
        """Cancel every task that has not started; True when all are cancelled."""
        return all([f.cancel() for f in self._futures])

    def cancelled(self) -> bool:
        return any(f.cancelled() for f in self._futures)

    def running(self) -> bool:
        return any(f.running() for f in self._futures)

    def done(self) -> bool:
        return all(f.done() for f in self._futures)

    def result(self, timeout: float | None = None) -> list[Any]:
        """Results in submission order; the first task exception is raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return [f.result(_remaining(deadline)) for f in self._futures]

    def exception(self, timeout: float | None = None) -> list[BaseException | None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        return [f.exception(_remaining(deadline)) for f in self._futures]

    def add_done_callback(self, fn: Callable[[FuturePool], object]) -> None:
        """Call ``fn(pool)`` once, when every future of the pool is done."""
        lock = threading.Lock()
        remaining = [len(self._futures)]

        def one_done(_: cf.Future) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                fn(self)

        if not self._futures:
            fn(self)
        for f in self._futures:
            f.add_done_callback(one_done)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class ResultWatcher:
    """Completes watched futures of one Celery app by polling its result backend in batches.

    The thread runs only while there are futures to watch and exits when the set is empty.
    """

    def __init__(self, celery_app: celery.Celery, interval: float = 0.05) -> None:
        self._celery = celery_app
        self._interval = interval
        self._pending: dict[str, list[Future]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def watch(self, future: Future) -> None:
        with self._lock:
            if self._stopped:
                return
            watched = self._pending.setdefault(future.id, [])
            if not any(f is future for f in watched):
                watched.append(future)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="celerymon-result-watcher", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._pending.clear()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2)

    def _run(self) -> None:
        failing = False
        while True:
            with self._lock:
                if not self._pending or self._stopped:
                    self._thread = None
                    return
                ids = list(self._pending)
            try:
                metas = self._fetch(ids)
            except Exception as exc:  # noqa: BLE001 - backend hiccup: log, back off, go on
                # once per outage, one line for a connection error (nobody receives it)
                if not failing:
                    log.warning(
                        "polling the result backend for %d futures failed (%s); retrying every "
                        "second",
                        len(ids),
                        " ".join(str(exc).split()) or type(exc).__name__,
                        exc_info=not network.is_connection_error(exc),
                    )
                failing = True
                time.sleep(1.0)
                continue
            if failing:
                log.warning("the result backend answers again")
                failing = False
            for task_id, meta in metas.items():
                if meta.get("status") not in states.READY_STATES:
                    continue
                with self._lock:
                    futures = self._pending.pop(task_id, [])
                for f in futures:
                    try:
                        f._sync(meta=meta)
                    except Exception:  # noqa: BLE001 - a callback's error must not kill us
                        log.exception("completing future %s failed", task_id)
            time.sleep(self._interval)

    def _fetch(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        backend = self._celery.backend
        mget = getattr(backend, "mget", None)
        key_for = getattr(backend, "get_key_for_task", None)
        if mget is not None and key_for is not None:
            out: dict[str, dict[str, Any]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                values = mget([key_for(i) for i in chunk])
                for task_id, raw in zip(chunk, values):
                    if raw:
                        out[task_id] = backend.decode_result(raw)
            return out
        return {i: backend.get_task_meta(i) for i in ids}
