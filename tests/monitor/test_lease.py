"""The ingester lease and the fan-out to followers, against a real Redis."""

from __future__ import annotations

import time

import pytest
import redis
from celery import Celery

from flask_celerymon.errors import CeleryMonError
from flask_celerymon.monitor.lease import RedisLease, redis_client
from flask_celerymon.monitor.metrics import check_health

from .conftest import service_pair, task_events, wait_for


def test_only_one_holder_and_only_the_holder_renews_or_releases(redis_url):
    client = redis.Redis.from_url(redis_url)
    a = RedisLease(client, "celerymon:t:ingester", ttl=5.0, ident="a")
    b = RedisLease(client, "celerymon:t:ingester", ttl=5.0, ident="b")
    assert a.acquire()
    assert not b.acquire()
    assert not b.renew()
    b.release()  # not b's: nothing happens
    assert a.holder() == "a"
    assert a.renew()
    a.release()
    assert a.holder() is None
    assert b.acquire() and b.holder() == "b"
    client.close()


def test_a_lease_nobody_renews_expires_within_its_ttl(redis_url):
    client = redis.Redis.from_url(redis_url)
    a = RedisLease(client, "celerymon:t:ingester", ttl=0.3, ident="a")
    b = RedisLease(client, "celerymon:t:ingester", ttl=0.3, ident="b")
    assert a.acquire()
    t0 = time.monotonic()
    assert not b.acquire()  # held
    wait_for(b.acquire, timeout=5, interval=0.01)
    # Redis expires the key (PX); the margin is for polling on a loaded machine
    assert 0.3 - 0.05 <= time.monotonic() - t0 <= 0.3 + 1.0
    client.close()


def test_the_lease_needs_a_redis_broker():
    with pytest.raises(CeleryMonError) as exc:
        redis_client(Celery("x", broker="amqp://guest@localhost//"))
    assert str(exc.value) == (
        "CELERY_MONITOR_SINGLE_INGESTER needs a Redis broker for its lease, not amqp://; "
        "run one standalone monitor (flask celery monitor) instead"
    )


def _pair(redis_url, make_service, tmp_path):
    return service_pair(make_service, redis_url, str(tmp_path / "shared.sqlite3"))


def test_followers_answer_from_the_store_and_hear_each_change(redis_url, make_service, tmp_path):
    ingester, follower = _pair(redis_url, make_service, tmp_path)
    with follower.subscribe(kinds=("task", "worker")) as sub:
        # both services' fan-out threads have subscribed: a change published before is lost
        cluster = follower._coordinator.lease
        wait_for(lambda: cluster.client.pubsub_numsub(cluster.channel)[0][1] >= 2, timeout=10)
        ingester.apply_events(task_events(6))
        ingester.apply_events([{"type": "worker-online", "hostname": "w-9@host",
                                "timestamp": time.time(), "freq": 2.0}])  # fmt: skip
        got: dict[str, dict] = {}

        def heard_all() -> bool:
            for item in sub.get(timeout=0.2):
                got[item["id"]] = item
            return len([k for k in got if got[k]["type"] == "task"]) == 6 and "w-9@host" in got

        wait_for(heard_all, timeout=10)
    first = "00000000-0000-4000-8000-000000000000"
    assert got[first]["data"]["state"] == "SUCCESS"  # read from the shared store
    assert follower.query_tasks(limit=None).total == 6
    assert follower.worker("w-9@host")["freq"] == 2.0
    assert follower.figures()["events_received"] == 0
    assert (follower.figures()["role"], ingester.figures()["role"]) == ("follower", "ingester")
    # consuming nothing is a follower's job, not a fault
    assert check_health(follower) == (True, "", {"service": True, "events": True, "broker": True})


def test_an_ingester_that_loses_its_lease_stops_ingesting(redis_url, make_service, tmp_path):
    ingester, follower = _pair(redis_url, make_service, tmp_path)
    assert ingester.wait_connected(10)
    client = redis.Redis.from_url(redis_url)
    # the lease went to someone else (it expired during a long pause, say)
    client.set("celerymon:pair:ingester", "someone-else", px=60_000)
    wait_for(lambda: ingester.role == "follower", timeout=0.6 / 3 + 2)
    assert not ingester.figures()["connected"]
    assert follower.role == "follower"
    client.delete("celerymon:pair:ingester")  # someone-else is gone: one of ours takes over
    wait_for(lambda: sorted((ingester.role, follower.role)) == ["follower", "ingester"], 5)
    client.close()


def test_a_follower_that_takes_over_answers_what_the_previous_ingester_wrote(
    redis_url, make_service, tmp_path
):
    # Both started on an empty store. The follower's window then holds only what it
    # consumes itself once it leads: it must answer from the store, not from that window
    # (before, the promoted process answered only the tasks it had consumed, for good).
    ingester, follower = _pair(redis_url, make_service, tmp_path)
    ingester.apply_events(task_events(6))
    ingester.stop()  # writes its changes, then gives the lease up
    wait_for(lambda: follower.role == "ingester", timeout=5)
    later = [dict(e, uuid=e["uuid"].replace("-0000-", "-1111-"))
             for e in task_events(2, start=1_700_001_000.0)]  # fmt: skip
    follower.apply_events(later)
    # its own new tasks show once written (as for every process answering from the store)
    wait_for(lambda: follower.query_tasks(limit=None).total == 8, timeout=5)
    assert follower.query_tasks(limit=None, source="store").total == 8


@pytest.mark.parametrize("broker", ["amqp://guest@localhost//", "memory://"])
def test_init_app_refuses_a_single_ingester_without_a_redis_broker(broker):
    from flask import Flask

    from flask_celerymon import Celery as FlaskCelery
    from flask_celerymon.errors import ConfigurationError

    app = Flask(__name__)
    app.config.update(CELERY_BROKER_URL=broker, CELERY_MONITOR_SINGLE_INGESTER=True,
                      CELERY_START_LOCAL_WORKERS=False)  # fmt: skip
    with pytest.raises(ConfigurationError) as exc:
        FlaskCelery(app)
    scheme = broker.partition("://")[0]
    assert str(exc.value) == (
        "CELERY_MONITOR_SINGLE_INGESTER needs a Redis broker or a PostgreSQL CELERY_MONITOR_DB "
        f"for its lease, not {scheme}:// with CELERY_MONITOR_DB = None; run one standalone "
        "monitor (flask celery monitor) instead"
    )
