"""The API's task dict made from a window record in one pass equals the one made of its row."""

from __future__ import annotations

import random

from flask_celerymon.monitor.model import (
    RARE_FIELDS,
    TASK_COLUMNS,
    TaskRecord,
    history_from_times,
    task_dict,
)

_TIMES = ("sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected")


def _record(rnd: random.Random) -> TaskRecord:
    t = TaskRecord(f"id-{rnd.random()}")
    base = 1_700_000_000.0
    for attr in _TIMES:
        if rnd.random() < 0.6:
            # ties and reversed clocks on purpose: the sort decides the order
            setattr(t, attr, base + rnd.choice([0.0, 0.5, 1.0, -0.25, rnd.random()]))
    for attr in ("name", "state", "worker"):
        if rnd.random() < 0.8:
            setattr(t, attr, rnd.choice(["", "a", "shop.x", "SUCCESS"]))
    for attr in ("args", "kwargs", "result"):
        if rnd.random() < 0.7:
            t.set_text(attr, rnd.choice(["", "(1,)", "{'a': 1}", "x\x00y"]))
    for attr in ("exception", "traceback", "eta", "expires", "parent_id"):
        if rnd.random() < 0.2:
            setattr(t, attr, rnd.choice(["e", "2026-01-01T00:00:00"]))
    if rnd.random() < 0.2:
        t.children = [f"c{i}" for i in range(rnd.randint(0, 3))]
    if rnd.random() < 0.2:
        t.history = ("PENDING", 1.0, "RECEIVED", 2.0, "CUSTOM", 3.0)
    if rnd.random() < 0.1:  # an extra dict holding Nones, as setters leave it
        t.failed = t.failed
        t.retried = None
        if t.extra is None:
            t.extra = {}
        t.extra.setdefault("retried", None)
    for attr, value in (("retries", 2), ("exchange", ""), ("routing_key", "celery"),
                        ("clock", 7), ("client", "gen@c"), ("root_id", "r"),
                        ("timestamp", 5.0), ("runtime", 0.1)):  # fmt: skip
        if rnd.random() < 0.5:
            setattr(t, attr, value)
    return t


def _via_row(t: TaskRecord) -> dict:
    d = dict(zip(TASK_COLUMNS, t.row()))
    d["history"] = t.full_history()
    return task_dict(d, list(t.children or ()))


def test_as_dict_equals_task_dict_of_its_row_in_key_order():
    rnd = random.Random(14)
    for _ in range(3000):
        t = _record(rnd)
        assert list(t.as_dict().items()) == list(_via_row(t).items())


def _reference_history(row: dict) -> tuple:
    """The definition: PENDING at ``sent``, then the worker's states sorted by (time, state)."""
    states = (("received", "RECEIVED"), ("started", "STARTED"), ("retried", "RETRY"),
              ("succeeded", "SUCCESS"), ("failed", "FAILURE"), ("revoked", "REVOKED"),
              ("rejected", "REJECTED"))  # fmt: skip
    pairs = sorted((row[a], st) for a, st in states if row[a] is not None)
    head = ("PENDING", row["sent"]) if row["sent"] is not None else ()
    return head + tuple(x for ts, st in pairs for x in (st, ts))


def test_history_of_a_record_and_of_its_row_follow_the_definition():
    assert set(RARE_FIELDS) <= set(TASK_COLUMNS) | {"children"}
    rnd = random.Random(15)
    for _ in range(3000):
        t = _record(rnd)
        row = dict(zip(TASK_COLUMNS, t.row()))
        assert history_from_times(t) == _reference_history(row)
        assert history_from_times(row) == _reference_history(row)
