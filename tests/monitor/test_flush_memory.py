"""After a burst (a read-ahead of over ``TRIM_AFTER`` drained), the housekeeping gives free
heap back to the system once the burst's rows are written: writing and indexing them frees
memory after the consumer's own trim, which otherwise stayed in the RSS."""

from __future__ import annotations

from typing import Any

from flask_celerymon.monitor import events, housekeeping

from .test_store_cadence import _service


def test_a_trim_follows_a_burst_once_its_rows_are_written(tmp_path: Any, monkeypatch: Any) -> None:
    """Once the consumer drained a read-ahead burst (``memory_trims`` moved), the housekeeping
    gives memory back once, after a flush that wrote fewer than ``TRIM_ROWS`` rows, with
    nothing read ahead; never while nothing burst."""
    trims: list[int] = []
    real = events._release_memory

    def counting() -> None:
        trims.append(1)
        real()  # the real malloc_trim: harmless

    monkeypatch.setattr(events, "_release_memory", counting)
    svc = _service(str(tmp_path / "t.sqlite3"))
    fig = svc._figures  # noqa: SLF001
    assert not svc.trim_after_burst(0) and not trims  # nothing burst
    fig.memory_trims += 1
    fig.backlog_bytes = 1 << 20
    assert not svc.trim_after_burst(0)  # still reading ahead
    fig.backlog_bytes = 0
    assert not svc.trim_after_burst(housekeeping.TRIM_ROWS)  # the burst's rows being written
    assert svc.trim_after_burst(housekeeping.TRIM_ROWS - 1) and trims == [1]
    assert not svc.trim_after_burst(0) and trims == [1]  # once a burst
    fig.memory_trims += 2
    assert svc.trim_after_burst(0) and trims == [1, 1]
    assert svc._store is not None  # noqa: SLF001
    svc._store.close()  # noqa: SLF001


def test_the_housekeeping_thread_trims_once_after_a_burst(
    make_service: Any, monkeypatch: Any
) -> None:
    """The loop calls it: a burst the consumer counted is followed by one trim of the
    housekeeping thread, and no more while nothing else bursts."""
    import time

    from celery import Celery

    trims: list[float] = []
    monkeypatch.setattr(events, "_release_memory", lambda: trims.append(time.monotonic()))
    svc = make_service(Celery("trim", broker="memory://"), enable_events=False)
    svc.start()
    time.sleep(0.3)
    assert trims == []  # nothing burst
    svc._figures.memory_trims += 1  # noqa: SLF001 - as the consumer does after a burst
    deadline = time.monotonic() + 10
    while not trims and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(trims) == 1
    time.sleep(0.3)  # several more ticks
    assert len(trims) == 1
