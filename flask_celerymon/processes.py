"""Local worker, beat and monitor processes of one app: start, wait until ready, stop, logs.

This module knows no Flask: :class:`LocalProcesses` (one per app, ``AppState.processes``) is
given the app's Celery instance and a :class:`ProcessPlan` (what to start, with which settings,
the ``FLASK_APP`` children import), built on the Flask side (``AppState.process_plan``). It
starts

* one ``python -m celery -A flask_celerymon.celery worker -n NAME@%h ...`` per entry of
  ``CELERY_WORKERS`` (skipping a worker that already answers under the same name),
* ``celery beat`` when ``CELERY_SCHEDULER`` is on and the app has periodic tasks,
* ``flask celery monitor`` when ``CELERY_MONITOR`` is on (skipped when its port is taken),

each with ``FLASK_APP`` set to the app's import target (``ProcessPlan.app_import``), its output
appended to ``<CELERY_LOG_DIR>/<name>.log`` (never a pipe, so no child can block on one), in its
own process group. ``start`` returns once every worker answers a ping, or raises
:class:`~flask_celerymon.errors.StartError` naming the workers that did not and their log files.

Children never outlive the parent: ``stop`` sends ``SIGTERM`` (a Celery worker's warm shutdown:
it takes no new task and finishes the ones it runs), waits up to ``CELERY_STOP_TIMEOUT`` seconds,
logging which tasks are still running every few seconds, then kills the whole process group and
logs the tasks it cut off (name and id). It runs on interpreter exit and on ``SIGTERM``/``SIGINT``
of the parent (the previous handlers are chained; a second signal while waiting kills at once);
and on Linux every child gets ``PR_SET_PDEATHSIG`` so it is told to stop even when the parent is
killed with ``SIGKILL``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import WorkerSpec
from .errors import StartError
from .spawning import spawn

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)

#: Set in every child we start ("worker", "beat" or "monitor"); a process carrying it never starts
#: local processes of its own (a task calling submit() inside a worker must not spawn workers).
ROLE_ENV = "FLASK_CELERYMON_ROLE"
#: Seconds ``stop()`` waits after ``SIGTERM`` before killing leftovers of a failed start.
DEFAULT_STOP_TIMEOUT = 10.0
#: Seconds between two "still running" lines while ``stop()`` waits for tasks.
PROGRESS_INTERVAL = 3.0

#: ``CELERY_WORKERS`` option -> the ``celery worker`` flag it becomes.
_WORKER_FLAGS = {
    "concurrency": "--concurrency",
    "loglevel": "--loglevel",
    "queues": "--queues",
    "pidfile": "--pidfile",
    "pool": "--pool",
    "autoscale": "--autoscale",
    "max_tasks_per_child": "--max-tasks-per-child",
    "max_memory_per_child": "--max-memory-per-child",
    "prefetch_multiplier": "--prefetch-multiplier",
    "time_limit": "--time-limit",
    "soft_time_limit": "--soft-time-limit",
    "without_heartbeat": "--without-heartbeat",
    "without_mingle": "--without-mingle",
    "without_gossip": "--without-gossip",
}

StatusCallback = Callable[["ManagedProcess"], None]


# -- helpers shared with the CLI ------------------------------------------------------------
def node_pattern(name: str) -> str:
    """``worker1`` -> ``worker1@%h``; a name with ``@`` is kept as it is."""
    return name if "@" in name else f"{name}@%h"


def node_name(name: str) -> str:
    """The node name a worker started as ``-n name`` answers to (``worker1@myhost``)."""
    from celery.utils.nodenames import default_nodename, host_format

    return host_format(default_nodename(node_pattern(name)))


def worker_spec_name(spec: WorkerSpec) -> str:
    """The ``-n`` value of a configured worker (its ``hostname`` option wins over its name)."""
    return spec.options.get("hostname") or spec.name


def worker_args(spec: WorkerSpec, loglevel: str) -> list[str]:
    """``celery worker`` arguments (without ``worker``) for one ``CELERY_WORKERS`` entry."""
    args = ["-n", node_pattern(worker_spec_name(spec)), f"--loglevel={loglevel}"]
    for key, value in spec.options.items():
        flag = _WORKER_FLAGS.get(key)
        if flag is None:
            continue
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif key == "queues":
            args.append(f"{flag}={','.join(spec.queues)}")
        elif key == "autoscale" and isinstance(value, (list, tuple)):
            args.append(f"{flag}={','.join(str(v) for v in value)}")
        else:
            args.append(f"{flag}={value}")
    return args


def declare_queues(celery_app: Celery, workers: Iterable[WorkerSpec]) -> list[str]:
    """Add the queues of ``workers`` (``CELERY_WORKERS``) to ``celery_app``; return their names.

    Every process building the app does this (the web app, the local workers, ``flask celery
    worker`` and ``celery -A flask_celerymon.celery``), so a worker started without
    ``--queues`` consumes from every declared queue (a "worker for any task"), as a Celery
    worker without ``-Q`` consumes from every queue in ``task_queues``, and one started with
    ``--queues`` only from those.
    """
    names: list[str] = []
    for spec in workers:
        for q in spec.queues:
            if q and q not in names:
                names.append(q)
    queues = celery_app.amqp.queues
    for q in names:
        if q not in queues:
            queues.select_add(q)  # consumed by a worker started without --queues
    return names


def check_broker(celery_app: Any, timeout: float = 5.0) -> None:
    """Raise :class:`StartError` naming the broker (password masked) when it is unreachable."""
    from kombu.utils.url import maybe_sanitize_url

    url = celery_app.conf.broker_url
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout
            )
    except Exception as exc:  # noqa: BLE001 - every transport raises its own errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StartError(
            f"cannot connect to the broker at {maybe_sanitize_url(url)}: {reason}"
        ) from None


# -- one child --------------------------------------------------------------------------------
@dataclass
class ManagedProcess:
    """A child process (or a worker found running elsewhere) and what we know about it."""

    name: str
    kind: str  # "worker" | "beat" | "monitor"
    command: list[str]
    log_path: str
    node: str | None = None
    #: "starting", "running", "external" (already running, not ours), "failed", "exited", "stopped"
    status: str = "starting"
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    detail: str = ""

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


# -- what to start ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessPlan:
    """What :class:`LocalProcesses` starts for one app, and with which settings.

    Plain data, no Flask: the app side builds one at each :meth:`LocalProcesses.start` (the beat
    schedule and the mounted blueprint may change after ``init_app``); see
    ``AppState.process_plan``. Seconds are floats; paths are absolute or relative
    to the current directory.
    """

    #: ``FLASK_APP`` of every child (``CELERY_APP_IMPORT`` or what the parent was loaded from);
    #: None when it cannot be told, and then ``app_import_error`` says why (raised as
    #: :class:`StartError` only when a child is to be spawned).
    app_import: str | None
    #: One ``celery worker`` per entry of ``CELERY_WORKERS``.
    workers: tuple[WorkerSpec, ...] = ()
    #: ``CELERY_LOG_LEVEL`` (lowercase); a worker's own ``loglevel`` option wins.
    loglevel: str = "info"
    #: ``<CELERY_LOG_DIR>``: each child appends to ``<log_dir>/<name>.log``.
    log_dir: str = "."
    #: Start ``celery beat`` (``CELERY_SCHEDULER`` is on and the app has periodic tasks).
    beat: bool = False
    #: Beat's schedule file.
    beat_schedule_file: str = "celerybeat-schedule"
    #: ``CELERY_MONITOR``: a monitor is wanted (started here unless ``monitor_mounted``).
    monitor: bool = False
    #: The app serves the monitor blueprint itself: two monitors of one app would each consume
    #: its events and write the same history file, so no standalone one is started.
    monitor_mounted: bool = False
    monitor_address: str = "127.0.0.1"
    monitor_port: int = 5555
    #: ``CELERY_MONITOR_URL_PREFIX``: where the monitor lives on its server.
    monitor_url_prefix: str = "/monitor"
    #: ``CELERY_START_TIMEOUT`` and ``CELERY_STOP_TIMEOUT``, seconds.
    start_timeout: float = 30.0
    stop_timeout: float = 30.0
    #: The embedded broker's folder (revived before a start when the app uses it), or None.
    embedded_broker_dir: str | None = None
    #: This process is the watcher of Werkzeug's reloader: start nothing (its serving child does).
    reloader_watcher: bool = False
    app_import_error: str = ""


PlanSource = Callable[[], ProcessPlan]


# -- all children of one app ---------------------------------------------------------------------
class LocalProcesses:
    """The local worker/beat/monitor processes of one app (``AppState.processes``).

    ``celery_app`` is the app's Celery instance (pings, the broker check, the queues);
    ``plan`` gives the :class:`ProcessPlan` to follow, asked at each start and stop.
    """

    def __init__(self, celery_app: Celery, plan: PlanSource) -> None:
        self.celery_app = celery_app
        self._plan_source = plan
        #: the plan of the start() under way (one plan per start)
        self._current: ProcessPlan | None = None
        self.started = False
        self._procs: dict[str, ManagedProcess] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._hurry = threading.Event()  # a second interrupt while stopping: kill now
        _live.add(self)
        self_ref = weakref.ref(self)
        atexit.register(_stop_ref, self_ref)

    # -- what would run ---------------------------------------------------------------------
    def plan(self) -> ProcessPlan:
        """The :class:`ProcessPlan` as the app says now."""
        return self._plan_source()

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        """The processes started (or found running) by :meth:`start`, by name."""
        with self._lock:
            return dict(self._procs)

    @property
    def log_dir(self) -> str:
        """The folder of the children's log files."""
        return self.plan().log_dir

    def log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, f"{name}.log")

    def _base_command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "flask_celerymon.celery"]

    def _env(self, role: str, plan: ProcessPlan) -> dict[str, str]:
        if plan.app_import is None:
            raise StartError(plan.app_import_error)
        env = dict(os.environ)
        env["FLASK_APP"] = plan.app_import
        env[ROLE_ENV] = role
        env["PYTHONUNBUFFERED"] = "1"
        cwd = os.getcwd()
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if cwd not in paths:  # the app's module is importable from here in the parent
            env["PYTHONPATH"] = os.pathsep.join([cwd, *paths])
        return env

    def _plan(self) -> list[ManagedProcess]:
        """The children :meth:`start` would start now, from :meth:`plan`."""
        plan = self._current or self.plan()
        logs = plan.log_dir
        children = []
        for spec in plan.workers:
            args = worker_args(spec, spec.options.get("loglevel", plan.loglevel))
            children.append(
                ManagedProcess(
                    name=spec.name,
                    kind="worker",
                    command=[*self._base_command(), "worker", *args],
                    log_path=os.path.join(logs, f"{spec.name}.log"),
                    node=node_name(worker_spec_name(spec)),
                )
            )
        if plan.beat:
            children.append(
                ManagedProcess(
                    name="beat",
                    kind="beat",
                    command=[
                        *self._base_command(),
                        "beat",
                        f"--loglevel={plan.loglevel}",
                        f"--schedule={plan.beat_schedule_file}",
                        f"--pidfile={beat_pidfile(plan.beat_schedule_file)}",
                    ],
                    log_path=os.path.join(logs, "beat.log"),
                )
            )
        if plan.monitor and not plan.monitor_mounted:
            children.append(
                ManagedProcess(
                    name="monitor",
                    kind="monitor",
                    command=[
                        sys.executable,
                        "-m",
                        "flask",
                        "celery",
                        "monitor",
                        f"--port={plan.monitor_port}",
                        f"--address={plan.monitor_address}",
                    ],
                    log_path=os.path.join(logs, "monitor.log"),
                )
            )
        return children

    @property
    def monitor_mounted(self) -> bool:
        """True when the app serves the monitor blueprint itself (no standalone one is started).

        Two monitors of one app would each consume its events and write the same history file.
        """
        return self.plan().monitor_mounted

    def declare_queues(self) -> list[str]:
        """Declare the queues named in ``CELERY_WORKERS`` on the app (see :func:`declare_queues`)."""
        return declare_queues(self.celery_app, self.plan().workers)

    # -- start ------------------------------------------------------------------------------
    def start(self, timeout: float | None = None, on_status: StatusCallback | None = None) -> None:
        """Start the configured processes and wait until every worker answers a ping.

        ``timeout`` defaults to ``CELERY_START_TIMEOUT``. ``on_status`` is called with a
        :class:`ManagedProcess` each time one changes status (the CLI prints it). Raises
        :class:`StartError` when the broker is unreachable or a worker did not come up (the
        processes started by this call are stopped again).
        """
        with self._lock:
            if os.environ.get(ROLE_ENV):
                log.debug("not starting local processes inside a %s process", os.environ[ROLE_ENV])
                self.started = True
                return
            plan = self.plan()
            if plan.reloader_watcher:
                log.info(
                    "not starting local processes in the reloader's watcher process; the "
                    "serving process it restarts on each code change starts (and stops) them"
                )
                return
            self._current = plan
            try:
                if self.started and all(
                    p.alive() or p.status == "external" for p in self._procs.values()
                ):
                    return  # everything still runs (a dead child makes start() begin afresh)
                self._stop_children(DEFAULT_STOP_TIMEOUT)  # leftovers of a half-dead start
                timeout = float(timeout if timeout is not None else plan.start_timeout)
                deadline = time.monotonic() + timeout
                _install_signal_handlers()
                celery_app = self.celery_app
                if plan.embedded_broker_dir and str(celery_app.conf.broker_url).startswith(
                    "redis+socket://"
                ):
                    from .embedded import revive

                    revive(plan.embedded_broker_dir, celery_app.conf.broker_url)
                check_broker(celery_app, timeout=min(timeout, 5.0))
                declare_queues(celery_app, plan.workers)
                os.makedirs(plan.log_dir, exist_ok=True)
                children = self._plan()
                notify = on_status or (lambda p: None)
                from kombu.utils.url import maybe_sanitize_url

                log.info(
                    "starting local Celery processes %s on broker %s (logs in %s)",
                    ", ".join(p.name for p in children),
                    maybe_sanitize_url(celery_app.conf.broker_url),
                    plan.log_dir,
                )
                running = self._ping([p.node for p in children if p.node], 0.5)
                try:
                    for proc in children:
                        self._procs[proc.name] = proc
                        beat_pid = (
                            running_pid(beat_pidfile(plan.beat_schedule_file))
                            if proc.kind == "beat"
                            else None
                        )
                        if proc.node in running:
                            proc.status, proc.detail = "external", "already running; not started"
                        elif beat_pid is not None:
                            # two beats on one schedule would send every periodic task twice
                            proc.status = "external"
                            proc.detail = f"already running (pid {beat_pid}); not started"
                        elif proc.kind == "monitor" and port_taken(*self._monitor_address()):
                            proc.status = "external"
                            host, port = self._monitor_address()
                            proc.detail = f"port {host}:{port} is taken; not started"
                        else:
                            self._spawn(proc)
                        notify(proc)
                    self._wait_ready(deadline, timeout, notify)
                except BaseException:
                    self._stop_children(DEFAULT_STOP_TIMEOUT)
                    raise
                self.started = True
            finally:
                self._current = None

    def _monitor_address(self) -> tuple[str, int]:
        plan = self._current or self.plan()
        return plan.monitor_address, plan.monitor_port

    def _spawn(self, proc: ManagedProcess) -> None:
        with open(proc.log_path, "ab") as logfile:
            stamp = dt.datetime.now().isoformat(timespec="seconds")
            logfile.write(
                f"--- {stamp} flask_celerymon starts: {' '.join(proc.command)}\n".encode()
            )
            logfile.flush()
            proc.popen = spawn(
                proc.command,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=self._env(proc.kind, self._current or self.plan()),
            )
        proc.status, proc.detail = "starting", f"pid {proc.pid}"
        log.debug("started %s: pid %s, log %s", proc.name, proc.pid, proc.log_path)

    def _ping(self, nodes: list[str], timeout: float) -> set[str]:
        if not nodes:
            return set()
        try:
            replies = (
                self.celery_app.control.inspect(
                    destination=nodes, timeout=timeout, limit=len(nodes)
                ).ping()
                or {}
            )
        except Exception:  # noqa: BLE001 - a broker hiccup while waiting is retried
            log.debug("ping failed", exc_info=True)
            return set()
        return {node for node, reply in replies.items() if (reply or {}).get("ok") == "pong"}

    def _wait_ready(self, deadline: float, timeout: float, notify: StatusCallback) -> None:
        """Wait for every worker (fatal when one fails or is late) and the monitor (not fatal).

        Beat and the monitor only add to the app: when one of them fails, the app still sends
        work, so that is logged as a warning (and shown by ``flask celery cluster``).
        """
        waiting = {
            p.node: p for p in self._procs.values() if p.kind == "worker" and p.status == "starting"
        }
        monitor = self._procs.get("monitor")
        while True:
            for proc in list(self._procs.values()):
                if proc.status == "starting" and proc.popen is not None and not proc.alive():
                    proc.status = "failed"
                    proc.detail = f"exited with code {proc.returncode}"
                    notify(proc)
                    if proc.kind != "worker":
                        log.warning("%s %s; see %s", proc.kind, proc.detail, proc.log_path)
            failed = [
                p for p in self._procs.values() if p.kind == "worker" and p.status == "failed"
            ]
            if failed:
                raise StartError(
                    "; ".join(f"{p.kind} {p.name} {p.detail}; see {p.log_path}" for p in failed)
                )
            for node in self._ping([n for n in waiting if n], 0.5):
                proc = waiting.pop(node)
                proc.status, proc.detail = "running", f"pid {proc.pid}, answers as {node}"
                notify(proc)
            if (
                monitor is not None
                and monitor.status == "starting"
                and port_taken(*self._monitor_address())
            ):
                monitor.status = "running"
                host, port = self._monitor_address()
                plan = self._current or self.plan()
                monitor.detail = (
                    f"pid {monitor.pid}, {monitor_url(host, port, plan.monitor_url_prefix)}"
                )
                notify(monitor)
            monitor_pending = monitor is not None and monitor.status == "starting"
            if not waiting and not monitor_pending:
                break
            if time.monotonic() >= deadline:
                if waiting:
                    names = ", ".join(f"{p.name} (log: {p.log_path})" for p in waiting.values())
                    raise StartError(
                        f"local Celery processes did not come up within {timeout:g}s "
                        f"(CELERY_START_TIMEOUT): {names}"
                    )
                assert monitor is not None
                log.warning(
                    "the monitor did not come up within %gs; see %s", timeout, monitor.log_path
                )
                break
            time.sleep(0.1)
        for proc in self._procs.values():
            if proc.kind == "beat" and proc.status == "starting":
                proc.status = "running"
                proc.detail = f"pid {proc.pid}"
                notify(proc)

    # -- stop -------------------------------------------------------------------------------
    def stop(self, timeout: float | None = None) -> None:
        """Stop the processes this object started, letting running tasks finish.

        Sends ``SIGTERM`` (warm shutdown), waits up to ``timeout`` seconds (default
        ``CELERY_STOP_TIMEOUT``) while logging the tasks still running, then kills what is left
        and logs each task it cut off as ``name[id]``.
        """
        if timeout is None:
            timeout = self.plan().stop_timeout
        with self._lock:
            self._stopping = True
            try:
                self._stop_children(float(timeout))
            finally:
                self._stopping = False
                self._hurry.clear()
            self.started = False

    def hurry(self) -> bool:
        """Kill now instead of waiting, if a stop is waiting; True when one was."""
        if self._stopping:
            self._hurry.set()
        return self._stopping

    def _running_tasks(self, procs: list[ManagedProcess]) -> dict[str, list[tuple[str, str]]]:
        """``{worker name: [(task name, task id), ...]}`` of the tasks our workers run now."""
        nodes = {p.node: p.name for p in procs if p.kind == "worker" and p.node and p.alive()}
        if not nodes:
            return {}
        try:
            replies = (
                self.celery_app.control.inspect(
                    destination=list(nodes), timeout=1.0, limit=len(nodes)
                ).active()
                or {}
            )
        except Exception:  # noqa: BLE001 - the broker may be gone: stop without the list
            log.debug("could not ask the workers what they run", exc_info=True)
            return {}
        return {
            nodes[node]: [(t.get("name") or "?", t.get("id") or "?") for t in tasks or []]
            for node, tasks in replies.items()
            if node in nodes and tasks
        }

    def _unfinished(self, tasks: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The tasks whose result is not ready yet (all of them when the backend is unknown)."""
        from celery import states

        backend = self.celery_app.backend
        out = []
        for name, task_id in tasks:
            try:
                status = backend.get_task_meta(task_id).get("status")
            except Exception:  # noqa: BLE001 - no answer: count it as still running
                status = None
            if status not in states.READY_STATES:
                out.append((name, task_id))
        return out

    def _stop_children(self, grace: float) -> None:
        procs = [p for p in self._procs.values() if p.popen is not None]
        running = self._running_tasks(procs)
        for proc in procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.terminate()  # type: ignore[union-attr]
        deadline = time.monotonic() + grace
        if running:
            log.warning(
                "stopping: waiting up to %gs (CELERY_STOP_TIMEOUT) for %s to finish",
                grace,
                _describe(running),
            )
        next_report = time.monotonic() + PROGRESS_INTERVAL
        while any(p.alive() for p in procs) and time.monotonic() < deadline:
            if self._hurry.wait(0.1):
                log.warning("stopping: interrupted again; killing the local processes now")
                break
            if running and time.monotonic() >= next_report:
                still = {
                    name: self._unfinished(tasks)
                    for name, tasks in running.items()
                    if self._procs.get(name) is not None and self._procs[name].alive()
                }
                still = {name: tasks for name, tasks in still.items() if tasks}
                if still:
                    left = max(0.0, deadline - time.monotonic())
                    log.warning("stopping: still running (%.0fs left): %s", left, _describe(still))
                next_report = time.monotonic() + PROGRESS_INTERVAL
        for proc in procs:
            assert proc.popen is not None
            if proc.alive():
                cut = self._unfinished(running.get(proc.name, []))
                if cut:
                    log.warning(
                        "%s %s (pid %s) did not stop within %gs (CELERY_STOP_TIMEOUT); killing "
                        "it cuts off %s",
                        proc.kind,
                        proc.name,
                        proc.pid,
                        grace,
                        _describe({proc.name: cut}),
                    )
                else:
                    log.warning(
                        "%s %s (pid %s) did not stop within %gs; killing it",
                        proc.kind,
                        proc.name,
                        proc.pid,
                        grace,
                    )
            # the pool children of a worker are in its process group: none may linger
            proc._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)
            proc.status = "stopped"
        self._procs.clear()


def _describe(tasks: dict[str, list[tuple[str, str]]]) -> str:
    """``"2 tasks: add[id1], nap[id2] on worker1"`` for the log."""
    total = sum(len(t) for t in tasks.values())
    parts = [
        ", ".join(f"{name}[{task_id}]" for name, task_id in items) + f" on {worker}"
        for worker, items in sorted(tasks.items())
    ]
    return f"{total} task{'s' if total != 1 else ''}: " + "; ".join(parts)


def _stop_ref(ref: weakref.ref[LocalProcesses]) -> None:
    obj = ref()
    if obj is not None:
        obj.stop()


def port_taken(address: str, port: int) -> bool:
    """True when something accepts TCP connections on ``address``:``port`` (0.2 s at most)."""
    try:
        with socket.create_connection((address, port), timeout=0.2):
            return True
    except OSError:
        return False


def monitor_url(address: str, port: int, prefix: str) -> str:
    """The URL of a monitor served on ``address``:``port`` under the URL ``prefix`` (``''`` or
    ``/monitor``): ``http://127.0.0.1:5555/monitor/``, ``http://[::1]:5555/``."""
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"http://{host}:{port}{prefix}/"


def beat_pidfile(schedule_file: str) -> str:
    """The pid file of the beat running the schedule file ``schedule_file``: its path plus
    ``.pid``. Every beat we start (local processes, ``flask celery beat``) writes it, and
    Celery refuses to start a second beat on it while the first runs."""
    return schedule_file + ".pid"


def running_pid(pidfile: str) -> int | None:
    """The pid written in ``pidfile`` when that process still runs; None when there is no
    such file, it holds no pid, or the process is gone (a stale file of a killed beat)."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # runs as another user
    return pid


# -- parent signals ------------------------------------------------------------------------------
# Signal handlers are process-wide by nature: one handler stops the children of every app.
_live: weakref.WeakSet[LocalProcesses] = weakref.WeakSet()
_previous: dict[int, Any] = {}


def _install_signal_handlers() -> None:
    """Stop children on SIGTERM/SIGINT, then run the handler that was there before."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; atexit and PDEATHSIG still apply
    for sig in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(sig)
        if current is _on_signal or current == signal.SIG_IGN or sig in _previous:
            continue  # an ignored signal (e.g. SIGINT of a background job) stays ignored
        _previous[sig] = current
        signal.signal(sig, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    live = list(_live)
    if any([procs.hurry() for procs in live]):
        return  # a second signal while the first one's stop waits: it kills now and chains
    for procs in live:
        with contextlib.suppress(Exception):
            procs.stop()
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def is_loopback(address: str) -> bool:
    """True when ``address`` (an IP address or host name) only reaches this machine."""
    import ipaddress

    host = address.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
