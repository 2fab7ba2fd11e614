"""Every way of making a task of the app gives it the app's task class (eager, no broker).

The kind: a task class that does not derive from the app's task class runs outside the app
context. The matrix below makes tasks every way Celery and the extension allow, with and without
an app-wide ``base_task`` and a per-task ``base``, and checks each runs in a fresh app context.
"""

from __future__ import annotations

import itertools

import pytest
from celery import Task
from flask import Flask, current_app, g, has_app_context, has_request_context

from flask_celerymon import Celery, ConfigurationError
from flask_celerymon.context import combine_base
from flask_celerymon.extension import AppContextTask

_names = itertools.count()


class AppWide(Task):
    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        SEEN.append(("app-wide.after_return", has_app_context()))


class PerTask(Task):
    def on_success(self, retval, task_id, args, kwargs):
        SEEN.append(("per-task.on_success", has_app_context()))


SEEN: list[tuple[str, bool]] = []


def probe():
    g.trail = [*g.get("trail", []), "body"]
    return {
        "app": current_app.name,
        "request": has_request_context(),
        "trail": g.trail,
    }


class ClassBased(Task):
    """A Celery 1.0 style task class, registered with register_task."""

    def run(self):
        return probe()


def make(ext: Celery, app: Flask, how: str, base: type[Task] | None):
    """Register ``probe`` as a task of ``app`` the way ``how`` says; return the Celery task."""
    name = f"tests.test_task_classes.t{next(_names)}"
    options = {"name": name} if base is None else {"name": name, "base": base}
    capp = ext.get_app(app)
    if how == "extension decorator":
        return ext.task(**options)(probe).bound(app.extensions["celerymon"])
    if how == "celery app decorator":
        return capp.task(shared=False, **options)(probe)
    if how == "register_task class":
        cls = type("Registered", (base, ClassBased) if base else (ClassBased,), {"name": name})
        return capp.register_task(cls)
    if how == "register_task instance":
        cls = type("Registered", (base, ClassBased) if base else (ClassBased,), {"name": name})
        return capp.register_task(cls())
    raise AssertionError(how)


HOWS = ["extension decorator", "celery app decorator", "register_task class",
        "register_task instance"]  # fmt: skip


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("base", [None, PerTask], ids=["no-base", "base"])
@pytest.mark.parametrize("base_task", [None, AppWide], ids=["no-base_task", "base_task"])
def test_every_task_derives_from_the_app_task_class_and_runs_in_a_fresh_context(
    how, base, base_task
):
    ext = Celery(base_task=base_task)
    app = Flask("tests.test_task_classes")
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    ext.init_app(app)
    task = make(ext, app, how, base)
    assert isinstance(task, AppContextTask)
    assert isinstance(task, ext.get_app(app).Task)
    if base is not None:
        assert isinstance(task, base)
        assert type(task).__mro__.index(base) < type(task).__mro__.index(AppContextTask)
    if base_task is not None:
        assert isinstance(task, base_task)
    SEEN.clear()
    with app.test_request_context("/"):
        g.trail = ["view"]
        assert task.delay().get() == {
            "app": "tests.test_task_classes",
            "request": False,
            "trail": ["body"],
        }
    expected = []
    if base is PerTask:
        expected.append(("per-task.on_success", True))
    if base_task is AppWide:
        expected.append(("app-wide.after_return", True))
    assert expected == SEEN


class Reordered(AppWide, AppContextTask):
    """Puts AppWide before AppContextTask: the opposite of an app with base_task=AppWide."""


def test_base_that_cannot_be_combined_is_refused_naming_both_classes():
    ext = Celery(base_task=AppWide)
    app = Flask("tests.test_task_classes")
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    ext.init_app(app)
    with pytest.raises(ConfigurationError) as info:
        ext.task(base=Reordered)(probe)
    message = str(info.value)
    assert message.startswith(
        "@celery.task(tests.test_task_classes.probe, base)=tests.test_task_classes.Reordered "
        "cannot be combined with the app's task class (Task -> FlaskTask[tests.test_task_classes] "
        "-> AppContextTask -> AppWide -> Task): Cannot create a consistent method resolution "
        "order (MRO) for bases AppWide, AppContextTask;"
    )
    assert "derive Reordered from celery.Task alone" in message
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        ext.get_app(app).task(base=Reordered, name="tests.reordered", shared=False)(probe)


@pytest.mark.parametrize("base", [object, dict, "celery.Task", None.__class__])
def test_base_that_is_not_a_task_class_is_refused_at_decoration(base):
    ext = Celery()
    with pytest.raises(ConfigurationError, match=r"must be a subclass of celery\.Task"):
        ext.task(base=base)(probe)


def test_base_already_deriving_from_the_app_task_class_is_kept():
    ext = Celery()
    app = Flask("tests.test_task_classes")
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    ext.init_app(app)
    own = ext.get_app(app).Task
    assert combine_base(own, own) is own
    mine = type("Mine", (own,), {})
    assert combine_base(own, mine) is mine


def test_calling_a_task_object_directly_is_a_plain_call_in_the_app_context():
    ext = Celery()
    app = Flask("tests.test_task_classes")
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    ext.init_app(app)
    task = ext.get_app(app).task(name="tests.direct", shared=False)(probe)
    # outside any context: one is pushed for the call
    assert task() == {"app": "tests.test_task_classes", "request": False, "trail": ["body"]}
    with app.test_request_context("/"):  # inside one: the call runs in it, as any function
        g.trail = ["view"]
        assert task() == {"app": "tests.test_task_classes", "request": True,
                          "trail": ["view", "body"]}  # fmt: skip


def test_base_task_deriving_from_app_context_task_is_used_as_it_is():
    ordered = type("Ordered", (AppWide, AppContextTask), {})  # AppWide first, then ours
    ext = Celery(base_task=ordered)
    app = Flask("tests.test_task_classes")
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    ext.init_app(app)
    task = ext.get_app(app).task(name="tests.ordered", shared=False)(probe)
    mro = type(task).__mro__
    assert mro.index(AppWide) < mro.index(AppContextTask)
    SEEN.clear()
    assert task.delay().get()["trail"] == ["body"]
    assert SEEN == [("app-wide.after_return", True)]


@pytest.mark.parametrize("instance", [False, True], ids=["class", "instance"])
def test_register_task_names_an_unnamed_task_after_the_class_it_was_given(instance):
    ext = Celery()
    app = Flask("tests.test_task_classes")
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    ext.init_app(app)
    task = ext.get_app(app).register_task(ClassBased() if instance else ClassBased)
    assert task.name == "tests.test_task_classes.ClassBased"
    assert ext.get_app(app).tasks["tests.test_task_classes.ClassBased"] is task
    assert isinstance(task, AppContextTask)


def test_base_that_cannot_be_combined_fails_init_app_when_declared_before_it():
    ext = Celery(base_task=AppWide)
    ext.task(base=Reordered, name="tests.reordered.early")(probe)  # the factory pattern
    app = Flask("tests.test_task_classes")
    app.config.update(CELERY_TASK_ALWAYS_EAGER=True, CELERY_MONITOR_BLUEPRINT=False)
    with pytest.raises(
        ConfigurationError, match=r"^@celery\.task\(tests\.reordered\.early, base\)"
    ):
        ext.init_app(app)
