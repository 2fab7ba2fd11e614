"""The history store interface (the task model and query it answers live in :mod:`.model`).

A store keeps finished (and, at shutdown, unfinished) tasks beyond the in-memory window and
worker snapshots across restarts. :class:`flask_celerymon.monitor.sqlite_store.SQLiteStore` is
the embedded default; :class:`flask_celerymon.monitor.pg_store.PostgresStore` serves several
processes and hosts. :func:`open_store` picks one from the ``CELERY_MONITOR_DB`` value.

Stores are written by one thread (the service's flusher) and read by many; implementations must
allow concurrent reads while a batch is being written.
"""

from __future__ import annotations

import abc
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .model import TASK_COLUMNS, TaskQuery  # noqa: F401 - re-exported for older imports


class HistoryStore(abc.ABC):
    """Persistent task history and worker snapshots. All methods are thread-safe."""

    #: Errors of a write that mean the store is unavailable (disk full, locked, server down):
    #: the writer keeps its rows and tries again later. Any other error means a row was refused.
    unavailable_errors: tuple[type[BaseException], ...] = (OSError,)

    @abc.abstractmethod
    def write_tasks(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert or replace tasks given as rows in :data:`TASK_COLUMNS` order."""

    @abc.abstractmethod
    def write_workers(self, workers: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the stored snapshot of these workers (hostname -> JSON-ready dict)."""

    @abc.abstractmethod
    def delete_workers(self, hostnames: Iterable[str]) -> None:
        """Forget these workers' snapshots (tasks they ran stay in the history)."""

    @abc.abstractmethod
    def load_workers(self) -> dict[str, dict[str, Any]]:
        """Every stored worker snapshot, hostname -> dict."""

    @abc.abstractmethod
    def get_task(self, uuid: str) -> dict[str, Any] | None:
        """One task as a row dict (:data:`TASK_COLUMNS` keys), or None."""

    @abc.abstractmethod
    def children(self, uuid: str) -> list[str]:
        """Ids of the tasks whose parent is ``uuid``, oldest first."""

    @abc.abstractmethod
    def query(self, q: TaskQuery) -> tuple[int, list[dict[str, Any]]]:
        """(number of matching tasks, the requested page as row dicts)."""

    @abc.abstractmethod
    def task_names(self) -> list[str]:
        """Every task name in the history, sorted."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored tasks."""

    @abc.abstractmethod
    def prune(self, max_tasks: int, older_than: float) -> int:
        """Keep at most ``max_tasks`` tasks, none last updated before ``older_than``.

        Returns the number of tasks deleted.
        """

    @abc.abstractmethod
    def task_stats(
        self, since: float, until: float, bucket: float, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Per time bucket and task name: counts of finished states and runtime percentiles.

        Each item: ``{"name", "start", "succeeded", "failed", "retried", "revoked",
        "runtime_p50", "runtime_p95", "runtime_max"}`` with ``start`` the bucket's start time.
        """

    def is_empty(self) -> bool:
        """True when no task is stored."""
        return self.count() == 0

    def get_meta(self, key: str) -> str | None:
        """A value the service keeps across restarts (e.g. when it last consumed events).

        Default: none kept.
        """
        return None

    def set_meta(self, values: Mapping[str, str | None]) -> None:
        """Set (None: delete) values read back by :meth:`get_meta`. Default: not kept."""
        return None

    def index_pending(self, max_rows: int) -> int:
        """Background upkeep (search indexing) of at most ``max_rows`` rows; returns rows done.

        Called by the service's housekeeping thread between batches. Default: nothing to do.
        """
        return 0

    def prepare_search(self) -> None:
        """Background upkeep: take the figures a search is steered by (a sample of the
        stored tasks) when they are missing or stale, so that no request waits for them.

        Called by the service's housekeeping thread (at most every
        ``housekeeping.PREPARE_INTERVAL`` seconds); cheap when they are fresh. Default:
        nothing to do.
        """
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the store; later calls may fail."""


def redact(target: str) -> str:
    """A ``CELERY_MONITOR_DB`` value fit to show: a URL's password replaced by ``***``."""
    if "://" not in target:
        return target
    parts = urllib.parse.urlsplit(target)
    if parts.password is None:
        return target
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
