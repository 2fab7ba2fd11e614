"""The event consumer: Celery events from the broker, decoded in batches, handed to one sink.

Two sources, chosen by the broker transport:

* **Redis** (``redis``, ``rediss``, ``redis+socket``, sentinel, the embedded broker): a raw
  ``PSUBSCRIBE`` on kombu's fanout channel for the event exchange. A reader thread only drains
  the socket into a byte queue, so Redis never holds a backlog for us (Redis drops a pub/sub
  client whose output buffer passes 32 MB, which is how Flower loses events in bursts); the
  consumer thread frames the RESP stream with ``hiredis`` and decodes kombu's envelope (JSON +
  base64) itself, about ten times cheaper than going through kombu's ``EventReceiver``.
* **Anything else** (AMQP...): kombu's :class:`celery.events.EventReceiver`.

Both reconnect with exponential backoff (reset after a good connection), and count every
disconnect: an event published while we were not subscribed is lost by the broker, so the
figures say when loss may have happened instead of hiding it. A malformed message is logged,
counted and skipped; an exception in the sink never kills the thread.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import logging
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import hiredis
import kombu
import orjson
from celery import Celery

log = logging.getLogger(__name__)

#: sink(events) -> None, called in the consumer thread with a list of decoded event dicts.
Sink = Callable[[list[dict[str, Any]]], None]

READ_CHUNK = 1 << 20
#: Bytes handed to the RESP parser at a time (see ``_consume_chunks``).
FEED_BYTES = 16 << 10
#: Bytes the reader may queue ahead of the decoder before it stops reading (the default of
#: ``CELERY_MONITOR_EVENT_BACKLOG_MB``): past it the reader waits and Redis buffers the
#: stream, up to its pub/sub output limit (32 MB by default; past that Redis drops us).
MAX_BACKLOG = 256 << 20
#: Events applied under one hold of the state lock (readers wait at most that long).
BATCH = 500
_json_decode = json.JSONDecoder().decode


_JSON_TYPE = b'"content-type": "application/json"'
_BASE64 = b'"body_encoding": "base64"'


def _has(envelope: bytes, marker: bytes, j: int) -> bool:
    """``marker in envelope``, looked for first after the body (which ends at ``j``) (where kombu
    writes it: the body is most of the envelope, and a long marker is not found for free)."""
    return envelope.find(marker, j) != -1 or envelope.find(marker, 0, j + len(marker) - 1) != -1


def _base64(data: bytes) -> bytes:
    """``binascii.a2b_base64(data)``: strict mode first (a third cheaper, and the same bytes
    for well-formed base64), the lenient decoder for the rest (and before Python 3.11, which
    has no strict mode). Raises ``binascii.Error``."""
    if sys.version_info >= (3, 11):
        try:
            return binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error:
            pass
    return binascii.a2b_base64(data)


def _json_body(data: bytes) -> Any:
    """A JSON event body: orjson (about 1.2 µs an event against 4 µs), and the standard
    library for what orjson refuses (NaN, integers past 64 bits...), so the same bodies
    decode as before. Raises ``ValueError`` (or ``UnicodeDecodeError``) for bad JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _json_decode(data.decode())


#: Once a backlog of more than this many bytes is drained, free memory goes back to the
#: system (the read-ahead of a burst would otherwise stay in the process's RSS for good).
TRIM_AFTER = 16 << 20
BACKOFF_START = 0.2
BACKOFF_MAX = 10.0


class Figures:
    """Counters the consumer and the service update (ints/floats, read without a lock)."""

    def __init__(self) -> None:
        self.events_received = 0
        self.events_applied = 0
        self.events_malformed = 0
        self.events_unknown = 0
        self.events_dropped = 0
        self.messages_malformed = 0
        self.connects = 0
        self.disconnects = 0
        self.last_error: str | None = None
        self.last_event_at: float | None = None
        self.lag: float = 0.0
        self.lag_max: float = 0.0
        self.backlog_bytes = 0
        self.sink_errors = 0
        #: Times a read-ahead of over :data:`TRIM_AFTER` bytes drained and free heap memory
        #: went back to the system (the housekeeping trims once more after the burst's rows
        #: are written: see :meth:`.housekeeping.Housekeeping.trim_after_burst`).
        self.memory_trims = 0
        #: When the stream was last lost (cleared by the service once subscribed again).
        self.disconnected_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _release_memory() -> None:
    """Give free heap memory back to the system (glibc's ``malloc_trim``; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def _is_redis(app: Celery) -> bool:
    url = app.conf.broker_url or ""
    if not isinstance(url, str):
        return False
    scheme = url.split("://", 1)[0].split(";", 1)[0].lower()
    return scheme in ("redis", "rediss", "redis+socket", "sentinel", "socket")


class EventConsumer:
    """Consumes the event stream of ``app``'s broker in a daemon thread until :meth:`stop`."""

    def __init__(
        self,
        app: Celery,
        sink: Sink,
        figures: Figures,
        on_connect: Callable[[], None] | None = None,
        max_backlog: int = MAX_BACKLOG,
    ) -> None:
        """``max_backlog``: bytes read off a Redis socket and not decoded yet, at most (> 0);
        past it the reader stops reading until the decoder catches up."""
        if max_backlog <= 0:
            raise ValueError(f"max_backlog must be > 0 bytes, not {max_backlog!r}")
        self.max_backlog = max_backlog
        self.app = app
        self.sink = sink
        self.figures = figures
        self.on_connect = on_connect
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connected = threading.Event()
        #: Guards ``figures.backlog_bytes``, added to by the Redis reader thread and taken
        #: from by the consumer thread (``+=`` is a read and a write: a thread switch between
        #: them lost the other thread's change, and the count never came back to zero).
        self._backlog_lock = threading.Lock()
        #: Set once subscribed *and* ``on_connect`` has returned (what :meth:`wait_connected`
        #: waits for: a caller then sees what the hook did, e.g. the gap it recorded).
        self._ready = threading.Event()
        self._sock: socket.socket | None = None
        self._kombu_conn: Any = None

    @property
    def connected(self) -> bool:
        """True while subscribed to the event stream."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until subscribed and ``on_connect`` has run; True if that happened within
        ``timeout`` seconds."""
        return self._ready.wait(timeout)

    def start(self) -> None:
        target = self._run_redis if _is_redis(self.app) else self._run_kombu
        t = threading.Thread(target=target, name="celerymon-events", daemon=True)
        self._threads.append(t)
        t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        conn = self._kombu_conn
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        for t in self._threads:
            t.join(timeout)

    # -- decoding -------------------------------------------------------------------------

    def decode(self, envelope: bytes) -> list[dict[str, Any]]:
        """Events in one kombu message published on the event exchange (one or a list)."""
        body: Any
        i = envelope.find(b'"body": "')
        j = -1 if i == -1 else envelope.find(b'"', i + 9)
        if j != -1 and _has(envelope, _JSON_TYPE, j) and _has(envelope, _BASE64, j):
            # kombu's Redis envelope: a base64 body (no quotes inside) holding JSON.
            body = _json_body(_base64(envelope[i + 9 : j]))
        else:
            body = self._decode_slow(envelope)
        # Event timestamps are Unix times (time.time() in the sender): they need no zone
        # correction, whatever the sender's ``utcoffset`` (Celery's adjust_timestamp would
        # shift them by the difference of the two zones).
        if type(body) is dict:
            return [body]
        events = body if isinstance(body, list) else [body]
        for ev in events:
            if not isinstance(ev, dict):
                raise ValueError("event body is not an object")
        return events

    def _decode_slow(self, envelope: bytes) -> Any:
        from kombu.serialization import loads

        msg = json.loads(envelope)
        body = msg["body"]
        props = msg.get("properties") or {}
        if props.get("body_encoding") == "base64":
            body = binascii.a2b_base64(body)
        accept = set(self.app.conf.accept_content or ()) | {"json", "application/json"}
        return loads(  # type: ignore[no-untyped-call]
            body, msg.get("content-type"), msg.get("content-encoding") or "utf-8", accept=accept
        )

    # -- redis ---------------------------------------------------------------------------

    def _run_redis(self) -> None:
        self._reconnecting(self._consume_redis)

    def _consume_redis(self) -> bool:
        """One connection's worth of Redis events; True when it lasted (reset the backoff)."""
        rconn = None
        chunks: deque[bytes] = deque()
        self.figures.backlog_bytes = 0
        lasted = False
        try:
            rconn, pattern = self._redis_subscribe()
            sock = _redis_socket(rconn)
            self._sock = sock
            self.figures.connects += 1
            since = time.monotonic()
            log.info("celerymon: consuming events from Redis (%s)", pattern)
            done = threading.Event()
            wake = threading.Event()
            reader = threading.Thread(
                target=self._read_socket,
                args=(sock, chunks, done, wake),
                name="celerymon-events-reader",
                daemon=True,
            )
            reader.start()
            self._consume_chunks(chunks, done, wake)
            reader.join()
            lasted = time.monotonic() - since > 5.0
        except Exception as exc:  # noqa: BLE001 - reconnect on anything
            if not self._stop.is_set():
                self.figures.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("celerymon: event stream error: %s", self.figures.last_error)
        finally:
            was = self._connected.is_set()
            self._ready.clear()
            self._connected.clear()
            self._sock = None
            if rconn is not None:
                try:
                    rconn.disconnect()
                except Exception:  # noqa: BLE001
                    pass
            if was and not self._stop.is_set():
                self.figures.disconnects += 1
                self.figures.disconnected_at = time.time()
        return lasted

    def _reconnecting(self, consume: Callable[[], bool]) -> None:
        """Call ``consume()`` (one connection, until it ends) again and again until
        :meth:`stop`, waiting between calls with exponential backoff from
        :data:`BACKOFF_START` to :data:`BACKOFF_MAX` seconds, reset when ``consume()`` returns
        True (the connection was good)."""
        backoff = BACKOFF_START
        while not self._stop.is_set():
            if consume():
                backoff = BACKOFF_START
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _redis_subscribe(self) -> tuple[Any, str]:
        exchange = self.app.conf.event_exchange or "celeryev"
        with self.app.connection_for_read() as conn:
            chan = conn.default_channel
            prefix = (getattr(chan, "global_keyprefix", "") or "") + (
                getattr(chan, "keyprefix_fanout", "") or ""
            )
            pool = chan.client.connection_pool
            rconn = pool.make_connection()
        rconn.socket_timeout = None
        rconn.connect()
        pattern = _glob_escape(prefix + exchange + "/") + "*"
        rconn.send_command("PSUBSCRIBE", pattern)
        _redis_socket(rconn).settimeout(None)
        return rconn, pattern

    def _read_socket(
        self,
        sock: socket.socket,
        chunks: deque[bytes],
        done: threading.Event,
        wake: threading.Event,
    ) -> None:
        """Drain the socket into ``chunks`` as fast as it fills (cheap: no parsing here)."""
        fig = self.figures
        recv = sock.recv
        limit = self.max_backlog
        try:
            while not self._stop.is_set():
                if fig.backlog_bytes > limit:
                    time.sleep(0.01)
                    continue
                data = recv(READ_CHUNK)
                if not data:
                    fig.last_error = "broker closed the event connection"
                    break
                with self._backlog_lock:
                    fig.backlog_bytes += len(data)
                chunks.append(data)
                wake.set()
        except OSError as exc:
            if not self._stop.is_set():
                fig.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
            wake.set()

    def _consume_chunks(
        self, chunks: deque[bytes], done: threading.Event, wake: threading.Event
    ) -> None:
        """Consumer thread: frame the bytes the reader queued (hiredis), decode, deliver.

        Returns once the reader is done and every queued byte was framed. Raises
        ``hiredis.ProtocolError`` for a byte stream that is not RESP (the caller reconnects).
        """
        fig = self.figures
        reader = resp_reader()
        feed = reader.feed
        gets = reader.gets
        decode = self.decode
        events: list[dict[str, Any]] = []
        peak = 0
        while True:
            if not chunks:
                if events:
                    self._deliver(events)
                    events = []
                if done.is_set() and not chunks:
                    return
                if peak > TRIM_AFTER:
                    _release_memory()
                    fig.memory_trims += 1
                    peak = 0
                wake.wait(0.5)
                wake.clear()
                continue
            c = chunks.popleft()
            size = len(c)
            with self._backlog_lock:
                peak = max(peak, fig.backlog_bytes)
                fig.backlog_bytes -= size
            # Fed in small slices, each drained before the next: hiredis moves its unread
            # bytes to the front of its buffer as it goes, which costs O(buffer) per reply.
            for off in range(0, size, FEED_BYTES):
                feed(c, off, min(FEED_BYTES, size - off))
                while (frame := gets()) is not False:
                    # RESP2 arrays come as lists, RESP3 pushes as a list subclass;
                    # "+OK"/"-ERR" lines as bytes or an error object: nothing to do.
                    if not isinstance(frame, list) or not frame:
                        continue
                    kind = frame[0]
                    if kind == b"pmessage" and len(frame) == 4:
                        try:
                            decoded = decode(frame[3])
                            fig.events_received += len(decoded)
                            events.extend(decoded)
                        except Exception as exc:  # noqa: BLE001 - count and skip bad messages
                            fig.messages_malformed += 1
                            fig.events_malformed += 1
                            # at least one event is lost with it
                            fig.events_received += 1
                            fig.events_dropped += 1
                            log.warning("celerymon: skipped a malformed event message: %s", exc)
                        if len(events) >= BATCH:
                            self._deliver(events)
                            events = []
                    elif kind == b"psubscribe":
                        self._connected.set()
                        if self.on_connect is not None:
                            self._safe(self.on_connect)
                        self._ready.set()

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        try:
            self.sink(events)
        except Exception:  # noqa: BLE001 - the thread must survive a bad batch
            self.figures.sink_errors += 1
            self.figures.events_dropped += len(events)
            log.exception("celerymon: applying a batch of %d events failed", len(events))

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001
            log.exception("celerymon: on_connect callback failed")

    # -- kombu (AMQP and others) ----------------------------------------------------------

    def _run_kombu(self) -> None:
        self._reconnecting(self._consume_kombu)

    def _consume_kombu(self) -> bool:
        """One connection's worth of events through kombu; True once subscribed (reset the
        backoff)."""
        subscribed = False
        try:
            with self.app.connection_for_read() as conn:
                self._kombu_conn = conn
                conn.ensure_connection(max_retries=1)
                recv = self.app.events.Receiver(conn, handlers={"*": self._on_kombu_event})
                # Consume on this one connection (the receiver's own consume() opens a
                # clone per call, and AMQP's exclusive event queue belongs to a single
                # connection); entering the consumer declares and binds the queue, so
                # events sent once we say "connected" reach it.
                chan = conn.default_channel
                consumers = recv.get_consumers(partial(kombu.messaging.Consumer, chan), chan)
                with contextlib.ExitStack() as stack:
                    for consumer in consumers:
                        stack.enter_context(consumer)
                    self.figures.connects += 1
                    self._connected.set()
                    subscribed = True
                    if self.on_connect is not None:
                        self._safe(self.on_connect)
                    self._ready.set()
                    while not self._stop.is_set():
                        try:
                            conn.drain_events(timeout=1.0)
                        except (socket.timeout, TimeoutError):
                            pass
                        conn.heartbeat_check()
        except Exception as exc:  # noqa: BLE001 - reconnect on anything
            if not self._stop.is_set():
                self.figures.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("celerymon: event stream error: %s", self.figures.last_error)
        finally:
            self._kombu_conn = None
            if self._connected.is_set() and not self._stop.is_set():
                self.figures.disconnects += 1
                self.figures.disconnected_at = time.time()
            self._ready.clear()
            self._connected.clear()
        return subscribed

    def _on_kombu_event(self, event: dict[str, Any]) -> None:
        self.figures.events_received += 1
        self._deliver([dict(event)])


def resp_reader() -> hiredis.Reader:
    """A RESP2/RESP3 parser (hiredis, the C parser redis-py uses when installed): ``feed(bytes)``
    then ``gets()`` per complete reply, ``False`` while the next one is incomplete; replies come
    as lists of ``bytes``/``int``. Raises ``hiredis.ProtocolError`` on a stream that is not
    RESP."""
    return hiredis.Reader()


def _redis_socket(rconn: Any) -> socket.socket:
    """The socket of a connected redis-py ``Connection``.

    redis-py has no public accessor: ``_sock`` is private. We need the raw socket because the
    reader thread drains it with ``recv`` (redis-py's own reader would parse every reply in
    Python and let Redis hold the backlog). Only here, so a redis-py change breaks one place.
    """
    sock = rconn._sock
    if sock is None:
        raise ConnectionError("the Redis connection has no socket (not connected)")
    return sock  # type: ignore[no-any-return]
