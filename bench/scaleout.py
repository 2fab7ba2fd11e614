"""CPU of the monitor under gunicorn -w N with one ingester, against one process doing the work.

    python bench/scaleout.py --tasks 30000 --rate 20000

For each set-up (1 process; N processes with ``CELERY_MONITOR_SINGLE_INGESTER``; N processes
each consuming), starts a private redis-server and ``gunicorn -w N`` serving
``tests.apps.scaled`` with a SQLite history, publishes ``--tasks`` tasks of synthetic events
with ``bench/flood.py`` at ``--rate`` events/s, waits until every process finds them all in
the store, and prints one JSON line: the CPU seconds of the gunicorn workers (summed, and the
busiest one) and the ratio to the single process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

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


def run(workers: int, single: bool, tasks: int, rate: float) -> dict:
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
        return {"workers": workers, "single_ingester": single, "tasks": tasks,
                "seconds_to_all_answering": round(elapsed, 1),
                "cpu_s_total": round(sum(cpu.values()), 2),
                "cpu_s_busiest": round(max(cpu.values()), 2)}  # fmt: skip
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
    a = p.parse_args()
    base = run(1, True, a.tasks, a.rate)
    print(json.dumps(base), flush=True)
    for single in (True, False):
        r = run(a.workers, single, a.tasks, a.rate)
        r["cpu_ratio_to_one_process"] = round(r["cpu_s_total"] / base["cpu_s_total"], 2)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
