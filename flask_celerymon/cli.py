"""The ``flask celery`` command group: workers, beat, the monitor, and remote control.

``init_app`` adds :data:`celery_group` to ``app.cli``. Every command works on the app the
``flask`` command loaded (``--app``/``FLASK_APP``, factories included). A user mistake (unknown
method, bad option, unreachable broker) ends in a one-line click error, never a traceback.
"""

from __future__ import annotations

import contextvars
import gc
import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .appstate import find_state
from .errors import (
    ConfigurationError,
    ConflictError,
    ConnectionFailed,
    InvalidInput,
    StartError,
)
from .processes import (
    ROLE_ENV,
    ManagedProcess,
    beat_pidfile,
    check_broker,
    monitor_url,
    port_taken,
    running_pid,
    worker_args,
)

if TYPE_CHECKING:
    from .appstate import AppState
    from .config import Settings


class _NoApp(click.ClickException):
    """No app to load: one line, with Flask's own exit code for it."""

    exit_code = 2


class _CeleryGroup(AppGroup):
    """The ``celery`` group: an app that fails to load (``flask_celerymon``'s configuration
    check, or no app found) ends the command in one line, not a traceback.

    Registered as a ``flask.commands`` entry point, the group is found before the app is
    loaded: each command loads it (``with_appcontext``), inside :meth:`invoke`.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from flask.cli import NoAppException

        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None
        except NoAppException as exc:
            raise _NoApp(exc.format_message()) from None


celery_group = _CeleryGroup("celery", help="Run Celery workers, beat and the monitor of this app.")


def _state(app: Flask | None = None) -> AppState:
    """The state of ``app`` (default: the app the ``flask`` command loaded); a click error if none."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    state = find_state(app)
    if state is None:
        raise click.UsageError(f"the app {app.name!r} does not use flask_celerymon")
    return state


def _check_broker(state: AppState) -> None:
    try:
        check_broker(state.celery_app, timeout=3.0)
    except StartError as exc:
        raise click.ClickException(str(exc)) from None


def _run_celery(state: AppState, argv: list[str], role: str) -> None:
    """Run a ``celery`` sub-command in this process on the app's Celery instance."""
    from celery.bin.celery import celery as celery_main
    from click.exceptions import Exit

    previous = os.environ.get(ROLE_ENV)
    os.environ[ROLE_ENV] = role  # a task calling submit() here must not start local workers
    celery_main.params[0].default = state.celery_app  # what celery_app.start() does
    try:
        # `flask` pushed an app context around this command; tasks must not share it (each
        # pushes its own), so the worker runs in a context where none is active
        contextvars.Context().run(
            celery_main.main, args=argv, prog_name="flask celery", standalone_mode=False
        )
    except Exit as exc:
        if exc.exit_code:
            sys.exit(exc.exit_code)
    finally:
        celery_main.params[0].default = None
        if previous is None:
            os.environ.pop(ROLE_ENV, None)
        else:
            os.environ[ROLE_ENV] = previous


_SECONDS = click.FloatRange(min=0, min_open=True)
_PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}
#: The gunicorn worker classes ``flask celery monitor`` serves with.
WORKER_CLASSES = ("gevent", "gthread")


@celery_group.command("worker", context_settings=_PASSTHROUGH)
@click.option(
    "-n",
    "--name",
    "name",
    metavar="NAME",
    help="Node name (NAME@%h when it has no '@'); options configured for NAME in "
    "CELERY_WORKERS apply.",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(name: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a worker in the foreground (any `celery worker --help` option is accepted)."""
    state = _state()
    settings = state.settings
    spec = next((s for s in settings.workers if s.name == name), None) if name else None
    if spec is not None:
        args = worker_args(spec, spec.options.get("loglevel", settings.log_level))
    else:
        args = [f"--loglevel={settings.log_level}"]
        if name:
            args[:0] = ["-n", name if "@" in name else f"{name}@%h"]
    _check_broker(state)
    state.processes.declare_queues()
    _run_celery(state, ["worker", *args, *celery_args], "worker")


@celery_group.command("beat", context_settings=_PASSTHROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run the beat scheduler in the foreground (any `celery beat --help` option is accepted)."""
    state = _state()
    settings = state.settings
    args = [f"--loglevel={settings.log_level}"]
    schedule = os.path.join(settings.instance_path, "celery", "celerybeat-schedule")
    if not any(a in ("-s", "--schedule") or a.startswith("--schedule=") for a in celery_args):
        os.makedirs(os.path.dirname(schedule), exist_ok=True)
        args.append(f"--schedule={schedule}")
        if not any(a == "--pidfile" or a.startswith("--pidfile=") for a in celery_args):
            # the pid file the app's local processes look for: a second beat on the same
            # schedule (tasks sent twice) is refused
            pid = running_pid(beat_pidfile(schedule))
            if pid is not None:
                raise click.ClickException(
                    f"beat already runs on {schedule} (pid {pid}); a second one would send "
                    "every periodic task twice"
                )
            args.append(f"--pidfile={beat_pidfile(schedule)}")
    _check_broker(state)
    _run_celery(state, ["beat", *args, *celery_args], "beat")


@celery_group.command("monitor")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port to listen on [default: CELERY_MONITOR_PORT, 5555].",
)
@click.option(
    "--address",
    default=None,
    help="Address to listen on [default: CELERY_MONITOR_ADDRESS, 127.0.0.1].",
)
@click.option(
    "--worker-class",
    type=click.Choice(WORKER_CLASSES),
    default="gevent",
    show_default=True,
    help="gevent: a greenlet per connection (hundreds of live pages); gthread: a thread "
    "per connection, without monkey-patching.",
)
@click.option(
    "--connections",
    type=click.IntRange(10, 100_000),
    default=1000,
    show_default=True,
    help="gevent: connections served at once (live pages may hold three quarters).",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 1000),
    default=32,
    show_default=True,
    help="gthread: threads serving requests (each live page and each result wait holds one).",
)
def monitor(
    port: int | None, address: str | None, worker_class: str, connections: int, threads: int
) -> None:
    """Serve the monitor on gunicorn (websockets included) in the foreground."""
    state = _state()
    settings = state.settings
    port = settings.monitor_port if port is None else port
    address = address or settings.monitor_address
    open_locally = _check_exposure(settings, address)
    if port and port_taken(address, port):
        raise click.ClickException(
            f"cannot serve the monitor on {address}:{port}: the port is taken"
        )
    if worker_class == "gevent":
        _patch_gevent()  # before the monitor's service, locks and sockets are made
    os.environ[ROLE_ENV] = "monitor"
    app = make_monitor_app(
        state,
        open_locally=open_locally,
        address=address,
        threads=threads,
        worker_class=worker_class,
        connections=connections,
    )
    if open_locally:
        click.echo(
            f"no authentication configured: the monitor is open to every user of this machine "
            f"({address} is a loopback address)"
        )
    url = monitor_url(address, port, settings.monitor_url_prefix)
    click.echo(f"monitor of {state.app.name} on {url}")
    serve(app, address, port, threads=threads, worker_class=worker_class, connections=connections)


def _patch_gevent() -> None:
    """Monkey-patch the standard library for gevent (a click error when it is missing).

    Done by the command, before the monitor app is built: the service's locks, threads and
    broker sockets must be gevent's, or a lock held by one greenlet would block the process.
    """
    import warnings

    try:
        from gevent import monkey
    except ImportError:
        raise click.ClickException(
            "--worker-class gevent needs the gevent package: pip install gevent "
            "(or serve with --worker-class gthread)"
        ) from None
    with warnings.catch_warnings():
        # ssl was imported by the app's packages already; gevent patches it in place
        warnings.simplefilter("ignore")
        monkey.patch_all()
    from .monitor.pg_store import cooperate_with_gevent

    cooperate_with_gevent()  # when the host app imported psycopg before the patching


def _check_exposure(settings: Settings, address: str) -> bool:
    """Whether the standalone monitor may serve ``address``; True when it is open locally.

    Without CELERY_MONITOR_BASIC_AUTH or CELERY_MONITOR_AUTH_PROVIDER (the standalone monitor
    has no host app, so no flask-login) and without CELERY_MONITOR_ALLOW_ANONYMOUS, it serves
    loopback addresses only, open (True); any other address is a click error.
    """
    from .processes import is_loopback

    authenticated = bool(settings.monitor_basic_auth or settings.monitor_auth_provider)
    if authenticated or settings.monitor_allow_anonymous is not False:
        return False
    if is_loopback(address):
        return True
    raise click.ClickException(
        f"refusing to serve the monitor on {address} without authentication: set "
        "CELERY_MONITOR_BASIC_AUTH or CELERY_MONITOR_AUTH_PROVIDER, bind a loopback address "
        "(--address 127.0.0.1), or set CELERY_MONITOR_ALLOW_ANONYMOUS = True to open it on "
        "purpose"
    )


def make_monitor_app(
    state: AppState,
    open_locally: bool = False,
    address: str | None = None,
    threads: int | None = None,
    worker_class: str = "gthread",
    connections: int = 1000,
) -> Flask:
    """A Flask app serving only the monitor of ``state.app``: same config, same extension.

    It shares the user's config (broker, secret key, monitor auth settings) and the extension
    object (so the monitor knows the app's tasks and schedules), never starts local processes,
    and redirects ``/`` to the monitor's URL prefix. ``open_locally`` (a loopback bind without
    authentication) lets anyone who reaches it in.

    Served on ``address`` (an IP address or name) by gunicorn's ``worker_class`` (``threads``
    threads for gthread, ``connections`` greenlets for gevent), it fills in what the user's
    config leaves unset: bound to a loopback address, it serves only the loopback host names
    (:data:`~.web.hardening.LOOPBACK_HOSTS`, against DNS rebinding) unless
    ``CELERY_MONITOR_TRUSTED_HOSTS`` or Flask's ``TRUSTED_HOSTS`` is set; the live-page and
    result-wait caps follow the server's capacity (:func:`monitor_limits`; not applied when
    ``threads`` is None).
    """
    from flask import redirect

    from .processes import is_loopback
    from .web.hardening import LOOPBACK_HOSTS

    user = state.app
    app = Flask(user.import_name, instance_path=user.instance_path, root_path=user.root_path)
    app.config.update(user.config)
    app.config.update(
        CELERY_START_LOCAL_WORKERS=False, CELERY_MONITOR=False, CELERY_MONITOR_BLUEPRINT=True
    )
    if open_locally:
        app.config["CELERY_MONITOR_ALLOW_ANONYMOUS"] = True
    if (
        address is not None
        and is_loopback(address)
        and state.settings.monitor_trusted_hosts is None
        and user.config.get("TRUSTED_HOSTS") is None
    ):
        app.config["CELERY_MONITOR_TRUSTED_HOSTS"] = list(LOOPBACK_HOSTS)
    if threads is not None:
        for key, value in monitor_limits(threads, worker_class, connections).items():
            if key not in state.settings.explicit:  # the user's value wins over ours
                app.config[key] = value
    state.extension.init_app(app)
    if app.config.get("CELERY_MONITOR_TRUSTED_HOSTS") is not None:
        from .web.hardening import check_host

        app.before_request(check_host)  # the redirect at / too, not only the blueprint
    prefix = state.settings.monitor_url_prefix
    if prefix:
        app.add_url_rule("/", "celerymon_root", lambda: redirect(prefix + "/"))
    return app


def monitor_limits(
    threads: int, worker_class: str = "gthread", connections: int = 1000
) -> dict[str, int]:
    """The live-socket and result-wait caps of a standalone monitor.

    ``gthread`` (``threads`` threads, one per connection): half the threads for live pages,
    an eighth for result waits, the rest always answer pages and API calls (32 threads: 16
    live pages, 4 waits, 12 free). ``gevent`` (a greenlet per connection, at most
    ``connections`` at once): three quarters of the connections for live pages and an eighth
    for result waits (1000: 750 live pages, 125 waits, 125 free). Raises ``ValueError`` for
    another worker class.
    """
    if worker_class == "gevent":
        return {
            "CELERY_MONITOR_MAX_LIVE_SOCKETS": connections * 3 // 4,
            "CELERY_MONITOR_MAX_CONCURRENT_WAITS": connections // 8,
        }
    if worker_class != "gthread":
        raise ValueError(f"worker_class must be one of {', '.join(WORKER_CLASSES)}, not "
                         f"{worker_class!r}")  # fmt: skip
    return {
        "CELERY_MONITOR_MAX_LIVE_SOCKETS": threads // 2,
        "CELERY_MONITOR_MAX_CONCURRENT_WAITS": threads // 8,
    }


def serve(
    app: Flask,
    address: str,
    port: int,
    threads: int = 32,
    worker_class: str = "gthread",
    connections: int = 1000,
) -> None:
    """Serve ``app`` on gunicorn: one process (the monitor keeps state).

    ``worker_class`` ``"gevent"`` serves each connection in a greenlet, at most
    ``connections`` at once (the standard library must be monkey-patched before ``app`` was
    built, as the ``monitor`` command does); ``"gthread"`` in one of ``threads`` threads.
    The monitor service of ``app`` starts as soon as the serving process is up (gunicorn's
    ``post_worker_init``), not on the first request: tasks sent before anyone opens a page
    are seen, and the healthcheck says "consuming" from the start. It stops (writing its
    clean stop to the history store) when the serving process exits (gunicorn's
    ``worker_exit``: ``SIGTERM``, ``SIGINT``).
    """
    from gunicorn.app.base import BaseApplication

    def start_monitor(worker: Any) -> None:
        state = find_state(app)
        if state is not None and state.settings.monitor_blueprint:
            state.monitor.ensure_started()
        _freeze_startup_heap()

    def stop_monitor(server: Any, worker: Any) -> None:
        # in the serving process as it exits (SIGTERM, SIGINT, a restart): the service writes
        # its pending changes and its clean stop, or the next start reports a gap "without a
        # clean shutdown"
        state = find_state(app)
        if state is not None and state.settings.monitor_blueprint:
            state.monitor.stop()

    class MonitorServer(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"{address}:{port}",
                "workers": 1,
                "worker_class": worker_class,
                "threads": threads,
                "worker_connections": connections,
                "timeout": 60,
                "graceful_timeout": 5,
                "accesslog": "-",
                "proc_name": f"celerymon-monitor[{app.name}]",
                # gunicorn >= 24 opens a control socket at one path per user: two monitors
                # (two apps) would fight over it, and the monitor needs none
                "control_socket_disable": True,
                "post_worker_init": start_monitor,
                "worker_exit": stop_monitor,
            }
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    MonitorServer().run()


#: Allocations (less deallocations) between two young collections of the serving process
#: (CPython's default: 700). The window's records are long-lived: at 700, a full pass over
#: every tracked object (56 – 65 ms with 100,000 tasks held) came every ~11 middle passes,
#: about every 3 s while events arrived.
GC_THRESHOLD0 = 10_000


def _freeze_startup_heap() -> None:
    """The cyclic garbage collector of the serving process, tuned for the window: the
    objects made so far (imported modules, the app, the service) are kept out of its passes
    (``gc.freeze()`` after one collection), and young passes come every
    :data:`GC_THRESHOLD0` allocations, so full passes (each pauses every request for its
    length) come about 14 times less often. Only here, in the process ``flask celery
    monitor`` owns: the library never touches the GC of a host app."""
    gc.collect()
    gc.freeze()
    _, t1, t2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD0, t1, t2)


@celery_group.command("cluster")
@click.option(
    "--timeout",
    type=_SECONDS,
    default=None,
    help="Seconds to wait for every worker [default: CELERY_START_TIMEOUT].",
)
def cluster(timeout: float | None) -> None:
    """Run every configured worker, beat and the monitor until Ctrl-C."""
    state = _state()
    procs = state.processes
    board = _StatusBoard(live=sys.stdout.isatty())
    try:
        procs.start(timeout=timeout, on_status=board.update)
    except StartError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"logs in {procs.log_dir}; press Ctrl-C to stop")
    try:
        while procs.started:  # stop() from a signal handler ends the loop
            dead = [p for p in procs.processes.values() if p.popen is not None and not p.alive()]
            if dead:
                for p in dead:
                    click.echo(
                        f"{p.name} exited with code {p.returncode}; see {p.log_path}", err=True
                    )
                raise click.ClickException("a cluster process exited; stopping the others")
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping...")
    finally:
        procs.stop()
    click.echo("stopped")


class _StatusBoard:
    """One status line per process: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, live: bool) -> None:
        self.live = live
        self.lines: dict[str, str] = {}
        self.drawn = 0

    def update(self, proc: ManagedProcess) -> None:
        line = f"{proc.name:<16} {proc.status:<9} {proc.detail}"
        if not self.live:
            click.echo(line)
            return
        self.lines[proc.name] = line
        if self.drawn:
            click.echo(f"\x1b[{self.drawn}A", nl=False)  # back to the first line
        for text in self.lines.values():
            click.echo(f"\x1b[2K{text}")
        self.drawn = len(self.lines)


@celery_group.command("status")
@click.option(
    "-t",
    "--timeout",
    type=_SECONDS,
    default=1.0,
    show_default=True,
    help="Seconds to wait for replies.",
)
def status(timeout: float) -> None:
    """Show a table of the workers that answer a ping."""
    from kombu.utils.url import maybe_sanitize_url

    state = _state()
    _check_broker(state)
    try:
        replies = state.extension.status(timeout=timeout)
    except ConnectionFailed as exc:  # the broker went away after the check
        raise click.ClickException(str(exc)) from None
    if not replies:
        url = maybe_sanitize_url(state.celery_app.conf.broker_url)
        raise click.ClickException(f"no worker replied within {timeout:g}s on {url}")
    width = max(len("WORKER"), *(len(n) for n in replies))
    click.echo(f"{'WORKER':<{width}}  STATUS")
    for node, answer in replies.items():
        click.echo(f"{node:<{width}}  {answer}")
    n = len(replies)
    click.echo(f"{n} worker{'s' if n != 1 else ''} online")


def _remote_options(fn: Any) -> Any:
    fn = click.option("-j", "--json", "as_json", is_flag=True, help="Print the replies as JSON.")(
        fn
    )
    fn = click.option(
        "-t",
        "--timeout",
        type=_SECONDS,
        default=1.0,
        show_default=True,
        help="Seconds to wait for replies.",
    )(fn)
    fn = click.option(
        "-d",
        "--destination",
        default=None,
        help="Comma-separated node names (default: every worker).",
    )(fn)
    fn = click.argument("args", nargs=-1)(fn)
    fn = click.argument("method")(fn)
    return fn


#: A negative number given as an argument (``pool_grow -5``), not an option.
_NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+|inf|nan)$", re.IGNORECASE)
_NEG_MARK = "\0negative:"
_VALUE_OPTIONS = ("-d", "--destination", "-t", "--timeout")


class _RemoteCommand(click.Command):
    """``inspect``/``control``: a negative number among the arguments is an argument (refused
    by its range with a message saying so), not an unknown option."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        marked = [
            _NEG_MARK + a
            if _NEGATIVE.match(a) and (i == 0 or args[i - 1] not in _VALUE_OPTIONS)
            else a
            for i, a in enumerate(args)
        ]
        rest = super().parse_args(ctx, marked)

        def unmark(a: str) -> str:
            return a[len(_NEG_MARK) :] if a.startswith(_NEG_MARK) else a

        if isinstance(ctx.params.get("method"), str):
            ctx.params["method"] = unmark(ctx.params["method"])
        ctx.params["args"] = tuple(unmark(a) for a in ctx.params.get("args") or ())
        return rest


@celery_group.command("inspect", cls=_RemoteCommand)
@_remote_options
def inspect(
    method: str, args: tuple[str, ...], destination: str | None, timeout: float, as_json: bool
) -> None:
    """Ask the workers for information: METHOD is active, stats, registered, ping..."""
    _remote("inspect", method, list(args), destination, timeout, as_json)


@celery_group.command("control", cls=_RemoteCommand)
@_remote_options
def control(
    method: str, args: tuple[str, ...], destination: str | None, timeout: float, as_json: bool
) -> None:
    """Tell the workers to act: METHOD is shutdown, pool_grow N, rate_limit TASK RATE..."""
    _remote("control", method, list(args), destination, timeout, as_json)


def _commands(kind: str) -> dict[str, Any]:
    from celery.worker.control import Panel

    return {
        name: meta
        for name, meta in sorted(Panel.meta.items())
        if meta.type == kind and meta.visible
    }


def _bounds() -> dict[tuple[str, str], Any]:
    """``{(method, argument): Range}``: every number a remote command takes, with the ranges
    the JSON API uses (pool steps and autoscale bounds 1..1000, seconds 0..10 years)."""
    from .web.params import POOL_MAX, POOL_MIN, POOL_STEP, SECONDS, Range

    return {
        ("pool_grow", "n"): POOL_STEP,
        ("pool_shrink", "n"): POOL_STEP,
        ("autoscale", "max"): POOL_MAX,
        ("autoscale", "min"): POOL_MIN,
        ("time_limit", "soft"): SECONDS,
        ("time_limit", "hard"): SECONDS,
        # inspect methods whose work grows with the number (a worker busy for minutes)
        ("memdump", "samples"): Range(1, 1000),
        ("objgraph", "num"): Range(1, 10_000),
        ("objgraph", "max_depth"): Range(1, 100),
    }


def _arguments(kind: str, method: str, meta: Any, args: list[str]) -> dict[str, Any]:
    usage = f"{method} {meta.signature}".strip() if meta.signature else method
    arguments: dict[str, Any] = {}
    spec = list(meta.args or ())
    if len(args) > len(spec) and not meta.variadic:
        if not spec:
            raise click.UsageError(f"{kind} {method} takes no arguments")
        raise click.UsageError(f"{kind} {method} takes arguments: {usage}")
    for (name, typ), value in zip(spec, args):
        try:
            arguments[name] = typ(value) if typ is not None else value
        except (TypeError, ValueError):
            raise click.UsageError(
                f"{kind} {method}: {name} must be {getattr(typ, '__name__', typ)}, not "
                f"{value!r} (usage: {usage})"
            ) from None
    bounds = _bounds()
    for (name, _), raw in zip(spec, args):
        bound, value = bounds.get((method, name)), arguments[name]
        if bound is not None and not bound.minimum <= value <= bound.maximum:  # nan too
            raise click.UsageError(
                f"{kind} {method}: {name} must be {bound.text()}, not {raw!r} (usage: {usage})"
            )
    if method == "autoscale" and len(args) == 2:
        from .monitor.control import check_autoscale

        try:
            check_autoscale(arguments["min"], arguments["max"])
        except InvalidInput as exc:
            raise click.UsageError(f"{kind} {method}: {exc} (usage: {usage})") from None
    if meta.variadic:
        arguments[meta.variadic] = args[len(spec) :]
    return arguments


def _check_shrink(state: AppState, n: int, nodes: list[str] | None, timeout: float) -> None:
    """The API's refusal: a click error when shrinking by ``n`` would leave one of ``nodes``
    (every worker when None) without a pool process (see :func:`.monitor.control.check_shrink`)."""
    from .monitor.control import check_shrink, pool_sizes

    try:
        sizes = pool_sizes(state.celery_app, nodes, timeout)
    except Exception as exc:  # noqa: BLE001 - transport errors become one line
        raise click.ClickException(f"control pool_shrink failed: {exc}") from None
    for node in sorted(sizes):
        try:
            check_shrink(node, n, sizes[node])
        except ConflictError as exc:
            raise click.ClickException(f"control pool_shrink: {exc}") from None


def _remote(
    kind: str, method: str, args: list[str], destination: str | None, timeout: float, as_json: bool
) -> None:
    commands = _commands(kind)
    meta = commands.get(method)
    if meta is None:
        raise click.UsageError(
            f"{method!r} is not {'an' if kind == 'inspect' else 'a'} {kind} method; choose from: "
            f"{', '.join(commands)}"
        )
    arguments = _arguments(kind, method, meta, args)
    state = _state()
    _check_broker(state)
    nodes = [d.strip() for d in destination.split(",") if d.strip()] if destination else None
    if method == "pool_shrink":
        _check_shrink(state, arguments.get("n", 1), nodes, timeout)
    if method == "shutdown":  # a worker shutting down sends no reply
        try:
            state.celery_app.control.broadcast(method, arguments=arguments, destination=nodes)
        except Exception as exc:  # noqa: BLE001 - transport errors become one line
            raise click.ClickException(f"{kind} {method} failed: {exc}") from None
        click.echo(f"shutdown sent to {', '.join(nodes) if nodes else 'every worker'}")
        return
    try:
        replies = (
            state.celery_app.control.broadcast(
                method, arguments=arguments, destination=nodes, reply=True, timeout=timeout
            )
            or []
        )
    except Exception as exc:  # noqa: BLE001 - transport errors become one line
        raise click.ClickException(f"{kind} {method} failed: {exc}") from None
    merged: dict[str, Any] = {}
    for reply in replies:
        merged.update(reply)
    if not merged:
        raise click.ClickException(f"no worker replied within {timeout:g}s")
    if as_json:
        click.echo(json.dumps(merged, sort_keys=True, default=str))
        return
    for node in sorted(merged):
        body = merged[node]
        ok = "ERROR" if isinstance(body, dict) and "error" in body else "OK"
        click.echo(f"-> {node}: {ok}")
        text = json.dumps(body, indent=2, sort_keys=True, default=str)
        click.echo("\n".join("    " + line for line in text.splitlines()))
    n = len(merged)
    click.echo(f"{n} node{'s' if n != 1 else ''} replied")
