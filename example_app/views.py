"""The page that submits work and shows how it is going."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from flask_celerymon import FuturePool
from flask_celerymon.web.common import cross_site_reason

from . import celery, tasks

bp = Blueprint("example", __name__)

JOBS = {
    "add": ("Add 2 + 3", lambda: celery.submit(tasks.add, 2, 3)),
    "report": ("Build a 10-page report", lambda: celery.submit(tasks.build_report, 10)),
    "fail": ("Charge a card (fails)", lambda: celery.submit(tasks.charge_card, 1042)),
    "retry": ("Sync inventory (retries)", lambda: celery.submit(tasks.sync_inventory, "SKU-7")),
    "priority": (
        "Send a receipt (high-priority queue)",
        lambda: celery.submit(tasks.send_receipt, 1042),
    ),
    "batch": (
        "Add 10 pairs in one group",
        lambda: celery.map(tasks.add, *[(i, i) for i in range(10)]),
    ),
}


def _recent() -> Any:
    return current_app.extensions["example_recent"]


@bp.before_request
def refuse_cross_site_posts() -> Any:
    """403 for a form posted from another site's page (a browser says where it was sent from in
    ``Origin``/``Sec-Fetch-Site``); else any page the user visits could make this app submit work.
    An app with logins would use its forms library's CSRF token (Flask-WTF) as well."""
    if request.method == "POST" and (reason := cross_site_reason()) is not None:
        return jsonify(error=f"cross-site request refused: {reason}"), 403
    return None


@bp.get("/")
def index() -> str:
    return render_template("index.html", jobs=JOBS, recent=list(_recent()))


@bp.post("/submit/<kind>")
def submit(kind: str) -> Any:
    if kind not in JOBS:
        return jsonify(error=f"unknown job {kind!r}"), 404
    label, send = JOBS[kind]
    result = send()
    futures = list(result) if isinstance(result, FuturePool) else [result]
    for future in futures:
        _recent().appendleft({"id": future.id, "label": label})
    return redirect(url_for("example.index"))


@bp.get("/tasks/<task_id>")
def task_status(task_id: str) -> Any:
    """``{"id", "state", "info"}`` of a task (``info``: its result, progress or error)."""
    result = celery.app.AsyncResult(task_id)
    info = result.info
    if isinstance(info, BaseException):
        info = f"{type(info).__name__}: {info}"
    return jsonify(id=task_id, state=result.state, info=info)
