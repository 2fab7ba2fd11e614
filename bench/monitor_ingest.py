"""End-to-end monitor benchmark: our service against Flower 2.2 on the same floods, same run.

    python bench/monitor_ingest.py [--tasks 100000] [--flower-python /tmp/flower-venv/bin/python]

Each monitor runs alone in its own process pinned to CPU 0; redis-server (a private one, on a
free port, default pub/sub buffer limits) and the flood publisher share CPU 1. For each:

1. **burst**: ``--tasks`` tasks (received/started/succeeded-or-failed + heartbeats) published at
   ``--burst-rate`` events/s; then: events applied vs published (loss), disconnects, lag,
   RSS growth per task held.
2. **queries** at that size: list (limit 100), filter (state=FAILURE), search (a substring) —
   ours through ``MonitorService.query_tasks``, Flower through ``/api/tasks`` over HTTP.
3. **max-rate burst**: another ``--tasks`` tasks published as fast as Redis takes them, with
   Redis's default pub/sub output limit (32 MB): who loses events?
4. **throughput**: the same with the pub/sub limit lifted (``client-output-buffer-limit
   pubsub 0 0 0``) so nobody is disconnected; ingest rate = events applied / seconds until
   the last one was applied.
5. **restart**: a new process on the same history (ours: the SQLite store; Flower:
   ``--persistent`` shelve saved at shutdown); seconds from spawning the process to the first
   answer of a task listing.

Flower's figures come from its ``/metrics`` (``flower_events_total`` counts task events) and
``/api/tasks``. Flower is installed in a separate venv (``--flower-python``; create it with
``python -m venv /tmp/flower-venv && /tmp/flower-venv/bin/pip install flower "celery[redis]"``).
Prints JSON lines, then a table of ours vs Flower with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import flood  # noqa: E402
import redis  # noqa: E402

QUERIES = [
    ("list limit=100", {"limit": 100}, "limit=100"),
    ("filter state=FAILURE", {"state": "FAILURE", "limit": 100}, "limit=100&state=FAILURE"),
    ("search customer-12", {"search": "customer-12", "limit": 100}, "limit=100&search=customer-12"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        pass


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]


# -- our service in a child process ---------------------------------------------------------


def serve_ours(broker: str, db: str, max_tasks: int) -> None:
    """Child mode: run the service; answer JSON commands on stdin with JSON lines on stdout."""
    pin(0)
    from celery import Celery

    from flask_celerymon.monitor import MonitorService, MonitorSettings

    t0 = time.perf_counter()
    app = Celery("bench", broker=broker)
    svc = MonitorService(app, MonitorSettings(db=db, max_tasks=max_tasks, enable_events=False))
    svc.start()
    first = svc.query_tasks(limit=100)
    first_answer = time.perf_counter() - t0
    svc.wait_connected(10)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "first_answer_s": first_answer,
                          "stored": first.total}) + "\n")  # fmt: skip
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "figures":
            reply: Any = svc.figures()
        elif cmd["cmd"] == "query":
            times = []
            total = 0
            for _ in range(cmd["repeat"]):
                t = time.perf_counter()
                total = svc.query_tasks(**cmd["kw"]).total
                times.append(time.perf_counter() - t)
            reply = {"total": total, "times": times}
        elif cmd["cmd"] == "stop":
            svc.stop()
            reply = {"stopped": True}
        else:
            reply = {"error": f"unknown command {cmd['cmd']!r}"}
        out.write(json.dumps(reply, default=str) + "\n")
        out.flush()
        if cmd["cmd"] == "stop":
            return


class Ours:
    name = "ours"

    def __init__(self, broker: str, db: str, max_tasks: int) -> None:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-ours", "--broker", broker, "--db", db,
             "--max-tasks", str(max_tasks)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(HERE),
        )  # fmt: skip
        self.hello = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.first_answer_s = time.perf_counter() - t0

    def ask(self, **cmd: Any) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def applied(self) -> int:
        return self.ask(cmd="figures")["events_applied"]

    def figures(self) -> dict[str, Any]:
        return self.ask(cmd="figures")

    def query(self, kw: dict[str, Any], _qs: str, repeat: int) -> tuple[int, list[float]]:
        r = self.ask(cmd="query", kw=kw, repeat=repeat)
        return r["total"], r["times"]

    def stop(self) -> None:
        try:
            self.ask(cmd="stop")
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


class Flower:
    name = "flower"

    def __init__(self, python: str, broker: str, max_tasks: int, logfile: str, db: str) -> None:
        self.port = free_port()
        t0 = time.perf_counter()
        celery = os.path.join(os.path.dirname(python), "celery")
        self._log = open(logfile, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "FLOWER"))}
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", celery, "--broker", broker, "flower",
             f"--port={self.port}", "--address=127.0.0.1", f"--max_tasks={max_tasks}",
             "--persistent=True", f"--db={db}"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                self.get("/api/tasks?limit=100")
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("flower did not start")
        self.first_answer_s = time.perf_counter() - t0
        time.sleep(2)  # let its event consumer subscribe

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            return r.read()

    def _events(self, type_: str | None = None) -> int:
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith("flower_events_total{") and (
                type_ is None or f'type="{type_}"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def applied(self) -> int:
        return self._events()

    def figures(self) -> dict[str, Any]:
        # tasks held = tasks received (the floods stay under max_tasks)
        return {"tasks": self._events("task-received")}

    def query(self, _kw: dict[str, Any], qs: str, repeat: int) -> tuple[int, list[float]]:
        times = []
        n = 0
        for _ in range(repeat):
            t = time.perf_counter()
            body = self.get(f"/api/tasks?{qs}")
            times.append(time.perf_counter() - t)
            n = len(json.loads(body))
        return n, times

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def wait_settled(mon: Any, expected: int, t0: float, quiet: float = 3.0) -> tuple[int, float]:
    """Poll until ``expected`` events are applied or the count stops moving for ``quiet`` s.

    Returns (applied, seconds from t0 to the last change).
    """
    last = -1
    last_change = time.perf_counter()
    while True:
        n = mon.applied()
        now = time.perf_counter()
        if n != last:
            last, last_change = n, now
        if n >= expected or now - last_change > quiet:
            return n, last_change - t0
        time.sleep(0.05)


def task_events(flood_result: dict[str, Any], n_workers: int) -> int:
    """Task events in a flood (Flower's flower_events_total counts only those)."""
    return flood_result["tasks"] * 3


def run_one(mon: Any, broker: str, args: argparse.Namespace, out: dict[str, Any]) -> None:
    name = mon.name
    count_all = name == "ours"
    base_rss = rss(mon.proc.pid)
    # 1. burst at a fixed rate
    t0 = time.perf_counter()
    pub = flood.flood(broker, args.tasks, args.burst_rate, seed=11)
    expected = pub["events"] if count_all else task_events(pub, 4)
    applied, _ = wait_settled(mon, expected, t0)
    fig = mon.figures()
    grown = rss(mon.proc.pid) - base_rss
    held = fig.get("tasks") or args.tasks
    res = {"published": expected, "applied": applied, "lost": expected - applied,
           "lost_pct": round(100 * (expected - applied) / expected, 2),
           "publish_rate": pub["events_per_s"], "tasks_held": held,
           "rss_per_task_bytes": round(grown / held),
           "disconnects": fig.get("disconnects"), "lag_max_s": fig.get("lag_max")}  # fmt: skip
    out[f"{name}.burst"] = res
    print(json.dumps({name: "burst", **res}), flush=True)
    # 2. queries with the burst's tasks held
    for label, kw, qs in QUERIES:
        n, times = mon.query(kw, qs, args.repeat)
        q = {"query": label, "rows": n, "p50_ms": round(statistics.median(times) * 1000, 1),
             "p95_ms": round(pct(times, 0.95) * 1000, 1)}  # fmt: skip
        out[f"{name}.query.{label}"] = q
        print(json.dumps({name: "query", **q}), flush=True)
    # 3. max rate
    msgs = flood.prebuild(args.tasks, seed=12)
    before = mon.applied()
    t0 = time.perf_counter()
    pub = flood.flood(broker, args.tasks, 0, messages=msgs)
    expected = pub["events"] if count_all else task_events(pub, 4)
    applied, secs = wait_settled(mon, before + expected, t0)
    got = applied - before
    fig = mon.figures()
    res = {"published": expected, "applied": got, "lost": expected - got,
           "publish_rate": pub["events_per_s"], "seconds": round(secs, 2),
           "ingest_events_per_s": round(got / secs), "disconnects": fig.get("disconnects"),
           "lag_max_s": fig.get("lag_max")}  # fmt: skip
    res["lost_pct"] = round(100 * (expected - got) / expected, 2)
    out[f"{name}.max"] = res
    print(json.dumps({name: "max-rate burst", **res}), flush=True)
    # 4. throughput with the pub/sub output limit lifted
    client = redis.Redis.from_url(broker)
    old = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    client.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    try:
        time.sleep(1.0)
        msgs = flood.prebuild(args.tasks, seed=13)
        before = mon.applied()
        t0 = time.perf_counter()
        pub = flood.flood(broker, args.tasks, 0, messages=msgs)
        expected = pub["events"] if count_all else task_events(pub, 4)
        applied, secs = wait_settled(mon, before + expected, t0, quiet=10.0)
    finally:
        client.config_set("client-output-buffer-limit", old)
    got = applied - before
    fig = mon.figures()
    res = {"published": expected, "applied": got, "seconds": round(secs, 2),
           "ingest_events_per_s": round(got / secs), "lag_max_s": fig.get("lag_max"),
           "store_flush_s": fig.get("flush_seconds"), "store_index_s": fig.get("index_seconds"),
           "store_pending": fig.get("store_pending")}  # fmt: skip
    out[f"{name}.throughput"] = res
    print(json.dumps({name: "throughput", **res}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--burst-rate", type=float, default=9000)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--flower-python", default="/tmp/flower-venv/bin/python")
    p.add_argument("--no-flower", action="store_true")
    p.add_argument("--serve-ours", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--broker", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--max-tasks", type=int, default=100_000, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_ours:
        serve_ours(a.broker, a.db, a.max_tasks)
        return

    pin(1)
    work = tempfile.mkdtemp(prefix="celerymon-bench-")
    port = free_port()
    redis_proc = subprocess.Popen(
        ["taskset", "-c", "1", shutil.which("redis-server") or "redis-server", "--port",
         str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.5)
    out: dict[str, Any] = {}
    try:
        broker = f"redis://127.0.0.1:{port}/0"
        db = os.path.join(work, "celerymon.sqlite3")
        ours = Ours(broker, db, 100_000)
        try:
            run_one(ours, broker, a, out)
        finally:
            ours.stop()
        again = Ours(broker, db, 100_000)
        out["ours.restart"] = {"first_answer_s": round(again.first_answer_s, 3),
                               "service_first_answer_s": round(again.hello["first_answer_s"], 3),
                               "stored": again.hello["stored"]}  # fmt: skip
        print(json.dumps({"ours": "restart", **out["ours.restart"]}), flush=True)
        again.stop()
        if not a.no_flower:
            broker = f"redis://127.0.0.1:{port}/1"
            fdb = os.path.join(work, "flower.db")
            log = os.path.join(work, "flower.log")
            fl = Flower(a.flower_python, broker, 100_000, log, fdb)
            try:
                run_one(fl, broker, a, out)
            finally:
                fl.stop()
            fl = Flower(a.flower_python, broker, 100_000, log, fdb)
            n = len(json.loads(fl.get("/api/tasks?limit=200000")))
            out["flower.restart"] = {"first_answer_s": round(fl.first_answer_s, 3), "stored": n}
            print(json.dumps({"flower": "restart", **out["flower.restart"]}), flush=True)
            fl.stop()
    finally:
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(out)


def report(out: dict[str, Any]) -> None:
    rows = [
        ("ingest events/s (throughput)", "throughput", "ingest_events_per_s", True),
        ("events lost %, 9k/s burst", "burst", "lost_pct", False),
        ("events lost %, max-rate burst", "max", "lost_pct", False),
        ("RSS bytes per task", "burst", "rss_per_task_bytes", False),
        ("restart: s to first answer", "restart", "first_answer_s", False),
    ]
    print(f"\n{'':36s} {'ours':>12s} {'flower':>12s} {'ratio':>8s}")
    for label, phase, key, higher in rows:
        o = out.get(f"ours.{phase}", {}).get(key)
        f = out.get(f"flower.{phase}", {}).get(key)
        ratio = ""
        if isinstance(o, (int, float)) and isinstance(f, (int, float)) and o and f:
            ratio = f"{(o / f if higher else f / o):.1f}x"
        print(f"{label:36s} {o!s:>12s} {f!s:>12s} {ratio:>8s}")
    for label, _, _ in QUERIES:
        o = out.get(f"ours.query.{label}", {}).get("p95_ms")
        f = out.get(f"flower.query.{label}", {}).get("p95_ms")
        ratio = f"{f / o:.1f}x" if o and f else ""
        print(f"{'p95 ms ' + label:36s} {o!s:>12s} {f!s:>12s} {ratio:>8s}")


if __name__ == "__main__":
    main()
