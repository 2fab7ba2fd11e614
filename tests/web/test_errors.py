"""The one error handler: each kind of OperationError gets its status, as JSON or a page."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_celerymon import Celery
from flask_celerymon.errors import (
    ConflictError,
    InvalidInput,
    NoReplyError,
    NotFoundError,
    OperationError,
    RefusedError,
    UnavailableError,
)
from flask_celerymon.monitor import SearchError
from flask_celerymon.web import errors


@pytest.fixture
def app() -> Flask:
    app = Flask("errors_test")
    app.config.update(TESTING=True, CELERY_BROKER_URL="memory://", CELERY_MONITOR_DB=False)
    Celery(app)
    return app


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (InvalidInput("limit must be an integer"), 400),
        (SearchError("bad search"), 400),
        (RefusedError("Failed to grow: no"), 403),
        (NotFoundError("Unknown task 'x'"), 404),
        (ConflictError("already finished"), 409),
        (UnavailableError("no result backend is configured"), 503),
        (NoReplyError("worker 'w' did not reply within 1 s"), 503),
    ],
)
def test_each_kind_is_answered_with_its_status_as_json_on_the_api(app, exc, status):
    with app.test_request_context("/monitor/api/task/info/x"):
        resp = errors.operation_error(exc)
    assert (resp.status_code, resp.get_json()) == (status, {"error": str(exc)})


def test_a_page_gets_the_error_page_with_the_errors_title(app):
    exc = NotFoundError("No worker named 'w' is known.", title="Unknown worker")
    with app.test_request_context("/monitor/worker/w"):
        resp = errors.operation_error(exc)
    text = resp.get_data(as_text=True)
    assert (resp.status_code, resp.mimetype) == (404, "text/html")
    assert "Unknown worker" in text and "No worker named &#39;w&#39; is known." in text


def test_a_page_without_a_title_is_titled_by_its_status(app):
    with app.test_request_context("/monitor/charts?window=2w"):
        resp = errors.operation_error(InvalidInput("window must be one of 15m, 1h"))
    assert resp.status_code == 400 and "Bad request" in resp.get_data(as_text=True)


def test_an_unlisted_kind_is_a_500_never_a_guess():
    assert errors.status_of(OperationError("?")) == 500


def test_the_served_app_answers_raised_errors_through_the_handler(app):
    client = app.test_client()
    resp = client.get("/monitor/worker/nobody@nowhere")
    assert resp.status_code == 404 and resp.mimetype == "text/html"
    assert "No worker named &#39;nobody@nowhere&#39; is known." in resp.get_data(as_text=True)
    resp = client.get("/monitor/tasks/datatable", query_string={"search[value]": "()"})
    assert (resp.status_code, resp.get_json()) == (400, {"error": "empty parentheses in search"})
    resp = client.get("/monitor/api/task/info/nope")
    assert (resp.status_code, resp.get_json()) == (404, {"error": "Unknown task 'nope'"})
