"""The ``flask celery`` commands, through ``app.test_cli_runner()`` and as real subprocesses."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
import simple_websocket

from tests.apps import local
from tests.conftest import free_port

HOST = socket.gethostname()
NODE = f"clitest@{HOST}"
FAST = {"concurrency": 1, "pool": "solo", "without_mingle": True, "without_gossip": True}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFUSED = (
    "Error: cannot connect to the broker at redis://:**@127.0.0.1:1/0: "
    "Error 111 connecting to 127.0.0.1:1. Connection refused.\n"
)
INSPECT_METHODS = (
    "active, active_queues, clock, conf, memdump, memsample, objgraph, ping, query_task, "
    "registered, report, reserved, revoked, scheduled, stats"
)


@pytest.fixture(scope="module")
def app(own_redis, tmp_path_factory):
    """An app whose one local worker ``clitest`` is running."""
    env = local.app_env(tmp_path_factory.mktemp("cli"), own_redis.url(220), {"clitest": FAST})
    with local.environment(env):
        flask_app = local.create_app()
        procs = flask_app.extensions["celerymon"].processes
        try:
            procs.start()
            yield flask_app
        finally:
            procs.stop(timeout=5)


@pytest.fixture
def run(app):
    runner = app.test_cli_runner()

    def invoke(*args: str):
        return runner.invoke(args=["celery", *args])

    return invoke


@pytest.fixture
def unreachable(tmp_path):
    with local.environment(local.app_env(tmp_path, "redis://:s3cret@127.0.0.1:1/0")):
        return local.create_app()


def test_status_prints_a_table_of_the_workers(run):
    result = run("status")
    assert result.exit_code == 0, result.output
    width = len(NODE)
    assert result.output == (f"{'WORKER':<{width}}  STATUS\n{NODE}  OK\n1 worker online\n")


def test_status_without_workers_fails_naming_the_broker(own_redis, tmp_path):
    url = own_redis.url(221)
    with local.environment(local.app_env(tmp_path, url)):
        empty = local.create_app()
    result = empty.test_cli_runner().invoke(args=["celery", "status", "--timeout", "0.2"])
    assert result.exit_code == 1
    assert result.output == f"Error: no worker replied within 0.2s on {url}\n"


def test_inspect_ping_prints_each_reply(run):
    result = run("inspect", "ping")
    assert result.exit_code == 0, result.output
    assert result.output == (f'-> {NODE}: OK\n    {{\n      "ok": "pong"\n    }}\n1 node replied\n')


def test_inspect_json_with_destination_prints_one_json_object(run):
    result = run("inspect", "registered", "--destination", NODE, "--json")
    assert result.exit_code == 0, result.output
    registered = json.loads(result.output)[NODE]
    assert "tests.apps.local.hourly_report" in registered
    assert "flask_celerymon.dispatch" in registered


def test_control_passes_typed_arguments(run):
    result = run("control", "rate_limit", "tests.apps.local.hourly_report", "10/m", "-j")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {NODE: {"ok": "new rate limit set successfully"}}


def test_inspect_unknown_method_is_a_one_line_usage_error(run):
    result = run("inspect", "bogus")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        f"Error: 'bogus' is not an inspect method; choose from: {INSPECT_METHODS}"
    )
    assert "Traceback" not in result.output


def test_control_unknown_method_is_a_usage_error(run):
    result = run("control", "explode")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].startswith(
        "Error: 'explode' is not a control method; choose from: add_consumer, autoscale,"
    )


def test_control_argument_of_the_wrong_type_is_a_usage_error(run):
    result = run("control", "pool_grow", "many")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: control pool_grow: n must be int, not 'many' (usage: pool_grow [N=1])"
    )


USAGE_GROW = "(usage: pool_grow [N=1])"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["control", "pool_grow", "99999999999999999999"],
         "Error: control pool_grow: n must be an integer from 1 to 1000, not "
         f"'99999999999999999999' {USAGE_GROW}"),
        (["control", "pool_grow", "-5"],
         f"Error: control pool_grow: n must be an integer from 1 to 1000, not '-5' {USAGE_GROW}"),
        (["control", "-d", NODE, "pool_grow", "0"],
         f"Error: control pool_grow: n must be an integer from 1 to 1000, not '0' {USAGE_GROW}"),
        (["control", "pool_shrink", "1001"],
         "Error: control pool_shrink: n must be an integer from 1 to 1000, not '1001' "
         "(usage: pool_shrink [N=1])"),
        (["control", "autoscale", "5000"],
         "Error: control autoscale: max must be an integer from 1 to 1000, not '5000' "
         "(usage: autoscale [max [min]])"),
        (["control", "autoscale", "4", "-1"],
         "Error: control autoscale: min must be an integer from 0 to 1000, not '-1' "
         "(usage: autoscale [max [min]])"),
        (["control", "autoscale", "2", "5"],
         "Error: control autoscale: min must be <= max, not min=5 max=2 "
         "(usage: autoscale [max [min]])"),
        (["control", "time_limit", "tests.apps.local.add", "nan"],
         "Error: control time_limit: soft must be a number from 0 to 315360000, not 'nan' "
         "(usage: time_limit <task_name> <soft_secs> [hard_secs])"),
        (["control", "time_limit", "tests.apps.local.add", "1", "-inf"],
         "Error: control time_limit: hard must be a number from 0 to 315360000, not '-inf' "
         "(usage: time_limit <task_name> <soft_secs> [hard_secs])"),
        (["inspect", "memdump", "100000000"],
         "Error: inspect memdump: samples must be an integer from 1 to 1000, not '100000000' "
         "(usage: memdump [n_samples=10])"),
        (["inspect", "objgraph", "Request", "10", "1000000"],
         "Error: inspect objgraph: max_depth must be an integer from 1 to 100, not '1000000' "
         "(usage: objgraph [object_type=Request] [num=200 [max_depth=10]])"),
    ],
)  # fmt: skip
def test_every_number_of_a_remote_command_is_checked_against_the_apis_range(run, args, error):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == error
    assert "Traceback" not in result.output


def test_a_negative_timeout_is_still_the_timeout_options_error(run):
    result = run("control", "-t", "-1", "pool_grow", "1")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '-t' / '--timeout': -1.0 is not in the range x>0."
    )


def test_pool_grow_within_range_still_reaches_the_worker(run):
    result = run("control", "pool_grow", "1", "-j")
    assert result.exit_code == 0, result.output
    assert NODE in json.loads(result.output)  # solo pool: the worker answers (with its error)


def test_inspect_with_extra_arguments_is_a_usage_error(run):
    result = run("inspect", "stats", "extra")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "Error: inspect stats takes no arguments"


def test_worker_with_a_bad_celery_option_is_a_usage_error(run):
    result = run("worker", "--concurrency=abc")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '-c' / '--concurrency': must be a non-negative integer or "
        "'auto', got 'abc'"
    )
    assert "FLASK_CELERYMON_ROLE" not in os.environ  # the runner's process is left as it was


def test_monitor_with_a_bad_port_is_a_usage_error(run):
    result = run("monitor", "--port", "70000")
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "Error: Invalid value for '--port': 70000 is not in the range 0<=x<=65535."
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["status", "--timeout", "abc"],
         "Error: Invalid value for '-t' / '--timeout': 'abc' is not a valid float range."),
        (["status", "extra"], "Error: Got unexpected extra argument (extra)"),
        (["inspect"], "Error: Missing argument 'METHOD'."),
        (["inspect", "ping", "--timeout", "0"],
         "Error: Invalid value for '-t' / '--timeout': 0.0 is not in the range x>0."),
        (["control"], "Error: Missing argument 'METHOD'."),
        (["control", "pool_grow", "1", "--destination"],
         "Error: Option '--destination' requires an argument."),
        (["cluster", "--timeout", "abc"],
         "Error: Invalid value for '--timeout': 'abc' is not a valid float range."),
        (["beat", "--max-interval=abc"],
         "Error: Invalid value for '--max-interval': 'abc' is not a valid integer."),
        (["worker", "--pool=nope"],
         "Error: Invalid value for '-P' / '--pool': 'nope' is not one of 'prefork', 'eventlet', "
         "'gevent', 'solo', 'processes', 'threads', 'custom'."),
        (["monitor", "--threads", "0"],
         "Error: Invalid value for '--threads': 0 is not in the range 1<=x<=1000."),
        (["bogus"], "Error: No such command 'bogus'."),
    ],
)  # fmt: skip
def test_bad_usage_of_every_command_is_a_one_line_usage_error(run, args, error):
    result = run(*args)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == error
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [["status"], ["inspect", "ping"], ["control", "pool_grow", "1"], ["worker"], ["beat"],
     ["cluster"]],
)  # fmt: skip
def test_unreachable_broker_is_one_line_with_the_password_masked(unreachable, args):
    result = unreachable.test_cli_runner().invoke(args=["celery", *args])
    assert result.exit_code == 1
    assert result.output == REFUSED


def test_missing_app_is_flasks_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLASK_APP"}
    proc = subprocess.run(
        [sys.executable, "-m", "flask", "celery", "status"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: Could not locate a Flask application.")
    assert "Traceback" not in proc.stderr


# -- real subprocesses ------------------------------------------------------------------------


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _pings(celery_app, node: str) -> bool:
    replies = celery_app.control.inspect(destination=[node], timeout=0.5, limit=1).ping()
    return bool(replies)


def _child(args: list[str], env: dict[str, str], out) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    full_env["FLASK_APP"] = "tests.apps.local:create_app()"
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, env=full_env, stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def _end(proc: subprocess.Popen[bytes]) -> None:
    tree = []
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for child in tree:
        if child.is_running():
            child.kill()


def test_flask_celery_worker_applies_the_configured_options_and_obeys_shutdown(
    app, own_redis, tmp_path
):
    workers = {"sub": {**FAST, "queues": ["cli-q"]}}
    env = local.app_env(tmp_path, own_redis.url(220), workers)
    node = f"sub@{HOST}"
    with open(tmp_path / "out.log", "wb") as out:
        proc = _child(["flask", "celery", "worker", "-n", "sub"], env, out)
    try:
        celery_app = app.extensions["celerymon"].celery_app
        _wait_for(lambda: _pings(celery_app, node), 30, f"{node} to answer")
        run = app.test_cli_runner().invoke
        queues = run(args=["celery", "inspect", "active_queues", "-d", node, "--json"])
        assert [q["name"] for q in json.loads(queues.output)[node]] == ["cli-q"]
        with app.app_context():  # each task gets an app context (and g) of its own
            futures = [local.celery.submit(local.g_counter, queue="cli-q") for _ in range(3)]
            assert [f.result(timeout=10) for f in futures] == [1, 1, 1]
        result = run(args=["celery", "control", "shutdown", "-d", node])
        assert result.output == f"shutdown sent to {node}\n"
        assert proc.wait(20) == 0
    finally:
        _end(proc)


def test_celery_command_finds_a_factory_app_through_flask_app(app, own_redis, tmp_path):
    env = local.app_env(tmp_path, own_redis.url(220), {})
    node = f"direct@{HOST}"
    args = ["celery", "-A", "flask_celerymon.celery", "worker", "-n", "direct@%h", "-P", "solo",
            "--without-mingle", "--without-gossip"]  # fmt: skip
    with open(tmp_path / "out.log", "wb") as out:
        proc = _child(args, env, out)
    try:
        celery_app = app.extensions["celerymon"].celery_app
        _wait_for(lambda: _pings(celery_app, node), 30, f"{node} to answer")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        _end(proc)


def test_flask_celery_beat_runs_the_schedule_from_the_instance_folder(own_redis, tmp_path):
    env = local.app_env(tmp_path, own_redis.url(223), {})
    log = tmp_path / "beat.log"
    with open(log, "wb") as out:
        proc = _child(["flask", "celery", "beat", "--max-interval", "1"], env, out)
    try:
        _wait_for(lambda: "Starting..." in log.read_text(), 30, "beat to start")
        assert f"db -> {tmp_path}/celery/celerybeat-schedule" in log.read_text()
        # beat's SIGTERM handler syncs the schedule: send it once the schedule is open, not
        # while beat still sets it up (under load that race made beat exit 1)
        _wait_for(
            lambda: list((tmp_path / "celery").glob("celerybeat-schedule*")), 30, "the schedule"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        _end(proc)


def test_cluster_runs_workers_beat_and_monitor_until_ctrl_c(own_redis, tmp_path):
    port = free_port()
    env = local.app_env(tmp_path, own_redis.url(222), {"c1": FAST}, monitor_port=port,
                        beat=True)  # fmt: skip
    log = tmp_path / "cluster.log"
    with open(log, "wb") as out:
        proc = _child(["flask", "celery", "cluster"], env, out)
    try:
        text = _wait_for(
            lambda: "press Ctrl-C" in log.read_text() and log.read_text(), 60, "the cluster"
        )
        tree = psutil.Process(proc.pid).children(recursive=True)
        status = {line.split()[0]: line.split()[1] for line in text.splitlines()[-4:-1]}
        assert status == {"c1": "running", "monitor": "running", "beat": "running"}, text

        # the monitor is served by gunicorn, / leads to the blueprint
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", method="HEAD")
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(request, timeout=10)
        assert redirect.value.code == 302
        assert redirect.value.headers["Location"] == "/monitor/"
        assert redirect.value.headers["Server"].startswith("gunicorn")
        # ... which serves the monitor's websockets too (flask-sock on gthread workers)
        ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/monitor/ws?view=workers")
        try:
            assert json.loads(ws.receive(timeout=10)) == {"type": "hello", "view": "workers"}
        finally:
            ws.close()

        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert log.read_text().endswith("stopping...\nstopped\n")
        assert [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        _end(proc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


DOC_APP = """\
import os
import pathlib
import re
import shlex

from flask import Flask

from flask_celerymon import Celery

app = Flask(__name__)
app.config["CELERY_BROKER_URL"] = os.environ["DOC_BROKER"]
Celery(app)
"""


def _doc_examples() -> list[tuple[str, str, str]]:
    """(command, where it runs, output) for each ``$`` line of the Errors block of cli.rst."""
    text = (pathlib.Path(ROOT) / "docs" / "cli.rst").read_text(encoding="utf-8")
    block = text[text.index("Errors\n------") :]
    block = block[block.index(".. code-block:: console") :].split("\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break  # the paragraph after the block
        lines.append(line[4:])
    examples: list[tuple[str, str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            command, _, where = line[2:].partition("#")
            examples.append((command.strip(), where.strip(), []))
        else:
            examples[-1][2].append(line)
    return [(c, w, "\n".join(out).rstrip("\n") + "\n") for c, w, out in examples]


def test_the_error_examples_of_the_cli_docs_are_what_the_commands_print(own_redis, tmp_path):
    examples = _doc_examples()
    assert len(examples) == 7
    flask = str(pathlib.Path(sys.executable).with_name("flask"))
    down_port = str(free_port())
    checked = 0
    for command, where, expected in examples:
        folder = tmp_path / str(checked)
        folder.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "FLASK_APP"}
        if where != "no app":
            match = re.fullmatch(r"broker (redis://\S+) is (up|down)", where)
            assert match, where
            port = str(own_redis.port) if match[2] == "up" else down_port
            env["DOC_BROKER"] = match[1].replace(":6379", f":{port}")
            expected = expected.replace(":6379", f":{port}")
            (folder / "app.py").write_text(DOC_APP, encoding="utf-8")
        args = shlex.split(command)
        assert args[:2] == ["flask", "celery"], command
        proc = subprocess.run(
            [flask, *args[1:]], cwd=folder, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=60,
        )  # fmt: skip
        assert proc.stdout == expected, command
        usage = "\nUsage: " in "\n" + expected or where == "no app"  # Flask's code: 2
        assert proc.returncode == (2 if usage else 1), command
        checked += 1
    assert checked == 7


@pytest.fixture(scope="module")
def prefork_app(own_redis, tmp_path_factory):
    """An app whose one local worker ``clipool`` runs a prefork pool of 2 processes."""
    options = {"concurrency": 2, "pool": "prefork", "without_mingle": True,
               "without_gossip": True}  # fmt: skip
    env = local.app_env(tmp_path_factory.mktemp("pool"), own_redis.url(229), {"clipool": options})
    with local.environment(env):
        flask_app = local.create_app()
        procs = flask_app.extensions["celerymon"].processes
        try:
            procs.start()
            yield flask_app
        finally:
            procs.stop(timeout=5)


def test_pool_shrink_that_would_leave_no_process_is_refused_as_the_api_does(prefork_app):
    runner = prefork_app.test_cli_runner()
    node = f"clipool@{HOST}"

    def pool_size() -> int:
        stats = runner.invoke(args=["celery", "inspect", "stats", "-j", "-t", "5"])
        return len(json.loads(stats.output)[node]["pool"]["processes"])

    for args in (["-d", node, "pool_shrink", "5"], ["pool_shrink", "2"]):
        result = runner.invoke(args=["celery", "control", *args])
        assert result.exit_code == 1, result.output
        assert result.output == (
            f"Error: control pool_shrink: shrinking '{node}' worker's pool by "
            f"{args[-1]} would leave it without a process (it has 2); shrink by at most 1\n"
        )
    assert pool_size() == 2
    result = runner.invoke(args=["celery", "control", "-d", node, "pool_shrink", "1", "-j"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {node: {"ok": "pool will shrink"}}


@pytest.mark.parametrize(
    "args",
    [["status"], ["inspect", "ping"], ["control", "pool_grow", "1"], ["worker"], ["beat"],
     ["monitor"], ["cluster"]],
)  # fmt: skip
def test_an_app_with_a_bad_broker_url_is_one_line_naming_the_key(tmp_path, args):
    env = {**os.environ, **local.app_env(tmp_path, "garbage://x")}
    env["FLASK_APP"] = "tests.apps.local:create_app()"
    proc = subprocess.run(
        [sys.executable, "-m", "flask", "celery", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(
        "Error: CELERY_BROKER_URL = 'garbage://x': 'garbage' is not a broker (kombu transport) "
        "scheme; use one of "
    ), proc.stderr
