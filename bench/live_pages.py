"""Many live pages on ``flask celery monitor``: event -> page latency, RSS and threads over time.

    python bench/live_pages.py [--pages 500] [--rate 1000] [--minutes 3] [--worker-class gevent]

Starts a private redis-server (free port) and ``flask celery monitor`` serving
``tests.apps.served`` with a SQLite history, then:

1. **ingest** (unless ``--no-ingest``): ``--ingest-tasks`` tasks of ``bench/flood.py`` events
   published as fast as Redis takes them (pub/sub output limit lifted), no page open; the
   served process's ingest rate = events applied (its ``celerymon_events_applied_total``) /
   seconds from the first publish to the last event applied.
2. **live pages**: opens ``--pages`` websockets on ``/monitor/ws?view=tasks`` (the task list,
   newest first: new tasks are inserted on top), then publishes task events at ``--rate``
   events/s for ``--minutes`` (10 ms batches; ``flood.py``'s task life cycle and heartbeats).
   Each page's client records when each task id first reaches it; the latency of that
   (page, task) pair is that moment minus the publish of the task's ``task-received`` event.
   A page is sent at most the newest ``per_page`` (15) new tasks of a 100 ms batch, so about
   a third of the tasks reach any page; latency is measured on those. Every 5 s the RSS
   and thread count of the served process tree (the ``flask`` process and its gunicorn
   worker) are sampled (printed, and in the summary the first sample of each minute), and its CPU seconds over the phase give ``server_cpu_per_s`` (the
   share of one core the server needs: below 1 it keeps up on a core of its own, whatever
   else the machine runs; the latencies depend on what else runs).

All clients run in one thread of this process (wsproto over non-blocking sockets and one
selector), so the client side holds no thread per page. Prints one JSON line per phase and a
summary. The server is not pinned; run the whole script under ``taskset`` to pin it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import psutil
import redis
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import flood  # noqa: E402

#: A task message's id in a live page's JSON (``{"type": "task", "id": ...}``).
TASK_ID = re.compile(r'"type": "task", "id": "([0-9a-f-]{36})"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


def applied(base: str) -> float:
    """The served monitor's ``celerymon_events_applied_total``."""
    for line in get(base + "/monitor/metrics", timeout=120).decode().splitlines():
        if line.startswith("celerymon_events_applied_total "):
            return float(line.split()[1])
    return 0.0


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and its descendants."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_sample(pid: int) -> tuple[int, int]:
    """(RSS bytes, threads) summed over ``pid`` and its descendants."""
    rss = threads = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            threads += p.num_threads()
        except psutil.NoSuchProcess:
            pass
    return rss, threads


class Pages:
    """``n`` websocket clients driven by one selector thread; records first arrivals."""

    def __init__(self, base: str, n: int, sent: dict[str, float], deflate: bool = False) -> None:
        host = base.split("://", 1)[1]
        self.addr = (host.split(":")[0], int(host.split(":")[1]))
        self.host = host
        self.n = n
        self.sent = sent
        self.deflate = deflate
        self.sel = selectors.DefaultSelector()
        self.latencies: list[float] = []
        self.messages = 0
        self.bytes = 0
        self.closed: list[tuple[int, str]] = []
        self.open = 0
        self._seen: list[set[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pages", daemon=True)

    def connect(self, timeout: float = 60.0) -> None:
        for i in range(self.n):
            sock = socket.create_connection(self.addr, timeout=timeout)
            conn = WSConnection(ConnectionType.CLIENT)
            ext = [PerMessageDeflate()] if self.deflate else []
            req = Request(host=self.host, target="/monitor/ws?view=tasks", extensions=ext)
            sock.sendall(conn.send(req))
            sock.setblocking(False)
            self._seen.append(set())
            self.sel.register(sock, selectors.EVENT_READ, (i, conn))
        self._thread.start()
        deadline = time.monotonic() + timeout
        while self.open < self.n and time.monotonic() < deadline and not self.closed:
            time.sleep(0.1)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.sel.select(timeout=0.2):
                sock = key.fileobj
                i, conn = key.data
                try:
                    data = sock.recv(262144)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                now = time.time()
                conn.receive_data(data or None)
                for ev in conn.events():
                    if isinstance(ev, AcceptConnection):
                        self.open += 1
                    elif isinstance(ev, TextMessage):
                        self.messages += 1
                        self.bytes += len(ev.data)
                        self._message(i, ev.data, now)
                    elif isinstance(ev, Ping):
                        sock.sendall(conn.send(ev.response()))  # type: ignore[union-attr]
                    elif isinstance(ev, CloseConnection):
                        self.closed.append((ev.code, ev.reason or ""))
                if not data:
                    self.sel.unregister(sock)
                    sock.close()  # type: ignore[union-attr]

    def _message(self, i: int, text: str, now: float) -> None:
        # the task ids of a batch, without decoding its JSON (the client must stay cheap:
        # 500 pages receive about 10 batches a second each)
        seen = self._seen[i]
        for tid in TASK_ID.findall(text):
            if tid in seen:
                continue
            seen.add(tid)
            t0 = self.sent.get(tid)
            if t0 is not None:
                self.latencies.append(now - t0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


def per_minute(samples: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """The first sample of each whole minute of ``(seconds, rss, threads)`` samples."""
    out: dict[int, tuple[float, int, int]] = {}
    for s in samples:
        out.setdefault(int(s[0] // 60), s)
    return [out[m] for m in sorted(out)]


def publish(url: str, rate: float, seconds: float, sent: dict[str, float], stop: Any) -> int:
    """Publish flood events at ``rate`` events/s for ``seconds``, 10 ms batches.

    Records in ``sent`` the publish time of each task's ``task-received``. Returns events sent.
    """
    client = redis.Redis.from_url(url)
    prefix = "/0.celeryev/"
    stream = flood.events(10_000_000, 4, seed=7)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds and not stop.is_set():
        due = int((time.perf_counter() - t0) * rate) - n
        if due > 0:
            pipe = client.pipeline(transaction=False)
            received = []
            for _ in range(due):
                rk, ev = next(stream)
                if ev["type"] == "task-received":
                    received.append(ev["uuid"])
                pipe.publish(prefix + rk, envelope(ev, rk))
            pipe.execute()
            now = time.time()
            for tid in received:
                sent[tid] = now
            n += due
        time.sleep(0.01)
    client.close()
    return n


def envelope(ev: dict[str, Any], rk: str) -> bytes:
    ev["timestamp"] = time.time()
    return flood.envelope(ev, rk)


def ingest(url: str, base: str, tasks: int) -> dict[str, Any]:
    """Max-rate flood, no page open: the served process's ingest rate."""
    before = applied(base)
    messages = flood.prebuild(tasks, 4, seed=3)
    t0 = time.perf_counter()
    res = flood.flood(url, tasks, 0, messages=messages)
    expected = before + res["events"]
    last, last_change = before, time.perf_counter()
    while True:
        now_applied = applied(base)
        if now_applied != last:
            last, last_change = now_applied, time.perf_counter()
        if now_applied >= expected or time.perf_counter() - last_change > 10:
            break
        time.sleep(0.05)
    seconds = last_change - t0
    got = last - before
    return {"phase": "ingest", "tasks": tasks, "published": res["events"], "applied": got,
            "seconds": round(seconds, 2), "events_per_s": round(got / seconds, 1),
            "publish_events_per_s": res["events_per_s"]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=500)
    p.add_argument("--rate", type=float, default=1000.0, help="events/s during the live phase")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--worker-class", default="gevent", choices=("gevent", "gthread"))
    p.add_argument("--threads", type=int, default=1000, help="gthread threads")
    p.add_argument("--ingest-tasks", type=int, default=20_000)
    p.add_argument("--no-ingest", action="store_true")
    p.add_argument("--no-pages", action="store_true", help="only the ingest phase")
    p.add_argument("--deflate", action="store_true",
                   help="the pages offer permessage-deflate, as browsers do (the server then "
                        "compresses each frame for each page)")
    p.add_argument("--config", default="{}",
                   help="more Flask config for the served app, a JSON object (e.g. "
                        "'{\"CELERY_MONITOR_MAX_TASKS\": 20000}' to fill the window sooner)")
    args = p.parse_args()
    extra = json.loads(args.config)
    if not isinstance(extra, dict):
        raise SystemExit("--config: a JSON object, e.g. '{\"CELERY_MONITOR_MAX_TASKS\": 20000}'")

    work = tempfile.mkdtemp(prefix="cm-live-")
    rport, port = free_port(), free_port()
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(rport), "--save", "",
         "--appendonly", "no", "--dir", work, "--client-output-buffer-limit", "pubsub 0 0 0"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{rport}/0"
    config = {"CELERY_MONITOR_DB": os.path.join(work, "m.sqlite3"),
              "CELERY_MONITOR_MAX_LIVE_SOCKETS": args.pages + 10, **extra}  # fmt: skip
    env = {**os.environ, "CELERYMON_TEST_INSTANCE": work, "CELERYMON_TEST_BROKER": url,
           "CELERYMON_TEST_CONFIG": json.dumps(config), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "flask", "--app", "tests.apps.served:create_app", "celery",
           "monitor", "--port", str(port), "--worker-class", args.worker_class,
           "--threads", str(args.threads), "--connections", str(args.pages + 100)]  # fmt: skip
    log = open(os.path.join(work, "monitor.log"), "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"worker_class": args.worker_class, "pages": args.pages,
                           "rate": args.rate, "minutes": args.minutes,
                           "deflate": args.deflate}  # fmt: skip
    pages = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get(base + "/monitor/healthcheck", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the monitor did not start; see " + log.name) from None
                time.sleep(0.2)
        if not args.no_ingest:
            r = ingest(url, base, args.ingest_tasks)
            print(json.dumps({**r, "worker_class": args.worker_class}), flush=True)
            out["ingest_events_per_s"] = r["events_per_s"]
        if args.no_pages:
            return
        sent: dict[str, float] = {}
        pages = Pages(base, args.pages, sent, args.deflate)
        t0 = time.monotonic()
        pages.connect()
        out["open_pages"] = pages.open
        out["connect_seconds"] = round(time.monotonic() - t0, 1)
        print(json.dumps({"phase": "connected", "open": pages.open, "refused": pages.closed[:3],
                          "seconds": out["connect_seconds"]}), flush=True)  # fmt: skip
        stop = threading.Event()
        seconds = args.minutes * 60
        result: dict[str, int] = {}
        pub = threading.Thread(
            target=lambda: result.update(n=publish(url, args.rate, seconds, sent, stop)),
            daemon=True,
        )
        applied0 = applied(base)
        samples: list[tuple[float, int, int]] = []
        t0 = time.monotonic()
        cpu0, own0 = tree_cpu(server.pid), time.process_time()
        pub.start()
        while pub.is_alive():
            rss, threads = tree_sample(server.pid)
            samples.append((round(time.monotonic() - t0, 1), rss, threads))
            print(json.dumps({"phase": "sample", "t": samples[-1][0], "rss_mb": round(rss / 2**20, 1),
                              "threads": threads, "latencies": len(pages.latencies),
                              "p95_ms": round(pct(pages.latencies[-5000:], 95) * 1000, 1),
                              "closed": len(pages.closed)}), flush=True)  # fmt: skip
            pub.join(5)
        wall = time.monotonic() - t0
        cpu = tree_cpu(server.pid) - cpu0
        own = time.process_time() - own0
        time.sleep(2)  # the last batches reach the pages
        lat = list(pages.latencies)
        got = applied(base) - applied0
        rss = [s[1] / 2**20 for s in samples]
        thr = [s[2] for s in samples]
        half = len(samples) // 2
        out.update({
            "published": result.get("n", 0), "applied": got,
            "open_at_end": pages.open - len(pages.closed), "closed": pages.closed[:5],
            "messages": pages.messages, "mb_received": round(pages.bytes / 2**20, 1),
            "measured": len(lat),
            "p50_ms": round(pct(lat, 50) * 1000, 1), "p95_ms": round(pct(lat, 95) * 1000, 1),
            "p99_ms": round(pct(lat, 99) * 1000, 1), "max_ms": round(max(lat, default=0) * 1000, 1),
            "rss_mb_first": round(rss[0], 1), "rss_mb_last": round(rss[-1], 1),
            "rss_mb_max": round(max(rss), 1),
            "rss_mb_mean_first_half": round(statistics.mean(rss[:half] or rss), 1),
            "rss_mb_mean_second_half": round(statistics.mean(rss[half:]), 1),
            "threads_min": min(thr), "threads_max": max(thr),
            # the sample nearest each whole minute (0, 1, 2, ...) of the phase
            "rss_mb_per_minute": [round(s[1] / 2**20, 1) for s in per_minute(samples)],
            "threads_per_minute": [s[2] for s in per_minute(samples)],
            "server_cpu_per_s": round(cpu / wall, 3), "bench_cpu_per_s": round(own / wall, 3),
            "load_average": os.getloadavg()[0],
        })  # fmt: skip
        print(json.dumps({"phase": "summary", **out}), flush=True)
    finally:
        if pages is not None:
            pages.stop()
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        redis_proc.terminate()
        redis_proc.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
