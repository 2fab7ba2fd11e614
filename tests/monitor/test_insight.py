"""The insight core without a broker: error fingerprints, roll-ups, percentiles, alert rules,
the beat schedule in words."""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid as uuidlib

import pytest
from celery import Celery
from celery.schedules import crontab
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_celerymon.errors import ConfigurationError
from flask_celerymon.monitor.insight import (
    Insight,
    InsightSettings,
    InsightStore,
    analytics,
    beat,
    parse_rules,
)
from flask_celerymon.monitor.insight.error_groups import (
    fingerprint,
    normalise_message,
    split_exception,
)
from flask_celerymon.monitor.insight.rollups import BUCKETS, bucket_of, percentile, spans
from flask_celerymon.monitor.service import MonitorService
from flask_celerymon.monitor.settings import MonitorSettings

# -- error fingerprints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exception", "etype", "message"),
    [
        ("ValueError('boom 42')", "ValueError", "boom <n>"),
        ("ValueError(\"order 1234 of 'alice' failed\")", "ValueError", "order <n> of '<str>' failed"),
        ("KeyError('user')", "KeyError", "user"),
        ("OSError(2, 'No such file')", "OSError", "<n>, '<str>'"),
        ("Exception()", "Exception", ""),
        ("requests.exceptions.HTTPError('503 for url http://x/a/0x1f')",
         "requests.exceptions.HTTPError", "<n> for url http://x/a/<hex>"),
        ("RuntimeError: worker3 lost job 0a1b2c3d-0000-4000-8000-0123456789ab",
         "RuntimeError", "worker<n> lost job <uuid>"),
        ("not a repr at all", "", "not a repr at all"),
        ("ValueError(unbalanced", "", "ValueError(unbalanced"),
    ],
)  # fmt: skip
def test_fingerprint_reads_the_type_and_folds_the_message(exception, etype, message):
    _, t, m = fingerprint("app.task", exception)
    assert (t, m) == (etype, message)


def test_split_exception_never_raises_on_odd_reprs():
    for text in (None, "", "X(" + "(" * 200 + ")", "X('a' 'b')", "X(1, [2, {3: 4}])", "X(*)"):
        etype, message = split_exception(text)
        assert isinstance(etype, str) and isinstance(message, str)


_words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=12).filter(
    lambda s: s.strip() == s and s
)
#: kinds of variable values; two messages share a group when their values are of one kind
_KINDS = (
    st.integers(-(10**12), 10**12).map(str),
    st.floats(0, 1e6, allow_nan=False).map(lambda f: f"{f:.3f}"),
    st.uuids().map(str),
    st.integers(0, 2**63).map(lambda n: f"0x{n:x}"),
    st.text(alphabet="abcdefghij-_ 0123", max_size=10).map(lambda s: f"'{s}'"),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_words, st.integers(0, len(_KINDS) - 1)), min_size=1, max_size=4),
    st.data(),
)
def test_messages_that_differ_only_in_variable_parts_share_a_group(slots, data):
    """The kind: whatever the numbers, ids, hex and quoted values, one message template is
    one group, and its normalised message never shows the values."""
    parts = [(w, data.draw(_KINDS[k])) for w, k in slots]
    other = [(w, data.draw(_KINDS[k])) for w, k in slots]
    first = " ".join(f"{w} {v}" for w, v in parts)
    second = " ".join(f"{w} {v}" for w, v in other)
    a = fingerprint("t", f"ValueError({first!r})")
    b = fingerprint("t", f"ValueError({second!r})")
    assert a == b
    for _, v in parts:
        if len(v) > 3 and v not in ("'<n>'",):
            assert v not in a[2]


def test_different_tasks_types_or_templates_are_different_groups():
    base = fingerprint("a.t", "ValueError('order 1 failed')")[0]
    assert fingerprint("b.t", "ValueError('order 1 failed')")[0] != base
    assert fingerprint("a.t", "KeyError('order 1 failed')")[0] != base
    assert fingerprint("a.t", "ValueError('invoice 1 failed')")[0] != base
    assert normalise_message("x" * 1000) == "x" * 300


# -- histograms and roll-ups -------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0002, 5000, allow_nan=False), min_size=1, max_size=300))
def test_histogram_percentiles_are_within_20_percent_of_the_exact_ones(values):
    hist = [0] * BUCKETS
    for v in values:
        hist[bucket_of(v)] += 1
    ordered = sorted(values)
    for p in (0.5, 0.95, 0.99):
        exact = ordered[max(0, -(-int(p * len(ordered) * 1000) // 1000) - 1)]
        got = percentile(hist, p, max(values))
        assert got is not None
        assert exact / 1.2 <= got <= exact * 1.2, (p, exact, got)


def _events(n: int, start: float, span: float, seed: int = 1) -> list[dict]:
    rnd = random.Random(seed)
    evs = []
    for i in range(n):
        ts = start + rnd.random() * span
        u = str(uuidlib.UUID(int=rnd.getrandbits(128)))
        name = f"app.t{i % 3}"
        evs.append({"type": "task-received", "uuid": u, "name": name, "hostname": "w@h",
                    "timestamp": ts - 0.5, "routing_key": "celery"})  # fmt: skip
        evs.append({"type": "task-started", "uuid": u, "hostname": "w@h", "timestamp": ts - 0.2})
        kind = rnd.choice(("task-succeeded", "task-succeeded", "task-failed", "task-retried",
                           "task-revoked"))  # fmt: skip
        extra = {"runtime": rnd.random()} if kind == "task-succeeded" else {}
        if kind in ("task-failed", "task-retried"):
            extra = {"exception": f"ValueError('boom {i}')", "traceback": "Traceback ..."}
        evs.append({"type": kind, "uuid": u, "hostname": "w@h", "timestamp": ts, **extra})
    return evs


@pytest.fixture
def insight(tmp_path):
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=str(tmp_path / "m.db")),
                         autostart=False)  # fmt: skip
    ins = Insight(svc)
    svc.add_listener(ins._on_event)
    yield svc, ins
    ins.store.close()


def test_rollups_over_any_window_match_a_count_of_the_raw_events(insight):
    """Differential: hours in the middle and minutes at the edges add up exactly."""
    svc, ins = insight
    start = 1_700_000_000.0
    evs = _events(3000, start, 3 * 86400)
    svc.apply_events(evs)
    ins.flush()
    rnd = random.Random(7)
    finals = {"task-succeeded": "succeeded", "task-failed": "failed",
              "task-retried": "retried", "task-revoked": "revoked"}  # fmt: skip
    names = {e["uuid"]: e["name"] for e in evs if "name" in e}
    for _ in range(40):
        lo = start + rnd.random() * 3 * 86400
        hi = lo + rnd.choice((60, 900, 3600, 7200, 86400, 2 * 86400)) * rnd.random() + 60
        lo_m, hi_m = lo // 60 * 60, -(-hi // 60) * 60
        expected: dict[str, dict[str, int]] = {}
        for e in evs:
            if e["type"] in finals and lo_m <= e["timestamp"] < hi_m:
                d = expected.setdefault(names[e["uuid"]], dict.fromkeys(finals.values(), 0))
                d[finals[e["type"]]] += 1
        got = ins.store.totals(lo, hi)
        assert {k: {c: int(v[c]) for c in finals.values()} for k, v in got.items()} == expected


def test_analytics_compare_a_window_with_the_one_before(insight):
    svc, ins = insight
    now = time.time()
    evs = []
    for i in range(40):  # previous hour: fast; this hour: 3x slower, more failures
        for ts, runtime, ok in ((now - 5400 + i, 0.1, True), (now - 1800 + i, 0.3, i % 4 != 0)):
            u = str(uuidlib.uuid4())
            evs += [{"type": "task-received", "uuid": u, "name": "app.slow", "hostname": "w",
                     "timestamp": ts - 1},
                    {"type": "task-succeeded" if ok else "task-failed", "uuid": u, "hostname": "w",
                     "timestamp": ts, "runtime": runtime, "exception": "ValueError('x')"}]  # fmt: skip
    svc.apply_events(evs)
    ins.flush()
    data = analytics.task_analytics(ins.store, "1h", now)
    (t,) = data["tasks"]
    assert t["current"]["failed"] == 10 and t["previous"]["failed"] == 0
    assert t["current"]["failure_rate"] == pytest.approx(0.25)
    assert t["change"]["runtime_p95"] == pytest.approx(3.0, rel=0.45)
    assert t["change"]["failure_rate"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="window must be one of 15m, 1h"):
        analytics.task_analytics(ins.store, "2h", now)


def test_a_success_after_the_last_failure_resolves_the_group(insight):
    svc, ins = insight
    now = time.time()
    svc.apply_events([
        {"type": "task-received", "uuid": "a", "name": "app.t", "hostname": "w", "timestamp": now - 9},
        {"type": "task-failed", "uuid": "a", "hostname": "w", "timestamp": now - 8,
         "exception": "ValueError('id 1')"},
    ])  # fmt: skip
    ins.flush()
    (g,) = ins.store.error_groups()
    assert g["resolved_at"] is None and g["failures"] == 1 and g["workers"] == {"w": 1}
    svc.apply_events([
        {"type": "task-received", "uuid": "b", "name": "app.t", "hostname": "w", "timestamp": now - 7},
        {"type": "task-succeeded", "uuid": "b", "hostname": "w", "timestamp": now - 6, "runtime": 1},
    ])  # fmt: skip
    ins.flush()
    assert ins.store.error_groups()[0]["resolved_at"] == pytest.approx(now - 6)
    svc.apply_events([
        {"type": "task-received", "uuid": "c", "name": "app.t", "hostname": "w2", "timestamp": now - 5},
        {"type": "task-failed", "uuid": "c", "hostname": "w2", "timestamp": now - 4,
         "exception": "ValueError('id 2')"},
    ])  # fmt: skip
    ins.flush()
    (g,) = ins.store.error_groups()
    assert g["resolved_at"] is None and g["failures"] == 2 and g["workers"] == {"w": 1, "w2": 1}
    assert [t["uuid"] for t in ins.store.error_tasks(g["id"])] == ["c", "a"]


def test_insight_tables_survive_a_restart(tmp_path):
    path = str(tmp_path / "m.db")
    store = InsightStore(path)
    from flask_celerymon.monitor.insight.rollups import Rollup

    r = Rollup()
    r.count("failed")
    store.write({("task:x", 1_700_000_040): r})
    store.close()
    again = InsightStore(path)
    assert again.totals(1_700_000_000, 1_700_000_100)["x"]["failed"] == 1
    again.close()


# -- alert rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("x", "CELERY_MONITOR_ALERTS must be a list of alert rules"),
        ([1], r"CELERY_MONITOR_ALERTS\[0\] must be a dict"),
        ([{"kind": "cpu"}], r"CELERY_MONITOR_ALERTS\[0\]: 'kind' must be one of failure_rate"),
        ([{"kind": "queue_length"}], "a queue_length rule needs a 'threshold'"),
        ([{"kind": "failure_rate", "threshold": 5}], "a failure_rate 'threshold' is a fraction"),
        ([{"kind": "no_events", "threshold": 1, "window": 1}], "'window' must be a number >= 60"),
        ([{"kind": "worker_offline", "queue": "q"}], "a worker_offline rule takes no 'queue'"),
        ([{"kind": "no_events", "threshold": 1, "colour": 1}], "unknown key"),
        ([{"kind": "worker_offline"}, {"kind": "worker_offline"}], "rule names must be unique"),
    ],
)
def test_bad_alert_rules_are_refused_with_the_rule_and_key(rules, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_rules(rules)


def test_a_bad_alert_rule_stops_init_app():
    from tests.apps import basic

    with pytest.raises(ConfigurationError, match=r"CELERY_MONITOR_ALERTS\[0\]: 'kind'"):
        basic.create_app(CELERY_MONITOR_ALERTS=[{"kind": "nope"}])
    with pytest.raises(ConfigurationError, match="CELERY_MONITOR_ALERT_WEBHOOK must be None or"):
        basic.create_app(CELERY_MONITOR_ALERT_WEBHOOK="ftp://x")


def test_alerts_fire_once_repeat_after_the_quiet_period_and_resolve(tmp_path):
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=False), autostart=False)
    sent: list[tuple[str, dict]] = []
    rules = parse_rules([{"kind": "no_events", "threshold": 30, "repeat": 100, "name": "quiet"}])
    ins = Insight(svc, InsightSettings(alerts=rules, webhook="http://hook", webhook_format="slack"),
                  send=lambda url, body: sent.append((url, body)) or "sent (200)")  # fmt: skip
    svc.apply_events([{"type": "worker-online", "hostname": "w", "timestamp": time.time()}])
    t0 = time.time()
    assert ins.evaluate(t0 + 10) == []  # 10 s of silence: fine
    assert [a["status"] for a in ins.evaluate(t0 + 40)] == ["firing"]
    assert ins.evaluate(t0 + 60) == []  # still firing: not sent again yet
    assert [a["status"] for a in ins.evaluate(t0 + 141)] == ["firing"]  # repeat
    (firing,) = ins.store.alerts(status="firing")
    assert firing["notifications"] == 2 and firing["delivery"] == "sent (200)"
    svc.apply_events([{"type": "worker-heartbeat", "hostname": "w", "timestamp": time.time()}])
    resolved = ins.evaluate(time.time() + 1)
    assert [a["rule"] for a in resolved] == ["quiet"]
    assert ins.store.alerts(status="firing") == []
    assert [b["text"].split("]")[0] for _, b in sent] == [":rotating_light: [FIRING"] * 2 + [
        ":white_check_mark: [RESOLVED"
    ]
    assert {u for u, _ in sent} == {"http://hook"}


def test_each_write_moves_the_versions_of_the_topics_it_changed(insight):
    """What a live page waits for: a failure moves ``errors`` and ``analytics``, a canvas
    member ``canvas``; an empty flush moves nothing; waiting returns at once once moved."""
    svc, ins = insight
    now = time.time()
    v0 = ins.versions()
    assert set(v0) == {"analytics", "errors", "canvas", "alerts"}
    assert ins.flush() == 0 and ins.versions() == v0
    t0 = time.monotonic()
    assert ins.wait_changes(v0, ("errors",), timeout=0.2) == {"errors": v0["errors"]}
    assert time.monotonic() - t0 >= 0.2  # nothing moved: it waited the whole timeout
    svc.apply_events([
        {"type": "task-received", "uuid": "a", "name": "app.t", "hostname": "w", "timestamp": now},
        {"type": "task-failed", "uuid": "a", "hostname": "w", "timestamp": now,
         "exception": "ValueError('id 1')"},
        {"type": "task-received", "uuid": "b", "name": "app.t", "hostname": "w", "timestamp": now,
         "root_id": "a"},
    ])  # fmt: skip
    ins.flush()
    v1 = ins.versions()
    assert {t: v1[t] - v0[t] for t in v0} == {"analytics": 1, "errors": 1, "canvas": 1,
                                              "alerts": 0}  # fmt: skip
    t0 = time.monotonic()
    assert ins.wait_changes(v0, ("errors", "alerts"), timeout=5) == {
        "errors": v1["errors"], "alerts": v1["alerts"]
    }  # fmt: skip
    assert time.monotonic() - t0 < 1
    with pytest.raises(ValueError, match=r"unknown insight topic\(s\) \['nope'\]"):
        ins.wait_changes(v0, ("nope",), timeout=0)


def test_an_alert_that_fires_or_resolves_moves_the_alerts_version(tmp_path):
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=False), autostart=False)
    rules = parse_rules([{"kind": "no_events", "threshold": 30, "name": "quiet"}])
    ins = Insight(svc, InsightSettings(alerts=rules), send=lambda url, body: "sent (200)")
    svc.apply_events([{"type": "worker-online", "hostname": "w", "timestamp": time.time()}])
    t0 = time.time()
    v = ins.versions()["alerts"]
    assert ins.evaluate(t0 + 10) == [] and ins.versions()["alerts"] == v  # nothing to show
    ins.evaluate(t0 + 40)
    assert ins.versions()["alerts"] == v + 1  # fired
    svc.apply_events([{"type": "worker-heartbeat", "hostname": "w", "timestamp": time.time()}])
    ins.evaluate(time.time() + 1)
    assert ins.versions()["alerts"] == v + 2  # resolved


# -- beat --------------------------------------------------------------------------------------


def test_schedules_in_words_and_next_runs():
    app = Celery()
    assert beat.describe(dt.timedelta(seconds=30)) == "every 30 seconds"
    assert beat.describe(3600.0) == "every 1 hour"
    assert beat.describe(crontab(minute=0, hour=0)) == "At 12:00 AM"
    assert beat.describe(crontab(minute="*/5", day_of_week="mon-fri")).startswith("Every 5 minutes")
    now = time.time()
    nxt = beat.next_run(app, dt.timedelta(seconds=30), now - 10)
    assert nxt == pytest.approx(now + 20, abs=1)
    midnight = beat.next_run(app, crontab(minute=0, hour=0), now)
    assert 0 < midnight - now <= 86400 and midnight % 60 == pytest.approx(0, abs=1)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 90 * 86400), st.integers(0, 70 * 86400))
def test_rollup_spans_tile_the_window_exactly(start, length):
    """Days, hours and minutes pieces are aligned, disjoint and cover the rounded window."""
    lo, hi = 1_700_000_000 + start, 1_700_000_000 + start + length
    pieces = spans(lo, hi)
    period = {"insight_minutes": 60, "insight_hours": 3600, "insight_days": 86400}
    covered = []
    for table, a, b in pieces:
        assert a < b and a % period[table] == 0 and b % period[table] == 0
        covered.append((a, b))
    covered.sort()
    want_lo, want_hi = lo // 60 * 60, -(-hi // 60) * 60
    if want_lo == want_hi:
        assert covered == []
        return
    assert covered[0][0] == want_lo and covered[-1][1] == want_hi
    assert all(x[1] == y[0] for x, y in zip(covered, covered[1:]))
    assert len([t for t, _, _ in pieces if t == "insight_minutes"]) <= 2


def test_each_alert_kind_holds_for_the_right_subjects():
    from flask_celerymon.monitor.insight.alerts import conditions

    def hold(rule: dict, **data) -> dict:
        base = {"totals": {}, "queue_waits": {}, "queues": None, "workers": [], "silence": None}
        return conditions(parse_rules([rule])[0], **{**base, **data})

    totals = {"a": {"succeeded": 8, "failed": 2}, "b": {"succeeded": 1, "failed": 4},
              "c": {"succeeded": 50, "failed": 1}}  # fmt: skip
    assert hold({"kind": "failure_rate", "threshold": 0.1}, totals=totals) == {"a": 0.2}
    assert hold({"kind": "failure_rate", "threshold": 0.1, "min_tasks": 5}, totals=totals) == {
        "a": 0.2, "b": 0.8}  # fmt: skip
    assert hold({"kind": "failure_rate", "threshold": 0.1, "task": "c"}, totals=totals) == {}
    queues = [{"name": "celery", "messages": 150}, {"name": "high", "messages": 5},
              {"name": "odd", "messages": None}]  # fmt: skip
    assert hold({"kind": "queue_length", "threshold": 100}, queues=queues) == {"celery": 150}
    assert hold({"kind": "queue_length", "threshold": 1, "queue": "high"}, queues=queues) == {
        "high": 5}  # fmt: skip
    assert hold({"kind": "queue_length", "threshold": 1}, queues=None) == {}
    waits = {"celery": 42.0, "high": 0.5, "idle": None}
    assert hold({"kind": "queue_latency", "threshold": 30}, queue_waits=waits) == {"celery": 42.0}
    workers = [{"hostname": "w1", "status": True}, {"hostname": "w2", "status": False}]
    assert hold({"kind": "worker_offline"}, workers=workers) == {"w2": None}
    assert hold({"kind": "worker_offline", "worker": "w1"}, workers=workers) == {}
    assert hold({"kind": "no_events", "threshold": 60}, silence=61) == {"events": 61}
    assert hold({"kind": "no_events", "threshold": 60}, silence=None) == {}


def test_an_alert_waits_its_for_period_before_firing(tmp_path):
    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=False), autostart=False)
    rules = parse_rules([{"kind": "worker_offline", "for": 60}])
    ins = Insight(svc, InsightSettings(alerts=rules))
    now = time.time()
    svc.apply_events(
        [
            {"type": "worker-online", "hostname": "w", "timestamp": now - 1, "freq": 2.0},
            {"type": "worker-offline", "hostname": "w", "timestamp": now},
        ]
    )  # a worker never seen before its offline event is not registered (as in Celery)
    assert ins.evaluate(now) == [] and ins.store.alerts() == []  # pending
    assert ins.evaluate(now + 30) == []
    (fired,) = ins.evaluate(now + 61)
    assert (fired["subject"], fired["status"]) == ("w", "firing")
    assert ins.store.alerts()[0]["delivery"] == "not sent: no CELERY_MONITOR_ALERT_WEBHOOK"


def test_the_webhook_post_reports_success_http_errors_and_unreachable_hosts():
    import json as _json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from flask_celerymon.monitor.insight.alerts import payload, post_json

    got = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(_json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(500 if self.path == "/broken" else 204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        row = {"status": "firing", "rule": "r", "kind": "no_events", "subject": "events",
               "value": 61.0, "threshold": 60.0, "message": "no event for 61 s",
               "started": 1.0, "resolved": None}  # fmt: skip
        body = payload(row, "slack", "http://mon.example/monitor")
        assert post_json(f"http://127.0.0.1:{port}/hook", body) == "sent (204)"
        assert got == [{"text": ":rotating_light: [FIRING] r: no event for 61 s "
                                "<http://mon.example/monitor|open the monitor>"}]  # fmt: skip
        assert post_json(f"http://127.0.0.1:{port}/broken", {}) == "failed: HTTP 500"
    finally:
        server.shutdown()
        server.server_close()
    assert post_json(f"http://127.0.0.1:{port}/gone", {}, timeout=2).startswith("failed: ")
    assert payload(row, "json")["status"] == "firing"


def test_the_history_from_before_the_upgrade_is_rolled_up_once(tmp_path):
    """Differential: roll-ups rebuilt from the history store equal those made live."""
    evs = _events(1500, time.time() - 5 * 86400, 5 * 86400, seed=3)
    live_svc = MonitorService(Celery(broker="memory://"),
                              MonitorSettings(db=str(tmp_path / "live.db")), autostart=False)  # fmt: skip
    live = Insight(live_svc)
    live_svc.add_listener(live._on_event)
    live_svc.apply_events(evs)
    live.flush()

    path = str(tmp_path / "old.db")
    old = MonitorService(Celery(broker="memory://"),
                         MonitorSettings(db=path, enable_events=False), autostart=False)  # fmt: skip
    old.start()  # a monitor of an earlier version: history only
    old.apply_events(evs)
    old.flush()
    old.stop()

    svc = MonitorService(Celery(broker="memory://"), MonitorSettings(db=path), autostart=False)
    ins = Insight(svc)
    assert ins.backfill(time.time(), chunk=400) == 1500
    assert ins.backfill(time.time()) == 0  # once per store
    since, until = time.time() - 6 * 86400, time.time() + 60
    want, got = live.store.totals(since, until), ins.store.totals(since, until)
    assert got.keys() == want.keys()
    for name in want:
        for col in ("succeeded", "failed", "retried", "revoked", "rt_n", "w_n", "rt3", "w10"):
            assert got[name][col] == want[name][col], (name, col)
    groups = {g["id"]: g["failures"] + g["retries"] for g in ins.store.error_groups()}
    assert groups == {g["id"]: g["failures"] + g["retries"] for g in live.store.error_groups()}
    live.store.close()
    ins.store.close()


def test_failures_written_together_give_the_groups_written_one_by_one():
    """The store records a write's failures per group in a few statements: the groups
    (counts, first/last seen, samples, workers, resolution) and their occurrences are those
    of the same failures written one per write, in order."""
    from flask_celerymon.monitor.insight.rollups import Failure

    rnd = random.Random(11)
    failures = [
        Failure(
            group=f"g{rnd.randrange(3)}",
            name="app.job",
            exc_type="ValueError",
            message="bad <n>",
            exception=f"ValueError('bad {i}')",
            traceback=rnd.choice(["", f"Traceback {i}"]),
            uuid=f"u{rnd.randrange(40)}",
            worker=rnd.choice(["", "w1@h", "w2@h"]),
            ts=1_700_000_000.0 + rnd.random() * 600,
            kind=rnd.choice(["failure", "failure", "retry"]),
        )  # fmt: skip
        for i in range(120)
    ]
    together, one_by_one = InsightStore(None), InsightStore(None)
    try:
        for n in (0, 40, 80):  # groups exist already for the later writes
            together.write({}, failures[n : n + 40], resolved={"app.job": failures[n].ts})
            for f in failures[n : n + 40]:
                one_by_one.write({}, [f])
            one_by_one.write({}, [], resolved={"app.job": failures[n].ts})
        assert together.error_groups() == one_by_one.error_groups()
        for g in ("g0", "g1", "g2"):
            assert together.error_tasks(g) == one_by_one.error_tasks(g)
        ids = ["g0", "g1", "g2"]
        assert together.error_counts(ids, 1_700_000_000.0, 1_700_000_600.0, 60) == (
            one_by_one.error_counts(ids, 1_700_000_000.0, 1_700_000_600.0, 60)
        )
    finally:
        together.close()
        one_by_one.close()
