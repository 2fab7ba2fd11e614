"""Entry point for Celery's own CLI: ``celery -A flask_celerymon.celery worker``.

The Flask app is found the way ``flask`` finds it: ``FLASK_APP`` (``module``, ``module:app`` or a
factory ``module:create_app()``), else ``app.py``/``wsgi.py`` in the current directory. It is
loaded on first attribute access (never at import) and once per process, so a worker builds the
Flask app once, not once per task.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.lru_cache(maxsize=1)
def _load() -> Any:
    from flask.cli import ScriptInfo, locate_app, prepare_import

    from .appstate import find_state
    from .processes import ROLE_ENV, declare_queues

    # a task calling submit() in this process must not start local workers of its own
    os.environ.setdefault(ROLE_ENV, "celery")
    target = os.environ.get("FLASK_APP")
    if target:
        path, _, name = target.partition(":")
        module = prepare_import(path)
        app = locate_app(module, name or None)
    else:
        app = ScriptInfo().load_app()
    state = find_state(app)
    if state is None:
        raise RuntimeError(
            f"the Flask app {app.name!r} found through FLASK_APP={target!r} does not use "
            "flask_celerymon; call Celery().init_app(app) in it"
        )
    declare_queues(state.celery_app, state.settings.workers)
    return state.celery_app


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        return _load()
    raise AttributeError(name)
