"""The event consumer on a real Redis: wire formats, malformed messages, broker outages."""

from __future__ import annotations

import time

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.monitor.events import resp_reader

from .conftest import wait_for


def send(app, *events):
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname="disp@h", enabled=True)
        for type_, fields in events:
            d.send(type_, **fields)


def test_events_from_a_dispatcher_reach_the_service(celery_app, make_service):
    svc = make_service(celery_app)
    assert svc.wait_connected(5)
    send(celery_app, ("task-received", {"uuid": "t1", "name": "app.add", "args": "(1,)"}),
         ("task-succeeded", {"uuid": "t1", "result": "2", "runtime": 0.1}))  # fmt: skip
    t = wait_for(lambda: (t := svc.task("t1")) and t["state"] == "SUCCESS" and t)
    assert (t["worker"], t["result"]) == ("disp@h", "2")
    f = svc.figures()
    assert f["events_received"] == f["events_applied"] == 2
    assert f["connected"] and f["lag"] < 5


def test_grouped_task_events_are_all_applied(celery_app, make_service):
    svc = make_service(celery_app)
    assert svc.wait_connected(5)
    with celery_app.connection_for_write() as conn:
        d = celery_app.events.Dispatcher(conn, hostname="grp@h", enabled=True,
                                         buffer_group=["task"])  # fmt: skip
        for i in range(5):
            d.send("task-received", uuid=f"g{i}", name="app.grouped")
        d.flush()
    wait_for(lambda: svc.query_tasks(name="app.grouped").total == 5)


def test_malformed_messages_on_the_wire_are_skipped_and_counted(celery_app, make_service):
    svc = make_service(celery_app)
    assert svc.wait_connected(5)
    r = redis.Redis.from_url(celery_app.conf.broker_url)
    db = r.connection_pool.connection_kwargs["db"]
    r.publish(f"/{db}.celeryev/task.received", b"this is not json")
    r.publish(f"/{db}.celeryev/task.received", b'{"body": "!!!", "content-type": "application/json", '
              b'"properties": {"body_encoding": "base64"}}')  # fmt: skip
    send(celery_app, ("task-received", {"uuid": "after", "name": "app.ok"}))
    wait_for(lambda: svc.task("after"))
    f = svc.figures()
    assert f["messages_malformed"] == 2
    assert f["connected"] and f["connects"] == 1


def test_service_reconnects_after_a_broker_restart_and_keeps_what_it_stored(
    redis_server, celery_app, make_service
):
    svc = make_service(celery_app)
    assert svc.wait_connected(5)
    send(celery_app, ("task-received", {"uuid": "before", "name": "app.x"}))
    wait_for(lambda: svc.task("before"))
    svc.flush()
    redis_server.stop()
    wait_for(lambda: not svc.figures()["connected"], 10)
    assert svc.query_tasks().total == 1  # still answering during the outage
    redis_server.start()
    wait_for(lambda: svc.figures()["connected"], 20)
    send(celery_app, ("task-received", {"uuid": "after", "name": "app.x"}))
    wait_for(lambda: svc.task("after"), 10)
    f = svc.figures()
    assert f["disconnects"] >= 1
    assert f["events_maybe_lost"] is True
    # the span with no event consumed is reported, from the disconnect to the reconnect
    assert f["gaps_total"] >= 1
    assert {g["reason"] for g in f["gaps"]} == {"the event stream was disconnected"}
    assert f["gap_seconds_total"] > 0
    assert f["connects"] >= 2
    svc.stop()
    again = make_service(celery_app, enable_events=False)
    again.start()
    stored = again.query_tasks(limit=None, source="store").tasks
    assert {t["uuid"] for t in stored} == {"before", "after"}


def test_resp_frames_split_anywhere_are_parsed_once_complete():
    frame = b"*4\r\n$8\r\npmessage\r\n$3\r\np/*\r\n$5\r\np/abc\r\n$5\r\nhello\r\n"
    for cut in range(1, len(frame)):
        reader = resp_reader()
        reader.feed(frame[:cut])
        assert reader.gets() is False
    reader = resp_reader()
    reader.feed(frame + b"*3")
    assert reader.gets() == [b"pmessage", b"p/*", b"p/abc", b"hello"]
    assert reader.gets() is False  # the rest is incomplete
    push = b">3\r\n$10\r\npsubscribe\r\n$3\r\np/*\r\n:1\r\n"
    reader = resp_reader()
    reader.feed(push)
    assert list(reader.gets()) == [b"psubscribe", b"p/*", 1]
    assert reader.gets() is False


def test_service_started_from_many_threads_starts_once_and_stops_cleanly(celery_app, make_service):
    import threading

    svc = make_service(celery_app)
    assert not svc.running
    before = threading.active_count()
    svc.workers()  # reads never start it
    assert not svc.running
    threads = [threading.Thread(target=svc.ensure_started) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert svc.running
    assert svc.wait_connected(5)
    svc.stop()
    svc.stop()
    time.sleep(0.1)
    assert threading.active_count() <= before
    assert not svc.running
    svc.workers()  # reads after stop() do not start it again
    assert not svc.running


def _frame(pattern: bytes, channel: bytes, data: bytes, push: bool = False) -> bytes:
    head = b">4" if push else b"*4"
    parts = [b"pmessage", pattern, channel, data]
    return head + b"\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(1, 2000), max_size=12), push=st.booleans())
def test_consumer_decodes_a_stream_split_anywhere(cuts, push):
    # (all chunks are decoded in one round here; the next test feeds them one by one)
    import base64
    import json
    import threading
    from collections import deque

    from celery import Celery

    from flask_celerymon.monitor.events import EventConsumer, Figures

    def env(i: int) -> bytes:
        body = base64.b64encode(json.dumps({"type": "task-received", "uuid": f"u{i}",
                                            "timestamp": 1.0 + i}).encode()).decode()  # fmt: skip
        return json.dumps({"body": body, "content-encoding": "utf-8",
                           "content-type": "application/json",
                           "properties": {"body_encoding": "base64"}}).encode()  # fmt: skip

    stream = b"".join(
        [_frame(b"/0.celeryev/*", b"/0.celeryev/task.received", env(i), push) for i in range(5)]
        + [b">3\r\n$10\r\npsubscribe\r\n$1\r\np\r\n:1\r\n"]
        + [_frame(b"/0.celeryev/*", b"/0.celeryev/task.received", env(5), push)]
    )
    chunks = deque()
    last = 0
    for cut in sorted(set(c % len(stream) for c in cuts)) + [len(stream)]:
        if cut > last:
            chunks.append(stream[last:cut])
            last = cut
    got = []
    consumer = EventConsumer(Celery(broker="memory://"), got.extend, Figures())
    done = threading.Event()
    done.set()
    consumer._consume_chunks(chunks, done, threading.Event())
    assert [e["uuid"] for e in got] == [f"u{i}" for i in range(6)]
    assert consumer.connected


def test_non_redis_brokers_are_consumed_through_kombu(make_service):
    from celery import Celery

    app = Celery("mem", broker="memory://")
    svc = make_service(app, enable_events=False)
    assert svc.wait_connected(5)
    send(app, ("task-received", {"uuid": "k1", "name": "app.kombu"}),
         ("task-succeeded", {"uuid": "k1", "result": "1"}))  # fmt: skip
    t = wait_for(lambda: (t := svc.task("k1")) and t["state"] == "SUCCESS" and t)
    assert t["name"] == "app.kombu"
    assert svc.figures()["events_applied"] == 2


def test_decode_handles_kombu_envelopes_and_refuses_unaccepted_content():
    import base64
    import json
    import pickle

    from celery import Celery

    from flask_celerymon.monitor.events import EventConsumer, Figures

    consumer = EventConsumer(Celery(broker="memory://"), lambda evs: None, Figures())
    events = [{"type": "task-received", "uuid": "a", "timestamp": 1.0},
              {"type": "task-started", "uuid": "a", "timestamp": 2.0}]  # fmt: skip
    b64 = base64.b64encode(json.dumps(events).encode()).decode()
    envelope = {"body": b64, "content-encoding": "utf-8", "content-type": "application/json",
                "properties": {"body_encoding": "base64"}}  # fmt: skip
    assert consumer.decode(json.dumps(envelope).encode()) == events
    plain = {"body": json.dumps(events[0]), "content-encoding": "utf-8",
             "content-type": "application/json", "properties": {}}  # fmt: skip
    assert consumer.decode(json.dumps(plain).encode()) == [events[0]]
    pickled = {"body": base64.b64encode(pickle.dumps(events[0])).decode(),
               "content-encoding": "binary", "content-type": "application/x-python-serialize",
               "properties": {"body_encoding": "base64"}}  # fmt: skip
    with pytest.raises(Exception, match="(?i)refus|not.*allowed|content"):
        consumer.decode(json.dumps(pickled).encode())


def _decode_as_before(consumer, envelope: bytes):
    """The fast path as it was before the markers were looked for after the body and base64
    was decoded strictly first (the reference of the property test below)."""
    import binascii

    from flask_celerymon.monitor.events import _json_body

    i = envelope.find(b'"body": "')
    if (
        i != -1
        and b'"content-type": "application/json"' in envelope
        and b'"body_encoding": "base64"' in envelope
    ):
        j = envelope.index(b'"', i + 9)
        body = _json_body(binascii.a2b_base64(envelope[i + 9 : j]))
    else:
        body = consumer._decode_slow(envelope)
    events = body if isinstance(body, list) else [body]
    for ev in events:
        if not isinstance(ev, dict):
            raise ValueError("event body is not an object")
    return events


_EVENT_BODIES = st.one_of(
    st.dictionaries(st.sampled_from(["type", "uuid", "timestamp", "x"]),
                    st.one_of(st.text(max_size=5), st.integers(), st.floats(allow_nan=False))),
    st.lists(st.dictionaries(st.sampled_from(["type", "uuid"]), st.text(max_size=5)), max_size=3),
    st.integers(), st.text(max_size=5),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    body=_EVENT_BODIES,
    order=st.permutations(["body", "content-type", "content-encoding", "properties"]),
    content_type=st.sampled_from(["application/json", "application/data"]),
    encoding=st.sampled_from(["base64", "none"]),
    damage=st.sampled_from(["", "strip-padding", "newline", "junk", "cut"]),
)
def test_decode_gives_what_the_plain_fast_path_gave(body, order, content_type, encoding, damage):
    """Markers anywhere in the envelope, base64 well formed or not: the same events, or an
    error of the same kind, as the fast path that searched the whole envelope."""
    import base64
    import json

    from celery import Celery

    from flask_celerymon.monitor.events import EventConsumer, Figures

    consumer = EventConsumer(Celery(broker="memory://"), lambda evs: None, Figures())
    b64 = base64.b64encode(json.dumps(body).encode()).decode()
    if damage == "strip-padding":
        b64 = b64.rstrip("=")
    elif damage == "newline":
        b64 = b64[:4] + "\n" + b64[4:]
    elif damage == "junk":
        b64 = b64[:4] + "!*" + b64[4:]
    elif damage == "cut":
        b64 = b64[:-3]
    parts = {"body": b64, "content-type": content_type, "content-encoding": "utf-8",
             "properties": {"body_encoding": encoding}}  # fmt: skip
    envelope = json.dumps({k: parts[k] for k in order}).encode()
    try:
        expected = _decode_as_before(consumer, envelope)
    except Exception as exc:  # noqa: BLE001 - compared below
        with pytest.raises(type(exc)):
            consumer.decode(envelope)
    else:
        assert consumer.decode(envelope) == expected


def test_consumer_decodes_a_stream_cut_at_every_byte(monkeypatch):
    import base64
    import json
    import threading
    from collections import deque

    from celery import Celery

    from flask_celerymon.monitor.events import EventConsumer, Figures

    def env(i: int) -> bytes:
        body = base64.b64encode(json.dumps({"type": "task-received", "uuid": f"u{i}",
                                            "timestamp": 1.0}).encode()).decode()  # fmt: skip
        return json.dumps({"body": body, "content-type": "application/json",
                           "properties": {"body_encoding": "base64"}}).encode()  # fmt: skip

    from flask_celerymon.monitor import events as events_module

    monkeypatch.setattr(events_module, "FEED_BYTES", 7)  # slices cut frames anywhere too
    stream = b"".join(
        _frame(b"/0.celeryev/*", b"/0.celeryev/task.received", env(i), push=i == 1)
        for i in range(3)
    )
    for a in range(1, len(stream)):
        for b in (a + 1, a + 7, a + 26):
            if b >= len(stream):
                continue
            got: list = []
            consumer = EventConsumer(Celery(broker="memory://"), got.extend, Figures())
            done = threading.Event()
            done.set()
            consumer._consume_chunks(
                deque([stream[:a], stream[a:b], stream[b:]]), done, threading.Event()
            )
            assert [e["uuid"] for e in got] == ["u0", "u1", "u2"], (a, b)


def _stuck_sink():
    """``(release, got, sink)``: ``sink`` waits for ``release`` (at most 30 s), then keeps
    the events in ``got``."""
    import threading

    release = threading.Event()
    got: list[dict] = []

    def sink(events):
        release.wait(30)
        got.extend(events)

    return release, got, sink


def _send_big(app, host: str, n: int) -> None:
    """``n`` task-received events of about 10 KB each from worker ``<host>@h``."""
    with app.connection_for_write() as conn:
        d = app.events.Dispatcher(conn, hostname=f"{host}@h", enabled=True)
        for i in range(n):
            d.send("task-received", uuid=f"{host}{i}", name="app.big", args="x" * 10_000)


def test_reader_stops_reading_past_the_backlog_bound_and_loses_nothing(celery_app):
    """Back-pressure: with the decoder stuck, the reader queues at most ``max_backlog`` (plus
    one read) and Redis buffers the rest of the stream; released, every event arrives."""

    from flask_celerymon.monitor.events import READ_CHUNK, EventConsumer, Figures

    release, got, sink = _stuck_sink()
    fig = Figures()
    limit = 64 << 10
    consumer = EventConsumer(celery_app, sink, fig, max_backlog=limit)
    consumer.start()
    try:
        assert consumer.wait_connected(5)
        n = 400  # 400 x 10 KB: 4 MB, far past the bound
        _send_big(celery_app, "bp", n)
        r = redis.Redis.from_url(celery_app.conf.broker_url)

        def redis_holds_the_rest():
            clients = [c for c in r.client_list() if int(c.get("psub", 0)) > 0]
            return any(int(c.get("omem", 0)) > 0 for c in clients)

        wait_for(redis_holds_the_rest)
        time.sleep(0.3)
        assert fig.backlog_bytes <= limit + READ_CHUNK
        release.set()
        wait_for(lambda: sum(1 for e in got if e.get("name") == "app.big") == n, timeout=30)
        assert fig.backlog_bytes == 0
    finally:
        release.set()
        consumer.stop()


def test_a_drained_burst_is_counted_as_a_memory_trim(celery_app, monkeypatch):
    """A read-ahead of over ``TRIM_AFTER`` bytes, once drained, gives memory back and counts
    it in ``memory_trims`` (the housekeeping trims again once the burst's rows are written)."""

    from flask_celerymon.monitor import events as events_module
    from flask_celerymon.monitor.events import EventConsumer, Figures

    monkeypatch.setattr(events_module, "TRIM_AFTER", 256 << 10)
    release, got, sink = _stuck_sink()
    fig = Figures()
    consumer = EventConsumer(celery_app, sink, fig)
    consumer.start()
    try:
        assert consumer.wait_connected(5)
        n = 200  # 200 x 10 KB: 2 MB read ahead while the sink is stuck
        _send_big(celery_app, "tr", n)
        wait_for(lambda: fig.backlog_bytes > 256 << 10)
        assert fig.memory_trims == 0
        release.set()
        wait_for(lambda: sum(1 for e in got if e.get("name") == "app.big") == n, timeout=30)
        wait_for(lambda: fig.memory_trims >= 1)
        assert fig.backlog_bytes == 0
    finally:
        release.set()
        consumer.stop()


def test_backlog_bound_must_be_positive():
    from celery import Celery

    from flask_celerymon.monitor.events import EventConsumer, Figures

    with pytest.raises(ValueError, match="max_backlog must be > 0 bytes, not 0"):
        EventConsumer(Celery(broker="memory://"), lambda evs: None, Figures(), max_backlog=0)


def test_backlog_setting_reaches_the_consumer(celery_app, make_service):
    from flask_celerymon.monitor.settings import MonitorSettings

    s = MonitorSettings.from_config({"CELERY_MONITOR_EVENT_BACKLOG_MB": 8}, "/tmp")
    assert s.event_backlog_mb == 8
    svc = make_service(celery_app, event_backlog_mb=3)
    assert svc.wait_connected(5)
    assert svc._consumer.max_backlog == 3 << 20


@pytest.mark.parametrize("broker", ["redis", "memory"])
def test_wait_connected_returns_once_the_connect_hook_has_run(broker, celery_app):
    """``wait_connected`` is what callers use before reading what the hook does (the gap it
    records, events enabled): it must not return while the hook still runs (CI met a gap not
    yet recorded after ``wait_connected``). A slow hook, on both consumer paths."""
    import threading

    from celery import Celery

    from flask_celerymon.monitor.events import EventConsumer, Figures

    app = celery_app if broker == "redis" else Celery("mem", broker="memory://")
    hooked = threading.Event()

    def slow_hook():
        time.sleep(0.5)
        hooked.set()

    consumer = EventConsumer(app, lambda evs: None, Figures(), on_connect=slow_hook)
    consumer.start()
    try:
        assert consumer.wait_connected(10)
        assert hooked.is_set()
        assert consumer.connected
    finally:
        consumer.stop()


def test_read_ahead_count_survives_the_reader_preempted_inside_its_update(celery_app, monkeypatch):
    """``backlog_bytes`` is added to by the reader thread and taken from by the consumer
    thread. CPython may switch threads between the reader's read of the count and its write
    (after the ``len`` call): a chunk the consumer took meanwhile must still be taken off, or
    the count stays above zero for the connection's life (the read-ahead bound trips early and
    the housekeeping's trim after a burst, which waits for nothing read ahead, never runs).
    The switch is forced at that point: ``len`` in the reader pauses while the consumer runs."""
    import builtins
    import threading

    from flask_celerymon.monitor import events as events_module
    from flask_celerymon.monitor.events import EventConsumer, Figures

    release = threading.Event()
    blocked = threading.Event()
    armed = threading.Event()
    got: list[dict] = []

    def sink(events):
        if not release.is_set():
            blocked.set()
            release.wait(30)
        got.extend(events)

    def switching_len(obj):
        if armed.is_set() and threading.current_thread().name == "celerymon-events-reader":
            armed.clear()
            release.set()  # the consumer goes on: takes the queued chunk off the count
            time.sleep(0.5)
        return builtins.len(obj)

    monkeypatch.setattr(events_module, "len", switching_len, raising=False)
    fig = Figures()
    consumer = EventConsumer(celery_app, sink, fig)
    consumer.start()
    try:
        assert consumer.wait_connected(5)
        with celery_app.connection_for_write() as conn:
            d = celery_app.events.Dispatcher(conn, hostname="rc@h", enabled=True)
            d.send("task-received", uuid="rc0", name="app.x")
            wait_for(blocked.is_set)  # the consumer is in the sink
            d.send("task-received", uuid="rc1", name="app.x")
            wait_for(lambda: fig.backlog_bytes > 0)  # queued, not taken
            armed.set()
            d.send("task-received", uuid="rc2", name="app.x")
            wait_for(lambda: len(got) == 3)
        wait_for(lambda: fig.backlog_bytes == 0, timeout=2)
    finally:
        release.set()
        consumer.stop()
