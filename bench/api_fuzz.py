"""schemathesis over the monitor API's ``openapi.json``, every check on, against the real stack.

Starts a redis-server, a real prefork worker and the monitored test app (``tests/apps/basic``),
serves the app over HTTP on a free port and runs the ``schemathesis`` CLI against it with
``--checks all`` and the phases ``examples,coverage,fuzzing`` (the document declares no links,
so there is no stateful phase). ``api_fuzz_hooks.py`` beside this file keeps waits short and
drops generated "valid" cases that break a rule OpenAPI cannot state (see its docstring).
Prints one JSON line: the API requests the app answered, their statuses, every failure
(check, operation) and every error::

    python bench/api_fuzz.py                    # the full run: about 3,300 requests, ~7 min
    python bench/api_fuzz.py --max-examples 5   # about 1,300 requests

Exits 1 when any check failed or any request errored. :func:`fuzz` is also what
``tests/web/test_api_schema.py`` runs (shortened) over the suite's monitored app.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Counting:
    """WSGI middleware counting the answers to API requests by status (the fuzz's figures)."""

    def __init__(self, app: Any, prefix: str) -> None:
        self.app = app
        self.api = f"{prefix}/api/"
        self.document = f"{prefix}/api/openapi.json"
        self.statuses: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(self.api) or path == self.document:
            return self.app(environ, start_response)

        def counting_start(status: str, headers: Any, exc_info: Any = None) -> Any:
            with self.lock:
                self.statuses[int(status.split(" ", 1)[0])] += 1
            return start_response(status, headers, exc_info)

        return self.app(environ, counting_start)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port, threaded) and give its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="api-fuzz-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def fuzz(
    app: Any,
    prefix: str = "/monitor",
    max_examples: int = 100,
    seed: int = 1,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Run the schemathesis CLI (all checks) against ``app``; the run's figures.

    Answers ``{"requests": n, "statuses": {status: n}, "failures": [str, ...], "errors":
    [str, ...], "returncode": rc}``; ``requests`` counts the API requests the app answered
    (the document itself left out). ``max_examples`` is schemathesis' ``--max-examples`` (per
    operation and phase). Raises :class:`subprocess.TimeoutExpired` after ``timeout`` s.
    """
    exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    counting = Counting(app.wsgi_app, prefix)
    app.wsgi_app = counting
    try:
        with serving(app) as base, tempfile.TemporaryDirectory(prefix="api-fuzz-") as tmp:
            report = os.path.join(tmp, "run.json")
            command = [
                exe,
                "run",
                f"{base}{prefix}/api/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                str(max_examples),
                "--seed",
                str(seed),
                "--workers",
                "1",
                "--continue-on-failure",
                "--suppress-health-check",
                "all",
                "--generation-database",
                "none",
                "--request-timeout",
                "30",
                "--report",
                "json",
                "--report-json-path",
                report,
                "--no-color",
            ]
            env = {
                **os.environ,
                "SCHEMATHESIS_HOOKS": "api_fuzz_hooks",
                "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), ROOT]),
            }
            proc = subprocess.run(
                command, cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env
            )
            with open(report, encoding="utf-8") as fh:
                run = json.load(fh)
    finally:
        app.wsgi_app = counting.app
    failures = [
        f"{f['code']} {f['title']} x{f['count']}: {', '.join(f['operations'])}"
        for f in run.get("failures") or ()
    ]
    summary: dict[str, Any] = {
        "requests": sum(counting.statuses.values()),
        "statuses": dict(sorted(counting.statuses.items())),
        "failures": failures,
        "errors": [json.dumps(e)[:500] for e in run.get("errors") or ()],
        "returncode": proc.returncode,
    }
    if failures or summary["errors"] or proc.returncode:
        summary["output"] = proc.stdout[-20000:] + proc.stderr[-3000:]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()
    sys.path.insert(0, ROOT)
    from tests.conftest import RedisServer, WorkerProcess, free_port
    from tests.web.conftest import make_monitored_app

    with tempfile.TemporaryDirectory(prefix="api-fuzz-stack-") as tmp:
        redis_server = RedisServer(free_port(), tmp)
        redis_server.start()
        broker = redis_server.url(1)
        app = make_monitored_app(broker, tmp)
        name = f"fuzz@{socket.gethostname()}"
        worker = WorkerProcess(
            "tests.apps.basic:create_app",
            broker,
            name,
            os.path.join(tmp, "worker.log"),
            args=("-P", "prefork", "-c", "2", "-Q", "celery,high", "-E"),
        )
        state = app.extensions["celerymon"]
        try:
            worker.wait_ready(state.celery_app)
            state.monitor.ensure_started()
            summary = fuzz(app, max_examples=opts.max_examples, seed=opts.seed)
            summary["worker_alive"] = worker.proc.poll() is None
        finally:
            state.shutdown()
            worker.stop()
            redis_server.stop()
    output = summary.pop("output", "")
    if output:
        print(output, file=sys.stderr)
    print(json.dumps(summary))
    return 1 if summary["failures"] or summary["errors"] or summary["returncode"] else 0


if __name__ == "__main__":
    sys.exit(main())
