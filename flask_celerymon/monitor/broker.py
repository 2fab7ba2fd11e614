"""Queue lengths per broker type.

* Redis (and the embedded Redis broker): ``LLEN`` of each queue summed over kombu's priority
  sub-queues (``queue``, ``queue\\x06\\x163``...), with ``global_keyprefix`` applied by kombu's
  own client, in one pipeline.
* RabbitMQ with ``CELERY_MONITOR_BROKER_API`` (management API URL): the API's queue objects
  (``messages``, ``messages_ready``, ``messages_unacknowledged``, ``consumers``...), one per
  name asked for (``messages`` 0 until the API has figures for a new queue).
* Any other transport (RabbitMQ without the API...): a passive ``queue_declare`` per queue,
  which gives ``messages`` and ``consumers``.

Every function returns ``[{"name": ..., "messages": int, ...}, ...]``, one item per name asked
for, in that order, or None when the broker gives no lengths.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)


def queue_names(app: Celery, active_queues: Iterable[Any], configured: Iterable[str]) -> list[str]:
    """Names from workers' ``active_queues`` results, our setting and Celery's queue config."""
    names: list[str] = []

    def add(n: Any) -> None:
        if isinstance(n, str) and n and n not in names:
            names.append(n)

    for q in active_queues:
        add(q.get("name") if isinstance(q, dict) else None)
    for n in configured:
        add(n)
    for q in app.conf.task_queues or ():
        add(getattr(q, "name", q if isinstance(q, str) else None))
    add(app.conf.task_default_queue)
    return names


def queue_lengths(
    app: Celery, names: list[str], broker_api: str | None = None
) -> list[dict] | None:
    """Lengths of ``names`` on ``app``'s broker; None if the broker cannot tell."""
    with app.connection_for_read() as conn:
        transport = conn.transport_cls if isinstance(conn.transport_cls, str) else ""
        driver = conn.transport.driver_type
        if driver == "redis":
            return _redis(conn, names)
        if driver == "amqp" and broker_api:
            return _rabbitmq_api(conn, names, broker_api)
        try:
            return _passive(conn, names)
        except Exception as exc:  # noqa: BLE001 - not every transport can declare passively
            log.info("celerymon: %s broker gives no queue lengths: %s", transport or driver, exc)
            return None


def _redis(conn: Any, names: list[str]) -> list[dict]:
    chan = conn.default_channel
    client = chan.client
    steps = list(getattr(chan, "priority_steps", [0]))
    with client.pipeline(transaction=False) as pipe:
        plan = []
        for name in names:
            keys = list(dict.fromkeys(chan._q_for_pri(name, p) for p in steps))
            plan.append((name, len(keys)))
            for k in keys:
                pipe.llen(k)
        counts = pipe.execute()
    out = []
    i = 0
    for name, n in plan:
        out.append({"name": name, "messages": int(sum(counts[i : i + n]))})
        i += n
    return out


def _rabbitmq_api(conn: Any, names: list[str], api: str) -> list[dict] | None:
    vhost = urllib.parse.quote(conn.virtual_host or "/", safe="")
    parsed = urllib.parse.urlsplit(api)
    user = parsed.username or conn.userid
    password = parsed.password or conn.password
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    base = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/"), "", ""))
    req = urllib.request.Request(f"{base}/queues/{vhost}")
    if user:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - operator-set URL
        data = json.load(resp)
    # A queue the API has no figures for yet (stats come every few seconds) or does not list
    # (not declared yet) still gets an integer "messages", as the other brokers give.
    by_name = {q.get("name"): q for q in data if isinstance(q, dict)}
    out = []
    for name in names:
        q = by_name.get(name, {"name": name})
        out.append({**q, "messages": int(q.get("messages") or 0)})
    return out


def _passive(conn: Any, names: list[str]) -> list[dict]:
    chan = conn.channel()
    out = []
    try:
        for name in names:
            try:
                ok = chan.queue_declare(queue=name, passive=True)
                out.append({"name": name, "messages": ok.message_count,
                            "consumers": ok.consumer_count})  # fmt: skip
            except conn.channel_errors:
                out.append({"name": name, "messages": 0})
                chan = conn.channel()
    finally:
        try:
            chan.close()
        except Exception:  # noqa: BLE001
            pass
    return out
