"""The documentation keeps up with the code."""

from __future__ import annotations

import pathlib

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
