"""The insight engine of one monitor service: roll-ups, error groups and alerts.

:class:`Insight` listens to the service's events (:meth:`MonitorService.add_listener`); the
listener only appends a small tuple to a deque. Its thread, ``celerymon-insight`` (none
before :meth:`Insight.start`), once a second turns the queued events into per-minute roll-ups
and error-group updates in :class:`~.store.InsightStore`, every ``alert_interval`` seconds
evaluates the alert rules, and every 10 minutes applies the history's retention. It stops with
the service (or :meth:`Insight.stop`).

What is counted, per task name and minute of the event's timestamp:

* ``task-succeeded``: succeeded, and the runtime into the runtime histogram;
* ``task-failed``: failed (and the failure in its error group); ``task-retried``: retried
  (and the retry in its error group); ``task-revoked``: revoked;
* ``task-started``: queue wait, started - max(sent or received, eta), into the task's and the
  queue's (``routing_key``) wait histograms;
* ``task-sent``/``task-received`` of a task whose root is another task: its membership of
  that root's canvas (for the task page's graph).

A task succeeding resolves the error groups of its name last seen before that success.

Each write bumps the version of the topics it changed (:data:`TOPICS`: ``analytics`` for
roll-ups, ``errors`` for error groups, ``canvas`` for canvas members, ``alerts`` for alert
rows); :meth:`Insight.wait_changes` lets a reader (a live page) sleep until one of its topics
moves, so pages are pushed at most once per write, that is about once a second.

Several processes (``CELERY_MONITOR_SINGLE_INGESTER``): the tables are shared (in the
history's SQLite file, or in its PostgreSQL database, :mod:`.pg_store`) and only the
ingester writes them: a follower's thread queues nothing (it consumes no events) and neither
back-fills, prunes nor evaluates alert rules, so each alert is opened and sent once per
cluster. The ingester announces the topics of each write over the fan-out channel
(:meth:`MonitorService.announce`); a follower bumps its versions when told, so its live pages
follow the ingester's writes. A follower that takes the lease over reads the firing alerts
back from the shared table and goes on with them (no alert is opened or sent twice).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..stores import POSTGRES_SCHEMES
from .alerts import AlertRule, conditions, describe, payload, post_json
from .error_groups import fingerprint
from .rollups import Failure, Rollup, percentile
from .store import AnyInsightStore, InsightStore

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 1.0
PRUNE_INTERVAL = 600.0
#: Events queued for the insight thread before new ones are dropped (counted).
MAX_PENDING = 200_000
#: The event types the listener queues, each mapped to one shared string: a queued item names
#: its type with it, not with the event's own string (a 61 - 63 byte object per event, which a
#: flood kept alive until the next flush, tens of thousands at once, among the window's records).
_WATCHED: dict[Any, str] = {t: t for t in (
    "task-succeeded", "task-failed", "task-retried", "task-revoked", "task-started",
    "task-received", "task-sent")}  # fmt: skip
#: The kinds of insight data a reader can wait for (:meth:`Insight.wait_changes`).
TOPICS = ("analytics", "errors", "canvas", "alerts")
_COUNT = {"task-succeeded": "succeeded", "task-failed": "failed", "task-retried": "retried",
          "task-revoked": "revoked"}  # fmt: skip


@dataclass(frozen=True)
class InsightSettings:
    """Alert rules and how they are delivered; ``webhook`` None keeps alerts on the page."""

    alerts: tuple[AlertRule, ...] = ()
    webhook: str | None = None
    webhook_format: str = "json"
    alert_interval: float = 15.0
    monitor_url: str | None = None


class Insight:
    """Roll-ups, error groups and alerts over one :class:`MonitorService`."""

    def __init__(
        self,
        service: Any,
        settings: InsightSettings | None = None,
        *,
        send: Callable[[str, Mapping[str, Any]], str] = post_json,
    ) -> None:
        self.service = service
        self.settings = settings or InsightSettings()
        self._send = send
        self._pending: deque[tuple[Any, ...]] = deque()
        self._lock = threading.RLock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._store: AnyInsightStore | None = None
        self.dropped = 0
        #: (rule name, subject) -> {"id", "since", "notified"} of pending and firing alerts
        self._active: dict[tuple[str, str], dict[str, Any]] = {}
        self.last_evaluation: float | None = None
        #: When this process began watching events (Unix time), None before start.
        self.started_at: float | None = None
        self._versions = dict.fromkeys(TOPICS, 0)
        self._changed = threading.Condition(threading.Lock())

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def store(self) -> AnyInsightStore:
        """The insight tables (opened on first use): :class:`~.store.InsightStore` in the
        history's SQLite file (in memory for this process without one), or
        :class:`~.pg_store.PgInsightStore` in the history's PostgreSQL database, shared by
        every process. Opening the PostgreSQL one raises its errors (server unreachable,
        psycopg missing)."""
        with self._lock:
            if self._store is None:
                path = self.service.settings.db_path
                if path is not None and path.startswith(POSTGRES_SCHEMES):
                    from .pg_store import PgInsightStore

                    self._store = PgInsightStore(path)
                else:
                    self._store = InsightStore(path)
            return self._store

    @property
    def writing(self) -> bool:
        """Whether this process writes the insight tables: False in a follower of
        ``CELERY_MONITOR_SINGLE_INGESTER`` (see :attr:`MonitorService.ingesting`)."""
        return bool(self.service.ingesting)

    def ensure_started(self) -> Insight:
        """Start the listener and the thread unless running in this process."""
        with self._lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return self
            if self._pid is not None and self._pid != os.getpid():
                self._store = None  # forked: the parent's connection is not ours
                self._pending.clear()
            self._pid = os.getpid()
            self.started_at = time.time()
            self._stop.clear()
            self._restore_active()
            self.service.remove_listener(self._on_event)
            self.service.add_listener(self._on_event)
            self.service.remove_topic_listener(self._changed_elsewhere)
            self.service.add_topic_listener(self._changed_elsewhere)
            self._thread = threading.Thread(target=self._run, name="celerymon-insight",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after a last write. Idempotent."""
        self.service.remove_listener(self._on_event)
        self.service.remove_topic_listener(self._changed_elsewhere)
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (after a last write) and close the store: its SQLite connection or
        its PostgreSQL pool. A later use opens the store again. Idempotent."""
        self.stop(timeout)
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def _restore_active(self) -> None:
        """Take the firing alerts of the store as ours (at start, and when this process
        becomes the ingester: the last one's alerts go on, never opened twice)."""
        self._active.clear()
        for a in self.store.alerts(status="firing", limit=10_000):
            self._active[(a["rule"], a["subject"])] = {
                "id": a["id"], "since": a["started"], "notified": a["notified"]
            }  # fmt: skip

    # -- ingest ----------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any], task: Any) -> None:
        """The service's listener (ingest thread): queue what the roll-ups need."""
        etype = _WATCHED.get(event.get("type"))
        if etype is None or task is None:
            return
        pending = self._pending
        if len(pending) >= MAX_PENDING:
            self.dropped += 1
            return
        ts = event.get("timestamp")  # off the wire: any type or value (NaN, inf, 1e300...)
        if type(ts) is float:  # the usual case: one range check (False for NaN)
            if not 0 <= ts < 1e11:
                ts = time.time()
        elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts < 1e11:
            ts = time.time()
        if etype == "task-received" or etype == "task-sent":
            root = task.root_id
            if root and root != task.uuid:  # a member of a chain, group or chord
                pending.append((etype, task.name, ts, root, task.uuid))
            return
        if etype == "task-started":
            start = task.sent or task.received
            extra = task.extra  # the record's rare fields (task.eta), None when none set
            eta = None if extra is None else extra.get("eta")
            if eta is not None:
                eta = _eta(eta)
                if start is not None and eta is not None:
                    start = max(start, eta)
            wait = None if start is None else ts - start
            pending.append((etype, task.name, ts, wait, task.routing_key or ""))
        elif etype == "task-succeeded":
            pending.append((etype, task.name, ts, task.runtime))
        elif etype == "task-failed" or etype == "task-retried":
            # the record's fields, coerced by the state (the event's own may be of any type)
            pending.append((etype, task.name, ts, task.uuid, task.worker,
                            _text(task.exception), _text(task.traceback)))  # fmt: skip
        else:
            pending.append((etype, task.name, ts))

    def flush(self) -> int:
        """Write the queued events to the store now; returns how many were written."""
        items = []
        pending = self._pending
        while pending:
            try:
                items.append(pending.popleft())
            except IndexError:  # pragma: no cover - emptied concurrently
                break
        if not items:
            return 0
        rollups: dict[tuple[str, int], Rollup] = {}
        failures: list[Failure] = []
        resolved: dict[str, float] = {}
        members: list[tuple[str, str, float]] = []

        def roll(key: str, ts: float) -> Rollup:
            k = (key, int(ts // 60 * 60))
            r = rollups.get(k)
            if r is None:
                r = rollups[k] = Rollup()
            return r

        for item in items:
            etype, name, ts = item[0], item[1] or "", item[2]
            if etype in ("task-received", "task-sent"):
                members.append((item[3], item[4], ts))
                continue
            if etype == "task-started":
                wait, queue = item[3], item[4]
                if wait is not None:
                    roll("task:" + name, ts).wait(wait)
                    if queue:
                        roll("queue:" + queue, ts).wait(wait)
                continue
            r = roll("task:" + name, ts)
            r.count(_COUNT[etype])
            if etype == "task-succeeded":
                if item[3] is not None:
                    r.runtime(item[3])
                resolved[name] = max(ts, resolved.get(name, ts))
            elif etype in ("task-failed", "task-retried"):
                uuid, worker, exc, tb = item[3:7]
                gid, etype_, message = fingerprint(name, exc)
                failures.append(Failure(gid, name, etype_, message, exc, tb, uuid, worker, ts,
                                        "failure" if etype == "task-failed" else "retry"))  # fmt: skip
        self.store.write(rollups, failures, resolved, members)
        self._bump(
            *(["analytics"] if rollups else []),
            *(["errors"] if failures or resolved else []),
            *(["canvas"] if members else []),
            announce=True,
        )
        return len(items)

    # -- change notification ---------------------------------------------------------------

    def versions(self) -> dict[str, int]:
        """``{topic: version}`` now; a version grows by one with each write of its topic."""
        with self._changed:
            return dict(self._versions)

    def wait_changes(
        self, seen: Mapping[str, int], topics: tuple[str, ...], timeout: float
    ) -> dict[str, int]:
        """Wait up to ``timeout`` seconds until one of ``topics`` has a version other than
        ``seen`` has; return the current versions of ``topics`` (the caller's next ``seen``).
        Returns at once when one already differs. Raises ``ValueError`` for an unknown topic.
        """
        bad = set(topics) - set(TOPICS)
        if bad:
            raise ValueError(f"unknown insight topic(s) {sorted(bad)}; known: {TOPICS}")

        def moved() -> bool:
            return any(self._versions[t] != seen.get(t) for t in topics)

        with self._changed:
            self._changed.wait_for(moved, timeout)
            return {t: self._versions[t] for t in topics}

    def _bump(self, *topics: str, announce: bool = False) -> None:
        """Move the versions of ``topics``; with ``announce``, also tell the followers (they
        bump theirs, :meth:`_changed_elsewhere`)."""
        if not topics:
            return
        with self._changed:
            for t in topics:
                self._versions[t] += 1
            self._changed.notify_all()
        if announce:
            self.service.announce(topics)

    def _changed_elsewhere(self, topics: list[str]) -> None:
        """Fan-out thread of a follower: the ingester wrote these topics to the shared
        tables (unknown names, from a newer release, are ignored)."""
        self._bump(*[t for t in topics if t in self._versions])

    # -- the thread ------------------------------------------------------------------------

    def backfill(self, before: float, chunk: int = 20_000) -> int:
        """Add the history's tasks finished before ``before`` to the roll-ups and error groups,
        once per store (resumable: progress is kept in ``insight_meta``). Returns the tasks
        added. The history only keeps each task's last state, so retries before the upgrade
        are not counted."""
        store = self.store
        if store.get_meta("backfilled") is not None:
            return 0
        done = 0
        upto = int(store.get_meta("backfill_upto") or 0)
        while not self._stop.is_set():
            rows = store.history_tasks(upto, before, chunk)
            if not rows:
                break
            for r in rows:
                self._pending.extend(_history_items(r))
            self.flush()
            upto = rows[-1]["id"]
            store.set_meta("backfill_upto", str(upto))
            done += len(rows)
        else:
            return done
        store.set_meta("backfilled", repr(before))
        if done:
            log.info("celerymon: added %d tasks of the history to the insight roll-ups", done)
        return done

    def _take_over(self) -> None:
        """This process writes the tables from now on (at start, or it became the
        ingester): go on with the firing alerts and add the history once per store."""
        try:
            self._restore_active()
        except Exception:  # noqa: BLE001
            log.exception("celerymon: reading the firing alerts back failed")
        try:
            self.backfill(self.started_at or time.time())
        except Exception:  # noqa: BLE001 - live roll-ups go on without the past
            log.exception("celerymon: adding the history to the insight roll-ups failed")

    def _run(self) -> None:
        writing = self.writing
        if writing:
            try:
                self.backfill(self.started_at or time.time())
            except Exception:  # noqa: BLE001 - live roll-ups go on without the past
                log.exception("celerymon: adding the history to the insight roll-ups failed")
        next_alerts = time.monotonic() + min(self.settings.alert_interval, 2.0)
        next_prune = time.monotonic() + 30.0
        while not self._stop.wait(FLUSH_INTERVAL):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - keep the thread alive
                log.exception("celerymon: writing insight roll-ups failed")
            if self.writing != writing:
                writing = not writing
                if writing:
                    self._take_over()
            if not writing:  # a follower reads what the ingester writes
                if not self.service.running:
                    break
                continue
            now = time.monotonic()
            if self.settings.alerts and now >= next_alerts:
                next_alerts = now + self.settings.alert_interval
                try:
                    self.evaluate()
                except Exception:  # noqa: BLE001
                    log.exception("celerymon: evaluating alert rules failed")
            if now >= next_prune:
                next_prune = now + PRUNE_INTERVAL
                try:
                    days = self.service.settings.retention_days
                    self.store.prune(time.time() - days * 86400)
                except Exception:  # noqa: BLE001
                    log.exception("celerymon: pruning insight tables failed")
            if not self.service.running:
                break
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            log.exception("celerymon: the last insight write failed")

    # -- alerts ----------------------------------------------------------------------------

    def evaluate(self, now: float | None = None) -> list[dict[str, Any]]:
        """Evaluate every rule now: open, repeat and resolve alerts and send them.

        Returns the notifications sent (alert rows as :func:`.alerts.payload` gets them).
        """
        now = time.time() if now is None else now
        self.flush()
        sent: list[dict[str, Any]] = []
        svc = self.service
        store = self.store
        workers = svc.workers()
        fig = svc.figures()
        last = fig.get("last_event_at")
        silence = None if last is None else max(0.0, now - last)
        queues_cache: list[Any] = []

        def queues() -> Any:
            if not queues_cache:
                try:
                    queues_cache.append(svc.queues())
                except Exception as exc:  # noqa: BLE001 - the broker may be down
                    log.info("celerymon: alert rules cannot read queue lengths: %s", exc)
                    queues_cache.append(None)
            return queues_cache[0]

        seen: set[tuple[str, str]] = set()
        changed_alerts = False
        for rule in self.settings.alerts:
            totals: Mapping[str, Any] = {}
            waits: dict[str, float | None] = {}
            if rule.kind == "failure_rate":
                totals = store.totals(now - rule.window, now, "task:", rule.subject)
            elif rule.kind == "queue_latency":
                for q, tot in store.totals(now - rule.window, now, "queue:", rule.subject).items():
                    waits[q] = percentile(wait_hist(tot), 0.95, tot.get("w_max"))
            holding = conditions(
                rule,
                totals=totals,
                queue_waits=waits,
                queues=queues() if rule.kind == "queue_length" else None,
                workers=workers,
                silence=silence,
            )
            for subject, value in holding.items():
                key = (rule.name, subject)
                seen.add(key)
                a = self._active.get(key)
                message = describe(rule, subject, value)
                if a is None:
                    a = self._active[key] = {"id": None, "since": now, "notified": None}
                if a["id"] is None:
                    if now - a["since"] < rule.for_:
                        continue  # pending
                    a["id"] = store.open_alert(rule.name, rule.kind, subject, value,
                                               rule.threshold, message, now)  # fmt: skip
                    changed_alerts = True
                else:
                    store.update_alert(a["id"], value=value, message=message)
                    changed_alerts = True
                due = a["notified"] is None or (
                    rule.repeat > 0 and now - a["notified"] >= rule.repeat
                )
                if due:
                    sent.append(self._notify(a, now))
            for key in [k for k in self._active if k[0] == rule.name and k not in seen]:
                a = self._active.pop(key)
                if a["id"] is not None:
                    store.update_alert(a["id"], status="resolved", resolved=now)
                    sent.append(self._notify(a, now))
        names = {r.name for r in self.settings.alerts}
        for key in [k for k in self._active if k[0] not in names]:  # rule removed
            a = self._active.pop(key)
            if a["id"] is not None:
                store.update_alert(a["id"], status="resolved", resolved=now)
                changed_alerts = True
        self.last_evaluation = now
        if changed_alerts or sent:
            self._bump("alerts", announce=True)
        return sent

    def _notify(self, active: dict[str, Any], now: float) -> dict[str, Any]:
        rows = [r for r in self.store.alerts(limit=10_000) if r["id"] == active["id"]]
        row = rows[0]
        s = self.settings
        delivery = "not sent: no CELERY_MONITOR_ALERT_WEBHOOK"
        if s.webhook:
            delivery = self._send(s.webhook, payload(row, s.webhook_format, s.monitor_url))
        active["notified"] = now
        self.store.update_alert(active["id"], notified=now,
                                notifications=row["notifications"] + 1, delivery=delivery)  # fmt: skip
        return row

    # -- reads -----------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        """``{"pending", "dropped", "running", "writing", "last_evaluation"}``; ``writing``
        False in a follower (see :attr:`writing`)."""
        t = self._thread
        return {
            "pending": len(self._pending),
            "dropped": self.dropped,
            "running": t is not None and t.is_alive() and self._pid == os.getpid(),
            "writing": self.writing,
            "last_evaluation": self.last_evaluation,
        }


def _history_items(r: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """The queued items :meth:`Insight._on_event` would have made for a stored task."""
    name, ts = r["name"] or "", r["timestamp"]
    out: list[tuple[Any, ...]] = []
    if r["root_id"] and r["root_id"] != r["uuid"]:
        out.append(("task-received", name, r["received"] or ts, r["root_id"], r["uuid"]))
    if r["started"] is not None:
        start = r["sent"] or r["received"]
        eta = _eta(r["eta"])
        if start is not None and eta is not None:
            start = max(start, eta)
        wait = None if start is None else r["started"] - start
        out.append(("task-started", name, r["started"], wait, r["routing_key"] or ""))
    state = r["state"]
    if state == "SUCCESS":
        out.append(("task-succeeded", name, ts, r["runtime"]))
    elif state in ("FAILURE", "RETRY"):
        out.append(("task-failed" if state == "FAILURE" else "task-retried", name, ts, r["uuid"],
                    r["worker"] or "", r["exception"] or "", r["traceback"] or ""))  # fmt: skip
    elif state == "REVOKED":
        out.append(("task-revoked", name, ts))
    return out


def wait_hist(tot: Mapping[str, Any]) -> list[int]:
    """The queue-wait histogram of a :meth:`InsightStore.totals` item."""
    from .rollups import BUCKETS

    return [int(tot.get(f"w{i}") or 0) for i in range(BUCKETS)]


def runtime_hist(tot: Mapping[str, Any]) -> list[int]:
    """The runtime histogram of a :meth:`InsightStore.totals` item."""
    from .rollups import BUCKETS

    return [int(tot.get(f"rt{i}") or 0) for i in range(BUCKETS)]


def _eta(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        from datetime import datetime

        try:
            d = datetime.fromisoformat(value)
        except ValueError:
            return None
        if d.tzinfo is None:
            from datetime import timezone

            d = d.replace(tzinfo=timezone.utc)
        return d.timestamp()
    return None


def _text(value: Any) -> str:
    """``value`` when it is text, else ``""`` (a record field the state could not coerce)."""
    return value if isinstance(value, str) else ""
