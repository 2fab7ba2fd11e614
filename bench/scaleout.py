"""CPU of the monitor under gunicorn -w N with one ingester, against one process doing the work.

    python bench/scaleout.py --tasks 30000 --rate 20000

For each set-up (1 process; N processes with ``CELERY_MONITOR_SINGLE_INGESTER``; N processes
each consuming), starts a private redis-server and ``gunicorn -w N`` serving
``tests.apps.scaled`` with a SQLite history, publishes ``--tasks`` tasks of synthetic events
with ``bench/flood.py`` at ``--rate`` events/s, waits until every process finds them all in
the store, and prints one JSON line: the CPU seconds of the gunicorn workers (summed, and the
busiest one) and the ratio to the single process.

**Failover** (the single-ingester set-up, after the CPU figures): while ``bench/flood.py``
events keep arriving at ``--failover-rate`` events/s, the ingester (the process holding the
lease key ``celerymon:<cluster>:ingester`` in Redis) is killed with SIGKILL. Printed, in
seconds from the kill: ``lease_taken_s`` (the key names another holder; Redis polled every
10 ms) and ``first_event_s`` (the first ``/whoami`` answer from the new holder counting a
consumed event; ``/whoami`` polled every 20 ms, so up to about 0.1 s late when the balancer
hands the polls to other processes). The lease TTL is ``tests.apps.scaled``'s (3 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psutil
import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flood  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _whoami(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/whoami", timeout=10) as r:
            return json.load(r)
    except OSError:
        return None


def _trickle(url: str, rate: float, stop: threading.Event) -> None:
    """Publish flood events at ``rate`` events/s (10 ms batches) until ``stop`` is set."""
    client = redis.Redis.from_url(url)
    stream = flood.events(10_000_000, 4, seed=11)
    t0, n = time.perf_counter(), 0
    while not stop.is_set():
        due = int((time.perf_counter() - t0) * rate) - n
        if due > 0:
            pipe = client.pipeline(transaction=False)
            for _ in range(due):
                rk, ev = next(stream)
                ev["timestamp"] = time.time()
                pipe.publish("/0.celeryev/" + rk, flood.envelope(ev, rk))
            pipe.execute()
            n += due
        time.sleep(0.01)
    client.close()


def failover(url: str, port: int, rate: float) -> dict:
    """SIGKILL the ingester under a stream of events; seconds until a successor holds the lease
    and until it has consumed an event (see the module docstring)."""
    client = redis.Redis.from_url(url)
    stop = threading.Event()
    pub = threading.Thread(target=_trickle, args=(url, rate, stop), daemon=True)
    pub.start()
    try:
        keys = client.keys("celerymon:*:ingester")
        if not keys:
            return {"failover": "no lease key"}
        key = keys[0]
        holder = client.get(key)
        pid = int(holder.decode().split(":")[1])  # host:pid:random
        time.sleep(1.0)  # events are flowing to the ingester
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        taken = first = None
        while time.monotonic() - t0 < 30 and first is None:
            now = client.get(key)
            if taken is None and now is not None and now != holder:
                taken = time.monotonic() - t0
            if taken is not None:
                a = _whoami(port)
                if a and a["role"] == "ingester" and a["pid"] != pid and a["events_received"]:
                    first = time.monotonic() - t0
                    break
                time.sleep(0.02)
            else:
                time.sleep(0.01)
        return {"failover_rate": rate,
                "lease_taken_s": None if taken is None else round(taken, 2),
                "first_event_s": None if first is None else round(first, 2)}  # fmt: skip
    finally:
        stop.set()
        pub.join(5)
        client.close()


def run(workers: int, single: bool, tasks: int, rate: float, failover_rate: float = 0) -> dict:
    work = tempfile.mkdtemp(prefix="cm-scale-")
    rport, port = _port(), _port()
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(rport), "--save", "",
         "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{rport}/0"
    env = {**os.environ, "CELERYMON_TEST_BROKER": url,
           "CELERYMON_TEST_DB": os.path.join(work, "m.sqlite3"),
           "CELERYMON_SINGLE_INGESTER": "1" if single else "0"}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
         "tests.apps.scaled:create_app()"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < workers and time.monotonic() < deadline:
            a = _whoami(port)
            if a:
                pids.add(a["pid"])
        procs = [psutil.Process(p) for p in pids]
        time.sleep(TTL_SETTLE)  # a lease holder is chosen, the consumer connects
        before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "flood.py"), "--url", url,
             "--tasks", str(tasks), "--rate", str(rate)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        done: set[int] = set()
        while len(done) < workers and time.monotonic() - t0 < 300:
            a = _whoami(port)
            if a and a["tasks"] >= tasks:
                done.add(a["pid"])
            time.sleep(0.1)  # the polling costs the processes CPU too: keep it light
        elapsed = time.monotonic() - t0
        cpu = {p.pid: sum(p.cpu_times()[:2]) - before[p.pid] for p in procs}
        out = {"workers": workers, "single_ingester": single, "tasks": tasks,
               "seconds_to_all_answering": round(elapsed, 1),
               "cpu_s_total": round(sum(cpu.values()), 2),
               "cpu_s_busiest": round(max(cpu.values()), 2),
               "cpu_s_each": sorted((round(c, 2) for c in cpu.values()), reverse=True)}  # fmt: skip
        if failover_rate and single and workers > 1:
            out.update(failover(url, port, failover_rate))
        return out
    finally:
        server.terminate()
        server.wait(30)
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


TTL_SETTLE = 4.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=30_000)
    p.add_argument("--rate", type=float, default=20_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--failover-rate",
        type=float,
        default=1000,
        help="events/s while the ingester is killed (0: no failover run)",
    )
    a = p.parse_args()
    base = run(1, True, a.tasks, a.rate)
    print(json.dumps(base), flush=True)
    for single in (True, False):
        r = run(a.workers, single, a.tasks, a.rate, a.failover_rate)
        r["cpu_ratio_to_one_process"] = round(r["cpu_s_total"] / base["cpu_s_total"], 2)
        print(json.dumps(r), flush=True)
    print(json.dumps({"load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()
