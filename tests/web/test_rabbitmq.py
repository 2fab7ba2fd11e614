"""The monitor against a real RabbitMQ (with its management plugin) and a real worker.

The worker and task control tests of test_api.py run here again, unchanged, with this
module's ``monitored`` (a RabbitMQ broker in a virtual host of its own, queue lengths from the
management API, the default ``rpc://`` result backend): the event consumer (kombu's AMQP path),
every worker and task control action, revoke, retry and bulk actions. What differs from Redis
is tested below: purging, queue lengths from the management API and by passive declare, and
the message listing that only Redis can give.

RabbitMQ is never skipped: CI starts it (``.ci/rabbitmq``); without it these tests fail.
"""

from __future__ import annotations

import socket
import time
import urllib.parse
import uuid

import pytest

from flask_celerymon.monitor import broker as broker_lengths
from tests.conftest import WorkerProcess
from tests.web import test_api as redis_api
from tests.web.conftest import Monitored, make_monitored_app
from tests.web.test_api import ADD, SLEEP, Api, _send

# The control tests of test_api.py, in their order there, collected again with this module's
# fixtures.
test_async_apply_then_result_info_and_types = redis_api.test_async_apply_then_result_info_and_types
test_apply_of_a_failing_task_gives_the_exception_and_traceback = (
    redis_api.test_apply_of_a_failing_task_gives_the_exception_and_traceback
)
test_send_task_sends_an_unregistered_name_and_records_it = (
    redis_api.test_send_task_sends_an_unregistered_name_and_records_it
)
test_tasks_list_filters_sorts_pages_and_searches = (
    redis_api.test_tasks_list_filters_sorts_pages_and_searches
)
test_queue_lengths_list_the_worker_queues = redis_api.test_queue_lengths_list_the_worker_queues
test_workers_refresh_filter_and_status = redis_api.test_workers_refresh_filter_and_status
test_pool_grow_and_shrink = redis_api.test_pool_grow_and_shrink
test_pool_restart_and_autoscale_report_the_worker_refusal = (
    redis_api.test_pool_restart_and_autoscale_report_the_worker_refusal
)
test_rate_limit_and_time_limits = redis_api.test_rate_limit_and_time_limits
test_revoke_with_terminate_and_signal_kills_a_running_task = (
    redis_api.test_revoke_with_terminate_and_signal_kills_a_running_task
)
test_revoke_of_a_waiting_task_reaches_the_worker = (
    redis_api.test_revoke_of_a_waiting_task_reaches_the_worker
)
test_abort_marks_a_running_task_and_refuses_finished_ones = (
    redis_api.test_abort_marks_a_running_task_and_refuses_finished_ones
)
test_retry_resends_with_the_original_arguments_name_and_queue = (
    redis_api.test_retry_resends_with_the_original_arguments_name_and_queue
)
test_retry_of_a_failed_task_fails_the_same_way = (
    redis_api.test_retry_of_a_failed_task_fails_the_same_way
)
test_retry_refuses_unfinished_unknown_and_argumentless_tasks = (
    redis_api.test_retry_refuses_unfinished_unknown_and_argumentless_tasks
)
test_bulk_revoke_counts_in_dry_run_then_revokes = (
    redis_api.test_bulk_revoke_counts_in_dry_run_then_revokes
)
test_bulk_retry_resends_every_matching_finished_task = (
    redis_api.test_bulk_retry_resends_every_matching_finished_task
)
test_queue_operations_on_an_unknown_queue_are_404 = (
    redis_api.test_queue_operations_on_an_unknown_queue_are_404
)
test_autoscale_then_shutdown_of_a_worker = redis_api.test_autoscale_then_shutdown_of_a_worker


@pytest.fixture(scope="module")
def monitored(rabbitmq, amqp_vhost, redis_server, tmp_path_factory):
    """RabbitMQ as the broker, Redis as the result backend (a common production pair: retry
    and abort need a backend that stores states and arguments; rpc:// is tested below)."""
    broker = rabbitmq.url(amqp_vhost)
    backend = redis_server.url(254)
    tmp = tmp_path_factory.mktemp("rabbit")
    app = make_monitored_app(
        broker, str(tmp), CELERY_MONITOR_BROKER_API=rabbitmq.api + "/",
        CELERY_RESULT_BACKEND=backend, CELERY_MONITOR_QUEUES=("parked",),
    )  # fmt: skip
    name = f"rabbit@{socket.gethostname()}"
    worker = WorkerProcess(
        "tests.apps.basic:create_app",
        broker,
        name,
        str(tmp / "worker.log"),
        args=("-P", "prefork", "-c", "2", "-Q", "celery,high", "-E"),
        env={"CELERYMON_TEST_BACKEND": backend},
    )
    env = Monitored(app, broker, worker, name)
    try:
        worker.wait_ready(env.celery_app)
        env.service.ensure_started()
        assert env.service.wait_connected(20)
        yield env
    finally:
        env.state.shutdown()
        worker.stop()


@pytest.fixture(scope="module")
def api(monitored) -> Api:
    return Api(monitored.app)


def _lengths(api: Api) -> dict[str, dict]:
    return {q["name"]: q for q in api.get("/api/queues/length").json["active_queues"]}


def test_the_monitor_consumes_events_over_amqp(monitored, api):
    task_id = _send(api, ADD, 20, 22)
    monitored.wait_for(
        lambda: (t := monitored.service.task(task_id)) and t["state"] == "SUCCESS", timeout=20
    )
    task = monitored.service.task(task_id)
    assert task["result"] == "42"
    assert task["worker"] == monitored.worker_name
    assert monitored.service.figures()["events_received"] > 0


def test_purge_empties_a_queue_and_lengths_come_from_the_management_api(monitored, api, rabbitmq):
    """``parked`` is a configured queue (CELERY_MONITOR_QUEUES) that no worker consumes."""
    ids = [_send(api, ADD, i, i, queue="parked") for i in range(3)]
    # the management API refreshes its figures every few seconds
    parked = monitored.wait_for(
        lambda: (q := _lengths(api).get("parked")) and q.get("messages_ready") == 3 and q,
        timeout=30,
    )
    assert (parked["messages"], parked["consumers"]) == (3, 0)

    # listing and removing one message need Redis; AMQP says so instead of failing
    resp = api.get("/api/queues/messages/parked")
    assert resp.status_code == 409
    assert resp.json == {"error": "the amqp broker does not allow listing messages"}
    resp = api.post(f"/api/queues/remove/parked/{ids[0]}")
    assert resp.status_code == 409
    assert resp.json == {"error": "the amqp broker does not allow deleting one message"}

    resp = api.post("/api/queues/purge/parked")
    assert resp.json == {"message": "Purged 3 messages from 'parked'", "purged": 3}
    monitored.wait_for(lambda: _lengths(api)["parked"].get("messages_ready") == 0, timeout=30)


def test_lengths_by_passive_declare_without_the_management_api(monitored, api):
    app = monitored.celery_app
    _send(api, SLEEP, 0, queue="celery")
    lengths = broker_lengths.queue_lengths(app, ["celery", "high", "no-such-queue"])
    by_name = {q["name"]: q for q in lengths}
    assert set(by_name) == {"celery", "high", "no-such-queue"}
    assert by_name["celery"]["consumers"] == 1  # the worker
    assert by_name["no-such-queue"] == {"name": "no-such-queue", "messages": 0}
    assert all(isinstance(q["messages"], int) for q in lengths)


def test_the_consumer_comes_back_after_its_connection_is_closed(monitored, rabbitmq, api):
    """The management API closes the monitor's connection; the consumer reconnects."""
    svc = monitored.service
    before = svc.figures()["events_received"]

    def monitor_connections() -> list[str]:
        return [
            c["name"]
            for c in rabbitmq.request("GET", "/connections")
            if c.get("vhost") == monitored.broker.rsplit("/", 1)[1]
        ]

    conns = monitored.wait_for(monitor_connections, timeout=20)
    for c in conns:
        rabbitmq.request("DELETE", "/connections/" + urllib.parse.quote(c, safe=""))
    time.sleep(0.5)  # let the consumer notice before the task below is sent
    task_id = _send(api, ADD, 1, 2)
    monitored.wait_for(lambda: (t := svc.task(task_id)) and t["state"] == "SUCCESS", timeout=30)
    assert svc.figures()["events_received"] > before


def test_abort_with_the_rpc_backend_says_it_needs_a_backend_that_stores_states(
    monitored, amqp_vhost, rabbitmq, tmp_path
):
    app = make_monitored_app(
        rabbitmq.url(amqp_vhost), str(tmp_path), CELERY_RESULT_BACKEND="rpc://"
    )
    try:
        rpc_api = Api(app)
        # refused before the task is even looked up: rpc:// cannot store any task's state
        resp = rpc_api.post(f"/api/task/abort/{uuid.uuid4()}")
        assert resp.status_code == 409
        assert resp.json == {
            "error": "the rpc:// result backend cannot mark a task ABORTED; configure a result "
            "backend that stores states (CELERY_RESULT_BACKEND: Redis, a database...)"
        }
    finally:
        app.extensions["celerymon"].shutdown()
