"""Round-trip cost of ``celery.submit(fn).result()`` against raw ``apply_async().get()``.

Starts its own redis-server on a free loopback port and one ``celery worker -P solo`` for
``bench/submit_app.py``, then times N round trips of each kind, interleaved in batches so drift
on a noisy machine hits both alike, and prints the distribution and the ratio (target <= 1.2).

    python bench/submit_overhead.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(name: str, samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (
        f"{name:<34} n={len(ms):5d}  mean={statistics.mean(ms):6.3f} ms  "
        f"p50={percentile(ms, 50):6.3f}  p95={percentile(ms, 95):6.3f}  "
        f"p99={percentile(ms, 99):6.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="round trips of each kind")
    parser.add_argument("--batch", type=int, default=100, help="calls per interleaved batch")
    opts = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-submit-")
    port = free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker = f"redis://127.0.0.1:{port}/0"
    env = {
        **os.environ,
        "BENCH_BROKER_URL": broker,
        "FLASK_APP": "bench.submit_app:create_app",
        "PYTHONPATH": ROOT,
    }
    log = open(os.path.join(workdir, "worker.log"), "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "flask_celerymon.celery",
            "worker",
            "-P",
            "solo",
            "-n",
            "bench@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    try:
        os.environ["BENCH_BROKER_URL"] = broker
        sys.path.insert(0, ROOT)
        from celery.app.task import Task

        from bench import submit_app

        app = submit_app.create_app()
        celery_app = submit_app.celery.get_app(app)
        deadline = time.monotonic() + 30
        while not celery_app.control.inspect(timeout=0.5).ping():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("worker did not start; see " + log.name)
        task = celery_app.tasks[submit_app.add_task.name]

        def raw() -> None:
            # Celery's own apply_async, bypassing our PENDING bookkeeping.
            assert Task.apply_async(task, (1, 2)).get(timeout=10) == 3

        def submitted() -> None:
            assert submit_app.celery.submit(submit_app.add, 1, 2).result() == 3

        def submitted_timeout() -> None:
            assert submit_app.celery.submit(submit_app.add, 1, 2).result(timeout=10) == 3

        kinds = {
            "raw apply_async().get()": raw,
            "submit(fn).result()": submitted,
            "submit(fn).result(timeout=10)": submitted_timeout,
        }
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        with app.app_context():
            for fn in kinds.values():  # warm up connections and imports
                for _ in range(50):
                    fn()
            done = 0
            while done < opts.calls:
                n = min(opts.batch, opts.calls - done)
                for name, fn in kinds.items():
                    for _ in range(n):
                        t0 = time.perf_counter()
                        fn()
                        samples[name].append(time.perf_counter() - t0)
                done += n
        print(f"broker {broker}, worker -P solo, {opts.calls} round trips each, interleaved")
        for name, values in samples.items():
            print(summary(name, values))
        base = statistics.mean(samples["raw apply_async().get()"])
        for name in ("submit(fn).result()", "submit(fn).result(timeout=10)"):
            ratio = statistics.mean(samples[name]) / base
            p50 = percentile(samples[name], 50) / percentile(samples["raw apply_async().get()"], 50)
            print(f"ratio {name:<30} mean {ratio:5.2f}   p50 {p50:5.2f}   (target <= 1.20)")
    finally:
        gc.collect()  # drop pending AsyncResults while the backend can still answer them
        worker.terminate()
        worker.wait(10)
        redis.terminate()
        redis.wait(5)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
