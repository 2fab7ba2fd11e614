"""schemathesis hooks of ``bench/api_fuzz.py``: short waits, and the rules OpenAPI cannot state.

* ``/api/task/result?timeout=`` and the apply body's ``timeout`` may ask to wait up to an hour
  for a result (a valid request). Within the documented range a wait longer than 1 s becomes
  1 s, and an apply body without ``timeout`` (default 60 s) gets 1 s, so that a run of
  thousands of requests ends. Values outside the range are left as generated.
* A few rules of the API cannot be written in OpenAPI 3.0: the grammar of ``search``, the
  calendar behind the date parameters, "a bulk action needs at least one filter", ``min <=
  max`` of autoscale, ``soft_time_limit <= time_limit`` and ``soft <= hard`` of
  ``task/timeout``. A case generated as *valid* that
  breaks one of them is dropped (the API answers it 400, as ``docs/api.rst`` says and
  ``tests/web/test_api*.py`` check); the rule itself is checked with the API's own parameter
  declarations (:mod:`flask_celerymon.web.params`).
"""

from __future__ import annotations

from typing import Any

import schemathesis

from flask_celerymon.monitor.query import parse
from flask_celerymon.web import api, params

WAIT = 1.0


def _short(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if WAIT < value <= api.MAX_WAIT:
            return WAIT
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if WAIT < number <= api.MAX_WAIT:
            return str(WAIT)
    return value


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    if isinstance(case.query, dict) and "timeout" in case.query:
        case.query = {**case.query, "timeout": _short(case.query["timeout"])}
    if isinstance(case.body, dict) and case.operation.path.startswith("/api/task/apply/"):
        case.body = {**case.body, "timeout": _short(case.body.get("timeout", WAIT))}
    return case


#: The task filters as the API declares them (the time filters carry a calendar rule).
FILTERS = params.schema(**api.FILTER_PARAMS)
#: The apply body's dates as the API declares them.
DATES = params.schema(eta=params.JsonDate(), expires=params.JsonDate(seconds=params.SECONDS))


def _breaks_an_unstated_rule(path: str, query: dict[str, Any], body: Any) -> bool:
    try:
        if isinstance(query.get("search"), str) and query["search"].strip():
            parse(query["search"])
        filters = params.parse_args(FILTERS, query)
        if path.startswith("/api/tasks/") and not api.has_filter(filters):
            return True
        if path.startswith("/api/worker/pool/autoscale/"):
            lo, hi = query.get("min"), query.get("max")
            if lo is not None and hi is not None and int(lo) > int(hi):
                return True
        if path.startswith("/api/task/timeout/"):
            soft, hard = query.get("soft"), query.get("hard")
            if soft and hard and 0 < float(hard) < float(soft):
                return True
        if isinstance(body, dict):
            dates = {k: body[k] for k in ("eta", "expires") if isinstance(body.get(k), str)}
            params.parse_args(DATES, dates)
            soft, hard = body.get("soft_time_limit"), body.get("time_limit")
            if soft and hard and soft > hard:
                return True
    except ValueError:  # InvalidInput, what the parsers raise, is one
        return True
    return False


@schemathesis.hook
def filter_case(ctx: Any, case: Any) -> bool:
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return True
    return not _breaks_an_unstated_rule(case.operation.path, dict(case.query or {}), case.body)
