"""The submit allowlist: a reference runs only a function defined where it says.

References are generated over every attribute reachable from a real app package
(:mod:`tests.apps.surface`): the modules it imports, names imported from elsewhere, re-exports,
classes and their members, partials, decorated functions, proxies. Each one is either refused
with :class:`DispatchRefused` or resolves to the function defined there.
"""

from __future__ import annotations

import inspect
import types

import pytest
from flask import Flask

from flask_celerymon import Celery, SubmitError
from flask_celerymon.dispatch import Allowlist, defined_object, parse_reference, run_reference
from flask_celerymon.errors import DispatchRefused
from tests.apps import surface

PKG = "tests.apps.surface"


@pytest.fixture(scope="module")
def tasks():
    app = Flask(PKG)
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    surface.celery.init_app(app)
    return app.extensions["celerymon"].celery_app.tasks


def generated_references():
    """``module:name`` and ``module:name.attr`` over everything the package namespace reaches."""
    refs = set()
    for name, obj in vars(surface).items():
        refs.add(f"{PKG}:{name}")
        for attr in dir(obj)[:400]:
            refs.add(f"{PKG}:{name}.{attr}")
    for name in vars(surface.sub):
        refs.add(f"{PKG}.sub:{name}")
    # the package's entry point and its __init__ under another name
    for module in ("__main__", "__init__"):
        for name in (*vars(surface), "main"):
            refs.add(f"{PKG}.{module}:{name}")
    # the module part walking into an imported module, and decoys of the parser
    refs |= {
        f"{PKG}.os:system",
        f"{PKG}:os",
        f"{PKG}:",
        f"{PKG}:popen ",
        f"{PKG}:1abc",
        f"{PKG}::plain",
        f".{PKG}:plain",
        f"{PKG}..sub:helper",
        f"{PKG}:plain:plain",
        f"{PKG}:<lambda>",
        f"{PKG}:dynamic",
    }
    return sorted(refs)


def test_only_functions_defined_in_the_package_resolve(tasks):
    allowlist = Allowlist(["tests.apps"])
    allowed = set()
    for ref in generated_references():
        try:
            obj = allowlist.resolve(ref, tasks)
        except DispatchRefused:
            continue
        module, name = ref.split(":")
        assert obj is vars(__import__(module, fromlist=["_"]))[name], ref
        assert obj.__module__ == module and obj.__qualname__ == name, ref
        assert type(obj) is types.FunctionType or name == "registered", ref
        allowed.add(ref)
    expected = {f"{PKG}:{name}" for name in surface.RUNNABLE} | {f"{PKG}.sub:helper"}
    assert allowed == expected


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (f"{PKG}:os.popen", f"malformed function reference '{PKG}:os.popen'"),
        (f"{PKG}:popen", f"{PKG}:popen is not defined in {PKG} (it is os:popen, imported there)"),
        (f"{PKG}:system", f"{PKG}:system is a builtin_function_or_method, not a plain function"),
        (f"{PKG}:os", f"{PKG}:os is a module, not a plain function"),
        (f"{PKG}:Helper", f"{PKG}:Helper is a type, not a plain function"),
        (f"{PKG}:runner", f"{PKG}:runner is a Runner, not a plain function"),
        (f"{PKG}:partial_plain", f"{PKG}:partial_plain is a partial, not a plain function"),
        (f"{PKG}:bound", f"{PKG}:bound is a method, not a plain function"),
        (f"{PKG}:current_app", f"{PKG}:current_app is a LocalProxy, not a plain function"),
        (f"{PKG}:helper", f"{PKG}:helper is not defined in {PKG} (it is {PKG}.sub:helper"),
        (f"{PKG}:run", f"{PKG}:run is not defined in {PKG} (it is subprocess:run"),
        (f"{PKG}:unwrapped", f"{PKG}:unwrapped is not defined in {PKG} (it is {PKG}:_decor"),
        (f"{PKG}:lam", f"{PKG}:lam is not defined in {PKG} (it is {PKG}:<lambda>"),
        (f"{PKG}:dynamic", f"{PKG}:dynamic: {PKG} defines no dynamic"),
        (f"{PKG}:__getattr__", f"malformed function reference '{PKG}:__getattr__'"),
        (f"{PKG}.os:system", f"{PKG}.os:system: module {PKG}.os cannot be imported"),
        ("os:system", "os:system is not on this worker's submit allowlist"),
        ("tests.apps_other:x", "tests.apps_other:x is not on this worker's submit allowlist"),
        (["x"], "malformed function reference ['x']"),
        (f"{PKG}.__main__:main", f"malformed function reference '{PKG}.__main__:main'"),
        (f"{PKG}.__init__:plain", f"malformed function reference '{PKG}.__init__:plain'"),
        ("__main__:plain", "malformed function reference '__main__:plain'"),
    ],
)
def test_refusals_name_the_reason(tasks, ref, message):
    with pytest.raises(DispatchRefused) as info:
        Allowlist(["tests.apps"]).resolve(ref, tasks)
    assert str(info.value).startswith(message), str(info.value)


def test_a_task_of_another_app_is_refused():
    with pytest.raises(DispatchRefused, match="is not a task registered with this app"):
        defined_object(f"{PKG}:registered", tasks={})


def test_worker_side_runs_nothing_it_refuses(tasks, tmp_path):
    allowlist = Allowlist(["tests.apps"])
    target = tmp_path / "pwned"
    for ref in (f"{PKG}:os.popen", f"{PKG}:popen", f"{PKG}:shell", f"{PKG}:partial_popen"):
        with pytest.raises(DispatchRefused):
            run_reference(allowlist, ref, [f"touch {target}"], {}, tasks)
    assert not target.exists()
    assert run_reference(allowlist, f"{PKG}:plain", [3], {}, tasks) == 3
    assert run_reference(allowlist, f"{PKG}:wrapped", [4], {}, tasks) == 4
    assert run_reference(allowlist, f"{PKG}:registered", [5], {}, tasks) == 10


def test_submit_applies_the_same_rule():
    app = Flask(PKG)
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    ext = Celery(app)
    with app.app_context():
        assert ext.submit(surface.wrapped, 7).result() == 7
        with pytest.raises(SubmitError, match="only module-level functions can be sent"):
            ext.submit(surface.Helper.static, 1)
        with pytest.raises(SubmitError, match="cannot send a closure or nested function"):
            ext.submit(surface.unwrapped, 1)
        with pytest.raises(SubmitError, match="not a plain function|takes a plain"):
            ext.submit(surface.partial_plain)


def test_allowlist_entries_are_validated():
    for bad in ("", ".x", ":x", "x:", "a b", "x:os.popen", 5):
        with pytest.raises(ValueError, match="must be 'package.module' or 'module:name'"):
            Allowlist([bad])


def test_parse_reference_accepts_what_reference_of_makes():
    assert parse_reference(f"{PKG}:plain") == (PKG, "plain")
    assert inspect.isfunction(defined_object(f"{PKG}:plain"))
