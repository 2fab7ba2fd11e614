"""The Flask side of the local processes: how children import the app, and the reloader.

:mod:`flask_celerymon.processes` knows no Flask; ``AppState.process_plan`` fills its
:class:`~flask_celerymon.processes.ProcessPlan` with the answers of this module:
:func:`import_target` tells what children put in ``FLASK_APP`` (from the config, the
environment or the ``flask`` command line), :func:`reloader_watcher` tells the watcher process of
Werkzeug's reloader, which starts nothing.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .errors import StartError

if TYPE_CHECKING:
    from flask import Flask


def import_target(app: Flask, configured: str | None = None) -> str:
    """What a child process puts in ``FLASK_APP`` to build the same app.

    In order: ``configured`` (``CELERY_APP_IMPORT``), the ``FLASK_APP`` environment variable, the
    ``--app`` given to the ``flask`` command running now (from click's context, or from
    ``sys.argv`` in another thread), the app's import name (a module that exposes ``app`` or
    ``create_app``), or for a script run as ``__main__`` its module or file.
    """
    if configured:
        return configured
    if os.environ.get("FLASK_APP"):
        return os.environ["FLASK_APP"]
    try:
        import click
        from flask.cli import ScriptInfo

        ctx = click.get_current_context(silent=True)
        info = ctx.find_object(ScriptInfo) if ctx is not None else None
        if info is not None and info.app_import_path:
            return info.app_import_path
    except ImportError:  # pragma: no cover - click ships with Flask
        pass
    from_argv = _flask_app_from_argv(sys.argv)
    if from_argv:  # `flask --app X run` seen from a request thread (click's context is per thread)
        return from_argv
    name = app.import_name
    if name in ("__main__", "__mp_main__"):
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name and not spec.name.endswith("__main__"):
            return spec.name
        if spec is not None and spec.name:
            return spec.name.rpartition(".")[0] or spec.name
        path = getattr(main, "__file__", None)
        if path:
            return os.path.abspath(path)
        raise StartError(
            "cannot tell how a worker process should import this app (it was defined in an "
            "interactive session); set CELERY_APP_IMPORT = 'module:create_app()'"
        )
    return name


def _flask_app_from_argv(argv: list[str]) -> str | None:
    """The ``--app``/``-A`` value of a ``flask`` command line, if this process is one."""
    if not argv:
        return None
    prog = argv[0].replace("\\", "/")
    if os.path.basename(prog) != "flask" and not prog.endswith("flask/__main__.py"):
        return None
    args = iter(argv[1:])
    for arg in args:
        if arg in ("--app", "-A"):
            return next(args, None)
        if arg.startswith("--app="):
            return arg[len("--app=") :]
        if arg in ("-e", "--env-file"):
            next(args, None)
        elif not arg.startswith("-"):
            return None  # the sub-command: --app must come before it
    return None


def reloader_watcher() -> bool:
    """True in the watcher process of Werkzeug's reloader under ``flask run``.

    With the reloader on (``flask run --debug``, or ``--reload``), ``flask run`` loads the app
    in a watcher process that serves nothing: it starts a serving child (with
    ``WERKZEUG_RUN_MAIN=true``) and starts it again after each code change. Local processes
    belong to the serving child, which stops them when it exits for a reload, so the next child
    starts workers that run the new code. The ``flask run`` command is found in click's context
    of the calling thread (the one loading the app); anywhere else this is False.
    """
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        return False
    import click
    from flask.cli import run_command
    from flask.helpers import get_debug_flag

    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command is not run_command:
        return False
    reload = ctx.params.get("reload")
    return bool(get_debug_flag() if reload is None else reload)
