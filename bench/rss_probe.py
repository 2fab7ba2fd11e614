"""Where the served monitor's RSS growth after a flood is, and when (diagnosis for issue 14).

    flock /tmp/core1.lock python bench/rss_probe.py [--configs 0:256,35000:256] [--pairs 2]

Runs ``flask celery monitor`` as ``bench/served_monitor.py`` does (same app, same recording,
core 1, ``BENCH_MEMSTATS``), replays the flood at each ``rate:backlog_mb`` of ``--configs``
(rate 0: as fast as Redis takes it, else events/s; the read-ahead bound in MB), the configs
interleaved ``--pairs`` times, a fresh monitor each time. Once the counter reached the published count it samples at ``--at`` seconds: the tree's
RSS (the figure served_monitor.py reports 1 s after), ``/proc/<pid>/smaps_rollup`` summed over
the tree (anonymous vs file, private dirty), and ``/_bench/memstats`` (glibc arenas, pymalloc,
the self-figures); at the last sample also after ``malloc_trim(0)``. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from typing import Any

import psutil
import redis

from bench import served_monitor as sm


def smaps(pid: int) -> dict[str, int]:
    """kB per field of smaps_rollup, summed over ``pid`` and its children."""
    total: dict[str, int] = {}
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/smaps_rollup") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 3 and parts[2] == "kB":
                        k = parts[0].rstrip(":")
                        total[k] = total.get(k, 0) + int(parts[1])
        except OSError:
            pass
    return total


def sample(
    mon: sm.Served, base: int, n: int, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    rss = mon.rss()
    sm_ = smaps(mon.proc.pid)
    base_path = os.environ["BENCH_MEMSTATS"]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(base_path + ".json")
    with open(base_path + ".req", "w") as fh:
        json.dump(extra or {}, fh)
    deadline = time.monotonic() + 30
    while not os.path.exists(base_path + ".json") and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        with open(base_path + ".json") as fh:
            stats = json.load(fh)
    except FileNotFoundError:
        stats = {"error": "no answer from the memstats hook in 30 s"}
    return {"per_task": round((rss - base) / n), "rss_mb": round(rss / 2**20, 1),
            "anon_mb": round(sm_.get("Anonymous", 0) / 1024, 1),
            "file_mb": round((sm_.get("Rss", 0) - sm_.get("Anonymous", 0)) / 1024, 1),
            "private_dirty_mb": round(sm_.get("Private_Dirty", 0) / 1024, 1),
            "stats": stats}  # fmt: skip


def one(
    url: str, flood: list, rate: float, backlog_mb: str, n: int, at: list[float], work: str
) -> dict[str, Any]:
    d = tempfile.mkdtemp(dir=work)
    client = redis.Redis.from_url(url)
    baseline = client.execute_command("PUBSUB", "NUMPAT")
    os.environ["BENCH_MEMSTATS"] = os.path.join(work, "memstats")
    os.environ["BENCH_EVENT_BACKLOG_MB"] = backlog_mb
    mon = sm.Ours(url, d, n)
    try:
        sm.wait_subscribed(url, baseline)
        time.sleep(2)
        base_rss = mon.rss()
        base_stats = sample(mon, base_rss, n)
        base = mon.counted()
        stamped_at = time.time()
        stamped = [(c, sm.restamp(x, stamped_at)) for c, x in flood]
        expected = sum(1 for c, _ in flood if sm.is_task_event(c))
        t0 = time.perf_counter()
        sm.boost(0, -10)
        pub = sm.replay(url, stamped, rate=rate)
        sm.boost(0, 0)
        during = []
        if os.environ.get("PROBE_DURING"):  # sample while the flood is applied (perturbs it)
            while mon.counted() < base + expected:
                st = sample(mon, base_rss, n)["stats"]
                during.append(
                    {
                        "t": round(time.perf_counter() - t0, 1),
                        "rss_mb": round(st["rss_kb"]["VmRSS"] / 1024),
                        "glibc_mb": st["malloc"]["totals_mb"].get("current"),
                        "pym_arenas": st["pymalloc"].get("arenas allocated current"),
                        "insight_pending": st.get("insight_pending"),
                        **{
                            k: st.get("figures", {}).get(k)
                            for k in ("backlog_bytes", "store_pending", "indexed", "events_applied")
                        },
                    }
                )
                time.sleep(0.5)
        counted, secs = sm.wait_counted(mon, base + expected, t0)
        done = time.perf_counter()
        res: dict[str, Any] = {"rate_asked": rate, "publish_per_s": pub["per_s"],
                               "rate": round((counted - base) / secs),
                               "lost": base + expected - counted,
                               "backlog_mb": backlog_mb, "base": base_stats,
                               "during": during}  # fmt: skip
        for i, s in enumerate(at):
            time.sleep(max(0.0, done + s - time.perf_counter()))
            last = i == len(at) - 1
            res[f"t{s:g}"] = sample(mon, base_rss, n, {"trim": "1", "types": "1"} if last else None)
        return res
    finally:
        mon.stop()
        shutil.copy(
            os.path.join(d, "ours.log"), os.path.join(tempfile.gettempdir(), "rss_probe-last.log")
        )
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument(
        "--configs",
        default="0:256,35000:256",
        help="rate:backlog_mb,... (rate 0: unthrottled; backlog_mb: CELERY_MONITOR_EVENT_BACKLOG_MB)",
    )
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--at", default="1,3,10,30")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "celerymon-served-bench"))
    a = p.parse_args()
    sm.pin(0)
    flood = sm.read_recording(os.path.join(a.cache, f"flood-{a.tasks}.bin"))
    at = [float(x) for x in a.at.split(",")]
    work = tempfile.mkdtemp(prefix="celerymon-rssprobe-")
    redis_proc, url = sm.start_redis(work)
    try:
        for pair in range(a.pairs):
            for conf in a.configs.split(","):
                rate, backlog_mb = conf.split(":")
                with open("/proc/loadavg") as fh:
                    load = fh.read().split()[0]
                res = one(url, flood, float(rate), backlog_mb, a.tasks, at, work)
                print(json.dumps({"pair": pair + 1, "load": load, **res}), flush=True)
    finally:
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
