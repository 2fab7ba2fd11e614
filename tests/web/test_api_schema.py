"""A property-based run of schemathesis over ``openapi.json`` against the real stack.

For every operation in the document, Hypothesis generates requests that fit the schema and
requests that do not, sends them to the app (real Redis, real worker, real service) and
checks that no answer is a server error and that every answer matches the document (status
documented, JSON content type, body schema).
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

PREFIX = "/monitor"
EXAMPLES_PER_MODE = 10
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _run(operation, mode: GenerationMode, calls: Counter, failures: list[str]) -> None:
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call()
        calls[(operation.label, mode.value, response.status_code)] += 1
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path} {case.query} {case.body!r}")
        case.validate_response(response, checks=CHECKS)

    run()


def test_generated_requests_never_get_a_server_error_and_match_the_document(monitored):
    schema = schemathesis.openapi.from_wsgi(f"{PREFIX}/api/openapi.json", monitored.app)
    calls: Counter = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    labelled = {op.label.split(" ", 1)[1] for op in operations}
    # schemathesis leaves out the document's own path (test_api.py checks that one)
    assert labelled == set(schema.raw_schema["paths"]) - {"/api/openapi.json"}
    for operation in operations:
        _run(operation, GenerationMode.POSITIVE, calls, failures)
        try:
            _run(operation, GenerationMode.NEGATIVE, calls, failures)
        except Unsatisfiable:
            # no input can break the schema (e.g. only a free-form string path parameter)
            pass
    assert failures == []
    total = sum(calls.values())
    assert total >= 300, calls
    statuses = Counter(status for (_, _, status) in calls.elements())
    # the run reached the handlers, not only the parameter checks
    assert statuses[200] >= 10 and statuses[400] >= 50 and statuses[404] >= 50, statuses
    assert monitored.worker.proc.poll() is None  # and it never took the worker down
