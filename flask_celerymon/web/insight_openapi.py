"""The OpenAPI entries of the insight API (:mod:`.insight`), merged by
:func:`.openapi.build_spec` into ``<prefix>/api/openapi.json``."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
#: a required text: at least one character that is not white space (as the API parses it)
_TEXT = {"type": "string", "minLength": 1, "pattern": "\\S"}
_NSTR = {"type": "string", "nullable": True}
_NUM = {"type": "number"}
_NNUM = {"type": "number", "nullable": True}
_INT = {"type": "integer"}
_BOOL = {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no", "on", "off"]}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_PCT = _obj(["p50", "p95", "mean", "max"], p50=_NNUM, p95=_NNUM, p99=_NNUM, mean=_NNUM, max=_NNUM)
_SUMMARY = _obj(
    ["succeeded", "failed", "retried", "revoked", "finished", "throughput", "failure_rate",
     "runtime", "wait"],
    succeeded=_INT, failed=_INT, retried=_INT, revoked=_INT, finished=_INT, throughput=_NUM,
    failure_rate=_NNUM, runtime=_PCT, wait=_PCT,
)  # fmt: skip
_GROUP = _obj(
    ["id", "name", "exception_type", "message", "failures", "retries", "first_seen",
     "last_seen", "resolved_at", "status", "workers"],
    id=_STR, name=_STR, exception_type=_STR, message=_STR, sample_exception=_NSTR,
    sample_traceback=_NSTR, sample_task=_NSTR, failures=_INT, retries=_INT, first_seen=_NUM,
    last_seen=_NUM, resolved_at=_NNUM, status={"type": "string", "enum": ["open", "resolved"]},
    workers={"type": "object", "additionalProperties": _INT},
    sparkline={"type": "array", "items": _INT},
)  # fmt: skip

SCHEMAS: dict[str, Any] = {
    "ErrorGroups": _obj(
        ["since", "until", "bucket", "groups"],
        since=_NUM,
        until=_NUM,
        bucket=_INT,
        groups={"type": "array", "items": _GROUP},
    ),
    "ErrorGroup": {
        **_GROUP,
        "required": [*_GROUP["required"], "tasks"],
        "properties": {
            **_GROUP["properties"],
            "tasks": {
                "type": "array",
                "items": _obj(
                    ["uuid", "ts", "kind", "state"],
                    uuid=_STR,
                    ts=_NUM,
                    kind=_STR,
                    state=_NSTR,
                    worker=_NSTR,
                ),
            },
        },
    },  # fmt: skip
    "GroupBulk": _obj(
        ["dry_run", "matched", "count", "task_ids"],
        dry_run={"type": "boolean"},
        matched=_INT,
        count=_INT,
        task_ids={"type": "array", "items": _STR},
        retried={"type": "object", "additionalProperties": _STR},
        failed={"type": "object", "additionalProperties": _STR},
    ),  # fmt: skip
    "Analytics": _obj(
        ["window", "since", "until", "tasks"],
        window=_STR,
        since=_NUM,
        until=_NUM,
        tasks={
            "type": "array",
            "items": _obj(
                ["name", "current", "previous", "change"],
                name=_STR,
                current=_SUMMARY,
                previous=_SUMMARY,
                change={"type": "object", "additionalProperties": _NNUM},
            ),
        },
    ),  # fmt: skip
    "AnalyticsSeries": _obj(
        ["name", "window", "bucket", "points"],
        name=_STR,
        window=_STR,
        bucket=_INT,
        points={
            "type": "array",
            "items": _obj(
                ["start", "succeeded", "failed", "retried", "revoked", "runtime_p95", "wait_p95"],
                start=_INT,
                succeeded=_INT,
                failed=_INT,
                retried=_INT,
                revoked=_INT,
                runtime_p95=_NNUM,
                wait_p95=_NNUM,
            ),
        },
    ),  # fmt: skip
    "Beat": _obj(
        ["beat", "entries"],
        beat=_obj(["running", "how"], running={"type": "boolean", "nullable": True}, how=_STR),
        entries={
            "type": "array",
            "items": _obj(
                ["name", "task", "schedule", "next_run", "last_run", "late"],
                name=_STR,
                task=_STR,
                schedule=_STR,
                args={"type": "array"},
                kwargs={"type": "object"},
                options={"type": "object"},
                next_run=_NNUM,
                period=_NNUM,
                last_run={"type": "object", "nullable": True},
                late={"type": "boolean"},
            ),
        },
    ),  # fmt: skip
    "Canvas": _obj(
        ["root", "task", "nodes", "edges", "truncated", "final"],
        root=_STR,
        task=_STR,
        truncated={"type": "boolean"},
        final={"type": "boolean"},
        nodes={
            "type": "array",
            "items": _obj(
                ["id", "name", "state", "parent", "depth", "known"],
                id=_STR,
                name=_STR,
                state=_STR,
                parent=_NSTR,
                depth=_INT,
                known={"type": "boolean"},
            ),
        },
        edges={"type": "array", "items": {"type": "array", "items": _STR}},
    ),  # fmt: skip
    "BeatRun": _obj(["message", "task-id"], message=_STR, **{"task-id": _STR}),
    "Alerts": _obj(
        ["rules", "alerts"],
        rules={"type": "array", "items": {"type": "object"}},
        alerts={
            "type": "array",
            "items": _obj(
                ["id", "rule", "kind", "subject", "status", "message", "started"],
                id=_INT,
                rule=_STR,
                kind=_STR,
                subject=_STR,
                status={"type": "string", "enum": ["firing", "resolved"]},
                value=_NNUM,
                threshold=_NNUM,
                message=_STR,
                started=_NUM,
                resolved=_NNUM,
                notified=_NNUM,
                notifications=_INT,
                delivery=_NSTR,
            ),
        },
    ),  # fmt: skip
}


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}  # fmt: skip


def _op(summary: str, ok: str, errors: tuple[int, ...], params: list[dict]) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ok}"}}},
        }
    }
    for code in sorted(errors):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    op: dict[str, Any] = {"summary": summary, "tags": ["insight"], "responses": responses}
    if params:
        op["parameters"] = params
    return op


_GID = {"name": "gid", "in": "path", "required": True, "schema": _STR,
        "description": "error group id (16 hex digits)"}  # fmt: skip
_ENTRY = {"name": "entry", "in": "path", "required": True, "schema": _STR,
          "description": "beat entry name"}  # fmt: skip
_SINCE = _q("since", {"type": "string", "enum": ["1h", "24h", "7d", "30d"]}, "window (7d)")
_WINDOW = _q("window", {"type": "string", "enum": ["15m", "1h", "6h", "24h", "7d", "30d"]},
             "window (24h)")  # fmt: skip
_LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": 10000}, "at most this many")
_DRY = _q("dry_run", _BOOL, "only count and list")


def paths() -> dict[str, Any]:
    """The insight paths of the OpenAPI document."""
    return {
        "/api/errors": {"get": _op("Error groups", "ErrorGroups", (400,), [
            _SINCE, _q("name", _STR, "task name"),
            _q("status", {"type": "string", "enum": ["all", "open", "resolved"]}, "status")])},
        "/api/errors/{gid}": {"get": _op("One error group and its recent tasks", "ErrorGroup",
                                         (400, 404), [_GID, _LIMIT])},
        "/api/errors/{gid}/retry": {"post": _op(
            "Retry the failed tasks of an error group", "GroupBulk", (400, 403, 404, 503),
            [_GID, _LIMIT, _DRY])},
        "/api/errors/{gid}/revoke": {"post": _op(
            "Revoke the unfinished tasks of an error group", "GroupBulk", (400, 403, 404, 503),
            [_GID, _LIMIT, _DRY, _q("terminate", _BOOL, "also kill running ones"),
             _q("signal", _STR, "signal sent with terminate (default SIGTERM)")])},
        "/api/analytics": {"get": _op("Task analytics over a window and the one before",
                                      "Analytics", (400,), [_WINDOW, _q("name", _STR, "task")])},
        "/api/analytics/series": {"get": _op(
            "One task's throughput and p95 per bucket", "AnalyticsSeries", (400,),
            [_q("name", _TEXT, "task name", required=True), _WINDOW])},
        "/api/beat": {"get": _op("The beat schedule and whether beat runs", "Beat", (), [])},
        "/api/beat/run/{entry}": {"post": _op("Send a beat entry's task now", "BeatRun",
                                              (403, 404, 503), [_ENTRY])},
        "/api/task/canvas/{task_id}": {"get": _op(
            "The chain, group or chord a task belongs to, as a graph", "Canvas", (404,),
            [{"name": "task_id", "in": "path", "required": True, "schema": _STR,
              "description": "task id"}])},
        "/api/alerts": {"get": _op("Alert rules and alerts", "Alerts", (400,), [
            _q("status", {"type": "string", "enum": ["all", "firing", "resolved"]}, "status")])},
    }  # fmt: skip
