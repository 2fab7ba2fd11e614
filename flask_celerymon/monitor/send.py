"""Sending tasks by name or reference: the one send path of the monitor, and PENDING records.

:func:`record_pending` is the one writer of the PENDING record a send leaves in the result
backend (name, arguments and queue, so that a result, a retry and the monitor know the task
before a worker does); ``Task.apply_async`` of the extension's task class and
:meth:`Sender.send` both call it.

:class:`Sender` sends for the monitor's apply, async-apply, send-task and retry (API and
buttons): a registered task, a ``module:function`` reference on the submit allowlist (through
the dispatch task, as ``celery.submit`` does), or any name (``send_task``). It imports no
Flask; each call sends from the caller's thread.

Errors: :class:`~flask_celerymon.errors.NotFoundError` for an unknown task or task id,
:class:`~flask_celerymon.errors.InvalidInput` for arguments that do not fit the task or a
message Celery or kombu refuse to build, :class:`~flask_celerymon.errors.ConflictError` for a
``task_id`` already taken or a task that cannot be retried. An unreachable broker raises the
client's own connection error.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from celery import states
from celery.app.task import Context
from celery.backends.base import DisabledBackend
from celery.backends.rpc import RPCBackend
from celery.exceptions import QueueNotFound
from celery.utils import uuid as new_uuid
from kombu.exceptions import EncodeError

from ..dispatch import DISPATCH_TASK_NAME
from ..errors import (
    ConflictError,
    DispatchRefused,
    InvalidInput,
    NotFoundError,
    UnavailableError,
)
from ..network import is_connection_error
from .control import FINISHED, Control, final_state, result_backend, state_store
from .queues import check_queue_name

log = logging.getLogger(__name__)


def _check_names(options: Mapping[str, Any]) -> None:
    """Raises :class:`InvalidInput` for a queue, exchange or routing key that cannot be one."""
    for key in ("queue", "exchange", "routing_key"):
        if options.get(key) is not None:
            check_queue_name(options[key], key)


def record_pending(
    backend: Any | None,
    task_id: str,
    name: str,
    args: Any,
    kwargs: Any,
    *,
    queue: str | None = None,
    parent_id: str | None = None,
    group_id: str | None = None,
) -> bool:
    """Store task ``task_id`` as PENDING in ``backend`` with its ``name``, arguments, queue,
    parent and group; whether it was stored.

    Nothing is stored (False) without a backend that can store a state for any task id
    (disabled results, ``rpc://``). Raises :class:`UnavailableError` (the client's error as
    ``__cause__``) when the backend cannot be reached; any other failure is logged.
    """
    if backend is None or isinstance(backend, (DisabledBackend, RPCBackend)):
        return False
    request = Context(
        task=name,
        args=list(args or ()),
        kwargs=dict(kwargs or {}),
        delivery_info={"routing_key": queue} if queue else {},
        children=[],
        parent_id=parent_id,
        group=group_id,
    )
    try:
        backend.store_result(task_id, None, states.PENDING, request=request)
    except Exception as exc:
        if is_connection_error(exc):
            raise UnavailableError(
                f"the result backend did not answer while recording task {task_id}: {exc}"
            ) from exc
        log.warning(
            "could not record task %s as PENDING in the result backend", task_id, exc_info=True
        )
        return False
    return True


@contextlib.contextmanager
def refused_as_invalid(name: str) -> Iterator[None]:
    """Celery's and kombu's refusals to build a message become :class:`InvalidInput`."""
    try:
        yield
    except (TypeError, ValueError, EncodeError, QueueNotFound) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(f"Celery refused to send task '{name}': {exc}") from None


def check_arguments(name: str, fn: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Raises :class:`InvalidInput` with Python's message when ``fn(*args, **kwargs)`` would
    not bind (nothing is checked for a ``fn`` of None or without a signature)."""
    if fn is None:
        return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: the worker will tell
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidInput(
            f"the arguments do not fit task '{name}': {exc}; fix args/kwargs in the body"
        ) from None


class Sender:
    """Sends tasks on ``celery_app`` for the monitor ``service``.

    ``allowlist`` is the app's submit :class:`~flask_celerymon.dispatch.Allowlist` and
    ``dispatch_task`` its dispatch task (the one that runs references).
    """

    def __init__(self, celery_app: Any, service: Any, allowlist: Any, dispatch_task: Any) -> None:
        self.celery_app = celery_app
        self.service = service
        self.allowlist = allowlist
        self.dispatch_task = dispatch_task
        self.control = Control(celery_app, service)

    def sendable(
        self, name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[Any, list[Any], dict[str, Any], dict[str, Any]]:
        """(task, args, kwargs, extra options) to send ``name``.

        ``name`` is a registered task, or a ``module:function`` reference on the submit
        allowlist (sent through the dispatch task). The arguments are checked against the
        task's or the function's signature before anything is sent. Raises
        :class:`NotFoundError` for any other name, :class:`InvalidInput` when the arguments
        do not fit.
        """
        task = self.celery_app.tasks.get(name)
        if task is not None and name != DISPATCH_TASK_NAME:
            if getattr(task, "typing", True):
                check_arguments(name, getattr(task, "__header__", None), args, kwargs)
            return task, args, kwargs, {}
        if ":" in name:
            try:
                fn = self.allowlist.resolve(name, self.celery_app.tasks)
            except DispatchRefused:
                raise NotFoundError(f"Unknown task '{name}'") from None
            check_arguments(name, getattr(fn, "__header__", fn), args, kwargs)
            return self.dispatch_task, [name, args, kwargs], {}, {"shadow": name}
        raise NotFoundError(f"Unknown task '{name}'")

    def apply(
        self, name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        """Send the registered task or reference ``name`` with ``apply_async`` ``options``;
        its ``AsyncResult``. Raises as :meth:`sendable`, and :class:`InvalidInput` when
        Celery refuses the message or a ``queue``, ``exchange`` or ``routing_key`` option holds
        control characters (:func:`~.queues.check_queue_name`)."""
        _check_names(options)
        task, a, kw, extra = self.sendable(name, args, kwargs)
        with refused_as_invalid(name):
            return task.apply_async(a, kw, **options, **extra)

    def send(
        self, name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Any:
        """Send ``name``, which need not be registered here; its ``AsyncResult``.

        A registered task or a reference goes through :meth:`apply`; any other name through
        ``send_task``, after a PENDING record with its arguments (for result and retry; an
        unreachable backend only skips the record). Raises :class:`InvalidInput` when Celery
        refuses the message (then no PENDING record is left behind).
        """
        capp = self.celery_app
        if name in capp.tasks or ":" in name:
            return self.apply(name, args, kwargs, options)
        _check_names(options)
        task_id = options.pop("task_id", None) or new_uuid()
        try:
            record_pending(
                state_store(capp), task_id, name, args, kwargs, queue=options.get("queue")
            )
        except UnavailableError:
            log.warning("celerymon: could not record task %s as PENDING", task_id, exc_info=True)
        try:
            with refused_as_invalid(name):
                return capp.send_task(name, args=args, kwargs=kwargs, task_id=task_id, **options)
        except InvalidInput:
            backend = result_backend(capp)
            if backend is not None:
                backend.forget(task_id)  # nothing was sent: no PENDING record left behind
            raise

    def check_new_task_id(self, options: Mapping[str, Any]) -> None:
        """Raises :class:`ConflictError` when ``options`` names a ``task_id`` a task has.

        Sending under a taken id would overwrite that task's record in the result backend
        (its result, traceback and arguments) and mix two runs in the monitor's history.
        """
        task_id = options.get("task_id")
        if task_id is None or not self.control.task_id_taken(task_id):
            return
        raise ConflictError(
            f"task_id {task_id!r} is taken by an existing task, whose record sending it again "
            "would overwrite; leave task_id out (a new id is made) or choose an unused one"
        )

    def retry(self, task_id: str) -> Any:
        """Send finished task ``task_id`` again with its original name, arguments and queue
        (from the result backend's extended record); the new ``AsyncResult``.

        Raises :class:`NotFoundError` for an unknown task; :class:`ConflictError` when it
        has not finished, its original arguments are not known, or its reference is no
        longer allowed; :class:`InvalidInput` when Celery refuses the message.
        """
        info, meta = self.control.known_task(task_id)
        state = final_state(info, meta)
        if state not in FINISHED:
            raise ConflictError(
                f"Task '{task_id}' is {state}, not finished; only finished tasks can be retried"
            )
        if meta is None or meta.get("args") is None or not meta.get("name"):
            raise ConflictError(
                f"the original arguments of task '{task_id}' are not known: the result backend "
                "keeps no extended result for it (result_extended off, result expired, or the "
                "task was aborted); events only carry truncated reprs"
            )
        name, args, kwargs = meta["name"], list(meta["args"]), dict(meta.get("kwargs") or {})
        queue = meta.get("queue") or (info or {}).get("routing_key") or None
        options: dict[str, Any] = {"queue": queue} if queue else {}
        if name == DISPATCH_TASK_NAME or (":" in name and args and args[0] == name):
            # sent by celery.submit: args are the dispatch task's [ref, args, kwargs]
            try:
                self.allowlist.resolve(args[0], self.celery_app.tasks)
            except DispatchRefused as exc:
                raise ConflictError(f"task '{task_id}' cannot be retried: {exc}") from None
            with refused_as_invalid(name):
                return self.dispatch_task.apply_async(args, kwargs, shadow=args[0], **options)
        return self.send(name, args, kwargs, options)
