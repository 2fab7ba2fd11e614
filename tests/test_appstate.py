"""One app state (``appstate.get_state``) and one settings object read once (``config.Settings``)."""

from __future__ import annotations

import dataclasses

import pytest
from flask import Flask

from flask_celerymon import Celery, NotInitializedError
from flask_celerymon.appstate import EXTENSION_KEY, AppState, get_state
from flask_celerymon.config import OWN_KEYS, Settings, attribute_name
from flask_celerymon.monitor.settings import MonitorSettings
from flask_celerymon.processes import ProcessPlan

BROKER = "redis://127.0.0.1:1/0"  # never connected to


def _app(tmp_path, **config) -> Flask:
    app = Flask("shop", instance_path=str(tmp_path))
    app.config.update(CELERY_BROKER_URL=BROKER, **config)
    return app


def test_get_state_finds_the_state_of_the_app_or_the_current_app(tmp_path):
    app = _app(tmp_path)
    ext = Celery(app)
    state = get_state(app)
    assert isinstance(state, AppState) and state.extension is ext
    with app.app_context():
        assert get_state() is state


def test_get_state_of_an_app_without_the_extension_says_to_call_init_app(tmp_path):
    with pytest.raises(NotInitializedError) as info:
        get_state(_app(tmp_path))
    assert str(info.value) == (
        "flask_celerymon is not initialised on app 'shop'; call celery.init_app(app) first"
    )


def test_the_blueprint_keeps_its_parts_on_the_one_state_not_in_extra_keys(tmp_path):
    app = _app(tmp_path)
    Celery(app)
    assert [k for k in app.extensions if k.startswith("celerymon")] == [EXTENSION_KEY]
    state = get_state(app)
    assert state.access is not None and state.metrics is not None
    assert state.limits.sockets.size == 8
    assert state.login is None  # no OAuth2 provider configured


def test_limits_without_the_blueprint_is_a_clear_error(tmp_path):
    app = _app(tmp_path, CELERY_MONITOR_BLUEPRINT=False)
    Celery(app)
    with pytest.raises(NotInitializedError, match="monitor blueprint is not mounted on app"):
        get_state(app).limits  # noqa: B018 - the property raises


def test_settings_have_one_typed_attribute_per_key():
    fields = {f.name for f in dataclasses.fields(Settings)}
    names = {attribute_name(key) for key in OWN_KEYS}
    assert names <= fields
    assert fields - names == {"own", "celery", "instance_path", "explicit"}


def test_settings_are_read_once_and_frozen(tmp_path):
    app = _app(tmp_path, CELERY_MONITOR_PORT=6000, CELERY_MONITOR_QUEUES=["a", "b"])
    Celery(app)
    settings = get_state(app).settings
    assert settings.monitor_port == settings["CELERY_MONITOR_PORT"] == 6000
    assert settings.monitor_queues == ("a", "b")
    assert settings.log_dir == str(tmp_path / "celery" / "logs")
    assert settings.embedded_broker_dir == str(tmp_path / "celery" / "broker")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.monitor_port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.own["CELERY_MONITOR_PORT"] = 1  # type: ignore[index]


def test_defaults_are_visible_in_app_config_and_explicit_keys_are_known(tmp_path):
    app = _app(tmp_path, CELERY_MONITOR_PORT=6000)
    Celery(app)
    for key, (default, _valid, _what) in OWN_KEYS.items():
        if key != "CELERY_MONITOR_PORT":
            assert app.config[key] == default, key
    assert app.config["CELERY_MONITOR_PORT"] == 6000
    assert get_state(app).settings.explicit == {"CELERY_MONITOR_PORT"}


def test_the_monitor_keys_take_their_defaults_from_the_monitor_settings():
    defaults = MonitorSettings()
    shared = {
        key: key[len("CELERY_MONITOR_") :].lower()
        for key in OWN_KEYS
        if key.startswith("CELERY_MONITOR_") and key != "CELERY_MONITOR_DB"  # None vs False
    }
    shared = {key: name for key, name in shared.items() if hasattr(defaults, name)}
    assert len(shared) == 16  # CELERY_MONITOR_EVENT_BACKLOG_MB is the 16th
    for key, name in shared.items():
        assert OWN_KEYS[key][0] == getattr(defaults, name), key


def test_the_process_plan_is_plain_data_of_the_app_as_it_is_now(tmp_path):
    app = _app(tmp_path, CELERY_WORKERS=["a"], CELERY_APP_IMPORT="shop:create_app()")
    ext = Celery(app)
    state = get_state(app)
    plan = state.process_plan()
    assert isinstance(plan, ProcessPlan)
    assert (plan.app_import, [w.name for w in plan.workers], plan.beat) == (
        "shop:create_app()",
        ["a"],
        False,
    )
    assert plan.monitor_mounted is True

    @ext.schedule(60)
    def tick() -> None: ...

    assert state.process_plan().beat is True  # a schedule added after init_app counts
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.beat = True  # type: ignore[misc]
