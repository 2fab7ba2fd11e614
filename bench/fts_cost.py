"""The cost of writing the search index, by FTS5 option: ``python bench/fts_cost.py [rows]``.

Rows like the served benchmark's tasks (args, kwargs, result of about 90 characters in all)
are inserted into a ``tasks`` table 2,500 at a time, and after each batch indexed into an
external-content trigram FTS5 table (as :meth:`.SQLiteStore.index_pending` does); prints the
µs of indexing per row and the time of a two-trigram lookup per option set. Run it pinned to
one core (``flock /tmp/core1.lock taskset -c 1 ...`` on the shared machine).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time

QUERY = '{args kwargs result} : ("r-1" AND "-12")'
VARIANTS = [
    ("", None),
    (", detail=column", None),
    (", columnsize=0", None),
    (", detail=column, columnsize=0", None),
    ("", 8),
    (", detail=column, columnsize=0", 8),  # the store's (sqlite_store._FTS_ARGS)
]


def main(n: int) -> None:
    rows = [(i, f"({100000 + i}, 'customer-{(100000 + i) % 977}')",
             f"{{'priority': {i % 3}, 'user_id': {i % 5000}}}",
             f"{{'order': {100000 + i}, 'status': 'ok'}}", "x" * 40, "celery@bench-1",
             "shop.orders.process_order") for i in range(1, n + 1)]  # fmt: skip
    for opts, automerge in VARIANTS:
        d = tempfile.mkdtemp()
        c = sqlite3.connect(os.path.join(d, "x.db"), isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-2000"):
            c.execute(f"PRAGMA {pragma}")
        c.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, args TEXT, kwargs TEXT, "
                  "result TEXT, uuid TEXT, worker TEXT, name TEXT)")  # fmt: skip
        c.execute("CREATE VIRTUAL TABLE fts USING fts5(args, kwargs, result, content='tasks', "
                  f"content_rowid='id', tokenize='trigram case_sensitive 1'{opts})")  # fmt: skip
        if automerge:
            c.execute("INSERT INTO fts(fts, rank) VALUES('automerge', ?)", (automerge,))
        spent = 0.0
        for k in range(0, n, 2500):
            c.execute("BEGIN")
            c.executemany("INSERT INTO tasks VALUES (?,?,?,?,?,?,?)", rows[k : k + 2500])
            c.execute("COMMIT")
            t = time.perf_counter()
            c.execute("BEGIN")
            c.execute("INSERT INTO fts(rowid, args, kwargs, result) SELECT id, args, kwargs, "
                      "result FROM tasks WHERE id > ? AND id <= ?", (k, k + 2500))  # fmt: skip
            c.execute("COMMIT")
            spent += time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(20):
            hits = c.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", [QUERY]).fetchone()[0]
        lookup = (time.perf_counter() - t) / 20 * 1e3
        c.close()
        print(
            f"{opts.lstrip(', ') or 'default':30s} automerge={automerge or 4}: "
            f"{spent / n * 1e6:.1f} µs/row indexed; lookup {hits} hits in {lookup:.2f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
