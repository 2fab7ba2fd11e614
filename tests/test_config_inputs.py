"""Config mistakes are caught by ``init_app``, with a message naming the key and the fix."""

from __future__ import annotations

import logging

import pytest
from flask import Flask

from flask_celerymon import Celery, ConfigurationError
from flask_celerymon.config import OWN_KEYS, known_keys, suggest_key


def make_app(**config):
    """An eager app: one without a broker URL (a typo) must not start the embedded broker."""
    app = Flask("tests.apps.basic")
    app.config.update(CELERY_MONITOR_BLUEPRINT=False, CELERY_TASK_ALWAYS_EAGER=True, **config)
    return app


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "CELERY_BROKER_URL",
            "redis//127.0.0.1:6379",
            "CELERY_BROKER_URL = 'redis//127.0.0.1:6379' is not a URL: write it as "
            "scheme://host:port/... (e.g. redis://127.0.0.1:6379/0)",
        ),
        (
            "CELERY_BROKER_URL",
            "127.0.0.1:6379",
            "CELERY_BROKER_URL = '127.0.0.1:6379' is not a URL",
        ),
        (
            "CELERY_BROKER_URL",
            "reddis://127.0.0.1:6379/0",
            "CELERY_BROKER_URL = 'reddis://127.0.0.1:6379/0': 'reddis' is not a broker "
            "(kombu transport) scheme; use one of ",
        ),
        (
            "CELERY_BROKER_URL",
            "redis://:s3cret@127.0.0.1:99999/0",
            "CELERY_BROKER_URL = 'redis://:**@127.0.0.1:99999/0' cannot be parsed: "
            "Port out of range 0-65535",
        ),
        (
            "CELERY_BROKER_URL",
            "redis://user:s3cret@127.0.0.1:port/0",
            "CELERY_BROKER_URL = 'redis://user:**@127.0.0.1:port/0' cannot be parsed",
        ),
        (
            "CELERY_BROKER_URL",
            "redis://127.0.0.1:6379/0;amqp//h",
            "CELERY_BROKER_URL = 'amqp//h' is not a URL",
        ),
        ("CELERY_BROKER_URL", 6379, "CELERY_BROKER_URL must be a URL string or a list of them"),
        (
            "CELERY_RESULT_BACKEND",
            "redis//127.0.0.1:6379",
            "CELERY_RESULT_BACKEND = 'redis//127.0.0.1:6379' is not a URL",
        ),
        (
            "CELERY_RESULT_BACKEND",
            "redis+socket:///tmp/redis.sock",
            None,  # a socket path: accepted
        ),
        (
            "CELERY_RESULT_BACKEND",
            "mongo://127.0.0.1",
            "CELERY_RESULT_BACKEND = 'mongo://127.0.0.1': 'mongo' is not a result backend "
            "scheme; use one of ",
        ),
        ("CELERY_RESULT_BACKEND", "rds", "CELERY_RESULT_BACKEND = 'rds' is not a URL"),
    ],
)
def test_init_app_validates_broker_and_backend_urls(key, value, message):
    app = make_app(**{key: value})
    if message is None:
        Celery(app)
        return
    with pytest.raises(ConfigurationError) as info:
        Celery(app)
    assert str(info.value).startswith(message)
    assert "s3cret" not in str(info.value)
    assert "celerymon" not in app.extensions


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@example.com:6380/1?ssl_cert_reqs=required",
        "redis+socket:///tmp/redis.sock",
        "amqp://guest:guest@localhost:5672//",
        "pyamqp://h//;pyamqp://h2//",
        "sqla+sqlite:///celery.db",
        "memory://",
        "filesystem://",
    ],
)
def test_init_app_accepts_every_kind_of_broker_url(url):
    app = make_app(CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND="cache+memory://")
    assert Celery(app).get_app(app).conf.broker_url == url


@pytest.mark.parametrize(
    "backend", ["rpc://", "rpc", "disabled", "db+sqlite:///r.db", "cache+memory://", "pkg.mod:B"]
)
def test_init_app_accepts_every_kind_of_result_backend(backend):
    app = make_app(CELERY_BROKER_URL="memory://", CELERY_RESULT_BACKEND=backend)
    assert Celery(app).get_app(app).conf.result_backend == backend


def test_a_typo_in_a_key_is_logged_with_the_key_it_probably_meant(caplog):
    caplog.set_level(logging.WARNING, logger="flask_celerymon.config")
    app = make_app(CELERY_BROKER_ULR="redis://127.0.0.1:6379/0", CELERY_FROBNICATE=1)
    Celery(app)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "Flask config key CELERY_BROKER_ULR is unknown; did you mean CELERY_BROKER_URL?; ignored",
        "Flask config key CELERY_FROBNICATE is unknown; it is not a Celery setting nor ours; "
        "ignored",
    ]


def test_strict_config_makes_an_unknown_key_an_error():
    app = make_app(CELERY_STRICT_CONFIG=True, CELERY_BROKER_ULR="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError) as info:
        Celery(app)
    assert str(info.value) == (
        "Flask config key CELERY_BROKER_ULR is unknown; did you mean CELERY_BROKER_URL? "
        "(CELERY_STRICT_CONFIG is on: fix or remove the key)"
    )
    assert "celerymon" not in app.extensions


def test_strict_config_accepts_every_known_key_form():
    app = make_app(
        CELERY_STRICT_CONFIG=True,
        CELERY_BROKER_URL="memory://",
        CELERY_ALWAYS_EAGER=True,  # Celery's legacy name
        CELERYD_CONCURRENCY=2,  # legacy worker name
        CELERY_TASK_SERIALIZER="json",
        CELERY_SEND_TIMEOUT=2,
    )
    Celery(app)


def test_every_known_key_suggests_itself_and_one_typo_of_it_suggests_it_back():
    """The kind: any single-letter slip in any key we read is pointed back at that key."""
    keys = known_keys()
    assert set(OWN_KEYS) <= set(keys)
    assert {"CELERY_BROKER_URL", "CELERY_ALWAYS_EAGER", "CELERYBEAT_SCHEDULE"} <= set(keys)
    wrong = []
    for key in keys:
        if len(key) < 14:  # short keys have too many neighbours to guess from one slip
            continue
        i = len(key) - 3
        swapped = key[:i] + key[i + 1] + key[i] + key[i + 2 :]  # two letters swapped
        dropped = key[:i] + key[i + 1 :]  # one letter lost
        for typo in (swapped, dropped):
            if typo not in keys and suggest_key(typo) is None:
                wrong.append(typo)
    assert wrong == []
