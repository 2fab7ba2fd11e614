"""The OpenAPI 3 description of the monitor API (served at ``<prefix>/api/openapi.json``).

Built by :func:`build_spec` from plain dicts, so it stays next to what it describes; the test
suite checks that every route of :mod:`.api` is in it, that every response the tests see
matches it, and runs a property-based client (schemathesis) over it.
"""

from __future__ import annotations

from typing import Any

from . import api as _api

OPENAPI_VERSION = "3.0.3"

_STR = {"type": "string"}
#: A required text parameter: at least one character that is not white space.
_TEXT = {"type": "string", "minLength": 1, "pattern": "\\S"}
_EMPTY = {"type": "string", "maxLength": 0}
_NSTR = {"type": "string", "nullable": True}
_NNUM = {"type": "number", "nullable": True}
_NINT = {"type": "integer", "nullable": True}
_BOOL_PARAM = {"type": "string", "pattern": _api.BOOL_PATTERN}

ERROR_MESSAGES = {
    400: (
        "A parameter is missing or not valid (the message names it), a JSON body nested too "
        "deep, or a Host not in CELERY_MONITOR_TRUSTED_HOSTS"
    ),
    403: "Read-only mode, a cross-site request, or the worker refused the command",
    404: "Unknown task, worker, task name or queue",
    409: "Conflicts with the state of the task (unfinished, or its arguments unknown for a "
    "retry) or of the worker's pool, or the broker cannot do it",
    413: "The request body is larger than CELERY_MONITOR_MAX_CONTENT_LENGTH",
    503: "The broker or the result backend is unavailable, or the worker did not reply",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _STR},
        "additionalProperties": False,
    },
    "Message": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": _STR},
    },
    "Task": {
        "type": "object",
        "description": "Flower's Task.as_dict() (worker is the hostname) plus history.",
        "required": ["uuid", "name", "state", "args", "kwargs", "worker", "result", "children"],
        "properties": {
            "uuid": _STR,
            "name": _NSTR,
            "state": _NSTR,
            **{
                k: _NNUM
                for k in (
                    "received",
                    "sent",
                    "started",
                    "rejected",
                    "succeeded",
                    "failed",
                    "retried",
                    "revoked",
                    "timestamp",
                    "runtime",
                )
            },
            **{
                k: _NSTR
                for k in (
                    "args",
                    "kwargs",
                    "eta",
                    "expires",
                    "worker",
                    "result",
                    "exception",
                    "traceback",
                    "exchange",
                    "routing_key",
                    "client",
                    "root",
                    "root_id",
                    "parent",
                    "parent_id",
                )
            },
            "retries": _NINT,
            "clock": _NINT,
            "children": {"type": "array", "items": _STR},
            "history": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"state": _STR, "timestamp": {"type": "number"}},
                },
            },
        },
    },
    "TaskMap": {
        "type": "object",
        "description": "Tasks keyed by uuid, in the requested order.",
        "additionalProperties": {"$ref": "#/components/schemas/Task"},
    },
    "WorkerInspect": {
        "type": "object",
        "description": "Inspect results of one worker (timestamp is null when only events "
        "know it).",
        "properties": {
            "timestamp": _NNUM,
            "stats": {"type": "object"},
            "active_queues": {"type": "array", "items": {"type": "object"}},
            "registered": {"type": "array", "items": _STR},
            "conf": {"type": "object"},
            "scheduled": {"type": "array"},
            "active": {"type": "array"},
            "reserved": {"type": "array"},
            "revoked": {"type": "array"},
        },
    },
    "Workers": {
        "type": "object",
        "description": "{hostname: inspect results}, or {hostname: online} with status=1.",
        "additionalProperties": {
            "oneOf": [{"$ref": "#/components/schemas/WorkerInspect"}, {"type": "boolean"}]
        },
    },
    "Pool": {
        "type": "object",
        "description": "A pool action's answer: processes and autoscaler read back from the "
        "worker after the action (null when it did not reply in time).",
        "required": ["message", "processes"],
        "properties": {
            "message": _STR,
            "processes": {"type": "integer", "nullable": True},
            "autoscaler": {"type": "object", "nullable": True},
        },
    },
    "Sent": {
        "type": "object",
        "required": ["task-id"],
        "properties": {"task-id": _STR, "state": _STR},
    },
    "Result": {
        "type": "object",
        "required": ["task-id"],
        "properties": {
            "task-id": _STR,
            "state": _STR,
            "result": {"nullable": True},
            "traceback": _NSTR,
        },
    },
    "ApplyBody": {
        "type": "object",
        "description": "args, kwargs, timeout (apply only) and apply_async options; null (or "
        "leaving a key out) means the default.",
        "properties": {
            k: {**v, "nullable": True}
            for k, v in {
                "args": {"type": "array"},
                "kwargs": {"type": "object"},
                "timeout": _api.WAIT.schema(),
                "queue": {"type": "string", "minLength": 1},
                "routing_key": {"type": "string", "minLength": 1},
                "exchange": _STR,
                "priority": _api.PRIORITY.schema(),
                "countdown": _api.SECONDS.schema(),
                "eta": {"type": "string", "description": "%Y-%m-%d %H:%M:%S.%f or ISO 8601"},
                "expires": {
                    "description": "seconds, or a date like eta",
                    "oneOf": [_api.SECONDS.schema(), {"type": "string"}],
                },
                "time_limit": _api.SECONDS.schema(),
                "soft_time_limit": _api.SECONDS.schema(),
                "task_id": {"type": "string", "minLength": 1},
                "ignore_result": {"type": "boolean"},
                "retries": _api.RETRIES.schema(),
            }.items()
        },
        "additionalProperties": False,
    },
    "Retried": {
        "type": "object",
        "required": ["task-id", "retried-from", "message"],
        "properties": {"task-id": _STR, "retried-from": _STR, "message": _STR},
    },
    "Bulk": {
        "type": "object",
        "required": ["dry_run", "matched", "count", "task_ids"],
        "properties": {
            "dry_run": {"type": "boolean"},
            "matched": {"type": "integer"},
            "count": {"type": "integer"},
            "task_ids": {"type": "array", "items": _STR},
            "retried": {"type": "object", "additionalProperties": _STR},
            "failed": {"type": "object", "additionalProperties": _STR},
        },
    },
    "QueueLengths": {
        "type": "object",
        "required": ["active_queues"],
        "properties": {
            "active_queues": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "messages"],
                    "properties": {"name": _STR, "messages": {"type": "integer"}},
                },
            }
        },
    },
    "QueueMessages": {
        "type": "object",
        "required": ["queue", "messages"],
        "properties": {
            "queue": _STR,
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "task-id": _NSTR,
                        "name": _NSTR,
                        "args": _NSTR,
                        "kwargs": _NSTR,
                        "eta": _NSTR,
                        "expires": _NSTR,
                        "retries": _NINT,
                        "priority": _NINT,
                    },
                },
            },
        },
    },
    "Purged": {
        "type": "object",
        "required": ["message", "purged"],
        "properties": {"message": _STR, "purged": {"type": "integer"}},
    },
    "Removed": {
        "type": "object",
        "required": ["message", "task-id"],
        "properties": {"message": _STR, "task-id": _STR},
    },
    "TaskTypes": {
        "type": "object",
        "required": ["task-types"],
        "properties": {"task-types": {"type": "array", "items": _STR}},
    },
    "OpenAPI": {"type": "object", "required": ["openapi", "paths"]},
}


def _q(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict:
    if required and schema == _STR:
        schema = _TEXT
    if not required and schema.get("type") in ("integer", "number"):
        # an empty value (an empty form field) means the default
        schema = {"anyOf": [schema, _EMPTY]}
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _path(name: str, description: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": _STR,
        "description": description,
    }


_WORKER = _path("name", "worker hostname, e.g. celery@host")
_TASK_ID = _path("task_id", "task id")
_TASK_NAME = _path("name", "task name, or an allowlisted module:function reference")
_QUEUE = _path("queue", "queue name")

_FILTERS = [
    _q("workername", _STR, "worker hostname(s), comma-separated; All = any"),
    _q("taskname", _STR, "task name(s), comma-separated; All = any"),
    _q("state", _STR, "state(s), comma-separated; All = any"),
    _q("received_start", _STR, "'%Y-%m-%d %H:%M' (local time), ISO 8601 or Unix seconds"),
    _q("received_end", _STR, "as received_start"),
    _q("started_start", _STR, "as received_start"),
    _q("started_end", _STR, "as received_start"),
    _q("search", _STR, "the search language (name:, state:, worker:, args:, kwargs:, result:)"),
]
_SORT = _q(
    "sort_by",
    {"type": "string", "enum": ["", *_api.SORT_CHOICES]},
    "a column; a leading - sorts descending (default -received)",
)
_REVOKE = [
    _q("terminate", _BOOL_PARAM, "also kill the process running the task"),
    _q(
        "signal",
        {"type": "string", "enum": ["", *_api.SIGNALS]},
        "signal sent with terminate (default SIGTERM)",
    ),
]
_BULK = [
    *_FILTERS,
    _SORT,
    _q("limit", _api.BULK_RANGE.schema(), "at most this many (default 1000)"),
    _q("dry_run", _BOOL_PARAM, "only count and list"),
]


def _op(
    summary: str,
    ok: str,
    errors: tuple[int, ...],
    parameters: list[dict] | None = None,
    body: str | None = None,
    mutation: bool = False,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {
            "description": "OK",
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ok}"}}},
        }
    }
    # every route may refuse the Host (400); a mutation may be cross-site or read-only (403)
    # and its body too large (413)
    codes = set(errors) | {400} | ({403, 413} if mutation else set())
    for code in sorted(codes):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return op


def _post(
    summary: str,
    ok: str,
    errors: tuple[int, ...],
    parameters: list[dict] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    return {"post": _op(summary, ok, errors, parameters, body, mutation=True)}


def _get(
    summary: str, ok: str, errors: tuple[int, ...], parameters: list[dict] | None = None
) -> dict[str, Any]:
    return {"get": _op(summary, ok, errors, parameters)}


_CONTROL = (400, 404, 503)


def paths() -> dict[str, Any]:
    """The ``paths`` object (relative to the server URL, i.e. the monitor prefix)."""
    n = [_q("n", _api.POOL_STEP.schema(), "processes (default 1)")]
    queue = [_q("queue", _STR, "queue name", required=True)]
    limits = [
        _q("workername", _STR, "worker hostname", required=True),
        _q("soft", _api.SECONDS.schema(), "soft time limit (s)"),
        _q("hard", _api.SECONDS.schema(), "hard time limit (s)"),
    ]
    rate = [
        _q("workername", _STR, "worker hostname", required=True),
        _q(
            "ratelimit",
            {"type": "string", "pattern": _api.RATE_PATTERN},
            "e.g. 10/m, 2/s, 100",
            required=True,
        ),
    ]
    auto = [
        _q("min", _api.POOL_MIN.schema(), "minimum", required=True),
        _q("max", _api.POOL_MAX.schema(), "maximum", required=True),
    ]
    return {
        "/api/workers": _get(
            "Inspect results per worker",
            "Workers",
            (400, 404, 503),
            [
                _q("refresh", _BOOL_PARAM, "ask the workers first"),
                _q("workername", _STR, "only this worker"),
                _q("status", _BOOL_PARAM, "answer {hostname: online} instead"),
            ],
        ),
        "/api/worker/shutdown/{name}": _post(
            "Shut a worker down", "Message", (404, 503), [_WORKER]
        ),
        "/api/worker/pool/restart/{name}": _post(
            "Restart a worker's pool", "Pool", (404, 503), [_WORKER]
        ),
        "/api/worker/pool/grow/{name}": _post(
            "Grow a worker's pool", "Pool", _CONTROL, [_WORKER, *n]
        ),
        "/api/worker/pool/shrink/{name}": _post(
            "Shrink a worker's pool", "Pool", (*_CONTROL, 409), [_WORKER, *n]
        ),
        "/api/worker/pool/autoscale/{name}": _post(
            "Set the autoscaler's bounds", "Pool", _CONTROL, [_WORKER, *auto]
        ),
        "/api/worker/queue/add-consumer/{name}": _post(
            "Start consuming a queue", "Message", _CONTROL, [_WORKER, *queue]
        ),
        "/api/worker/queue/cancel-consumer/{name}": _post(
            "Stop consuming a queue", "Message", _CONTROL, [_WORKER, *queue]
        ),
        "/api/tasks": _get(
            "List tasks",
            "TaskMap",
            (400,),
            [
                _q("limit", _api.TASKS_LIMIT.schema(), "at most this many"),
                _q("offset", _api.TASKS_OFFSET.schema(), "skip this many"),
                _SORT,
                *_FILTERS,
            ],
        ),
        "/api/task/types": _get("Task names seen", "TaskTypes", ()),
        "/api/queues/length": _get("Queue lengths", "QueueLengths", (404, 503)),
        "/api/task/info/{task_id}": _get("One task", "Task", (404,), [_TASK_ID]),
        "/api/task/apply/{name}": _post(
            "Run a task and wait for its result",
            "Result",
            (400, 404, 409, 503),
            [_TASK_NAME],
            body="ApplyBody",
        ),
        "/api/task/async-apply/{name}": _post(
            "Send a task", "Sent", (400, 404, 409, 503), [_TASK_NAME], body="ApplyBody"
        ),
        "/api/task/send-task/{name}": _post(
            "Send a task by name", "Sent", (400, 404, 409, 503), [_TASK_NAME], body="ApplyBody"
        ),
        "/api/task/result/{task_id}": _get(
            "A task's state and result",
            "Result",
            (400, 404, 503),
            [
                _TASK_ID,
                _q("timeout", _api.WAIT.schema(), "wait (s)"),
            ],
        ),
        "/api/task/abort/{task_id}": _post(
            "Abort a task (AbortableTask)", "Message", (404, 409, 503), [_TASK_ID]
        ),
        "/api/task/revoke/{task_id}": _post(
            "Revoke a task", "Message", (400, 404, 503), [_TASK_ID, *_REVOKE]
        ),
        "/api/task/timeout/{name}": _post(
            "Set a task's time limits on a worker", "Message", _CONTROL, [_TASK_NAME, *limits]
        ),
        "/api/task/rate-limit/{name}": _post(
            "Set a task's rate limit on a worker", "Message", _CONTROL, [_TASK_NAME, *rate]
        ),
        "/api/task/retry/{task_id}": _post(
            "Send a finished task again with its original arguments",
            "Retried",
            (404, 409, 503),
            [_TASK_ID],
        ),
        "/api/tasks/revoke": _post(
            "Revoke the unfinished tasks matching filters", "Bulk", (400, 503), [*_BULK, *_REVOKE]
        ),
        "/api/tasks/retry": _post(
            "Retry the finished tasks matching filters", "Bulk", (400, 503), _BULK
        ),
        "/api/queues/purge/{queue}": _post(
            "Delete every waiting message of a queue", "Purged", (404, 503), [_QUEUE]
        ),
        "/api/queues/messages/{queue}": _get(
            "The messages waiting in a queue (Redis)",
            "QueueMessages",
            (400, 404, 409, 503),
            [_QUEUE, _q("limit", _api.MESSAGES_LIMIT.schema(), "at most (default 100)")],
        ),
        "/api/queues/remove/{queue}/{task_id}": _post(
            "Delete one waiting message (Redis)", "Removed", (404, 409, 503), [_QUEUE, _TASK_ID]
        ),
        "/api/openapi.json": _get("This document", "OpenAPI", ()),
    }


def build_spec(prefix: str = "/monitor") -> dict[str, Any]:
    """The OpenAPI document of the API mounted under ``prefix`` (the server URL)."""
    from . import insight_openapi

    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "flask_celerymon monitor API",
            "version": "1",
            "description": "Flower 2.2's /api/* (same paths, parameters and shapes) plus "
            'retry, bulk actions and queue operations. Errors are {"error": message}. '
            "Parameters given as query parameters may also be sent as a form or JSON body.",
        },
        "servers": [{"url": prefix or "/"}],
        "paths": {**paths(), **insight_openapi.paths()},
        "components": {
            "schemas": {**SCHEMAS, **insight_openapi.SCHEMAS},
            "responses": {
                f"E{code}": {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for code, text in ERROR_MESSAGES.items()
            },
        },
    }
