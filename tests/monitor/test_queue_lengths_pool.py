"""Queue lengths on Redis read through Celery's broker connection pool, with a fallback to a
connection of their own when the pool is busy or its connection went stale (a real Redis
server, restarted by the test)."""

from __future__ import annotations

import redis
from celery import Celery

from flask_celerymon.monitor import broker


def _connections(r: redis.Redis) -> int:
    return int(r.info("stats")["total_connections_received"])


def test_lengths_reuse_a_pooled_connection(own_redis):
    app = Celery("pool", broker=own_redis.url(3))
    r = redis.Redis(port=own_redis.port, db=3)
    r.rpush("celery", b"x", b"y")
    try:
        assert broker.queue_lengths(app, ["celery"]) == [{"name": "celery", "messages": 2}]
        before = _connections(r)
        for _ in range(20):
            assert broker.queue_lengths(app, ["celery", "other"]) == [
                {"name": "celery", "messages": 2},
                {"name": "other", "messages": 0},
            ]
        assert _connections(r) == before  # each call had opened a connection of its own
    finally:
        app.pool.force_close_all()
        r.close()


def test_a_busy_pool_or_a_restarted_broker_still_gives_the_lengths(own_redis, monkeypatch):
    monkeypatch.setattr(broker, "POOL_WAIT", 0.05)
    app = Celery("busy", broker=own_redis.url(4))
    app.conf.broker_pool_limit = 1
    r = redis.Redis(port=own_redis.port, db=4)
    r.rpush("celery", b"x")
    try:
        assert broker.queue_lengths(app, ["celery"]) == [{"name": "celery", "messages": 1}]
        with app.pool.acquire(block=True):  # the host app holds the pool's one connection
            assert broker.queue_lengths(app, ["celery"]) == [{"name": "celery", "messages": 1}]
        own_redis.stop()
        own_redis.start()  # the pooled connection's socket is now dead
        r = redis.Redis(port=own_redis.port, db=4)
        r.rpush("celery", b"x", b"y", b"z")
        assert broker.queue_lengths(app, ["celery"]) == [{"name": "celery", "messages": 3}]
        assert broker.queue_lengths(app, ["celery"]) == [{"name": "celery", "messages": 3}]
    finally:
        app.pool.force_close_all()
        r.close()
