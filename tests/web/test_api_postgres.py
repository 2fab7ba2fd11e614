"""Every test of test_api.py again, with the history in a real PostgreSQL (the monitor's
answers must not depend on the store behind them)."""

from __future__ import annotations

import pytest

from tests.web import test_api as sqlite_api
from tests.web.conftest import run_monitored

# the tests and the module's own fixtures; monitored and api are replaced below
globals().update(
    {k: v for k, v in vars(sqlite_api).items() if not k.startswith("__") and k not in
     ("monitored", "api")}
)  # fmt: skip


@pytest.fixture(scope="module")
def monitored(redis_server, postgres_server, tmp_path_factory):
    url = postgres_server.create_database()
    with run_monitored(redis_server, tmp_path_factory, "pgweb", CELERY_MONITOR_DB=url) as env:
        assert env.service.figures()["store"] == url  # no password in the test URL
        yield env


@pytest.fixture(scope="module")
def api(monitored) -> sqlite_api.Api:
    return sqlite_api.Api(monitored.app)
