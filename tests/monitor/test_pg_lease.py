"""The ingester lease and the fan-out in PostgreSQL (brokers that are not Redis): a real
PostgreSQL server, and a real RabbitMQ for the pair of services."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

import psycopg
from celery import Celery

from flask_celerymon.monitor.lease import Coordinator, open_cluster
from flask_celerymon.monitor.pg_lease import MAX_MESSAGE, PgCluster

from .conftest import service_pair, task_events, wait_for


def test_one_holder_renews_releases_and_writes_cluster_values(postgres_url):
    a = PgCluster(postgres_url, "t", ttl=5.0, ident="a")
    b = PgCluster(postgres_url, "t", ttl=5.0, ident="b")
    try:
        assert a.acquire()
        assert not b.acquire()
        assert not b.renew()
        b.release()  # not b's: nothing happens
        assert a.holder() == b.holder() == "a"
        assert a.renew()
        assert a.set_if_held("k", b"one") and b.get("k") == b"one"
        assert not b.set_if_held("k", b"two") and a.get("k") == b"one"
        assert b.get("missing") is None
        a.release()
        assert a.holder() is None
        assert b.acquire() and a.holder() == "b"
        assert not a.set_if_held("k", b"three") and b.set_if_held("k", b"four")
        assert a.get("k") == b"four"
    finally:
        a.close()
        b.close()


def test_a_lease_nobody_renews_expires_within_its_ttl(postgres_url):
    a = PgCluster(postgres_url, "t", ttl=0.3, ident="a")
    b = PgCluster(postgres_url, "t", ttl=0.3, ident="b")
    try:
        assert a.acquire()
        t0 = time.monotonic()
        assert not b.acquire()  # held
        wait_for(b.acquire, timeout=5, interval=0.01)
        # the TTL is kept by the server's clock; the margin is for polling on a loaded machine
        assert 0.3 - 0.05 <= time.monotonic() - t0 <= 0.3 + 1.0
        assert not a.renew()  # ran out: no longer a's
    finally:
        a.close()
        b.close()


def test_the_lease_lives_in_postgresql_only_without_a_redis_broker(postgres_url, redis_url):
    lease = open_cluster(Celery(broker="amqp://guest@localhost//"), "t", 1.0, postgres_url)
    assert isinstance(lease, PgCluster)
    lease.close()
    lease = open_cluster(Celery(broker=redis_url), "t", 1.0, postgres_url)
    assert not isinstance(lease, PgCluster)  # a Redis broker keeps it
    lease.close()


def wait_listening(lease: PgCluster, sessions: int) -> None:
    """Wait until ``sessions`` connections LISTEN on ``lease``'s channel (their last statement
    in ``pg_stat_activity``): a notification sent before is not heard."""
    listen = f'LISTEN "{lease.channel}"'
    with psycopg.connect(lease.url, autocommit=True) as conn:
        wait_for(
            lambda: conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s", (listen,)
            ).fetchone()[0]
            >= sessions,
            timeout=10,
        )


@contextlib.contextmanager
def fanout(postgres_url: str, name: str) -> Iterator[tuple[Coordinator, list, list[str]]]:
    """An ingester leading cluster ``name`` and a follower whose fan-out thread LISTENs (waited
    for in ``pg_stat_activity``, not slept for); yields the ingester, what the follower heard
    (``(tasks, workers, topics)`` per notification) and each notification the leader sent."""
    leader = PgCluster(postgres_url, name, ttl=5.0)
    heard: list[tuple[list[str], list[str], list[str]]] = []
    follower = Coordinator(
        PgCluster(postgres_url, name, ttl=5.0), 5.0, on_lead=lambda: None,
        on_follow=lambda: None, on_changes=lambda *msg: heard.append(msg),
    )  # fmt: skip
    sent: list[str] = []
    original = leader.publish

    def publish(message: str) -> None:
        sent.append(message)
        original(message)

    leader.publish = publish  # type: ignore[method-assign] - to see each notification sent
    ingester = Coordinator(leader, 5.0, lambda: None, lambda: None, lambda *a: None)
    try:
        assert leader.acquire()
        ingester.leading = True
        threading.Thread(target=follower._run_fanout, daemon=True).start()
        wait_listening(leader, 1)
        yield ingester, heard, sent
    finally:
        follower._stop.set()
        follower.lease.close()
        leader.close()


def test_a_large_change_is_split_into_notifications_that_all_arrive(postgres_url):
    with fanout(postgres_url, "big") as (ingester, heard, sent):
        tasks = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(1000)]
        ingester.publish(tasks, ["w-1@host"], ["errors"])
        wait_for(lambda: sum(len(m[0]) for m in heard) == 1000, timeout=10)
        assert len(sent) > 1 and all(len(m.encode()) <= MAX_MESSAGE for m in sent)
        assert [t for m in heard for t in m[0]] == tasks
        assert [w for m in heard for w in m[1]] == ["w-1@host"]
        assert [x for m in heard for x in m[2]] == ["errors"]
        assert json.loads(sent[0])["tasks"] == tasks[: len(json.loads(sent[0])["tasks"])]


def test_an_id_too_long_for_a_notification_does_not_stop_the_others(postgres_url):
    """A task id is whatever a client sent: one longer than a notification (or escaped to
    6 bytes a character) is left to the store; the other ids, NUL bytes and quotes included,
    arrive."""
    with fanout(postgres_url, "longid") as (ingester, heard, _sent):
        odd = ["a\x00b'; NOTIFY x; --", 'q"uote\\', "\u65e5" * 10]
        tasks = ["x" * 9000, *odd, "\u65e5" * 1400, "last"]
        ingester.publish(tasks, ["w" * 8000, "w-1@host"], ["errors"])
        wait_for(lambda: "w-1@host" in [w for m in heard for w in m[1]], timeout=10)
        assert [t for m in heard for t in m[0]] == [*odd, "last"]
        assert [x for m in heard for x in m[2]] == ["errors"]


def test_followers_over_rabbitmq_hear_each_change_through_postgresql(
    rabbitmq, amqp_vhost, postgres_url, make_service
):
    ingester, follower = service_pair(
        make_service, rabbitmq.url(amqp_vhost), postgres_url, name="pgpair"
    )
    with follower.subscribe(kinds=("task",)) as sub:
        wait_listening(follower._coordinator.lease, 2)  # both services' fan-out threads
        ingester.apply_events(task_events(6))
        got: dict[str, dict] = {}

        def heard_all() -> bool:
            for item in sub.get(timeout=0.2):
                got[item["id"]] = item
            return len(got) == 6

        wait_for(heard_all, timeout=10)
    assert follower.query_tasks(limit=None).total == 6
    assert follower.figures()["events_received"] == 0
    # the ingester stops: the follower takes the lease over within the bound
    ingester.stop()
    wait_for(lambda: follower.role == "ingester", timeout=0.6 * 4 / 3 + 1)
