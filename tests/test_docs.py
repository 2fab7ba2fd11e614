"""The documentation keeps up with the code."""

from __future__ import annotations

import pathlib
import re

from flask_celerymon.config import OWN_KEYS

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_every_own_config_key_is_documented():
    text = (DOCS / "configuration.rst").read_text(encoding="utf-8")
    missing = [key for key in OWN_KEYS if f"``{key}``" not in text]
    assert missing == []


def test_documented_defaults_match_the_code():
    text = (DOCS / "configuration.rst").read_text(encoding="utf-8")
    for key, (default, _, _) in OWN_KEYS.items():
        if isinstance(default, (bool, int, float)) and default is not None:
            shown = repr(default) if not isinstance(default, str) else f'"{default}"'
            assert f"``{key}`` (default ``{shown}``" in text, key


def test_sphinx_builds_the_docs_without_warnings(tmp_path):
    from sphinx.cmd.build import build_main

    status = build_main(["-q", "-W", "--keep-going", "-b", "html", str(DOCS), str(tmp_path)])
    assert status == 0
    assert (tmp_path / "configuration.html").exists()


def _names_between(text: str, start: str, end: str) -> set[str]:
    """The ````literal```` words of ``text`` from ``start`` to the next ``end``."""
    assert start in text, start
    part = text[text.index(start) + len(start) :]
    assert end in part, end
    return set(re.findall(r"``([a-z_]+)``", part[: part.index(end)]))


def test_the_api_docs_list_exactly_the_sort_keys_the_api_accepts():
    from flask_celerymon.monitor.query import SORT_KEYS
    from flask_celerymon.web.api import SORT_CHOICES

    assert set(SORT_CHOICES) == {p + k for k in SORT_KEYS for p in ("", "-")}
    api = (DOCS / "api.rst").read_text(encoding="utf-8")
    assert _names_between(api, "* ``sort_by``:", "a leading ``-``") == set(SORT_KEYS)
    service = (DOCS / "monitor-service.rst").read_text(encoding="utf-8")
    assert _names_between(service, "ranges; sort by", "(``query.SORT_KEYS``)") == set(SORT_KEYS)


def test_the_ui_docs_list_exactly_the_sort_columns_of_the_tasks_page():
    from flask_celerymon.web.views import SORTABLE

    ui = (DOCS / "ui.rst").read_text(encoding="utf-8")
    assert _names_between(ui, "``sort``\n", "with\n") == set(SORTABLE)


#: A measured figure: a number with a unit of time, rate, size or a ratio.
FIGURE = re.compile(r"\d[\d,.]*\s?(?:ms|µs|events/s|ev/s|B|KB|MB|×)(?!\w)")
HEADING = re.compile(r"\n([^\n]+)\n([=\-~^])\2{3,}\n")
BENCH_REF = re.compile(r"bench[/.]([a-z_]+)")
#: Figures that are not measurements: limits and bucket bounds the code sets, formulas, an
#: example message. (file, the figure, words of its paragraph)
NOT_MEASURED = [
    ("insight.rst", "2.1×", '("p95 2.1× slower")'),
    ("metrics.rst", "5 ms", "prometheus_client's defaults (5 ms to 10 s)"),
    ("metrics.rst", "50 ms", "(histogram, 50 ms to 30 min)"),
    ("monitor-service.rst", "2 ×", "heartbeat expiry (2 × freq)"),
    ("monitor-service.rst", "256 MB", "256 MB"),
    ("ui.rst", "2 ×", "2 × the worker's heartbeat interval"),
]


def _unsourced_figures() -> list[tuple[str, str, str]]:
    """(file, figure, paragraph) for each figure whose section names no script in bench/ and
    whose paragraph does not say *no script*."""
    scripts = {p.stem for p in (DOCS.parent / "bench").glob("*.py")}
    out = []
    for path in sorted(DOCS.glob("*.rst")):
        text = path.read_text(encoding="utf-8")
        bounds = [0, *(m.start() for m in HEADING.finditer(text)), len(text)]
        for start, end in zip(bounds, bounds[1:]):
            section = text[start:end]
            if set(BENCH_REF.findall(section)) & scripts:
                continue
            for para in re.split(r"\n\s*\n", section):
                if "no script" in para:
                    continue
                out += [(path.name, m.group(), para) for m in FIGURE.finditer(para)]
    return out


def test_every_figure_in_the_docs_names_the_benchmark_that_produces_it():
    left = _unsourced_figures()
    for name, figure, words in NOT_MEASURED:
        match = next((f for f in left if f[:2] == (name, figure) and words in f[2]), None)
        assert match is not None, f"{name}: {words!r} is gone; drop it from NOT_MEASURED"
        left.remove(match)
    assert [(n, f, p[:120]) for n, f, p in left] == [], (
        "name the bench/ script and command next to these figures, or mark them *no script*"
    )


def test_every_benchmark_command_in_the_docs_runs_a_script_with_those_options():
    commands = []
    for path in sorted(DOCS.glob("*.rst")):
        text = " ".join(path.read_text(encoding="utf-8").replace("``", " ").split())
        commands += re.findall(
            r"python (?:-m bench\.(\w+)|bench/(\w+)\.py)((?: --[\w-]+(?: [^\s-]\S*)?)*)", text
        )
    assert len(commands) >= 4
    for module, script, options in commands:
        source = (DOCS.parent / "bench" / f"{module or script}.py").read_text(encoding="utf-8")
        for option in re.findall(r"--[\w-]+", options):
            assert f'"{option}"' in source, f"bench/{module or script}.py has no {option}"


def test_the_api_docs_range_table_states_the_ranges_the_api_declares():
    from flask_celerymon.web import api

    rows = {
        "``limit`` of ``GET /api/tasks``": [api.TASKS_LIMIT],
        "``offset`` of ``GET /api/tasks``": [api.TASKS_OFFSET],
        "``limit`` of the bulk actions": [api.BULK_RANGE],
        "``limit`` of ``GET /api/queues/messages``": [api.MESSAGES_LIMIT],
        "``n`` of pool grow/shrink": [api.POOL_STEP],
        "``min`` / ``max`` of autoscale": [api.POOL_MIN, api.POOL_MAX],
        "``timeout`` of ``result`` and ``apply``": [api.WAIT],
        "``soft`` / ``hard`` of ``task/timeout``": [api.SECONDS],
        "apply body: ``countdown`` ``expires`` ``*time_limit``": [api.SECONDS],
        "``priority`` / ``retries`` of the apply body": [api.PRIORITY, api.RETRIES],
        "``received_start`` ... ``started_end``": [api.UNIX_TIME],
    }
    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    table = text[text.index("Parameter    ") : text.index("Text parameters with a fixed set")]
    for label, ranges in rows.items():
        line = next(ln for ln in table.splitlines() if ln.startswith(label))
        said = line[len(label) :]
        if label.startswith("``received_start``"):  # stated as the Unix seconds it allows
            said = said[said.index("Unix") :]
        numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", said)]
        bounds = [b for r in ranges for b in (r.minimum, r.maximum)]
        assert numbers[: len(bounds)] == bounds, label
