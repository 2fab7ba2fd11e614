"""The ingester lease and the fan-out in PostgreSQL (brokers that are not Redis): a real
PostgreSQL server, and a real RabbitMQ for the pair of services."""

from __future__ import annotations

import json
import threading
import time

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
        wait_for(b.acquire, timeout=5, interval=0.01)
        assert time.monotonic() - t0 <= 0.3 + 0.1
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


def test_a_large_change_is_split_into_notifications_that_all_arrive(postgres_url):
    leader = PgCluster(postgres_url, "big", ttl=5.0)
    heard: list[tuple[list[str], list[str], list[str]]] = []
    follower = Coordinator(
        PgCluster(postgres_url, "big", ttl=5.0), 5.0, on_lead=lambda: None,
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
        t = threading.Thread(target=follower._run_fanout, daemon=True)
        t.start()
        time.sleep(0.5)  # the follower listens
        tasks = [f"{i:08d}-0000-4000-8000-000000000000" for i in range(1000)]
        ingester.publish(tasks, ["w-1@host"], ["errors"])
        wait_for(lambda: sum(len(m[0]) for m in heard) == 1000, timeout=10)
        assert len(sent) > 1 and all(len(m.encode()) <= MAX_MESSAGE for m in sent)
        assert [t for m in heard for t in m[0]] == tasks
        assert [w for m in heard for w in m[1]] == ["w-1@host"]
        assert [x for m in heard for x in m[2]] == ["errors"]
        assert json.loads(sent[0])["tasks"] == tasks[: len(json.loads(sent[0])["tasks"])]
    finally:
        follower._stop.set()
        follower.lease.close()
        leader.close()


def test_an_id_too_long_for_a_notification_does_not_stop_the_others(postgres_url):
    """A task id is whatever a client sent: one longer than a notification (or escaped to
    6 bytes a character) is left to the store; the other ids, NUL bytes and quotes included,
    arrive."""
    leader = PgCluster(postgres_url, "longid", ttl=5.0)
    heard: list[tuple[list[str], list[str], list[str]]] = []
    follower = Coordinator(
        PgCluster(postgres_url, "longid", ttl=5.0), 5.0, on_lead=lambda: None,
        on_follow=lambda: None, on_changes=lambda *msg: heard.append(msg),
    )  # fmt: skip
    ingester = Coordinator(leader, 5.0, lambda: None, lambda: None, lambda *a: None)
    try:
        assert leader.acquire()
        ingester.leading = True
        t = threading.Thread(target=follower._run_fanout, daemon=True)
        t.start()
        time.sleep(0.5)  # the follower listens
        odd = ["a\x00b'; NOTIFY x; --", 'q"uote\\', "\u65e5" * 10]
        tasks = ["x" * 9000, *odd, "\u65e5" * 1400, "last"]
        ingester.publish(tasks, ["w" * 8000, "w-1@host"], ["errors"])
        wait_for(lambda: "w-1@host" in [w for m in heard for w in m[1]], timeout=10)
        assert [t for m in heard for t in m[0]] == [*odd, "last"]
        assert [x for m in heard for x in m[2]] == ["errors"]
    finally:
        follower._stop.set()
        follower.lease.close()
        leader.close()


def test_followers_over_rabbitmq_hear_each_change_through_postgresql(
    rabbitmq, amqp_vhost, postgres_url, make_service
):
    ingester, follower = service_pair(
        make_service, rabbitmq.url(amqp_vhost), postgres_url, name="pgpair"
    )
    with follower.subscribe(kinds=("task",)) as sub:
        time.sleep(0.5)  # the follower's fan-out thread listens
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
