"""schemathesis over ``openapi.json`` with every check on, against the real stack.

A shortened run of ``bench/api_fuzz.py`` (the full one sends more than 3,000 requests): the
schemathesis CLI's examples, coverage and fuzzing phases against the suite's monitored app
served over HTTP (real Redis, real worker, real service). Every check: no server error, status,
content type, headers and body as documented, invalid input rejected, valid input accepted,
``Allow`` on 405 and OPTIONS, missing required parameters refused.
"""

from __future__ import annotations

from bench.api_fuzz import fuzz


def test_generated_requests_pass_every_schemathesis_check(monitored):
    summary = fuzz(monitored.app, max_examples=3, seed=7, timeout=300)
    assert summary["failures"] == [], summary.get("output", "")
    assert summary["errors"] == [], summary.get("output", "")
    assert summary["returncode"] == 0, summary.get("output", "")
    statuses = summary["statuses"]
    assert not [s for s in statuses if s >= 500], statuses
    assert summary["requests"] >= 800, summary
    # the run reached the handlers, not only the parameter checks
    assert statuses.get(200, 0) >= 50 and statuses.get(400, 0) >= 200, statuses
    assert statuses.get(405, 0) >= 50, statuses
    assert monitored.worker.proc.poll() is None  # and it never took the worker down
