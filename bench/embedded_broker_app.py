"""The Celery app of ``bench/embedded_broker.py``: one task, settings from the environment."""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery


def make_app(conf: dict[str, Any]) -> Celery:
    """A Celery app with ``conf`` and the task ``bench.add``."""
    app = Celery("bench")
    app.conf.update(conf)

    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    return app


def __getattr__(name: str) -> Any:
    # ``celery -A bench.embedded_broker_app:app`` builds the app on first use, not on import.
    if name == "app":
        return make_app(json.loads(os.environ["BENCH_CELERY_CONF"]))
    raise AttributeError(name)
