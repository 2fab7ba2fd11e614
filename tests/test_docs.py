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
