"""What the insight listener queues for its thread holds little of its own: under a flood the
insight thread flushes every 1.5 - 4 s (issue 14, tenth round: 33,000 - 59,000 items at once),
and whatever the items hold is allocated among the window's records, so it stays in the RSS
as fragmentation once freed."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import orjson
from celery import Celery

from flask_celerymon.monitor.insight import engine
from flask_celerymon.monitor.insight.engine import Insight
from flask_celerymon.monitor.service import MonitorService
from flask_celerymon.monitor.settings import MonitorSettings

KINDS = ("task-succeeded", "task-failed", "task-retried", "task-revoked")


def _wire_events(n: int, start: float = 1_700_000_000.0) -> list[dict[str, Any]]:
    """``n`` tasks' events as the consumer hands them over: decoded from JSON, so each
    event's strings (its ``type`` too) are objects of its own."""
    evs: list[dict[str, Any]] = []
    for i in range(n):
        u, ts = f"00000000-0000-4000-8000-{i:012d}", start + i
        root = u if i % 4 else "00000000-0000-4000-8000-999999999999"  # some canvas members
        evs.append({"type": "task-sent", "uuid": u, "name": f"t{i % 3}", "timestamp": ts - 0.7,
                    "root_id": root})  # fmt: skip
        evs.append({"type": "task-received", "uuid": u, "name": f"t{i % 3}", "hostname": "w@h",
                    "timestamp": ts - 0.5, "routing_key": "celery", "root_id": root})  # fmt: skip
        evs.append({"type": "task-started", "uuid": u, "hostname": "w@h", "timestamp": ts - 0.2})
        kind = KINDS[i % 8 // 5 * (1 + i % 3)] if i % 8 >= 5 else "task-succeeded"
        extra: dict[str, Any] = {"runtime": 0.1 + i % 7 / 10}
        if kind in ("task-failed", "task-retried"):
            extra = {"exception": f"ValueError('boom {i}')", "traceback": "Traceback ..."}
        evs.append({"type": kind, "uuid": u, "hostname": "w@h", "timestamp": ts, **extra})
    out = [orjson.loads(orjson.dumps(e)) for e in evs]
    for e in out:  # a string of its own, whatever the decoder caches
        e["type"] = "".join(("task-", e["type"][5:]))
    return out


def _insight(tmp_path: Any) -> tuple[MonitorService, Insight]:
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=str(tmp_path / "m.db")),
                         autostart=False)  # fmt: skip
    ins = Insight(svc)
    svc.add_listener(ins._on_event)  # noqa: SLF001 - the listener, not its thread
    return svc, ins


def test_queued_items_name_their_type_with_one_shared_string(tmp_path: Any) -> None:
    """Every kind of queued item (members of a canvas, starts, each end) holds the module's
    string for its type, not the event's own: one object per type, however many events."""
    svc, ins = _insight(tmp_path)
    try:
        evs = _wire_events(400)
        svc.apply_events(evs)
        items = list(ins._pending)  # noqa: SLF001
        kinds = {item[0] for item in items}
        assert kinds == {"task-sent", "task-received", "task-started", *KINDS}  # every kind
        assert all(item[0] is engine._WATCHED[item[0]] for item in items)  # noqa: SLF001
        assert not any(item[0] is e["type"] for item, e in zip(items, evs, strict=False))
    finally:
        ins.store.close()


def test_the_queue_holds_under_125_bytes_an_item_beyond_the_window(tmp_path: Any) -> None:
    """The bytes freed when the queue is flushed (its items, what only they reference, the
    deque's blocks), per item: the tuple and a started item's wait, about 104 B; not the
    event's type string as well (166 B an item when each held its own)."""
    svc, ins = _insight(tmp_path)
    try:
        svc.apply_events(_wire_events(20))  # the store, the statements, the caches: made
        ins.flush()
        gc.collect()
        tracemalloc.start()
        try:
            # (made while tracing: what was allocated before is not counted when freed)
            evs = _wire_events(4000, start=1_700_100_000.0)
            for i in range(0, len(evs), 500):  # in the consumer's batches
                svc.apply_events(evs[i : i + 500])
            del evs
            # (the service may keep the last batch it applied: one more, not queued)
            svc.apply_events([{"type": "worker-heartbeat", "hostname": "w@h",
                               "timestamp": 1_700_200_000.0}])  # fmt: skip
            gc.collect()
            queued = len(ins._pending)  # noqa: SLF001
            held = tracemalloc.get_traced_memory()[0]
            ins._pending.clear()  # noqa: SLF001 - what a flush frees, without its own work
            gc.collect()
            freed = held - tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert queued >= 8000
        assert freed / queued < 125, f"{freed / queued:.0f} B an item"
    finally:
        ins.store.close()
