"""The served monitor against Flower 2.2, as users run them: process trees, HTTP, one core each.

    python bench/served_monitor.py [--tasks 100000] [--runs 3] [--skip-flower]

1. **Record** (once, cached in a temp dir, never committed): a celery ``EventDispatcher`` per
   worker (and one for the client) sends real task-sent/received/started/succeeded (5 %
   failed, with a traceback) events and worker heartbeats through kombu to a private
   redis-server; a ``PSUBSCRIBE`` client records every message (channel, kombu envelope).
   ``--tasks`` tasks for the flood, plus ``--live-seconds`` x 5,000 events for the live phase.
2. Per run and per monitor (``flask celery monitor`` on gunicorn with gevent (its default), then
   ``celery flower``), each started with ``taskset -c 1`` so the whole process tree shares
   core 1; this script, redis-server and the replayer run on core 0. Redis runs with
   ``client-output-buffer-limit pubsub 0 0 0`` so nothing is cut.

   * **flood**: the recording's timestamps are set to "now", then it is replayed with raw
     ``PUBLISH`` pipelines (much faster than either monitor applies events). Counter:
     ``flower_events_total`` (task events, Flower's meaning) on each one's ``/metrics``,
     polled every 0.5 s. Rate = task events / seconds from the first publish to the moment
     the counter reached the published count. Lost = published - counted.
   * **RSS**: the whole process tree (psutil, children recursive) before the flood and once
     it is applied and settled; growth / tasks held. Ours is settled when its self-figures
     show no changed task awaiting the history store and three more store flushes ran
     (``celerymon_store_pending_tasks``, ``celerymon_store_flushes_total``; the growth 1 s
     after the count, when the flood's last flush may still be running, is printed beside
     it); Flower, which writes nothing after applying, is read 1 s after.
   * **queries idle**: ``/api/tasks?limit=100``, ``&state=FAILURE``, ``&search=customer-12``
     (``--repeat`` requests each, over HTTP) at ``--tasks`` tasks; p50/p95.
   * **queries live**: the same while the live part of the recording is replayed at 5,000
     events/s (re-stamped as published); then lost events and the ingest lag
     (``celerymon_ingest_lag_seconds``, sampled; ours only: Flower has no such figure).

Prints JSON lines per phase, then a table ``ours | Flower | ratio | target`` with the range
over the runs (min..max).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import psutil
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
#: The checkout whose package and ``bench/served_app.py`` the monitor runs: this one, or
#: ``BENCH_ROOT`` (an A/B of another worktree's code with this bench's measurements).
ROOT = os.environ.get("BENCH_ROOT") or os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)

TASK_NAMES = [
    "shop.orders.process_order",
    "shop.mail.send_confirmation",
    "shop.reports.render_invoice",
    "shop.search.reindex_product",
    "shop.payments.capture",
]
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/celery/app/trace.py", line 453, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    '  File "/app/shop/payments.py", line 88, in capture\n'
    "    raise PaymentDeclined(order_id)\n"
    "shop.payments.PaymentDeclined: {oid}\n"
)
QUERIES = [
    ("list limit=100", "limit=100"),
    ("filter state=FAILURE", "limit=100&state=FAILURE"),
    ("search customer-12", "limit=100&search=customer-12"),
]
LIVE_RATE = 5_000
TARGETS = {
    "rate": ">= 40000",
    "rss": "<= 1024",
    "p95": "<= 15",
    "lost": "0",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        pass


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p * (len(values) - 1))))]


def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and all its children (recursive)."""
    return sum(rss for _, _, rss in tree_rss_by_process(pid))


def tree_rss_by_process(pid: int) -> list[tuple[int, str, int]]:
    """``(pid, command line, RSS in bytes)`` of ``pid`` and each of its children (recursive)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in procs:
        try:
            out.append((p.pid, " ".join(p.cmdline())[:80], p.memory_info().rss))
        except psutil.NoSuchProcess:
            pass
    return out


def tree_rss_kinds(pid: int) -> dict[str, float]:
    """MiB of ``pid``'s tree: RSS, and its anonymous and file-backed parts (``RssAnon``,
    ``RssFile`` of /proc/<pid>/status: pages of a mapped file, e.g. SQLite's mmap, count
    in RssFile)."""
    try:
        proc = psutil.Process(pid)
        pids = [pid] + [c.pid for c in proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    kb = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in kb:
                        kb[k] += int(v.split()[0])
        except OSError:
            pass
    return {"rss_mb": round(kb["VmRSS"] / 1024, 1), "anon_mb": round(kb["RssAnon"] / 1024, 1),
            "file_mb": round(kb["RssFile"] / 1024, 1)}  # fmt: skip


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its children (recursive)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def boost(pid: int, value: int) -> None:
    """Set the nice value of ``pid`` (0: this process): the load generator must outrun the
    monitor on a core other engineers share; -10 needs root, else it stays as it is."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, value)
    except (AttributeError, OSError):
        pass


def start_redis(workdir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", "0", shutil.which("redis-server") or "redis-server", "--port",
         str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
         workdir, "--client-output-buffer-limit", "pubsub 0 0 0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    boost(proc.pid, -10)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, url


# -- recording -------------------------------------------------------------------------------


def _write(fh: Any, channel: bytes, data: bytes) -> None:
    fh.write(struct.pack("<II", len(channel), len(data)))
    fh.write(channel)
    fh.write(data)


def read_recording(path: str) -> list[tuple[bytes, bytes]]:
    out = []
    with open(path, "rb") as fh:
        blob = fh.read()
    i = 0
    while i < len(blob):
        lc, ld = struct.unpack_from("<II", blob, i)
        i += 8
        out.append((blob[i : i + lc], blob[i + lc : i + lc + ld]))
        i += lc + ld
    return out


def _send_chunk(url: str, first: int, n_tasks: int, worker: str, seed: int) -> int:
    """Send the events of tasks ``first .. first+n_tasks`` from one worker (and one client)."""
    import random
    import uuid as uuidlib

    from celery import Celery

    try:  # recording is not measured: use every core
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        pass
    app = Celery("recorder", broker=url)
    rnd = random.Random(seed)
    sent = 0
    with app.connection_for_write() as conn:
        w = app.events.Dispatcher(conn, hostname=worker, enabled=True)
        client_d = app.events.Dispatcher(conn, hostname=f"gen{seed}@client", enabled=True)
        w.send("worker-online", freq=2.0, sw_ident="py-celery", sw_ver="5.5", sw_sys="Linux")
        sent += 1
        last_hb = time.monotonic()
        inflight: list[list[tuple[Any, str, dict[str, Any]]]] = []
        for i in range(first, first + n_tasks):
            if time.monotonic() - last_hb >= 2.0:
                last_hb = time.monotonic()
                w.send("worker-heartbeat", freq=2.0, active=rnd.randint(0, 8), processed=i,
                       loadavg=[0.5, 0.4, 0.3], sw_ident="py-celery", sw_ver="5.5",
                       sw_sys="Linux")  # fmt: skip
                sent += 1
            tid = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4))
            name = TASK_NAMES[i % len(TASK_NAMES)]
            oid = 100000 + i
            args = f"({oid}, 'customer-{oid % 977}')"
            kwargs = f"{{'priority': {oid % 3}, 'user_id': {oid % 5000}}}"
            steps: list[tuple[Any, str, dict[str, Any]]] = [
                (client_d, "task-sent", dict(
                    uuid=tid, root_id=tid, parent_id=None, name=name, args=args, kwargs=kwargs,
                    retries=0, eta=None, expires=None, queue="celery", exchange="",
                    routing_key="celery")),
                (w, "task-received", dict(
                    uuid=tid, name=name, args=args, kwargs=kwargs, root_id=tid, parent_id=None,
                    retries=0, eta=None, expires=None)),
                (w, "task-started", dict(uuid=tid)),
                (w, "task-failed", dict(
                    uuid=tid, exception=f"PaymentDeclined({oid})",
                    traceback=TRACEBACK.format(oid=oid))) if i % 20 == 19 else
                (w, "task-succeeded", dict(
                    uuid=tid, result=f"{{'order': {oid}, 'status': 'ok'}}",
                    runtime=round(rnd.uniform(0.001, 0.2), 6))),
            ]  # fmt: skip
            inflight.append(steps)
            while len(inflight) > 4 or (i == first + n_tasks - 1 and inflight):
                steps = inflight[0]
                d, etype, fields = steps.pop(0)
                d.send(etype, **fields)
                sent += 1
                if not steps:
                    inflight.pop(0)
                else:
                    inflight.append(inflight.pop(0))
    return sent


def record(url: str, first: int, n_tasks: int, path: str, procs: int = 8) -> dict[str, Any]:
    """Send the events of ``n_tasks`` tasks through celery's event dispatcher from ``procs``
    processes (one worker each: a publish waits for Redis's answer, so one process is bound
    by the round trip); record every message Redis delivers to a ``PSUBSCRIBE`` client."""
    from concurrent.futures import ProcessPoolExecutor

    client = redis.Redis.from_url(url)
    ps = client.pubsub()
    ps.psubscribe("*celeryev*")
    while ps.get_message(timeout=1.0) is None:
        pass
    got = [0]
    stop = threading.Event()
    tmp = path + ".part"

    def recorder() -> None:
        with open(tmp, "wb") as fh:
            while True:
                m = ps.get_message(timeout=0.5)
                if m is None:
                    if stop.is_set():
                        return
                    continue
                if m["type"] == "pmessage":
                    _write(fh, m["channel"], m["data"])
                    got[0] += 1

    th = threading.Thread(target=recorder)
    th.start()
    t0 = time.perf_counter()
    per = -(-n_tasks // procs)
    with ProcessPoolExecutor(procs) as ex:
        futs = [
            ex.submit(_send_chunk, url, first + k * per, min(per, n_tasks - k * per),
                      f"celery@bench-{k}", first + k)
            for k in range(procs) if n_tasks - k * per > 0
        ]  # fmt: skip
        sent = sum(f.result() for f in futs)
    deadline = time.monotonic() + 60
    while got[0] < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    th.join()
    ps.close()
    if got[0] != sent:
        raise RuntimeError(f"recorded {got[0]} of {sent} events")
    os.replace(tmp, path)
    return {"recorded": sent, "tasks": n_tasks, "seconds": round(time.perf_counter() - t0, 1)}


def restamp(message: bytes, now: float) -> bytes:
    """The kombu envelope with the event's ``timestamp`` set to ``now``."""
    env = json.loads(message)
    event = json.loads(base64.b64decode(env["body"]))
    event["timestamp"] = now
    env["body"] = base64.b64encode(json.dumps(event).encode()).decode()
    return json.dumps(env).encode()


def is_task_event(channel: bytes) -> bool:
    return b"celeryev/task." in channel


def replay(
    url: str,
    messages: list[tuple[bytes, bytes]],
    rate: float = 0,
    batch: int = 500,
    stamp: bool = False,
) -> dict[str, Any]:
    """PUBLISH ``messages`` in pipelines; ``rate`` events/s (0: as fast as Redis takes them).

    ``stamp`` (with ``rate``) stamps each event with the time it is scheduled to be published
    (done before publishing starts, so the replayer keeps the pace).
    """
    if stamp and rate:
        t = time.perf_counter()
        probe = [restamp(d, 0.0) for _, d in messages[:500]]
        per = (time.perf_counter() - t) / max(1, len(probe))
        start = time.time() + per * len(messages) * 2 + 1.0
        messages = [(c, restamp(d, start + i / rate)) for i, (c, d) in enumerate(messages)]
    # raw RESP: PUBLISH commands encoded ahead, written ``batch`` at a time, replies read back
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    batches = []
    for i in range(0, len(messages), batch):
        batches.append(
            b"".join(
                b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(c), c, len(d), d)
                for c, d in messages[i : i + batch]
            )
        )
    if stamp and rate:
        time.sleep(max(0.0, start - time.time()))
    sent = 0
    with socket.create_connection((host, int(port))) as sock:
        t0 = time.perf_counter()
        for i, data in enumerate(batches):
            sock.sendall(data)
            n = min(batch, len(messages) - i * batch)
            replies = b""
            while replies.count(b"\r\n") < n:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("redis closed the replay connection")
                replies += chunk
            sent += n
            if rate:
                ahead = sent / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    secs = time.perf_counter() - t0
    return {"published": sent, "seconds": round(secs, 3), "per_s": round(sent / secs)}


# -- the monitors ----------------------------------------------------------------------------


class Served:
    """A monitor process tree on core 1, read over HTTP."""

    name = ""
    prefix = ""

    def __init__(self, argv: list[str], env: dict[str, str], log: str) -> None:
        self.port = free_port()
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(
            ["taskset", "-c", "1", *argv],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                self.get("/api/tasks?limit=1")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start, see {log}") from None
                time.sleep(0.1)

    def get(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.port}{self.prefix}{path}"
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.read()

    def metric(self, family: str) -> float | None:
        total = None
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(family + "{") or line.startswith(family + " "):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        return total

    def counted(self) -> int:
        return int(self.metric("flower_events_total") or 0)

    def rss(self) -> int:
        return tree_rss(self.proc.pid)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


class Ours(Served):
    name = "ours"
    prefix = "/monitor"

    def __init__(self, url: str, workdir: str, max_tasks: int) -> None:
        env = dict(os.environ)
        env.update(
            FLASK_APP="bench.served_app:create_app", BENCH_BROKER_URL=url,
            BENCH_DB=os.path.join(workdir, "celerymon.sqlite3"), BENCH_MAX_TASKS=str(max_tasks),
            PYTHONPATH=ROOT,
        )  # fmt: skip
        super().__init__(
            [os.path.join(BIN, "flask"), "celery", "monitor", "--port", "{port}",
             "--address", "127.0.0.1"],
            env, os.path.join(workdir, "ours.log"),
        )  # fmt: skip

    def lag(self) -> float | None:
        return self.metric("celerymon_ingest_lag_seconds")

    def settle(self, deadline: float) -> float | None:
        """Wait until no changed task awaits the history store and three more flushes ran
        (the one running when the flood was counted, the next one, whose tick then indexes
        and trims after the burst, and one more: the counter moves when a flush's rows are
        written, before the same tick's indexing and trim, so only the tick after it shows
        the trim done); seconds waited, None if ``deadline`` passed first."""
        t0 = time.monotonic()
        first = self.metric("celerymon_store_flushes_total") or 0.0
        while time.monotonic() < deadline:
            if (self.metric("celerymon_store_pending_tasks") or 0.0) == 0.0 and (
                self.metric("celerymon_store_flushes_total") or 0.0
            ) >= first + 3:
                return round(time.monotonic() - t0 + 1, 1)  # (+ the 1 s slept before)
            time.sleep(0.2)
        return None


class Flower(Served):
    name = "flower"

    def __init__(self, url: str, workdir: str, max_tasks: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "FLOWER"))}
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
        super().__init__(
            [os.path.join(BIN, "celery"), "--broker", url, "flower", "--port={port}",
             "--address=127.0.0.1", f"--max_tasks={max_tasks}"],
            env, os.path.join(workdir, "flower.log"),
        )  # fmt: skip

    def lag(self) -> float | None:
        return None

    def settle(self, deadline: float) -> float | None:
        """Flower has no figures of pending work: its RSS is read 1 s after the flood."""
        return 1.0


def wait_subscribed(url: str, baseline: int, timeout: float = 60) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while client.execute_command("PUBSUB", "NUMPAT") <= baseline:
        if time.monotonic() > deadline:
            raise RuntimeError("the monitor did not subscribe to the event stream")
        time.sleep(0.1)


def wait_counted(mon: Served, expected: int, t0: float, quiet: float = 15.0) -> tuple[int, float]:
    """Poll until ``expected`` task events are counted or the count stops for ``quiet`` s.

    Returns (counted, seconds from t0 to the poll that saw the last change).
    """
    last = -1
    last_change = time.perf_counter()
    while True:
        n = mon.counted()
        now = time.perf_counter()
        if n != last:
            last, last_change = n, now
        if n >= expected or now - last_change > quiet:
            return n, last_change - t0
        time.sleep(0.5)


def _minus(a: float | None, b: float) -> float | None:
    return None if a is None else round(a - b, 3)


def queries(mon: Served, repeat: int) -> dict[str, dict[str, float]]:
    out = {}
    trace = os.environ.get("BENCH_REQ_TRACE")
    for label, qs in QUERIES:
        times = []
        for _ in range(repeat):
            t0_wall = time.time()
            t = time.perf_counter()
            mon.get(f"/api/tasks?{qs}")
            times.append(time.perf_counter() - t)
            if trace:  # BENCH_REQ_TRACE: each request's client-side time, for bench/req_trace.py
                with open(trace + ".client", "a") as fh:
                    fh.write(
                        json.dumps(
                            {"t": round(t0_wall, 4), "qs": qs, "ms": round(times[-1] * 1000, 2)}
                        )
                        + "\n"
                    )
        out[label] = {"p50_ms": round(statistics.median(times) * 1000, 1),
                      "p95_ms": round(pct(times, 0.95) * 1000, 1)}  # fmt: skip
    return out


def spy_on(mon: Served, out: str, settle: float = 2.0) -> subprocess.Popen:
    """py-spy on core 0, sampling the whole tree of the monitor into ``out`` (raw, folded).
    ``BENCH_SPY_NATIVE=1``: with the C frames (SQLite's), pausing the process per sample."""
    how = ["--native", "--rate", "200"] if os.environ.get("BENCH_SPY_NATIVE") else [
        "--nonblocking", "--rate", "50"]  # fmt: skip
    spy = subprocess.Popen(
        ["taskset", "-c", "0", os.path.join(BIN, "py-spy"), "record", "--pid",
         str(mon.proc.pid), "--subprocesses", *how, "--format", "raw", "-o", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(settle)
    return spy


def spy_stop(spy: subprocess.Popen | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def memstats(args: dict[str, str], timeout: float = 30) -> dict[str, Any]:
    """Diagnosis: the serving process's memory figures from :mod:`bench.memstats` (asked
    through the files at ``BENCH_MEMSTATS``; ``args`` as its ``report`` takes them)."""
    base = os.environ["BENCH_MEMSTATS"]
    if os.path.exists(base + ".json"):
        os.unlink(base + ".json")
    with open(base + ".req", "w") as fh:
        json.dump(args, fh)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(base + ".json"):
            with open(base + ".json") as fh:
                return dict(json.load(fh))
        time.sleep(0.05)
    return {"error": f"no answer from the memstats hook in {timeout:g} s"}


def run_one(
    mon: Served,
    url: str,
    flood: list[tuple[bytes, bytes]],
    live: list[tuple[bytes, bytes]],
    n_tasks: int,
    repeat: int,
    profile: str | None = None,
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    time.sleep(2)  # settle after start-up
    base_rss = mon.rss()
    res["rss_kinds_before"] = tree_rss_kinds(mon.proc.pid)
    if os.environ.get("BENCH_MEMSTATS") and mon.name == "ours":  # diagnosis: bench/memstats.py
        res["memstats_before"] = memstats({})
    base_procs = tree_rss_by_process(mon.proc.pid)
    base = mon.counted()
    stamped_at = time.time()
    stamped = [(c, restamp(d, stamped_at)) for c, d in flood]
    expected = sum(1 for c, _ in flood if is_task_event(c))
    spy = spy_on(mon, f"{profile}-{mon.name}.txt") if profile else None
    cpu0 = tree_cpu(mon.proc.pid)
    boost(0, -10)
    start_at = time.time()
    t0 = time.perf_counter()
    pub = replay(url, stamped)
    boost(0, 0)
    counted, secs = wait_counted(mon, base + expected, t0)
    cpu = tree_cpu(mon.proc.pid) - cpu0
    got = counted - base
    spy_stop(spy)
    res["flood"] = {"published": expected, "counted": got, "lost": expected - got,
                    "publish_per_s": pub["per_s"], "seconds": round(secs, 2),
                    "rate": round(got / secs), "cpu_s": round(cpu, 2),
                    "cpu_us_per_event": round(cpu / max(1, got) * 1e6, 1),
                    # the self-figure, less the time the events waited before the replay began
                    "lag_s": _minus(mon.lag(), start_at - stamped_at)}  # fmt: skip
    # The RSS held: once what the flood left to do is done. Ours writes the burst's changed
    # tasks to its history store after applying them (a flood's last flush holds the rows of up
    # to ~50,000 tasks, 1-2 s), then gives freed heap back: wait until nothing is pending and
    # three more flushes ran (at most 30 s). Flower has no such figures: read 1 s after, as both
    # were read before; ours is also read at that moment (``per_task_1s``, not hidden).
    procs = {"before": base_procs}
    time.sleep(1)
    procs["1s"] = tree_rss_by_process(mon.proc.pid)
    grown_1s = sum(r for _, _, r in procs["1s"]) - base_rss
    settle = mon.settle(deadline=time.monotonic() + 29)
    procs["held"] = tree_rss_by_process(mon.proc.pid)
    grown = sum(r for _, _, r in procs["held"]) - base_rss
    res["rss"] = {"base_mb": round(base_rss / 2**20, 1), "grown_mb": round(grown / 2**20, 1),
                  "per_task": round(grown / n_tasks), "per_task_1s": round(grown_1s / n_tasks),
                  "settled_after_s": settle,
                  "by_process_mb": {k: [(p, cmd, round(r / 2**20, 1)) for p, cmd, r in v]
                                    for k, v in procs.items()}}  # fmt: skip
    res["rss_kinds_held"] = tree_rss_kinds(mon.proc.pid)
    if os.environ.get("BENCH_MEMSTATS") and mon.name == "ours":  # diagnosis: bench/memstats.py
        res["memstats_held"] = memstats({"types": "1"})
    res["idle"] = queries(mon, repeat)
    # live: replay at 5k events/s in the background while querying
    base = mon.counted()
    expected = sum(1 for c, _ in live if is_task_event(c))
    lags: list[float] = []
    result: dict[str, Any] = {}
    th = threading.Thread(
        target=lambda: result.update(replay(url, live, rate=LIVE_RATE, batch=50, stamp=True))
    )
    th.start()
    while mon.counted() == base:  # stamping first, then publishing
        time.sleep(0.2)
    spy = spy_on(mon, f"{profile}-live-{mon.name}.txt", settle=0) if profile else None
    res["live"] = queries(mon, repeat)
    spy_stop(spy)
    while th.is_alive():
        lag = mon.lag()
        if lag is not None:
            lags.append(lag)
        time.sleep(0.5)
    th.join()
    counted, _ = wait_counted(mon, base + expected, time.perf_counter())
    got = counted - base
    res["live_ingest"] = {"published": expected, "counted": got, "lost": expected - got,
                          "publish_per_s": result.get("per_s"),
                          "lag_max_s": max(lags) if lags else None}  # fmt: skip
    # after the live phase: what a user sees later (its queries, the store's readers' pages)
    res["rss_kinds_after_live"] = kinds = tree_rss_kinds(mon.proc.pid)
    if kinds:
        res["rss_after_live"] = {
            "per_task": round((kinds["rss_mb"] * 2**20 - base_rss) / n_tasks),
            "anon_mb": kinds["anon_mb"], "file_mb": kinds["file_mb"],
            "file_growth_mb": round(kinds["file_mb"] - res["rss_kinds_before"]["file_mb"], 1),
        }  # fmt: skip
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=100, help="requests per query and phase")
    p.add_argument("--live-seconds", type=float, default=20.0)
    p.add_argument("--skip-flower", action="store_true")
    p.add_argument("--only", choices=["ours", "flower"], help="run one monitor only")
    p.add_argument(
        "--profile",
        metavar="PREFIX",
        help="py-spy the flood phase into PREFIX-<monitor>.txt and the queries while 5k "
        "events/s are applied into PREFIX-live-<monitor>.txt (raw, folded stacks)",
    )
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "celerymon-served-bench"))
    a = p.parse_args()
    pin(0)
    os.makedirs(a.cache, exist_ok=True)
    live_tasks = int(a.live_seconds * LIVE_RATE / 4)
    rec_flood = os.path.join(a.cache, f"flood-{a.tasks}.bin")
    rec_live = os.path.join(a.cache, f"live-{live_tasks}.bin")
    work = tempfile.mkdtemp(prefix="celerymon-served-")
    redis_proc, url = start_redis(work)
    try:
        for path, first, n in ((rec_flood, 0, a.tasks), (rec_live, 10**7, live_tasks)):
            if not os.path.exists(path):
                print(json.dumps({"record": record(url, first, n, path)}), flush=True)
        flood, live = read_recording(rec_flood), read_recording(rec_live)
        kinds = [] if a.only == "flower" else [Ours]
        if not a.skip_flower and a.only != "ours":
            kinds.append(Flower)
        runs: list[dict[str, Any]] = []
        client = redis.Redis.from_url(url)
        for run in range(a.runs):
            out: dict[str, Any] = {}
            for kind in kinds:
                d = tempfile.mkdtemp(dir=work)
                baseline = client.execute_command("PUBSUB", "NUMPAT")
                mon = kind(url, d, a.tasks)
                try:
                    wait_subscribed(url, baseline)
                    out[mon.name] = run_one(mon, url, flood, live, a.tasks, a.repeat, a.profile)
                finally:
                    mon.stop()
                    shutil.rmtree(d, ignore_errors=True)
                print(json.dumps({"run": run + 1, mon.name: out[mon.name]}), flush=True)
            runs.append(out)
    finally:
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(runs)


def _range(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    fmt = (lambda v: f"{v:,.0f}") if hi >= 100 else (lambda v: f"{v:g}")
    return fmt(lo) if lo == hi else f"{fmt(lo)}..{fmt(hi)}"


def report(runs: list[dict[str, Any]]) -> None:
    def col(name: str, *path: str) -> list[float]:
        vals = []
        for r in runs:
            v: Any = r.get(name)
            for k in path:
                v = v.get(k) if isinstance(v, dict) else None
            if isinstance(v, (int, float)):
                vals.append(v)
        return vals

    rows = [("task events applied/s (flood)", ("flood", "rate"), True, TARGETS["rate"]),
            ("events lost, flood", ("flood", "lost"), None, TARGETS["lost"]),
            ("events lost, 5k/s live", ("live_ingest", "lost"), None, TARGETS["lost"]),
            ("RSS growth B/task", ("rss", "per_task"), False, TARGETS["rss"]),
            ("RSS growth B/task, 1 s after count", ("rss", "per_task_1s"), False, ""),
            ("RSS settled after s", ("rss", "settled_after_s"), None, ""),
            ("RSS growth B/task, after live", ("rss_after_live", "per_task"), False, ""),
            ("RssFile growth MB, after live", ("rss_after_live", "file_growth_mb"), None, "")]  # fmt: skip
    for label, _ in QUERIES:
        rows.append((f"p95 ms {label}, idle", ("idle", label, "p95_ms"), False, TARGETS["p95"]))
    for label, _ in QUERIES:
        rows.append((f"p95 ms {label}, 5k ev/s", ("live", label, "p95_ms"), False,
                     TARGETS["p95"]))  # fmt: skip
    rows.insert(1, ("CPU µs per task event (flood)", ("flood", "cpu_us_per_event"), False, ""))
    rows.append(("ingest lag s (flood, drained)", ("flood", "lag_s"), None, "visible"))
    rows.append(("ingest lag max s (5k/s)", ("live_ingest", "lag_max_s"), None, "visible"))
    print(f"\nruns: {len(runs)} (ranges min..max)")
    print(f"{'figure':38s} {'ours':>16s} {'Flower 2.2':>16s} {'ratio':>10s} {'target':>10s}")
    for label, path, higher, target in rows:
        o, f = col("ours", *path), col("flower", *path)
        ratio = ""
        if higher is not None and o and f and min(o) and min(f):
            mo, mf = statistics.median(o), statistics.median(f)
            ratio = f"{(mo / mf if higher else mf / mo):.1f}x"
        print(f"{label:38s} {_range(o):>16s} {_range(f):>16s} {ratio:>10s} {target:>10s}")


if __name__ == "__main__":
    main()
