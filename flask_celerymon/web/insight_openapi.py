"""The response shapes of the insight API (:mod:`.insight`), merged by
:func:`.openapi.build_spec` into ``<prefix>/api/openapi.json`` (the paths and parameters come
from the views' declarations)."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_NSTR = {"type": "string", "nullable": True}
_NUM = {"type": "number"}
_NNUM = {"type": "number", "nullable": True}
_INT = {"type": "integer"}


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
