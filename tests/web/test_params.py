"""Each HTTP parameter is declared once (:mod:`flask_celerymon.web.params`), and the OpenAPI
document is generated from those declarations: every API route of the URL map is in it with
every parameter its view declares, and nothing else."""

from __future__ import annotations

import re

import pytest
from flask import Flask

from flask_celerymon.web import api, params
from flask_celerymon.web.openapi import api_routes, build_spec
from tests.web.conftest import make_monitored_app

PREFIX = "/monitor"


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Flask:
    # the broker is never reached: only the URL map and the views are read
    return make_monitored_app("redis://127.0.0.1:9/0", str(tmp_path_factory.mktemp("params")))


def _template(rule: str) -> str:
    return re.sub(r"<(?:[a-z_]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_api_route_of_the_url_map_is_documented_with_every_declared_parameter(app):
    doc = build_spec(PREFIX)
    seen = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/api/") or rule.endpoint.endswith("api_not_found"):
            continue
        view = app.view_functions[rule.endpoint]
        path = _template(rule.rule[len(PREFIX) :])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op = doc["paths"][path][method.lower()]
            documented = {(p["in"], p["name"]) for p in op.get("parameters", ())}
            expected = {("path", name) for name in rule.arguments}
            declared = params.declared(view)
            if declared is not None and declared[0] != "body":
                expected |= {("query", f.data_key or n) for n, f in declared[1].fields.items()}
            assert documented == expected, (path, method)
            if declared is not None and declared[0] == "body":
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                body = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
                assert set(body["properties"]) == set(declared[1].fields), path
            else:
                assert "requestBody" not in op, path
            assert params.documented(view) is not None, path
            seen.add((path, method.lower()))
    assert seen == {(p, m) for p, ops in doc["paths"].items() for m in ops}
    assert len(seen) >= 37


def test_the_document_walks_the_declared_routes_only():
    rules = [rule for rule, _view, _methods in api_routes()]
    assert len(rules) == len(set(rules))
    assert all(rule.startswith("/api/") for rule in rules)
    assert {r for r, _v, _m in api.ROUTES} <= set(rules)


def test_a_view_without_its_openapi_facts_is_refused(monkeypatch):
    def bare() -> None:
        """Declares nothing."""

    monkeypatch.setattr(api, "ROUTES", (*api.ROUTES, ("/api/bare", bare, ("GET",))))
    with pytest.raises(LookupError, match="API view bare declares no OpenAPI facts"):
        build_spec(PREFIX)


def test_a_parameter_must_be_declared_with_a_params_field():
    from marshmallow import fields

    with pytest.raises(TypeError, match="parameter 'limit' must be declared with a params field"):
        params.schema(limit=fields.Integer())


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"limit": None, "dry_run": False, "signal": "SIGTERM", "state": None}),
        ({"limit": "", "dry_run": "", "signal": "", "state": "All"}, None),
        ({"limit": "7", "dry_run": "YES", "signal": "kill", "state": "A, B,All"},
         {"limit": 7, "dry_run": True, "signal": "SIGKILL", "state": ("A", "B")}),
        ({"limit": 7, "dry_run": 0, "signal": "term", "state": ["A"], "other": "x"},
         {"limit": 7, "dry_run": False, "signal": "SIGTERM", "state": ("A",)}),
    ],
)  # fmt: skip
def test_declared_fields_parse_flowers_forms_and_take_empty_as_not_given(given, expected):
    sch = params.schema(
        limit=params.Int(params.BULK_RANGE),
        dry_run=params.Bool(),
        signal=params.Signal(),
        state=params.Names(),
    )
    default = {"limit": None, "dry_run": False, "signal": "SIGTERM", "state": None}
    assert params.parse_args(sch, given) == (expected or default)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"limit": " 1"}, "limit must be an integer from 1 to 10000, not ' 1'"),
        ({"limit": "0", "dry_run": "maybe"}, "limit must be an integer from 1 to 10000, not '0'"),
        ({"dry_run": "maybe"}, "dry_run must be a boolean (1/0, true/false, yes/no), not 'maybe'"),
        ({"queue": "  "}, "missing parameter 'queue'"),
        ({"queue": "q", "when": "soon"},
         "when must be a date like '2024-01-31 13:45' (local time), ISO 8601 or Unix seconds "
         "from 0 to 253402300799, not 'soon'"),
        ({"queue": "q", "sort_by": "size"},
         f"sort_by must be one of {', '.join(params.SORT_CHOICES)}, not 'size'"),
    ],
)  # fmt: skip
def test_the_first_bad_parameter_in_declaration_order_is_named(given, message):
    sch = params.schema(
        limit=params.Int(params.BULK_RANGE),
        dry_run=params.Bool(),
        queue=params.Text(required=True),
        when=params.Time(),
        sort_by=params.Choice(params.SORT_CHOICES),
    )
    with pytest.raises(params.BadParameter) as info:
        params.parse_args(sch, given)
    assert str(info.value) == message
    assert info.value.status == 400


def test_the_apply_body_refuses_unknown_options_and_reversed_time_limits():
    body = params.ApplyBody()
    assert body.load({"args": [1], "expires": 5})["expires"] == 5
    with pytest.raises(params.BadParameter, match=r"^unknown option\(s\) serializer; allowed: "):
        body.load({"serializer": "pickle"})
    with pytest.raises(params.BadParameter, match=r"soft_time_limit \(5\) must be <= time_limit"):
        body.load({"soft_time_limit": 5, "time_limit": 2})
    with pytest.raises(params.BadParameter, match="^priority must be an integer from 0 to 255"):
        body.load({"priority": "5"})


def test_the_view_gets_the_parsed_values_and_bad_input_is_a_json_400(app):
    client = app.test_client()
    resp = client.get(f"{PREFIX}/api/tasks?limit=x")
    assert resp.status_code == 400
    assert resp.get_json() == {"error": "limit must be an integer from 0 to 1000000, not 'x'"}
    resp = client.post(
        f"{PREFIX}/api/task/async-apply/x", data="[1]", content_type="application/json"
    )
    assert resp.status_code == 400
    assert resp.get_json() == {"error": 'the request body must be a JSON object like {"args": [1, 2]}'}
