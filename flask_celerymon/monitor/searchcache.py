"""The window's answers to repeated searches, kept current from a log of changed tasks.

A search over the window checks every task record (about 10 ms at 100,000 tasks: the records
and their texts are scattered in memory, so the scan waits on memory, not on the matching).
Monitor pages repeat the same search while they are open (the tasks table refreshes it), and
few tasks change between two refreshes even at thousands of events a second. So
:class:`SearchCache` keeps, for the last :data:`MAX_ENTRIES` searches, the matching records in
window order; :class:`~.state.State` appends each task it changes or creates to :attr:`log`
(only while an answer is kept), and the next identical search checks only the logged records
instead of the whole window:

* a kept match that changed is checked again (dropped if it no longer matches), one no longer
  in the window (evicted) is dropped;
* a task created since is checked and, if it matches, appended: new records come last in the
  window's order (a dict keeps insertion order, an update keeps a task's place);
* a task that existed before and matches only now has a place among the kept matches that the
  log does not tell: the search is answered by a full scan (and kept anew).

So the answer is the full scan's, in the same order (ties of the sort keep window order).

Memory is bounded whatever the window holds: at most :data:`MAX_ENTRIES` answers of at most
:data:`MAX_MATCHES` records each, and a log of at most :data:`MAX_LOG` entries (past it every
answer is dropped and logging stops until the next search; the writer checks the bound at
each append, so a search asked once does not make the log grow for ever), 8 bytes a pointer:
under 1.5 MB in all, none of it per task of the window (the records a kept answer or the log
still names after their eviction stay alive until the answer or the log entry goes). While nothing is kept nothing is logged. Not
thread-safe: used under :attr:`State.lock`, like the rest of the window.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import TaskRecord

#: Searches whose answers are kept (the least recently asked is dropped first).
MAX_ENTRIES = 4
#: Answers with more matching tasks than this are not kept (their sort costs more than the
#: scan saved).
MAX_MATCHES = 20_000
#: Changed tasks logged before every kept answer is dropped.
MAX_LOG = 50_000

#: A filter of window records: returns the matching ones of an iterable, in its order.
Matcher = Callable[[Iterable["TaskRecord"]], list["TaskRecord"]]


class _Entry:
    __slots__ = ("matches", "changed_at", "created_at")

    def __init__(self, matches: list[TaskRecord], changed_at: int, created_at: int) -> None:
        self.matches = matches
        self.changed_at = changed_at
        self.created_at = created_at


class SearchCache:
    """Kept answers of window searches and the log that keeps them current (see the module).

    :attr:`log` is None while nothing is kept; otherwise :class:`~.state.State` appends every
    task record it changes to :attr:`log` and every record it creates to both :attr:`log` and
    :attr:`created`.
    """

    def __init__(self) -> None:
        self.log: list[TaskRecord] | None = None
        self.created: list[TaskRecord] = []
        #: :data:`MAX_LOG` when made: the writer checks ``len(log) > max_log`` after each
        #: append and calls :meth:`clear` past it (the log must not grow while nobody asks)
        self.max_log = MAX_LOG
        self._entries: dict[Hashable, _Entry] = {}

    def changed(self, t: TaskRecord) -> None:
        """Log a changed record (for the rarer writers; :meth:`State._apply_task` inlines it)."""
        log = self.log
        if log is not None:
            log.append(t)
            if len(log) + len(self.created) > self.max_log:
                self.clear()

    def made(self, t: TaskRecord) -> None:
        """Log a record put in the window (it is also logged as changed when it changes)."""
        if self.log is not None:
            self.created.append(t)
            if len(self.log) + len(self.created) > self.max_log:
                self.clear()

    def clear(self) -> None:
        """Drop every kept answer and stop logging."""
        self.log = None
        self.created = []
        self._entries.clear()

    def answer(
        self,
        key: Hashable,
        window: dict[str, TaskRecord],
        matcher: Matcher,
    ) -> list[TaskRecord]:
        """The records of ``window`` (uuid -> record) ``matcher`` keeps, in window order.

        ``key`` names the search and its filters (equal keys: equal matchers). Answers from
        the kept answer of ``key`` and the log when it can, by ``matcher(list(window))``
        otherwise. The list returned is the caller's.
        """
        log = self.log
        if log is not None and len(log) + len(self.created) > self.max_log:
            self.clear()
            log = None
        entry = self._entries.pop(key, None)
        out = None if entry is None or log is None else self._update(entry, log, window, matcher)
        if out is None:
            out = matcher(window.values())
        if len(out) <= MAX_MATCHES:
            if self.log is None:
                self.log = []
                self.created = []
            self._entries[key] = _Entry(out, len(self.log), len(self.created))
            while len(self._entries) > MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
            self._trim()
        return list(out)

    def _update(
        self,
        entry: _Entry,
        log: list[TaskRecord],
        window: dict[str, TaskRecord],
        matcher: Matcher,
    ) -> list[TaskRecord] | None:
        """The kept answer brought up to date, or None when only a scan can place a match."""
        new = self.created[entry.created_at :]
        new_ids = {id(t) for t in new}
        changed = {id(t): t for t in log[entry.changed_at :] if id(t) not in new_ids}
        kept_ids = {id(t) for t in entry.matches}
        now = {id(t) for t in matcher(changed.values())}
        if not now <= kept_ids:
            return None  # an older task matches only now: its place is unknown
        get = window.get
        out = [
            t for t in entry.matches if (id(t) not in changed or id(t) in now) and get(t.uuid) is t
        ]
        if new:
            out += matcher(t for t in new if get(t.uuid) is t)
        return out

    def _trim(self) -> None:
        """Drop the log's entries every kept answer has seen."""
        log = self.log
        if log is None or not self._entries:
            return
        seen = min(e.changed_at for e in self._entries.values())
        made = min(e.created_at for e in self._entries.values())
        if seen > 1024 and 2 * seen > len(log):
            del log[:seen]
            for e in self._entries.values():
                e.changed_at -= seen
        if made > 1024 and 2 * made > len(self.created):
            del self.created[:made]
            for e in self._entries.values():
                e.created_at -= made
