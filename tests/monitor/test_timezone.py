"""The event and query tests again, in a process whose local time zone is not UTC.

Event timestamps are Unix times and need no zone correction; a query's bounds are Unix times
too. A zone-dependent computation (like Celery's ``adjust_timestamp``) shows up here as shifted
times or missed tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODULES = [
    "tests/monitor/test_window.py",
    "tests/monitor/test_query.py",
    "tests/monitor/test_store.py",
    "tests/monitor/test_differential.py",
    "tests/monitor/test_truth.py",
]


def test_event_and_query_tests_pass_in_new_york_time():
    env = {**os.environ, "TZ": "America/New_York"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *MODULES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
