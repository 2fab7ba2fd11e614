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
