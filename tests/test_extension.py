"""The extension without a broker: config, registration, eager mode, submit guards, schedules."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from celery import Task
from celery.schedules import crontab, solar
from flask import Flask

import flask_celerymon
from flask_celerymon import (
    AlreadyRegisteredError,
    Celery,
    ConfigurationError,
    Future,
    FuturePool,
    NotInitializedError,
    SubmitError,
    TaskNotFound,
    current_task,
)
from tests.apps import basic


def make_app(**config):
    app = Flask("tests.apps.basic")
    app.config.update(CELERY_MONITOR_BLUEPRINT=False, **config)
    return app


def eager_app(**config):
    return make_app(CELERY_TASK_ALWAYS_EAGER=True, **config)


def closure_maker():
    def inner():
        return 1

    return inner


def test_public_api_is_explicit():
    assert flask_celerymon.__all__ == sorted(flask_celerymon.__all__)
    for name in flask_celerymon.__all__:
        assert hasattr(flask_celerymon, name)


def test_app_in_constructor_and_factory_form():
    direct = eager_app()
    ext = Celery(direct)
    assert direct.extensions["celerymon"].extension is ext
    factory = Celery()
    app = eager_app()
    factory.init_app(app)
    assert app.extensions["celerymon"].celery_app.conf.task_always_eager is True


def test_second_init_app_on_same_app_says_what_to_do():
    app = eager_app()
    ext = Celery(app)
    with pytest.raises(
        AlreadyRegisteredError, match="already initialised on app 'tests.apps.basic'; call init_app"
    ):
        ext.init_app(app)
    with pytest.raises(AlreadyRegisteredError):
        Celery(app)


def test_two_apps_in_one_process_get_independent_celery_apps():
    ext = Celery()
    one = make_app(CELERY_BROKER_URL="memory://one", CELERY_TASK_ALWAYS_EAGER=True)
    two = make_app(CELERY_BROKER_URL="redis://127.0.0.1:1/0", CELERY_TASK_DEFAULT_QUEUE="other")
    ext.init_app(one)
    ext.init_app(two)
    c1, c2 = ext.get_app(one), ext.get_app(two)
    assert c1 is not c2
    assert c1.conf.broker_url == "memory://one" and c2.conf.broker_url == "redis://127.0.0.1:1/0"
    assert c1.conf.task_always_eager is True and c2.conf.task_always_eager is False
    assert c2.conf.task_default_queue == "other" and c1.conf.task_default_queue == "celery"
    with one.app_context():
        assert ext.app is c1
    with two.app_context():
        assert ext.app is c2
    with pytest.raises(NotInitializedError, match="serves several apps; push an app context"):
        ext.app  # noqa: B018


def test_use_before_init_app_is_a_clear_error():
    with pytest.raises(NotInitializedError, match="not initialised on any app"):
        Celery().submit(basic.add, 1, 2)


def test_config_maps_new_and_legacy_keys_and_drops_others():
    app = make_app(
        CELERY_BROKER_URL="redis://127.0.0.1:9/1",
        CELERY_RESULT_BACKEND="redis://127.0.0.1:9/2",
        CELERY_ALWAYS_EAGER=True,
        CELERYD_CONCURRENCY=7,
        CELERYBEAT_SCHEDULE={"x": {"task": "t", "schedule": 5}},
        CELERY_TASK_DEFAULT_QUEUE="jobs",
        SECRET_KEY="s3cret",
        SQLALCHEMY_DATABASE_URI="sqlite://",
    )
    capp = Celery(app).get_app(app)
    assert capp.conf.broker_url == "redis://127.0.0.1:9/1"
    assert capp.conf.result_backend == "redis://127.0.0.1:9/2"
    assert capp.conf.task_always_eager is True
    assert capp.conf.worker_concurrency == 7
    assert capp.conf.beat_schedule["x"]["task"] == "t"
    assert capp.conf.task_default_queue == "jobs"
    flat = {k.lower() for k in capp.conf}
    assert "secret_key" not in flat and "sqlalchemy_database_uri" not in flat
    assert all(v != "s3cret" for v in capp.conf.values() if isinstance(v, str))


def test_new_key_wins_over_legacy_key():
    app = make_app(CELERY_ALWAYS_EAGER=False, CELERY_TASK_ALWAYS_EAGER=True)
    assert Celery(app).get_app(app).conf.task_always_eager is True


def test_unknown_celery_key_is_logged(caplog):
    caplog.set_level(logging.WARNING, logger="flask_celerymon.config")
    app = eager_app(CELERY_BROKR_URL="redis://typo")
    Celery(app)
    assert (
        "Flask config key CELERY_BROKR_URL is unknown; did you mean CELERY_BROKER_URL?; ignored"
        in caplog.text
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "CELERY_START_TIMEOUT",
            "10",
            "CELERY_START_TIMEOUT must be a number of seconds > 0, not '10'",
        ),
        (
            "CELERY_START_TIMEOUT",
            -1,
            "CELERY_START_TIMEOUT must be a number of seconds > 0, not -1",
        ),
        (
            "CELERY_START_LOCAL_WORKERS",
            "no",
            "CELERY_START_LOCAL_WORKERS must be True or False, not 'no'",
        ),
        (
            "CELERY_LOG_LEVEL",
            "loud",
            "CELERY_LOG_LEVEL must be one of debug, info, warning, error, critical, fatal, not 'loud'",
        ),
        (
            "CELERY_MONITOR_PORT",
            70000,
            "CELERY_MONITOR_PORT must be a port number 0-65535, not 70000",
        ),
        (
            "CELERY_MONITOR_ADDRESS",
            None,
            "CELERY_MONITOR_ADDRESS must be a host address, not None",
        ),
        ("CELERY_WORKERS", -2, "CELERY_WORKERS must be a number >= 0, not -2"),
        (
            "CELERY_WORKERS",
            True,
            "CELERY_WORKERS must be a number, a list of names or a dict of name -> options, not True",
        ),
        (
            "CELERY_WORKERS",
            ["a", 3],
            "CELERY_WORKERS as a list must hold worker names (strings): ['a', 3]",
        ),
        (
            "CELERY_WORKERS",
            {"a": {"concurency": 2}},
            "CELERY_WORKERS['a']: unknown worker option 'concurency'",
        ),
        (
            "CELERY_WORKERS",
            {"a": {"concurrency": "2"}},
            "CELERY_WORKERS['a']['concurrency'] has the wrong type: '2'",
        ),
        (
            "CELERY_MONITOR_URL_PREFIX",
            "monitor/",
            "CELERY_MONITOR_URL_PREFIX must be '' or a path like '/monitor', not 'monitor/'",
        ),
        (
            "CELERY_SUBMIT_ALLOWLIST",
            "myapp",
            "CELERY_SUBMIT_ALLOWLIST must be a list of module prefixes",
        ),
    ],
)
def test_bad_config_value_names_the_key(key, value, message):
    app = eager_app(**{key: value})
    with pytest.raises(ConfigurationError) as info:
        Celery(app)
    assert message in str(info.value)
    assert "celerymon" not in app.extensions


def test_worker_specs_from_number_list_and_dict():
    from flask_celerymon.config import parse_workers

    assert [w.name for w in parse_workers(2)] == ["worker1", "worker2"]
    assert [w.name for w in parse_workers(["foo", "bar"])] == ["foo", "bar"]
    specs = parse_workers(
        {"foo": {"concurrency": 10, "queues": ["low", "high"]}, "bar": {"queues": "high"}}
    )
    assert specs[0].options["concurrency"] == 10
    assert specs[0].queues == ["low", "high"] and specs[1].queues == ["high"]


def test_pickle_needs_explicit_opt_in(caplog):
    with pytest.raises(ConfigurationError, match="set CELERY_ALLOW_PICKLE = True to opt in"):
        Celery(eager_app(CELERY_TASK_SERIALIZER="pickle"))
    with pytest.raises(ConfigurationError, match="CELERY_ALLOW_PICKLE"):
        Celery(eager_app(CELERY_ACCEPT_CONTENT=["json", "pickle"]))
    caplog.set_level(logging.WARNING, logger="flask_celerymon.config")
    app = eager_app(CELERY_ALLOW_PICKLE=True)
    capp = Celery(app).get_app(app)
    assert "CELERY_ALLOW_PICKLE is on" in caplog.text
    assert capp.conf.task_serializer == "pickle"
    assert "pickle" in capp.conf.accept_content


def test_json_only_by_default():
    app = eager_app()
    conf = Celery(app).get_app(app).conf
    assert conf.task_serializer == "json" and conf.result_serializer == "json"
    assert list(conf.accept_content) == ["json"]


# -- eager mode ----------------------------------------------------------------------------


def test_eager_submit_map_and_get_run_synchronously():
    ext = Celery()
    app = make_app(CELERY_ALWAYS_EAGER=True)  # the legacy name
    ext.init_app(app)
    with app.app_context():
        future = ext.submit(basic.add, 1, 2)
        assert isinstance(future, Future)
        assert future.done() and future.result(timeout=0) == 3
        pool = ext.map(basic.add, [1, 2], [3, 4], [5, 6])
        assert isinstance(pool, FuturePool) and pool.result() == [3, 7, 11]
        again = ext.get(future.id)
        assert again.result(timeout=0) == 3
        assert again.state == "SUCCESS"


def test_eager_task_gets_a_fresh_app_context_not_the_callers_g():
    ext = Celery()
    app = eager_app()
    ext.init_app(app)
    from flask import g

    with app.test_request_context("/view"):
        g.marker = "the view's"
        assert ext.submit(basic.app_name).result() == "tests.apps.basic"
        assert ext.submit(_read_g_marker).result() is None
        assert ext.submit(_has_request_context).result() is False
        assert g.marker == "the view's"  # and the task's context is gone again


def test_eager_caller_context_switch_restores_sharing_the_callers_context():
    ext = Celery()
    app = eager_app(CELERY_EAGER_CALLER_CONTEXT=True)
    ext.init_app(app)
    from flask import g

    with app.test_request_context("/view"):
        g.marker = "kept"
        assert ext.submit(_read_g_marker).result() == "kept"
        assert ext.submit(_has_request_context).result() is True
    with app.app_context():
        assert ext.submit(basic.app_name).result() == "tests.apps.basic"


def _has_request_context():
    from flask import has_request_context

    return has_request_context()


def _read_g_marker():
    from flask import g

    return g.get("marker")


def test_eager_task_without_context_gets_one_pushed():
    ext = Celery()
    app = eager_app()
    ext.init_app(app)

    @ext.task
    def name_of_app():
        from flask import current_app

        return current_app.name

    assert name_of_app.apply().get() == "tests.apps.basic"


def test_current_task_inside_and_outside_tasks():
    ext = Celery()
    app = eager_app()
    ext.init_app(app)
    assert not current_task
    with app.app_context():
        future = ext.submit(basic.whoami)
        assert future.result() == future.id
        assert not current_task  # nothing leaks into the caller after an eager run


@pytest.mark.parametrize("key", ["CELERY_TASK_ALWAYS_EAGER", "CELERY_ALWAYS_EAGER"])
def test_eager_flag_set_after_init_app_is_honoured(key):
    ext = Celery()
    app = make_app(CELERY_BROKER_URL="memory://")
    ext.init_app(app)

    @ext.task
    def double(x):
        return 2 * x

    app.config[key] = True  # the usual pytest fixture: after the factory returned
    with app.app_context():
        future = ext.submit(basic.add, 1, 2)
        assert future.done() and future.result(timeout=0) == 3
        assert ext.map(basic.add, [1, 1], [2, 2]).result(timeout=0) == [2, 4]
        assert double.delay(4).get(timeout=0) == 8
    assert ext.get_app(app).conf.task_always_eager is True
    app.config[key] = False
    with app.app_context():
        assert not double.delay(4).ready()  # queued on memory://, no worker
    assert ext.get_app(app).conf.task_always_eager is False


def test_eager_propagation_set_after_init_app_is_honoured():
    ext = Celery()
    app = eager_app()
    ext.init_app(app)
    app.config["CELERY_TASK_EAGER_PROPAGATES"] = True
    with app.app_context(), pytest.raises(ValueError, match="bad"):
        ext.submit(basic.fail, "bad")


def test_eager_flag_set_on_the_celery_conf_stays_while_app_config_keeps_its_value():
    ext = Celery()
    app = make_app(CELERY_BROKER_URL="memory://", CELERY_TASK_ALWAYS_EAGER=False)
    ext.init_app(app)
    ext.get_app(app).conf.task_always_eager = True
    with app.app_context():
        assert ext.submit(basic.add, 1, 2).result(timeout=0) == 3


def test_eager_future_is_done_at_once_for_every_wait():
    import concurrent.futures as cf

    ext = Celery()
    app = eager_app()
    ext.init_app(app)
    with app.app_context():
        assert ext.submit(basic.add, 1, 2).result(timeout=0) == 3
        assert isinstance(ext.submit(basic.fail, "x").exception(timeout=0), ValueError)
        assert ext.map(basic.add, [1, 1], [2, 2]).result(timeout=0) == [2, 4]
        future = ext.submit(basic.add, 2, 2)
        assert cf.wait([future], timeout=0).done == {future}


def test_eager_failure_is_kept_in_the_future():
    ext = Celery()
    app = eager_app()
    ext.init_app(app)
    with app.app_context():
        future = ext.submit(basic.fail, "bad")
        assert isinstance(future.exception(), ValueError)
        with pytest.raises(ValueError, match="bad"):
            future.result()


def test_get_unknown_id_in_eager_mode():
    ext = Celery()
    app = eager_app()
    ext.init_app(app)
    with app.app_context(), pytest.raises(TaskNotFound):
        ext.get("0f6c1c0e-0000-0000-0000-000000000000")
    with app.app_context(), pytest.raises(TypeError, match="get\\(\\) takes a task id string"):
        ext.get(42)


# -- submit guards --------------------------------------------------------------------------


def test_submit_rejects_lambda():
    ext = Celery(eager_app())
    with pytest.raises(SubmitError, match="submit\\(\\) cannot send a lambda"):
        ext.submit(lambda: 1)


def test_submit_rejects_closure():
    ext = Celery(eager_app())
    with pytest.raises(SubmitError, match="cannot send a closure or nested function"):
        ext.submit(closure_maker())


def test_submit_rejects_main_function():
    ext = Celery(eager_app())
    namespace: dict = {"__name__": "__main__"}
    exec("def job():\n    return 1\n", namespace)  # noqa: S102 - builds a __main__ function
    with pytest.raises(SubmitError, match="cannot send job from __main__"):
        ext.submit(namespace["job"])


def test_submit_rejects_non_functions():
    ext = Celery(eager_app())
    with pytest.raises(
        SubmitError, match="takes a plain module-level function, not builtin_function_or_method"
    ):
        ext.submit(print, "x")


def test_submit_rejects_functions_outside_the_allowlist():
    import json

    ext = Celery(eager_app())
    with pytest.raises(SubmitError, match="json:dumps is not on the submit allowlist"):
        ext.submit(json.dumps, {})


def test_allow_extends_the_allowlist():
    from tests import conftest  # a module outside tests.apps

    ext = Celery(eager_app(CELERY_SUBMIT_ALLOWLIST=["tests.apps"]))
    with pytest.raises(SubmitError):
        ext.submit(conftest.free_port)
    ext.allow(conftest.free_port)
    assert isinstance(ext.submit(conftest.free_port).result(), int)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "countdown",
            "soon",
            "submit option countdown= must be a number of seconds >= 0, not 'soon'",
        ),
        ("queue", 5, "submit option queue= must be a queue name, not 5"),
        ("priority", 300, "submit option priority= must be an integer 0-255, not 300"),
        ("eta", "tomorrow", "submit option eta= must be a datetime, not 'tomorrow'"),
        (
            "expires",
            -1,
            "submit option expires= must be a datetime or a number of seconds > 0, not -1",
        ),
    ],
)
def test_submit_rejects_bad_option_types(option, value, message):
    ext = Celery(eager_app())
    with pytest.raises(SubmitError) as info:
        ext.submit(basic.add, 1, 2, **{option: value})
    assert str(info.value) == message


def test_submit_rejects_arguments_json_cannot_carry():
    ext = Celery(eager_app())
    with pytest.raises(SubmitError, match="cannot be serialised as JSON"):
        ext.submit(basic.add, object(), 1)


# -- registration ---------------------------------------------------------------------------


def test_task_decorator_before_and_after_init_app():
    ext = Celery()

    @ext.task
    def before(x):
        return x + 1

    app = eager_app()
    ext.init_app(app)

    @ext.task(name="custom.after")
    def after(x):
        return x + 2

    assert before(1) == 2  # still callable directly
    with app.app_context():
        assert before.delay(1).get() == 2
        assert after.apply_async((1,)).get() == 3
    assert ext.task.before is before
    assert ext.task["custom.after"] is after
    assert ext.task["after"] is after
    assert "custom.after" in ext.get_app(app).tasks
    assert before.name in ext.get_app(app).tasks
    with pytest.raises(AttributeError, match="no task named 'missing'"):
        ext.task.missing  # noqa: B018


def test_task_registered_in_every_app():
    ext = Celery()
    one, two = eager_app(), eager_app()
    ext.init_app(one)
    ext.init_app(two)

    @ext.task
    def shared():
        return "ok"

    assert shared.name in ext.get_app(one).tasks and shared.name in ext.get_app(two).tasks


class CountingTask(Task):
    abstract = True
    successes: list = []

    def on_success(self, retval, task_id, args, kwargs):
        CountingTask.successes.append(retval)


def test_base_task_is_honoured():
    ext = Celery(base_task=CountingTask)
    app = eager_app()
    ext.init_app(app)

    @ext.task
    def seven():
        return 7

    with app.app_context():
        assert isinstance(seven.bound(), CountingTask)
        seven.delay().get()
        ext.submit(basic.add, 1, 1).result()
    assert CountingTask.successes[-2:] == [7, 2]


def test_base_task_must_be_a_task_class():
    with pytest.raises(TypeError, match="base_task must be a subclass of celery.Task"):
        Celery(base_task=object)


# -- schedules ------------------------------------------------------------------------------


def test_schedule_variants_land_in_beat_schedule():
    ext = Celery()

    @ext.schedule(30, args=(1, 2), kwargs={"c": 3}, options={"queue": "high"})
    def every_30(a, b, c=0):
        return a + b + c

    @ext.schedule(timedelta(minutes=5), name="five-minutes")
    def every_5m():
        return None

    @ext.schedule(hour=7, minute=30, day_of_week=1)
    def monday_morning():
        return None

    @ext.schedule(solar("sunset", -37.81753, 144.96715), name="solar-task")
    def at_sunset():
        return None

    app = eager_app()
    ext.init_app(app)

    @ext.schedule(crontab(minute=0), name="hourly")
    def after_init():
        return None

    beat = ext.get_app(app).conf.beat_schedule
    assert beat[every_30.name] == {
        "task": every_30.name,
        "schedule": timedelta(seconds=30),
        "args": (1, 2),
        "kwargs": {"c": 3},
        "options": {"queue": "high"},
    }
    assert beat["five-minutes"]["schedule"] == timedelta(minutes=5)
    assert beat[monday_morning.name]["schedule"] == crontab(hour=7, minute=30, day_of_week=1)
    assert isinstance(beat["solar-task"]["schedule"], solar)
    assert beat["hourly"]["task"] == after_init.name
    assert every_30.name in ext.get_app(app).tasks


def test_schedule_merges_with_configured_beat_schedule():
    app = eager_app(CELERY_BEAT_SCHEDULE={"from-config": {"task": "t", "schedule": 10}})
    ext = Celery()

    @ext.schedule(60)
    def periodic():
        return None

    ext.init_app(app)
    assert set(ext.get_app(app).conf.beat_schedule) == {"from-config", periodic.name}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (
            (30,),
            {"hour": 1},
            "takes either a schedule (seconds, timedelta, crontab, solar) or crontab keywords, not both",
        ),
        ((), {}, "celery.schedule() needs a schedule"),
        ((), {"hours": 1}, "got unknown keyword(s) hours"),
        ((-5,), {}, "interval must be > 0 seconds, not -5"),
        (("daily",), {}, "cannot use 'daily'"),
    ],
)
def test_schedule_bad_arguments_are_clear_errors(args, kwargs, message):
    with pytest.raises(ConfigurationError) as info:
        Celery().schedule(*args, **kwargs)
    assert message in str(info.value)
