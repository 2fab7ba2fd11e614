"""Publish synthetic Celery task and worker events to Redis, as a worker's event dispatcher would.

Each task goes through task-received -> task-started -> task-succeeded (5 % task-failed with a
traceback), with realistic fields (argsrepr/kwargsrepr, root/parent ids, hostname, pid, clock,
utcoffset); every worker sends a heartbeat each second. Messages are kombu's exact envelope
(JSON, base64 body) published on ``/{db}.celeryev/<routing key>`` like kombu's Redis transport.

    python bench/flood.py --url redis://127.0.0.1:6379/0 --tasks 100000 --rate 9000

``--rate`` is events per second (0 = as fast as possible). Prints a JSON summary line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import time
import uuid as uuidlib
from collections.abc import Iterator
from typing import Any

import redis

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


def envelope(event: dict[str, Any], routing_key: str) -> bytes:
    body = base64.b64encode(json.dumps(event).encode()).decode()
    msg = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": event["hostname"]},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuidlib.uuid4()),
        },
    }
    return json.dumps(msg).encode()


def events(n_tasks: int, n_workers: int, seed: int = 1) -> Iterator[tuple[str, dict[str, Any]]]:
    """(routing key, event) for ``n_tasks`` tasks interleaved over ``n_workers`` workers."""
    rnd = random.Random(seed)
    workers = [f"celery@bench-{i}" for i in range(n_workers)]
    clock = 0
    last_hb = 0.0
    inflight: list[list[tuple[str, dict[str, Any]]]] = []
    for i in range(n_tasks):
        now = time.time()
        if now - last_hb >= 1.0:
            last_hb = now
            for w in workers:
                clock += 1
                yield "worker.heartbeat", {
                    "hostname": w, "utcoffset": 0, "pid": 1000, "clock": clock, "freq": 2.0,
                    "active": rnd.randint(0, 8), "processed": i, "loadavg": [0.5, 0.4, 0.3],
                    "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux",
                    "timestamp": now, "type": "worker-heartbeat",
                }  # fmt: skip
        w = workers[i % n_workers]
        tid = str(uuidlib.UUID(int=rnd.getrandbits(128), version=4))
        name = TASK_NAMES[i % len(TASK_NAMES)]
        oid = 100000 + i
        base = {"hostname": w, "utcoffset": 0, "pid": 1000 + i % 8, "uuid": tid}
        failed = i % 20 == 19
        steps = [
            ("task.received", {
                **base, "name": name, "args": f"({oid}, 'customer-{oid % 977}')",
                "kwargs": f"{{'priority': {oid % 3}, 'user_id': {oid % 5000}}}",
                "root_id": tid, "parent_id": None, "retries": 0, "eta": None,
                "expires": None, "type": "task-received",
            }),
            ("task.started", {**base, "type": "task-started"}),
            ("task.failed", {
                **base, "exception": f"PaymentDeclined({oid})",
                "traceback": TRACEBACK.format(oid=oid), "type": "task-failed",
            }) if failed else
            ("task.succeeded", {
                **base, "result": f"{{'order': {oid}, 'status': 'ok'}}",
                "runtime": round(rnd.uniform(0.001, 0.2), 6), "type": "task-succeeded",
            }),
        ]  # fmt: skip
        inflight.append(steps)
        # interleave: emit the next step of a few in-flight tasks
        while len(inflight) > 4 or (i == n_tasks - 1 and inflight):
            steps = inflight[0]
            rk, ev = steps.pop(0)
            clock += 1
            ev["clock"] = clock
            ev["timestamp"] = time.time()
            yield rk, ev
            if not steps:
                inflight.pop(0)
            else:
                inflight.append(inflight.pop(0))


def prebuild(n_tasks: int, n_workers: int = 4, seed: int = 1) -> list[tuple[str, bytes]]:
    """All messages of a flood, built ahead so publishing runs at full speed."""
    return [(rk, envelope(ev, rk)) for rk, ev in events(n_tasks, n_workers, seed)]


def flood(
    url: str,
    n_tasks: int,
    rate: float,
    n_workers: int = 4,
    batch: int = 200,
    seed: int = 1,
    messages: list[tuple[str, bytes]] | None = None,
) -> dict:
    """Publish a flood; ``messages`` from :func:`prebuild` skips building them on the fly."""
    client = redis.Redis.from_url(url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    prefix = f"/{db}.celeryev/"
    sent = 0
    t0 = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    n = 0
    stream = (
        iter(messages)
        if messages is not None
        else ((rk, envelope(ev, rk)) for rk, ev in events(n_tasks, n_workers, seed))
    )
    for rk, msg in stream:
        pipe.publish(prefix + rk, msg)
        n += 1
        if n >= batch:
            pipe.execute()
            sent += n
            n = 0
            if rate > 0:
                ahead = sent / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    if n:
        pipe.execute()
        sent += n
    elapsed = time.perf_counter() - t0
    return {"events": sent, "tasks": n_tasks, "seconds": round(elapsed, 3),
            "events_per_s": round(sent / elapsed, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--tasks", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=9000, help="events/s, 0 = unlimited")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prebuild", action="store_true", help="build all messages first")
    a = p.parse_args()
    msgs = prebuild(a.tasks, a.workers, a.seed) if a.prebuild else None
    print(json.dumps(flood(a.url, a.tasks, a.rate, a.workers, seed=a.seed, messages=msgs)),
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
