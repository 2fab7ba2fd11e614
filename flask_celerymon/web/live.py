"""The live feed of the pages: one websocket per open page, pushed from the monitor service.

``GET <prefix>/ws?view=<view>`` upgrades to a websocket (flask-sock; 400 for a plain HTTP
request). The page says what it shows and the server sends only what changes it, as HTML
fragments rendered by the same templates as the page, so formatting lives in one place:

============  ==============================================  ==================================
``view``      parameters                                      messages
============  ==============================================  ==================================
``workers``   none                                            ``worker`` (row), ``summary``,
                                                              ``worker-gone``
``tasks``     the task list's (:class:`~.views.TaskFilter`)   ``task`` (row, ``insert`` when new
                                                              and it belongs at the top),
                                                              ``new-tasks`` (count of others)
``task``      ``id``                                          ``task-detail``, ``canvas`` (the
                                                              chain/group/chord graph, when a
                                                              task of it changed)
``worker``    ``name``                                        ``worker-head``
``broker``    none                                            ``queues`` (every 2 s)
``charts``    the charts page's (``window``, ``name``)        ``page``
``analytics`` the analytics page's (``window``, ``name``)     ``page``
``errors``    the error list's (``since``, ``status``,        ``page``
              ``name``)
``error-      ``id`` (the group id)                           ``page``
group``
``alerts``    none                                            ``page``
============  ==============================================  ==================================

The last five are the insight pages (:data:`PAGES`): their data is written by the insight
engine about once a second, and the feed waits for the engine's topics the page shows
(:meth:`~..monitor.insight.Insight.wait_changes`), then sends ``page``, the page's
``#live-root`` rendered again by its own partial template, when it differs from the last one
sent; at most every :data:`PAGE_INTERVAL` seconds. The task page's canvas graph is sent the
same way (``canvas``, the ``#canvas`` card) when a task with the graph's root changed.

Every message is a JSON object ``{"type": ...}``; the first is ``{"type": "hello"}``, then a
``batch`` with the current state of what the page shows (it was rendered before the socket
subscribed, and nothing that changed in between may be lost), and an
idle feed sends ``{"type": "ping"}`` every :data:`PING_INTERVAL` seconds so dead peers are
noticed. All feeds of an app share one service subscription through its :class:`LiveHub`
(thread ``celerymon-live``), which reads the changes at most every :data:`MIN_INTERVAL`
seconds and hands the same :class:`Batch` to every feed; each feed sends at most every
:data:`MIN_INTERVAL` seconds. Feeds of the same list in the same state share the messages
computed from a batch and their JSON frame (:class:`Shared`), and a frame is compressed once
for every feed that negotiated permessage-deflate (:class:`DeflateCache`). A bad parameter closes the socket with code
1008 and the reason; a subscriber too slow for the event rate is closed with 1013 and the
page reconnects (and reloads what it shows). Beyond ``CELERY_MONITOR_MAX_LIVE_SOCKETS`` open
feeds a new one is closed with code 4503 (:data:`~.hardening.BUSY_CLOSE_CODE`), and the
connection shut at once, without waiting for the client's answer (:func:`_end_of_stream`): the
page then reloads what it shows every ``CELERY_MONITOR_POLL_INTERVAL`` seconds, trying the feed
again each time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import zlib
from collections import deque
from typing import Any

from flask import Blueprint, request
from flask_sock import Sock

from ..appstate import get_state
from .auth import VIEWER, requires
from .hardening import BUSY_CLOSE_CODE
from .views import (
    BadInput,
    TaskFilter,
    render_queues,
    render_task_detail,
    render_task_row,
    render_worker_head,
    render_worker_row,
    worker_rows,
)

log = logging.getLogger(__name__)

#: Insight pages: view -> (insight topics it shows, partial template of its #live-root)
PAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "charts": (("analytics",), "celerymon/_charts_body.html"),
    "analytics": (("analytics",), "celerymon/_analytics_body.html"),
    "errors": (("errors",), "celerymon/_errors_body.html"),
    "error-group": (("errors",), "celerymon/_error_group_body.html"),
    "alerts": (("alerts",), "celerymon/_alerts_body.html"),
}
VIEWS = ("workers", "tasks", "task", "worker", "broker", *PAGES)
#: Seconds between two sends to one page (changes in between are coalesced).
MIN_INTERVAL = 0.1
#: Seconds of silence after which a ping is sent.
PING_INTERVAL = 15.0
#: Seconds between two checks for workers gone silent (offline without an event).
STATUS_INTERVAL = 2.0
#: Seconds between two queue-length pushes on the broker page.
QUEUES_INTERVAL = 2.0
#: Seconds between two sends of an insight page or of the canvas graph to one page.
PAGE_INTERVAL = 1.0
#: the largest message a client may send (the pages send none; any message ends the feed, 1003)
MAX_CLIENT_MESSAGE = 4096


def _arg_items(args: Any) -> tuple[tuple[str, str], ...]:
    """A page's query arguments (a MultiDict or a dict) as a sorted tuple of pairs."""
    try:
        pairs = args.items(multi=True)
    except TypeError:  # a plain dict
        pairs = args.items()
    return tuple(sorted((str(k), str(v)) for k, v in pairs))


def page_context(view: str, args: Any) -> dict[str, Any]:
    """The template context of an insight page (:data:`PAGES`) for its query ``args``.

    Raises :class:`~.views.BadInput` naming a bad parameter (or an unknown error group).
    """
    from ..errors import OperationError
    from . import insight
    from .views import charts_context

    now = time.time()
    try:
        if view == "charts":
            return charts_context(args)
        if view == "analytics":
            return insight.analytics_context(args, now)
        if view == "errors":
            return insight.errors_context(args, now)
        if view == "error-group":
            return insight.error_group_context(args.get("id") or "")
        if view == "alerts":
            return insight.alerts_context()
    except OperationError as exc:  # a bad parameter, an unknown error group
        raise BadInput(str(exc)) from None
    raise BadInput(f"view {view!r} is not an insight page")


class Batch(list):
    """Changes read once from the service and shared by every feed (feeds only read it).

    Items as :meth:`~..monitor.service.Subscription.get` returns them. :attr:`cache` holds
    what feeds derive from the batch (rendered rows, the tasks matching a filter), so that
    500 pages showing the same list render and filter each change once, not 500 times.
    """

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.cache: dict[Any, Any] = {}

    def task_index(self) -> dict[str, dict[str, Any]]:
        """``{task id: task dict}`` of the task items that have data."""
        idx = self.cache.get("index")
        if idx is None:
            idx = self.cache["index"] = {
                it["id"]: it["data"] for it in self if it["type"] == "task" and it["data"]
            }
        return idx

    def for_tasks(self, task_ids: frozenset[str]) -> Batch:
        """The items of other kinds and of the tasks ``task_ids`` (a new batch)."""
        items = self.cache.get("items")
        if items is None:
            items = self.cache["items"] = {(it["type"], it["id"]): it for it in self}
        others = self.cache.get("others")
        if others is None:
            others = self.cache["others"] = [it for it in self if it["type"] != "task"]
        found = (items.get(("task", t)) for t in task_ids)
        return Batch([*(it for it in found if it is not None), *others])

    def only(self, kinds: frozenset[str]) -> Batch:
        """The items of ``kinds`` (a batch of its own, cached: feeds of the same kinds share it)."""
        key = ("only", kinds)
        b = self.cache.get(key)
        if b is None:
            b = self.cache[key] = Batch(it for it in self if it["type"] in kinds)
        return b


class Shared:
    """What every page in the same state gets from one batch, computed and encoded once.

    Pages of the same list (same view and arguments) that show the same rows receive the same
    messages from a batch and end in the same state: the first page computes them
    (:attr:`msgs`, the rows then shown), the others find them in the batch's cache, and the
    ``batch`` frame is JSON-encoded once (:attr:`text`) and sent as is to each of them.
    :attr:`msgs` is shared: it must not be changed.
    """

    __slots__ = ("msgs", "rows", "received", "text")

    def __init__(
        self,
        msgs: list[dict[str, Any]],
        rows: tuple[str, ...] = (),
        received: dict[str, float] | None = None,
    ) -> None:
        self.msgs = msgs
        self.rows = rows
        self.received = received or {}
        self.text: str | None = None

    def encoded(self) -> str:
        """The ``{"type": "batch", "items": msgs}`` frame as JSON text (encoded once)."""
        if self.text is None:
            self.text = encode_batch(self.msgs)
        return self.text


class DeflateCache:
    """Compressed websocket payloads shared by the feeds of an app (permessage-deflate).

    A browser offers permessage-deflate and simple-websocket accepts it: each feed then
    compressed each frame with a compressor of its own, carrying its context from one message
    to the next, so 500 pages showing the same list compressed the same frame 500 times (and
    held 500 zlib states). :func:`share_deflate` makes a feed compress every message on its
    own instead (a fresh compressor per message, which the extension allows any sender to
    do; the browser's decompressor is unchanged), so the compressed payload depends on the
    payload only, and this cache compresses it once: it keeps the last :attr:`size` payloads.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._done: dict[tuple[int, bytes], bytes] = {}
        self.compressed = 0
        self.hits = 0

    def compress(self, data: bytes, bits: int) -> bytes:
        """``data`` as a complete permessage-deflate payload (RFC 7692: raw deflate with a
        window of ``bits`` bits, sync-flushed, without the final ``00 00 ff ff``)."""
        key = (bits, data)
        with self._lock:
            out = self._done.get(key)
            if out is not None:
                self.hits += 1
                return out
        z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits)
        out = (z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]
        with self._lock:
            self.compressed += 1
            self._done[key] = out
            while len(self._done) > self.size:
                del self._done[next(iter(self._done))]
        return out


def share_deflate(ws: Any, cache: DeflateCache) -> bool:
    """Make the websocket ``ws`` (simple-websocket over wsproto) compress each message on its
    own through ``cache``, when it negotiated permessage-deflate. True when it did.

    Reaches into wsproto's connection (``ws.ws.connection._proto``); with another layout the
    socket keeps wsproto's own compression (False). Call it before the first message is sent.
    """
    try:
        from wsproto.extensions import PerMessageDeflate
        from wsproto.frame_protocol import Opcode, RsvBits

        extensions = ws.ws.connection._proto.extensions
    except (AttributeError, ImportError):
        return False
    done = False
    for ext in extensions:
        if not isinstance(ext, PerMessageDeflate):
            continue

        def frame_outbound(
            proto: Any, opcode: Any, rsv: Any, data: bytes, fin: bool, ext: Any = ext
        ) -> tuple[Any, bytes]:
            if opcode not in (Opcode.TEXT, Opcode.BINARY) or not fin:
                # control frames are not compressed; simple-websocket sends no fragments
                return PerMessageDeflate.frame_outbound(ext, proto, opcode, rsv, data, fin)
            bits = ext.client_max_window_bits if proto.client else ext.server_max_window_bits
            return RsvBits(True, rsv[1], rsv[2]), cache.compress(data, bits)

        ext.frame_outbound = frame_outbound  # type: ignore[method-assign]  # this socket's only
        done = True
    return done


def encode_batch(msgs: list[dict[str, Any]]) -> str:
    """The JSON text of a ``batch`` message carrying ``msgs``."""
    return json.dumps({"type": "batch", "items": msgs})


class FeedQueue:
    """One feed's end of the :class:`LiveHub`: :meth:`get` as a service subscription's.

    ``kinds`` and ``task_ids`` filter what is queued as in
    :meth:`~..monitor.service.MonitorService.subscribe`. More than ``buffer`` items waiting
    closes it (:attr:`reason` says why): the feed is too slow and the page reconnects.
    """

    def __init__(
        self,
        hub: LiveHub,
        kinds: frozenset[str],
        task_ids: frozenset[str] | None,
        buffer: int,
    ) -> None:
        self._hub = hub
        self.kinds = kinds
        self.task_ids = task_ids
        self.buffer = buffer
        self._batches: list[Batch] = []
        self._waiting = 0
        self._cond = threading.Condition(threading.Lock())
        self.closed = False
        self.reason: str | None = None

    def offer(self, batch: Batch) -> None:
        """Queue the part of ``batch`` this feed wants (the hub's thread; never blocks long)."""
        if self.closed:
            return
        if len(self.kinds) < 3:
            batch = batch.only(self.kinds)
        if self.task_ids is not None:
            batch = batch.for_tasks(self.task_ids)
        if not batch:
            return
        with self._cond:
            self._batches.append(batch)
            self._waiting += len(batch)
            if self._waiting > self.buffer:
                self._fail(f"dropped: more than {self.buffer} updates waiting")
            self._cond.notify_all()

    def _fail(self, reason: str) -> None:
        self.closed = True
        self.reason = self.reason or reason
        self._batches = []
        self._waiting = 0

    def fail(self, reason: str) -> None:
        """Close with ``reason`` (the hub lost its own subscription)."""
        with self._cond:
            self._fail(reason)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Batch:
        """Wait up to ``timeout`` s for changes; a :class:`Batch` (possibly empty).

        Raises ``EOFError`` once closed (see :attr:`reason`).
        """
        with self._cond:
            if not self._batches and not self.closed:
                self._cond.wait(timeout)
            if self.closed:
                raise EOFError(self.reason or "closed")
            batches, self._batches, self._waiting = self._batches, [], 0
        if len(batches) == 1:
            return batches[0]
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for b in batches:
            for it in b:
                merged.pop((it["type"], it["id"]), None)  # the latest data, in its place
                merged[(it["type"], it["id"])] = it
        return Batch(merged.values())

    def close(self) -> None:
        """Leave the hub (idempotent)."""
        with self._cond:
            if not self.closed:
                self._fail("closed")
            self._cond.notify_all()
        self._hub.leave(self)


class LiveHub:
    """The one subscription of an app's live feeds to its monitor service.

    Every open feed used to hold a service subscription of its own: the ingest thread then
    offered each change to every page, and each page read each change from the service
    again. The hub holds one subscription while at least one feed is open, reads it at most
    every :data:`MIN_INTERVAL` seconds in one thread (``celerymon-live``) and hands the same
    :class:`Batch` to every :class:`FeedQueue`. The thread starts with the first feed and
    ends, closing the subscription, once the last has left.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: tuple[FeedQueue, ...] = ()
        self._thread: threading.Thread | None = None
        self.batches = 0
        #: the compressed frames the feeds share (see :class:`DeflateCache`)
        self.deflate = DeflateCache()

    def join(
        self, service: Any, kinds: Any = ("task", "worker", "worker-purged"), task_ids: Any = None
    ) -> FeedQueue:
        """A new :class:`FeedQueue`; every change after this call reaches it."""
        q = FeedQueue(
            self,
            frozenset(kinds),
            None if task_ids is None else frozenset(task_ids),
            service.settings.subscriber_buffer,
        )
        with self._lock:
            self._queues = (*self._queues, q)
            if self._thread is None:
                # the hub's own buffer: every change of MIN_INTERVAL at any event rate
                sub = service.subscribe(buffer=max(100_000, service.settings.subscriber_buffer))
                self._thread = threading.Thread(
                    target=self._run, args=(sub,), name="celerymon-live", daemon=True
                )
                self._thread.start()
        return q

    def leave(self, q: FeedQueue) -> None:
        with self._lock:
            self._queues = tuple(x for x in self._queues if x is not q)

    @property
    def feeds(self) -> int:
        """Feeds open now."""
        return len(self._queues)

    def _run(self, sub: Any) -> None:
        try:
            while True:
                try:
                    items = sub.get(timeout=1.0)
                except EOFError:
                    with self._lock:
                        queues, self._queues, self._thread = self._queues, (), None
                    for q in queues:
                        q.fail(sub.reason or "closed")
                    return
                with self._lock:
                    queues = self._queues
                    if not queues:
                        self._thread = None
                        return
                if items:
                    batch = Batch(items)
                    self.batches += 1
                    for q in queues:
                        q.offer(batch)
                    time.sleep(MIN_INTERVAL)
        finally:
            sub.close()


class _HubService:
    """``service.subscribe`` answered by a hub: what :meth:`Feed.subscribe` calls."""

    def __init__(self, hub: LiveHub, service: Any) -> None:
        self.hub = hub
        self.service = service

    def subscribe(
        self, kinds: Any = ("task", "worker", "worker-purged"), task_ids: Any = None
    ) -> FeedQueue:
        return self.hub.join(self.service, kinds, task_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)


def get_hub(app: Any = None) -> LiveHub:
    """The :class:`LiveHub` of ``app`` (default: the current app), made on first use and kept
    on its :class:`~flask_celerymon.appstate.AppState`.

    Raises :class:`~flask_celerymon.errors.NotInitializedError` for an app without the extension.
    """
    state = get_state(app)
    hub = state.live
    if hub is None:
        with state.lock:
            if state.live is None:
                state.live = LiveHub()
            hub = state.live
    return hub


class Feed:
    """What one page is sent: the subscription it needs and how each change is rendered."""

    def __init__(self, view: str, args: Any) -> None:
        if view not in VIEWS:
            raise BadInput(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
        self.view = view
        self.filter: TaskFilter | None = None
        self.task_id: str | None = None
        self.worker: str | None = None
        self.shown: set[str] = set()
        self.rows: deque[str] = deque()
        self.received: dict[str, float] = {}
        self.status: dict[str, bool] = {}
        self.args = args
        #: what the page's rendering depends on besides the data: shares rendered rows
        self.key = (view, _arg_items(args))
        #: insight topics the page shows and their versions sent (insight pages)
        self.topics: tuple[str, ...] = PAGES[view][0] if view in PAGES else ()
        self.seen: dict[str, int] = {}
        self.last_html: str | None = None
        #: the task page's canvas: the roots and nodes of its graph, and whether to send it
        self.canvas_roots: set[str] = set()
        self.canvas_nodes: set[str] = set()
        self.canvas_dirty = False
        #: the last :meth:`messages` when shared with other pages (see :meth:`encode`)
        self._shared: Shared | None = None
        if view in PAGES:
            page_context(view, args)  # a bad parameter closes the socket before "hello"
        elif view == "tasks":
            self.filter = TaskFilter.from_args(args)
        elif view == "task":
            self.task_id = args.get("id") or None
            if not self.task_id:
                raise BadInput("view=task needs id=<task uuid>")
        elif view == "worker":
            self.worker = args.get("name") or None
            if not self.worker:
                raise BadInput("view=worker needs name=<worker hostname>")

    def subscribe(self, service: Any, hub: LiveHub | None = None) -> Any:
        """The page's feed of changes: a :class:`FeedQueue` of ``hub`` (a service
        subscription when there is no hub), or None for pages that poll instead."""
        if hub is not None:
            return self._subscribe(_HubService(hub, service))
        return self._subscribe(service)

    def _subscribe(self, service: Any) -> Any:
        if self.view in PAGES:
            self.seen = _insight().versions()  # what changes from now on is sent
            return None
        if self.view == "broker":
            return None
        if self.view == "task":
            graph = self._canvas_graph()
            if graph is None or (len(graph["nodes"]) <= 1 and graph["final"]):
                # a lone finished task: no graph will grow from it
                return service.subscribe(kinds=("task",), task_ids=(self.task_id,))
            self.canvas_dirty = True  # sent once subscribed: the page may predate a change
            return service.subscribe(kinds=("task",))
        if self.view == "worker":
            return service.subscribe(kinds=("worker", "worker-purged"))
        if self.view == "tasks":
            return service.subscribe(kinds=("task",))
        return service.subscribe()

    def prime(self, service: Any) -> None:
        """Remember what the page shows now: its task rows (whose changes are always sent)
        and the workers' online status."""
        if self.filter is not None:
            page = service.query_tasks(**self.filter.service_query())
            self.rows = deque(t["uuid"] for t in page.tasks)
            self.shown = set(self.rows)
            self.received = {t["uuid"]: t.get("received") or 0.0 for t in page.tasks}
        if self.view in ("workers", "worker"):
            self.status = service.worker_status()

    def current(self, service: Any) -> list[dict[str, Any]]:
        """Messages bringing the page to the current state, sent once subscribed.

        The page was rendered before its websocket subscribed: a change in between would be
        lost (a task page opened just before the task ended would never show its end).
        Changes after the subscription are queued by it, so this closes the gap.
        """
        if self.view in PAGES:
            return self.page()
        if self.view == "task":
            t = service.task(self.task_id, children=False)
            out = [] if t is None else self.messages([{"type": "task", "id": t["uuid"],
                                                       "data": t}])  # fmt: skip
            return out + self.canvas()
        if self.view in ("worker", "workers"):
            return self.messages([{"type": "worker", "id": h, "data": None} for h in self.status])
        if self.filter is not None:
            flt = self.filter
            out = []
            for uuid in reversed(self.rows):  # oldest first: new ones end on top
                t = service.task(uuid, children=False)
                if t is not None:
                    html = render_task_row(t, flt)
                    msg: dict[str, Any] = {"type": "task", "id": uuid, "html": html}
                    if flt.live_inserts:
                        msg["insert"] = True
                    out.append(msg)
            return out
        return []

    def status_changes(self, service: Any) -> list[dict[str, Any]]:
        """Workers whose online status flipped without an event (heartbeats stopped).

        A worker that crashes sends no ``worker-offline``; the service only finds it
        offline when asked. Returned as subscription items, so they render like any change.
        """
        if self.view not in ("workers", "worker"):
            return []
        now = service.worker_status()
        changed = [h for h, online in now.items() if self.status.get(h) != online]
        self.status = now
        if self.view == "worker":
            changed = [h for h in changed if h == self.worker]
        return [{"type": "worker", "id": h, "data": None} for h in changed]

    def _task_rows(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows the task list shows that changed, and new matching tasks.

        New tasks go on top when the page is the newest-first first page: only the newest
        ``per_page`` of a batch are rendered, and :attr:`rows` (what the page shows, top
        first) stays ``per_page`` long like the table, whose bottom rows the page drops.
        Elsewhere a new task only counts towards the page's "new tasks" link.
        """
        flt = self.filter
        assert flt is not None
        batch = items if isinstance(items, Batch) else Batch(items)
        # Pages of this list showing the same rows get the same messages and end in the
        # same state: computed by the first of them (per batch), copied by the others.
        # What the result depends on: the rows shown (``shown`` is ``set(rows)``) and the
        # received time of the bottom one.
        bottom = self.received.get(self.rows[-1], 0.0) if self.rows else None
        state = ("rows", self.key, tuple(self.rows), bottom)
        shared = batch.cache.get(state)
        if shared is None:
            out = self._compute_task_rows(batch, flt)
            shared = batch.cache[state] = Shared(out, tuple(self.rows), dict(self.received))
        else:
            self.rows = deque(shared.rows)
            self.shown = set(shared.rows)
            self.received = dict(shared.received)
        self._shared = shared
        return shared.msgs

    def _compute_task_rows(self, batch: Batch, flt: TaskFilter) -> list[dict[str, Any]]:
        """:meth:`_task_rows` for the first page in its state; updates the rows shown."""
        index = batch.task_index()
        out: list[dict[str, Any]] = []
        # the rows shown that changed, in the batch's order
        changed = [uuid for uuid in self.shown if uuid in index]
        if len(changed) > 1:
            order = batch.cache.get("order")
            if order is None:
                order = batch.cache["order"] = {uuid: i for i, uuid in enumerate(index)}
            changed.sort(key=order.__getitem__)
        for uuid in changed:
            out.append({"type": "task", "id": uuid, "html": self._row(batch, index[uuid])})
        # the others matching the filter, oldest first (computed once per batch and filter)
        matching = batch.cache.get(("matching", self.key))
        if matching is None:
            matching = [t for t in index.values() if flt.matches(t)]
            matching.sort(key=lambda t: t.get("received") or 0.0)
            batch.cache[("matching", self.key)] = matching
        new: list[dict[str, Any]] = []
        hidden = 0
        if flt.live_inserts:
            for t in reversed(matching):  # the newest per_page that the page does not show
                if t["uuid"] not in self.shown:
                    new.append(t)
                    if len(new) >= flt.per_page:
                        break
            new.reverse()
        else:
            hidden = len(matching) - sum(1 for uuid in changed if flt.matches(index[uuid]))
        for t in new:
            received = t.get("received") or 0.0
            if len(self.rows) >= flt.per_page and received <= self.received[self.rows[-1]]:
                continue  # older than the whole page: it belongs further down the list
            self.rows.appendleft(t["uuid"])
            self.shown.add(t["uuid"])
            self.received[t["uuid"]] = received
            while len(self.rows) > flt.per_page:
                gone = self.rows.pop()
                self.shown.discard(gone)
                self.received.pop(gone, None)
            out.append(
                {"type": "task", "id": t["uuid"], "insert": True, "html": self._row(batch, t)}
            )
        if hidden:
            out.append({"type": "new-tasks", "count": hidden})
        return out

    def _row(self, batch: Batch, t: dict[str, Any]) -> str:
        """A task row rendered once per batch for every page showing it the same way."""
        assert self.filter is not None
        key = ("row", self.key, t["uuid"])
        html = batch.cache.get(key)
        if html is None:
            html = batch.cache[key] = render_task_row(t, self.filter)
        return html

    def messages(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages for a batch of changes from the subscription."""
        out: list[dict[str, Any]] = []
        self._shared = None
        if self.view == "tasks":
            out = self._task_rows(items)
        elif self.view == "workers" and isinstance(items, Batch):
            # the same for every workers page: computed (and encoded) once per batch
            cached = items.cache.get("workers")
            if cached is None:
                cached = items.cache["workers"] = Shared(self._workers(items))
            self._shared = cached
            out = cached.msgs
        elif self.view == "task":
            for it in items:
                data = it["data"]
                if data is None:
                    continue
                if it["id"] == self.task_id:
                    out.append({"type": "task-detail", "html": render_task_detail(data)})
                if it["id"] in self.canvas_nodes or data.get("root_id") in self.canvas_roots:
                    self.canvas_dirty = True
        elif self.view == "worker":
            for it in items:
                if it["id"] == self.worker and it["type"] == "worker":
                    html = render_worker_head(it["id"])
                    if html is not None:
                        out.append({"type": "worker-head", "html": html})
        elif self.view == "workers":
            out = self._workers(items)
        return out

    def encode(self, msgs: list[dict[str, Any]]) -> str:
        """The JSON text of the ``batch`` message carrying ``msgs``; encoded once for every
        page that got the same shared :meth:`messages` from a batch."""
        shared = self._shared
        if shared is not None and shared.msgs is msgs:
            return shared.encoded()
        return encode_batch(msgs)

    def _workers(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        hosts: dict[str, None] = {}
        for it in items:
            if it["type"] == "worker":
                hosts[it["id"]] = None
            elif it["type"] == "worker-purged":
                out.append({"type": "worker-gone", "id": it["id"]})
            elif it["data"] is not None and it["data"].get("worker"):
                hosts[it["data"]["worker"]] = None
        for h in hosts:
            html = render_worker_row(h)
            if html is not None:
                out.append({"type": "worker", "id": h, "html": html})
        if hosts or out:
            out.append(self.summary())
        return out

    def page(self) -> list[dict[str, Any]]:
        """An insight page's ``page`` message, or none when it did not change since the last."""
        from flask import render_template

        html = render_template(PAGES[self.view][1], **page_context(self.view, self.args))
        if html == self.last_html:
            return []
        self.last_html = html
        return [{"type": "page", "html": html}]

    def _canvas_graph(self) -> dict[str, Any] | None:
        from .insight import task_canvas

        assert self.task_id is not None
        graph = task_canvas(self.task_id)
        if graph is not None:
            self.canvas_nodes = {n["id"] for n in graph["nodes"]}
            # members carry their Celery root_id, normally the graph's root
            self.canvas_roots = {graph["root"], *self.canvas_nodes}
        return graph

    def canvas(self) -> list[dict[str, Any]]:
        """The task page's ``canvas`` message when a task of its graph changed, else none."""
        from flask import render_template

        if not self.canvas_dirty:
            return []
        self.canvas_dirty = False
        graph = self._canvas_graph()
        html = render_template("celerymon/_canvas.html", canvas=graph)
        if html == self.last_html:
            return []
        self.last_html = html
        return [{"type": "canvas", "html": html}]

    def summary(self) -> dict[str, Any]:
        from flask import render_template

        from .views import tasks_url

        rows, totals = worker_rows(get_state().monitor.workers())
        ctx = {"rows": rows, "totals": totals, "tasks_url": tasks_url}
        n = len(rows)
        return {
            "type": "summary",
            "cards": render_template("celerymon/_worker_cards.html", **ctx),
            "totals": render_template("celerymon/_worker_totals.html", **ctx),
            "count": f"{n} worker{'' if n == 1 else 's'}, {totals['online']} online",
        }


class _NoInput(list):
    """A feed socket's input buffer: the pages send nothing, so a client's message is not kept
    (simple-websocket kept every one, unread, for the life of the socket: 512 MB sent as 0.5 MB
    of deflated frames stayed in the server) but marks the feed to be closed."""

    refused = False

    def __init__(self, previous: list[Any]) -> None:
        super().__init__()
        #: the buffer it replaced: simple-websocket's reader runs from the handshake on, so a
        #: message sent at once may land there (kept only to be seen, then dropped)
        self.previous = previous

    def append(self, item: Any) -> None:
        self.refused = True


def refuse_input(ws: Any) -> None:
    """Make ``ws`` keep no message its client sends, and close (1009) on one above
    :data:`MAX_CLIENT_MESSAGE` (counted after decompression) while it is still arriving."""
    ws.max_message_size = MAX_CLIENT_MESSAGE
    ws.input_buffer = _NoInput(ws.input_buffer)


def _client_sent(ws: Any) -> bool:
    buf = ws.input_buffer
    if getattr(buf, "previous", None):  # a message that came before refuse_input
        buf.previous = []
        buf.refused = True
    return bool(getattr(buf, "refused", False))


def clean_extension_offers(value: str) -> str:
    """A ``Sec-WebSocket-Extensions`` offer as wsproto can parse it: quoted values unquoted
    (RFC 7692 allows ``server_max_window_bits="10"``) and an offer whose window bits are not
    digits dropped (wsproto's ``int()`` raised ValueError while accepting it: a 500)."""
    kept = []
    for offer in value.split(","):
        parts = [p.strip() for p in offer.split(";")]
        params = [parts[0]]
        ok = bool(parts[0])
        for part in parts[1:]:
            if not part:
                continue
            name, eq, val = (x.strip() for x in part.partition("="))
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1].strip()
            if eq and name.startswith(("client_max_window_bits", "server_max_window_bits")):
                ok = ok and val.isascii() and val.isdigit() and len(val) <= 2
            params.append(f"{name}={val}" if eq else name)
        if ok:
            kept.append("; ".join(params))
    return ", ".join(kept)


def _clean_handshake() -> None:
    """Before flask-sock accepts the live socket: offers it would fail on are cleaned."""
    if request.endpoint and request.endpoint.endswith(".live"):
        offers = request.environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")
        if offers is not None:
            request.environ["HTTP_SEC_WEBSOCKET_EXTENSIONS"] = clean_extension_offers(offers)


@requires(VIEWER)
def feed(ws: Any) -> None:
    """Serve one page's websocket until the page goes away (see the module docstring).

    Each open feed holds one of the server's threads (a greenlet under gevent), so at most
    ``CELERY_MONITOR_MAX_LIVE_SOCKETS`` run at once; the next is closed at once with
    :data:`~.hardening.BUSY_CLOSE_CODE` and the page polls instead. A refused or finished
    feed does not wait for the peer's answer to the close frame (:func:`_end_of_stream`).
    """
    refuse_input(ws)
    state = get_state()
    sockets = state.limits.sockets
    if not sockets.enter():
        tcp = _own_tcp(ws)
        try:
            ws.close(
                reason=BUSY_CLOSE_CODE,
                message=f"{sockets.size} live pages are open (CELERY_MONITOR_MAX_LIVE_SOCKETS)",
            )
        except Exception:  # noqa: BLE001 - the peer is gone already
            pass
        _end_of_stream(ws, tcp)
        return
    try:
        _serve(ws, state.monitor)
    finally:
        sockets.leave()


def _serve(ws: Any, service: Any) -> None:
    tcp = _own_tcp(ws)
    try:
        f = Feed(request.args.get("view", ""), request.args)
    except BadInput as exc:
        ws.close(reason=1008, message=str(exc)[:120])
        _end_of_stream(ws, tcp)
        return
    hub = get_hub()
    share_deflate(ws, hub.deflate)
    sub = f.subscribe(service, hub)
    try:
        f.prime(service)
        ws.send(json.dumps({"type": "hello", "view": f.view}))
        first = f.current(service)
        if first:
            ws.send(json.dumps({"type": "batch", "items": first}))
        last_send = time.monotonic()
        next_queues = 0.0
        next_status = time.monotonic() + STATUS_INTERVAL
        next_page = time.monotonic() + PAGE_INTERVAL
        ins = _insight() if f.topics else None
        while ws.connected:
            if _client_sent(ws):
                ws.close(reason=1003, message="the live feed takes no messages")
                return
            now = time.monotonic()
            msgs: list[dict[str, Any]] = []
            if ins is not None:
                versions = ins.wait_changes(f.seen, f.topics, timeout=1.0)
                if versions != f.seen and time.monotonic() >= next_page:
                    f.seen = versions
                    msgs = f.page()
                    next_page = time.monotonic() + PAGE_INTERVAL
                elif versions != f.seen:  # coalesced with the next changes
                    time.sleep(max(0.0, next_page - time.monotonic()))
            elif f.view == "broker":
                if now >= next_queues:
                    next_queues = now + QUEUES_INTERVAL
                    msgs.append({"type": "queues", "html": render_queues()})
                else:
                    time.sleep(min(0.5, next_queues - now))
            else:
                try:
                    items = sub.get(timeout=1.0)
                except EOFError:
                    ws.close(reason=1013, message=(sub.reason or "closed")[:120])
                    return
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_INTERVAL
                    flipped = f.status_changes(service)
                    if flipped:  # the batch is shared with the other pages: a new one
                        items = Batch([*items, *flipped])
                if items:
                    msgs = f.messages(items)
                if f.canvas_dirty and time.monotonic() >= next_page:
                    msgs = [*msgs, *f.canvas()]  # a new list: messages() may be shared
                    next_page = time.monotonic() + PAGE_INTERVAL
            now = time.monotonic()
            if msgs:
                ws.send(f.encode(msgs))
                last_send = now
                time.sleep(MIN_INTERVAL)
            elif now - last_send >= PING_INTERVAL:
                ws.send(json.dumps({"type": "ping"}))
                last_send = now
    finally:
        if sub is not None:
            sub.close()
        _end_of_stream(ws, tcp)


def _insight() -> Any:
    from .insight import get_insight

    return get_insight()


def _own_tcp(ws: Any) -> socket.socket | None:
    """Under werkzeug's server: our own handle on the connection, for :func:`_end_of_stream`."""
    if getattr(ws, "mode", None) != "werkzeug":
        return None
    try:
        return socket.socket(fileno=os.dup(ws.sock.fileno()))
    except OSError:
        return None


def _end_of_stream(ws: Any, tcp: socket.socket | None) -> None:
    """End the TCP stream once the feed is over, without waiting for the peer.

    The close frame sent, nothing more is read: a peer that never answers it (or never
    closes its end) must not hold the server. Under gunicorn, ``gthread`` closes a finished
    connection "gracefully" in its main loop, waiting up to 2 s per connection for the peer to
    close its end, one connection after the other: 24 refused feeds from a silent client
    stopped it from accepting anything for 48 s. Shutting both directions here makes that
    wait end at once (and wakes simple-websocket's reader thread).

    Under werkzeug's server, flask-sock then hands werkzeug an empty HTTP response, which
    werkzeug writes onto the finished websocket; browsers report those bytes as an "Invalid
    frame header". Shutting the sending side first makes that write fail quietly (werkzeug
    treats it as a dropped connection). simple-websocket may already have closed its socket
    object, hence the duplicate handle ``tcp`` taken at the start.
    """
    if ws.connected:
        try:
            ws.close()
        except Exception:  # noqa: BLE001 - the peer may already be gone
            pass
    if tcp is None:
        sock = getattr(ws, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the peer or by simple-websocket
                pass
        return
    try:
        tcp.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        tcp.close()


def register(bp: Blueprint) -> None:
    """Add the ``/ws`` websocket route to the monitor blueprint, and the app's hub."""
    bp.before_request(_clean_handshake)
    Sock().route("/ws", bp=bp, endpoint="live")(feed)
