"""The live hub: every open feed of an app shares one subscription to its monitor service."""

from __future__ import annotations

import time

import pytest
from celery import Celery

from flask_celerymon.monitor import MonitorService, MonitorSettings
from flask_celerymon.web.live import Batch, LiveHub


def _service(**kw) -> MonitorService:
    return MonitorService(Celery("w", broker="memory://"), MonitorSettings(**kw), autostart=False)


def _received(uuid: str, ts: float) -> dict:
    return {"type": "task-received", "uuid": uuid, "hostname": "w1@h", "timestamp": ts,
            "name": "a"}  # fmt: skip


def test_feeds_share_one_subscription_and_one_batch_per_change():
    svc = _service()
    hub = LiveHub()
    feeds = [hub.join(svc, kinds=("task",)) for _ in range(50)]
    one = hub.join(svc, kinds=("task",), task_ids=("t3",))
    assert svc.figures()["subscribers"] == 1  # not 51
    svc.apply_events(_received(f"t{i}", 1.0 + i) for i in range(5))
    batches = [f.get(timeout=5) for f in feeds]
    assert all(b is batches[0] for b in batches)  # read once, shared
    assert isinstance(batches[0], Batch)
    assert [it["id"] for it in batches[0]] == ["t0", "t1", "t2", "t3", "t4"]
    assert [it["id"] for it in one.get(timeout=5)] == ["t3"]
    for f in [*feeds, one]:
        f.close()
    deadline = time.monotonic() + 5
    while svc.figures()["subscribers"]:  # the hub lets its subscription go with the last feed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert hub.feeds == 0


def test_a_feed_too_slow_for_the_changes_is_dropped_alone():
    svc = _service(subscriber_buffer=3)
    hub = LiveHub()
    slow, fast = hub.join(svc), hub.join(svc)
    for i in range(3):
        svc.apply_events([_received(f"t{i}-{j}", 1.0) for j in range(2)])
        assert len(fast.get(timeout=5)) == 2
    with pytest.raises(EOFError, match="dropped: more than 3 updates waiting"):
        slow.get(timeout=0)
    svc.apply_events([_received("last", 2.0)])
    assert [it["id"] for it in fast.get(timeout=5)] == ["last"]
    fast.close()
    slow.close()


def _deflate_pair():
    """A wsproto client and server that negotiated permessage-deflate, as a browser does."""
    from types import SimpleNamespace

    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request
    from wsproto.extensions import PerMessageDeflate

    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/ws",
                                            extensions=[PerMessageDeflate()])))  # fmt: skip
    (req,) = server.events()
    client.receive_data(server.send(AcceptConnection(extensions=[PerMessageDeflate()])))
    assert isinstance(next(client.events()), AcceptConnection)
    return client, SimpleNamespace(ws=server)


def test_pages_that_negotiated_deflate_share_one_compression_per_frame():
    from wsproto.events import TextMessage

    from flask_celerymon.web.live import DeflateCache, share_deflate

    cache = DeflateCache()
    pages = [_deflate_pair() for _ in range(3)]
    assert all(share_deflate(ws, cache) for _, ws in pages)
    frames = ['{"type": "hello"}', '{"type": "batch", "items": [' + '"row", ' * 500 + '"x"]}',
              '{"type": "ping"}', '{"type": "batch", "items": ["other"]}']  # fmt: skip
    wire = []
    for client, ws in pages:
        for text in frames:
            data = ws.ws.send(TextMessage(data=text))
            assert data[0] & 0x40  # RSV1: the message is compressed
            wire.append(data)
            client.receive_data(data)
        got = [ev.data for ev in client.events()]
        assert got == frames  # a browser's decompressor (context taken over) reads them all
    assert wire[:4] == wire[4:8] == wire[8:]  # the same bytes on every page
    assert cache.compressed == 4 and cache.hits == 8
    assert len(wire[1]) < 200  # and compressed


def test_share_deflate_leaves_a_socket_without_it_alone():
    from types import SimpleNamespace

    from flask_celerymon.web.live import DeflateCache, share_deflate

    assert not share_deflate(SimpleNamespace(ws=SimpleNamespace()), DeflateCache())
