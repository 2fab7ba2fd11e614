"""The housekeeping flush builds and writes task rows in slices of ``FLUSH_SLICE``: its
transient memory is bounded by the slice, not by how many tasks changed since the last flush
(a flood's flush of 50,000 rows built them all at once and left the small-object arenas it
took fragmented, in the RSS), and the store ends up with what one batch would write."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest

from flask_celerymon.monitor import housekeeping

from .test_store_cadence import _contents, _histories, _service


def _flush_peak(tmp_path: Any, n: int, name: str) -> tuple[int, int]:
    """(rows written, bytes Python allocated at the peak of a flush of ``n`` new tasks
    beyond what it held before)."""
    svc = _service(str(tmp_path / f"{name}.sqlite3"))
    events = []
    t = 1_700_000_000.0
    for i in range(n):
        uuid = f"{i:08x}-0000-4000-8000-000000000000"
        events += [
            {"type": "task-received", "uuid": uuid, "hostname": "w@h", "timestamp": t,
             "name": "app.task", "args": f"({i}, 'order-{i}')", "kwargs": "{'user': 42}"},
            {"type": "task-succeeded", "uuid": uuid, "hostname": "w@h", "timestamp": t + 1,
             "result": f"'done {i}'", "runtime": 0.5},
        ]  # fmt: skip
    svc._ingest(events)  # noqa: SLF001
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        written = svc.flush()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        assert svc._store is not None  # noqa: SLF001
        svc._store.close()  # noqa: SLF001
    return written, peak


def test_a_flush_holds_one_slice_of_rows_at_a_time(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(housekeeping, "FLUSH_SLICE", 500)
    small = _flush_peak(tmp_path, 2_000, "small")
    large = _flush_peak(tmp_path, 8_000, "large")
    assert small[0] == 2_000 and large[0] == 8_000
    # four times the tasks, about the same transient memory (the slice's rows); built at
    # once the peak grew with the tasks (x4)
    assert large[1] < small[1] * 1.5, (small, large)
    monkeypatch.setattr(housekeeping, "FLUSH_SLICE", 10**9)
    whole = _flush_peak(tmp_path, 8_000, "whole")
    assert whole[1] > large[1] * 2, (large, whole)


@pytest.mark.parametrize("seed", range(4))
def test_a_sliced_flush_stores_what_one_batch_does(
    tmp_path: Any, monkeypatch: Any, seed: int
) -> None:
    rnd = random.Random(seed)
    events = _histories(rnd, rnd.choice((300, 1500)))
    sliced, whole = _service(str(tmp_path / "a.sqlite3")), _service(str(tmp_path / "b.sqlite3"))
    for svc, size in ((sliced, rnd.choice((1, 7, 64, 333))), (whole, 10**9)):
        monkeypatch.setattr(housekeeping, "FLUSH_SLICE", size)
        for i in range(0, len(events), 400):
            svc._ingest(events[i : i + 400])  # noqa: SLF001
            if rnd.random() < 0.5:
                svc.flush()
        svc.flush()
        assert svc._store is not None  # noqa: SLF001
        svc._store.close()  # noqa: SLF001
    assert _contents(str(tmp_path / "a.sqlite3")) == _contents(str(tmp_path / "b.sqlite3"))
