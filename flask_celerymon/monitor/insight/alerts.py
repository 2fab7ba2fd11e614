"""Alert rules (``CELERY_MONITOR_ALERTS``), their evaluation and the webhook.

A rule is a dict::

    {"kind": "failure_rate", "threshold": 0.05, "window": 600, "task": "app.tasks.charge"}

=================  ==========================================================================
``kind``           ``failure_rate`` (failed / finished of a task over ``window`` s; every task
                   when ``task`` is left out; needs ``min_tasks`` finished, default 10),
                   ``queue_length`` (messages waiting in ``queue``, or in each queue),
                   ``queue_latency`` (p95 queue wait, sent to started, of ``queue`` or each
                   queue over ``window`` s, in seconds), ``worker_offline`` (a worker, or the
                   one named by ``worker``, is offline), ``no_events`` (no event for
                   ``threshold`` seconds)
``threshold``      the value above which the rule fires (not for ``worker_offline``)
``name``           shown in notifications (default: the kind)
``window``         seconds looked back by ``failure_rate``/``queue_latency`` (default 600)
``for``            seconds the condition must hold before it fires (default 0)
``repeat``         seconds after which a still-firing alert is sent again (default 3600;
                   0: never)
=================  ==========================================================================

Each (rule, subject) pair -- the subject is the task, queue or worker concerned -- fires once,
is sent again every ``repeat`` seconds while it holds, and is resolved (and sent as resolved)
when it no longer holds. Notifications are POSTed as JSON to ``CELERY_MONITOR_ALERT_WEBHOOK``:
our own body (:func:`payload`) or, with ``CELERY_MONITOR_ALERT_FORMAT = "slack"``, Slack's
``{"text": ...}``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigurationError

log = logging.getLogger(__name__)

KINDS = ("failure_rate", "queue_length", "queue_latency", "worker_offline", "no_events")
FORMATS = ("json", "slack")
_SUBJECT_KEY = {
    "failure_rate": "task",
    "queue_length": "queue",
    "queue_latency": "queue",
    "worker_offline": "worker",
}
_KEYS = {"kind", "name", "threshold", "window", "for", "repeat", "min_tasks", "task", "queue",
         "worker"}  # fmt: skip
#: Seconds a webhook may take to answer.
WEBHOOK_TIMEOUT = 5.0


@dataclass(frozen=True)
class AlertRule:
    """One validated rule (see the module docstring)."""

    kind: str
    name: str
    threshold: float | None
    window: float = 600.0
    for_: float = 0.0
    repeat: float = 3600.0
    min_tasks: int = 10
    subject: str | None = None  # the task, queue or worker it is limited to


def _number(key: str, rule: Mapping[str, Any], name: str, default: Any, minimum: float) -> Any:
    value = rule.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(f"{key}: '{name}' must be a number >= {minimum}, not {value!r}")
    return value


def parse_rules(value: Any, key: str = "CELERY_MONITOR_ALERTS") -> tuple[AlertRule, ...]:
    """Validate ``CELERY_MONITOR_ALERTS`` (a list of dicts). Raises :class:`ConfigurationError`
    naming the rule (``CELERY_MONITOR_ALERTS[1]``) and the key at fault."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{key} must be a list of alert rules (dicts), not {value!r}")
    rules = []
    for i, rule in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(rule, Mapping):
            raise ConfigurationError(f"{where} must be a dict like {{'kind': 'queue_length', "
                                     f"'threshold': 100}}, not {rule!r}")  # fmt: skip
        unknown = sorted(set(rule) - _KEYS)
        if unknown:
            raise ConfigurationError(
                f"{where} has unknown key(s) {', '.join(map(str, unknown))}; known keys are "
                f"{', '.join(sorted(_KEYS))}"
            )
        kind = rule.get("kind")
        if kind not in KINDS:
            raise ConfigurationError(f"{where}: 'kind' must be one of {', '.join(KINDS)}, "
                                     f"not {kind!r}")  # fmt: skip
        needs_threshold = kind != "worker_offline"
        if needs_threshold and "threshold" not in rule:
            raise ConfigurationError(f"{where}: a {kind} rule needs a 'threshold'")
        threshold = _number(where, rule, "threshold", None, 0) if needs_threshold else None
        if kind == "failure_rate" and threshold is not None and threshold > 1:
            raise ConfigurationError(
                f"{where}: a failure_rate 'threshold' is a fraction from 0 to 1 "
                f"(0.05 = 5 %), not {threshold!r}"
            )
        subject_key = _SUBJECT_KEY.get(kind)
        for k in ("task", "queue", "worker"):
            if k in rule and k != subject_key:
                raise ConfigurationError(f"{where}: a {kind} rule takes no '{k}'")
        subject = rule.get(subject_key) if subject_key else None
        if subject is not None and (not isinstance(subject, str) or not subject):
            raise ConfigurationError(f"{where}: '{subject_key}' must be a non-empty string, "
                                     f"not {subject!r}")  # fmt: skip
        name = rule.get("name", kind)
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{where}: 'name' must be a non-empty string, not {name!r}")
        min_tasks = _number(where, rule, "min_tasks", 10, 1)
        if not isinstance(min_tasks, int):
            raise ConfigurationError(f"{where}: 'min_tasks' must be an integer, not {min_tasks!r}")
        rules.append(
            AlertRule(
                kind=kind,
                name=name,
                threshold=None if threshold is None else float(threshold),
                window=float(_number(where, rule, "window", 600, 60)),
                for_=float(_number(where, rule, "for", 0, 0)),
                repeat=float(_number(where, rule, "repeat", 3600, 0)),
                min_tasks=min_tasks,
                subject=subject,
            )
        )
    names = [r.name for r in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigurationError(f"{key}: rule names must be unique; give a 'name' to each of "
                                 f"the rules named {', '.join(dup)}")  # fmt: skip
    return tuple(rules)


def payload(alert: Mapping[str, Any], fmt: str, monitor_url: str | None = None) -> dict[str, Any]:
    """The JSON body sent for an alert row (:meth:`InsightStore.alerts` item).

    ``json``: ``{"status": "firing" | "resolved", "rule", "kind", "subject", "value",
    "threshold", "message", "started", "resolved", "monitor"}`` (times in Unix seconds).
    ``slack``: ``{"text": "..."}`` for a Slack incoming webhook.
    """
    if fmt == "slack":
        icon = ":rotating_light:" if alert["status"] == "firing" else ":white_check_mark:"
        text = f"{icon} [{alert['status'].upper()}] {alert['rule']}: {alert['message']}"
        if monitor_url:
            text += f" <{monitor_url}|open the monitor>"
        return {"text": text}
    return {
        "status": alert["status"],
        "rule": alert["rule"],
        "kind": alert["kind"],
        "subject": alert["subject"],
        "value": alert["value"],
        "threshold": alert["threshold"],
        "message": alert["message"],
        "started": alert["started"],
        "resolved": alert["resolved"],
        "monitor": monitor_url,
    }


def post_json(url: str, body: Mapping[str, Any], timeout: float = WEBHOOK_TIMEOUT) -> str:
    """POST ``body`` as JSON to ``url``; return ``"sent (<status>)"`` or why it failed.

    Never raises: an unreachable or failing webhook is reported in the returned text (kept
    with the alert and logged).
    """
    data = json.dumps(body, default=str).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
            return f"sent ({resp.status})"
    except urllib.error.HTTPError as exc:
        log.warning("celerymon: alert webhook %s answered %s", url, exc.code)
        return f"failed: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("celerymon: alert webhook %s failed: %s", url, exc)
        return f"failed: {exc}"


def describe(rule: AlertRule, subject: str, value: float | None) -> str:
    """A one-line message for a firing condition."""
    v = value
    if rule.kind == "failure_rate":
        return (f"task {subject} failed {v:.1%} of its tasks over the last "
                f"{rule.window:g} s (threshold {rule.threshold:.1%})")  # fmt: skip
    if rule.kind == "queue_length":
        return f"queue {subject} has {v:g} waiting messages (threshold {rule.threshold:g})"
    if rule.kind == "queue_latency":
        return (f"queue {subject}: p95 wait {v:.3g} s over the last {rule.window:g} s "
                f"(threshold {rule.threshold:g} s)")  # fmt: skip
    if rule.kind == "worker_offline":
        return f"worker {subject} is offline"
    return f"no event received for {v:.0f} s (threshold {rule.threshold:g} s)"


def conditions(
    rule: AlertRule,
    *,
    totals: Mapping[str, Mapping[str, Any]],
    queue_waits: Mapping[str, float | None],
    queues: Sequence[Mapping[str, Any]] | None,
    workers: Sequence[Mapping[str, Any]],
    silence: float | None,
) -> dict[str, float | None]:
    """``{subject: value}`` for each subject whose condition holds now.

    ``totals``: task roll-ups over the rule's window; ``queue_waits``: p95 wait per queue over
    the window; ``queues``: current lengths (None when unknown); ``workers``: the service's
    worker dicts; ``silence``: seconds since the last event (None before any).
    """
    out: dict[str, float | None] = {}
    t = rule.threshold
    if rule.kind == "failure_rate":
        for name, tot in totals.items():
            if rule.subject is not None and name != rule.subject:
                continue
            finished = sum(tot.get(k, 0) for k in ("succeeded", "failed", "revoked"))
            if finished >= rule.min_tasks:
                rate = tot.get("failed", 0) / finished
                if t is not None and rate > t:
                    out[name] = rate
    elif rule.kind == "queue_length":
        for q in queues or ():
            qname = q.get("name")
            if rule.subject is not None and qname != rule.subject:
                continue
            n = q.get("messages")
            if isinstance(n, (int, float)) and t is not None and n > t:
                out[str(qname)] = float(n)
    elif rule.kind == "queue_latency":
        for name, p95 in queue_waits.items():
            if rule.subject is not None and name != rule.subject:
                continue
            if p95 is not None and t is not None and p95 > t:
                out[name] = p95
    elif rule.kind == "worker_offline":
        for w in workers:
            h = w.get("hostname")
            if rule.subject is not None and h != rule.subject:
                continue
            if not w.get("status"):
                out[str(h)] = None
    elif rule.kind == "no_events" and silence is not None and t is not None and silence > t:
        out["events"] = silence
    return out
