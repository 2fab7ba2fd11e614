"""The task model shared by the window and the stores: the task record, its row, the query.

A leaf module: it imports nothing of the monitor but the search tree type of :mod:`.query`.
:mod:`.state` (the in-memory window), :mod:`.store` (the persistence interface) and the store
implementations import from here, never from each other's side.

Times are Unix seconds (floats); a task row is a tuple in :data:`TASK_COLUMNS` order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from celery.states import READY_STATES

from .query import Node

#: Column order of a task row, shared by the window (``TaskRecord.row()``) and the stores.
TASK_COLUMNS: tuple[str, ...] = (
    "uuid",
    "name",
    "state",
    "worker",
    "sent",
    "received",
    "started",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "rejected",
    "timestamp",
    "runtime",
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "eta",
    "expires",
    "retries",
    "exchange",
    "routing_key",
    "clock",
    "client",
    "root_id",
    "parent_id",
    "history",
)


@dataclass(frozen=True)
class TaskQuery:
    """Filters, search, order and page of a task listing. Times are Unix seconds."""

    state: tuple[str, ...] = ()
    worker: tuple[str, ...] = ()
    name: tuple[str, ...] = ()
    received_start: float | None = None
    received_end: float | None = None
    started_start: float | None = None
    started_end: float | None = None
    search: Node | None = None
    sort_key: str = "received"
    descending: bool = True
    offset: int = 0
    limit: int | None = 100


#: The state of a task that was running (``STARTED``) on a worker that went offline (a
#: worker-offline event, or its heartbeats expired) without an end event. Not a Celery
#: state: the monitor concludes it. A later event of the task (a redelivery) replaces it.
LOST = "LOST"
#: States after which a task changes no more (Celery's READY_STATES and LOST).
FINISHED_STATES = frozenset(READY_STATES) | {LOST}

_TIME_STATES = (
    ("sent", "PENDING"),
    ("received", "RECEIVED"),
    ("started", "STARTED"),
    ("retried", "RETRY"),
    ("succeeded", "SUCCESS"),
    ("failed", "FAILURE"),
    ("revoked", "REVOKED"),
    ("rejected", "REJECTED"),
)
_WORKER_TIME_STATES = _TIME_STATES[1:]
_RARE_END_STATES = (("failed", "FAILURE"), ("revoked", "REVOKED"), ("rejected", "REJECTED"))
_SEP = "\x00"
_TEXT_INDEX = {"args": 0, "kwargs": 1, "result": 2}


#: Fields of :class:`TaskRecord` kept in its ``extra`` dict: most tasks never have them, and a
#: slot costs 8 bytes on every task.
RARE_FIELDS = (
    "failed", "retried", "revoked", "rejected", "exception", "traceback", "eta", "expires",
    "parent_id", "children", "history",
)  # fmt: skip


def _rare(name: str) -> Any:
    """A property storing ``name`` in the record's ``extra`` dict (None when absent)."""

    def get(self: TaskRecord) -> Any:
        extra = self.extra
        return None if extra is None else extra.get(name)

    def set_(self: TaskRecord, value: Any) -> None:
        extra = self.extra
        if extra is None:
            if value is None:
                return
            extra = self.extra = {}
        extra[name] = value

    return property(get, set_)


class TaskRecord:
    """One task in the window. Strings unknown so far are ``""``; times are Unix seconds.

    ``args``, ``kwargs`` and ``result`` live in one string, ``text`` (joined by NUL), which
    saves two string objects per task and lets a bare search term test one string.
    ``history`` stays None while it can be derived from the time fields (one event per
    state); it is materialised only when a state repeats (retries) or a custom event arrives.
    """

    __slots__ = (
        "uuid", "name", "state", "worker", "sent", "received", "started", "succeeded",
        "timestamp", "runtime", "text", "retries", "exchange", "routing_key", "clock",
        "root_id", "client", "extra",
    )  # fmt: skip

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.name: str = ""
        self.state: str = ""
        self.worker: str = ""
        self.text = _SEP + _SEP
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.succeeded: float | None = None
        self.timestamp: float | None = None
        self.runtime: float | None = None
        self.retries: int | None = None
        self.exchange: str | None = None
        self.routing_key: str | None = None
        self.clock: int | None = None
        self.root_id: str | None = None
        #: The sender of ``task-sent`` (nearly every task has one: a slot, not ``extra``).
        self.client: str | None = None
        #: Rarely set fields (failures, retries, child tasks...), None until one is set.
        self.extra: dict[str, Any] | None = None

    failed = _rare("failed")
    retried = _rare("retried")
    revoked = _rare("revoked")
    rejected = _rare("rejected")
    exception = _rare("exception")
    traceback = _rare("traceback")
    eta = _rare("eta")
    expires = _rare("expires")
    parent_id = _rare("parent_id")
    children = _rare("children")
    history = _rare("history")

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def args(self) -> str:
        return self.text.split(_SEP, 2)[0]

    @property
    def kwargs(self) -> str:
        return self.text.split(_SEP, 2)[1]

    @property
    def result(self) -> str:
        return self.text.split(_SEP, 2)[2]

    def set_text(self, field: str, value: str) -> None:
        parts = self.text.split(_SEP, 2)
        parts[_TEXT_INDEX[field]] = value.replace(_SEP, "\\x00")
        self.text = _SEP.join(parts)

    def full_history(self) -> tuple[Any, ...]:
        """``(state, time, state, time, ...)`` oldest first."""
        h = self.history
        return h if h is not None else history_from_times(self)

    def row(self) -> tuple[Any, ...]:
        """The record in :data:`~flask_celerymon.monitor.store.TASK_COLUMNS` order.

        ``history`` is None when it follows from the time fields (see
        :func:`history_from_times`).
        """
        args, kwargs, result = self.text.split(_SEP, 2)
        return (
            self.uuid, self.name, self.state, self.worker, self.sent, self.received,
            self.started, self.succeeded, self.failed, self.retried, self.revoked,
            self.rejected, self.timestamp, self.runtime, args, kwargs, result,
            self.exception, self.traceback, self.eta, self.expires, self.retries,
            self.exchange, self.routing_key, self.clock, self.client, self.root_id,
            self.parent_id, self.history,
        )  # fmt: skip

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TaskRecord:
        """A record from a stored row (:data:`~flask_celerymon.monitor.store.TASK_COLUMNS`
        keys, ``history`` a tuple), e.g. to bring a task of the history back to the window."""
        t = cls(row["uuid"])
        for k in TASK_COLUMNS:
            if k in ("uuid", "args", "kwargs", "result", "history"):
                continue
            v = row.get(k)
            if v is not None:
                setattr(t, k, v)
        for k in ("name", "state", "worker"):
            if row.get(k) is None:
                setattr(t, k, "")
        t.text = _SEP.join(
            (row.get(k) or "").replace(_SEP, "\\x00") for k in ("args", "kwargs", "result")
        )
        hist = tuple(row.get("history") or ())
        if hist != history_from_times(t):
            t.history = hist
        return t

    def as_dict(self) -> dict[str, Any]:
        """Flower's ``Task.as_dict()`` plus ``history``: the dict :func:`task_dict` makes of
        :meth:`row`, keys in the same order, built from the slots in one pass (a page of the
        API makes one per task)."""
        args, kwargs, result = self.text.split(_SEP, 2)
        x = self.extra
        if x is None:
            failed = retried = revoked = rejected = exception = traceback = eta = None
            expires = parent_id = hist = None
            children: list[str] = []
        else:
            get = x.get
            failed, retried, revoked, rejected = (
                get("failed"), get("retried"), get("revoked"), get("rejected"))  # fmt: skip
            exception, traceback, eta, expires = (
                get("exception"), get("traceback"), get("eta"), get("expires"))  # fmt: skip
            parent_id, hist = get("parent_id"), get("history")
            children = list(get("children") or ())
        if hist is None:
            hist = history_from_times(self)
        root_id = self.root_id
        return {
            "uuid": self.uuid,
            "name": self.name or None,
            "state": self.state or None,
            "received": self.received,
            "sent": self.sent,
            "started": self.started,
            "rejected": rejected,
            "succeeded": self.succeeded,
            "failed": failed,
            "retried": retried,
            "revoked": revoked,
            "args": args or None,
            "kwargs": kwargs or None,
            "eta": eta,
            "expires": expires,
            "retries": self.retries,
            "worker": self.worker or None,
            "result": result or None,
            "exception": exception,
            "timestamp": self.timestamp,
            "runtime": self.runtime,
            "traceback": traceback,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "clock": self.clock,
            "client": self.client,
            "root": root_id,
            "root_id": root_id,
            "parent": parent_id,
            "parent_id": parent_id,
            "children": children,
            "history": [
                {"state": hist[i], "timestamp": hist[i + 1]} for i in range(0, len(hist) - 1, 2)
            ],
        }


def history_from_times(task: Any) -> tuple[Any, ...]:
    """The history of a task that went through each state at most once, from its time fields
    (a record or a row dict): ``(state, time, state, time, ...)``.

    ``PENDING`` (sent) comes first, then the worker's states oldest first. The sent time is
    the client's clock, stamped after the message left: it may be a little later than the
    worker's ``received``, but the task was sent before it was received.
    """
    if isinstance(task, Mapping):
        get = task.get
        sent = get("sent")
        pairs = [(ts, st) for attr, st in _WORKER_TIME_STATES if (ts := get(attr)) is not None]
    else:  # a record: the rare times live in ``extra`` (None for most tasks)
        sent = task.sent
        pairs = [(ts, st) for ts, st in (
            (task.received, "RECEIVED"), (task.started, "STARTED")) if ts is not None]  # fmt: skip
        extra = task.extra
        retried = None if extra is None else extra.get("retried")
        if retried is not None:  # the order of _TIME_STATES, as the mapping's path
            pairs.append((retried, "RETRY"))
        if task.succeeded is not None:
            pairs.append((task.succeeded, "SUCCESS"))
        if extra is not None:
            for attr, st in _RARE_END_STATES:
                ts = extra.get(attr)
                if ts is not None:
                    pairs.append((ts, st))
    if len(pairs) > 1:
        pairs.sort()
    out: list[Any] = ["PENDING", sent] if sent is not None else []
    for ts, st in pairs:
        out.append(st)
        out.append(ts)
    return tuple(out)


def task_dict(row: Mapping[str, Any], children: list[str]) -> dict[str, Any]:
    """A task row (TASK_COLUMNS keys) as Flower's ``/api/task/info`` dict, JSON-ready.

    Keys: ``uuid name state received sent started rejected succeeded failed retried revoked
    args kwargs eta expires retries worker result exception timestamp runtime traceback
    exchange routing_key clock client root root_id parent parent_id children`` and
    ``history`` (``[{"state", "timestamp"}]``, oldest first).
    """
    hist = row["history"] or ()
    return {
        "uuid": row["uuid"],
        "name": row["name"] or None,
        "state": row["state"] or None,
        "received": row["received"],
        "sent": row["sent"],
        "started": row["started"],
        "rejected": row["rejected"],
        "succeeded": row["succeeded"],
        "failed": row["failed"],
        "retried": row["retried"],
        "revoked": row["revoked"],
        "args": row["args"] or None,
        "kwargs": row["kwargs"] or None,
        "eta": row["eta"],
        "expires": row["expires"],
        "retries": row["retries"],
        "worker": row["worker"] or None,
        "result": row["result"] or None,
        "exception": row["exception"],
        "timestamp": row["timestamp"],
        "runtime": row["runtime"],
        "traceback": row["traceback"],
        "exchange": row["exchange"],
        "routing_key": row["routing_key"],
        "clock": row["clock"],
        "client": row["client"],
        "root": row["root_id"],
        "root_id": row["root_id"],
        "parent": row["parent_id"],
        "parent_id": row["parent_id"],
        "children": children,
        "history": [
            {"state": hist[i], "timestamp": hist[i + 1]} for i in range(0, len(hist) - 1, 2)
        ],
    }


class TaskPage:
    """A page of tasks and the number of tasks matching the query.

    Unpacks as ``total, tasks = page``. ``exact`` is False only when a history-store query
    stopped counting (at :data:`~.sql_query.COUNT_CAP` matches, or a page past the one asked
    for on a common search term; see :mod:`.sql_query`): then ``total`` is a lower bound,
    shown as "at least N".
    """

    __slots__ = ("total", "tasks", "exact")

    def __init__(self, total: int, tasks: list[dict[str, Any]], exact: bool = True) -> None:
        self.total = total
        self.tasks = tasks
        self.exact = exact

    def __iter__(self) -> Iterator[Any]:
        return iter((self.total, self.tasks))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TaskPage):
            return (self.total, self.tasks, self.exact) == (other.total, other.tasks, other.exact)
        return NotImplemented

    def __repr__(self) -> str:
        return f"TaskPage(total={self.total}, tasks=[{len(self.tasks)} tasks], exact={self.exact})"
