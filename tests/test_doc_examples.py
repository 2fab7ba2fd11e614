"""The code in README.rst and docs/quickstart.rst runs, under eager mode, and gives what it says.

Each ``python`` block is split into files at its ``# path/to/file.py`` comment lines; the lines
after a ``# anywhere ...`` or ``# in a view ...`` comment run in an app context, and a line
ending in ``# value`` must evaluate to that value.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILE_COMMENT = re.compile(r"^# ([\w/]+\.py)$")
CONTEXT_COMMENT = re.compile(r"^# (anywhere|in a view)")


def python_blocks(path: pathlib.Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text):
        lines = [line[4:] for line in match.group(1).splitlines()]
        blocks.append("\n".join(lines).strip() + "\n")
    return blocks


def split(blocks: list[str]) -> tuple[dict[str, str], list[str]]:
    """Files by path, and the snippets meant to run with an app context."""
    files: dict[str, str] = {}
    snippets: list[str] = []
    for block in blocks:
        target: str | None = None
        buffer: list[str] = []

        def flush(target=None, buffer=buffer):
            if target is None:
                return
            body = "\n".join(buffer).strip() + "\n"
            if target == "<context>":
                snippets.append(body)
            else:
                files[target] = files.get(target, "") + body

        for line in block.splitlines():
            m = FILE_COMMENT.match(line)
            if m or CONTEXT_COMMENT.match(line):
                flush(target)
                buffer.clear()
                target = m.group(1) if m else "<context>"
            else:
                buffer.append(line)
        flush(target)
    return files, snippets


def run_snippet(snippet: str, namespace: dict) -> None:
    for line in snippet.splitlines():
        code, _, comment = line.partition("  #")
        code, comment = code.strip(), comment.strip()
        if not code:
            continue
        if comment:  # `expression  # expected value`
            # the docs' own examples, run on purpose
            assert eval(code, namespace) == ast.literal_eval(comment), line  # noqa: S307
        else:
            exec(code, namespace)  # noqa: S102 - the docs' own examples, run on purpose


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "myapp" or m.startswith(("myapp.", "tests_doc"))]:
        del sys.modules[name]


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, body in files.items():
        if rel.startswith("tests/"):
            rel = "tests_doc/" + rel[len("tests/") :]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch(exist_ok=True)
        path.write_text(body, encoding="utf-8")


def test_readme_example_runs_in_eager_mode(workspace):
    files, snippets = split(python_blocks(ROOT / "README.rst"))
    assert sorted(files) == ["myapp/__init__.py", "myapp/jobs.py"] and len(snippets) == 1
    # a test config, the way an app's tests set it
    files["myapp/__init__.py"] = files["myapp/__init__.py"].replace(
        "celery.init_app(app)",
        'app.config["CELERY_TASK_ALWAYS_EAGER"] = True\n    ' + "celery.init_app(app)",
    )
    assert "CELERY_TASK_ALWAYS_EAGER" in files["myapp/__init__.py"]
    _write(workspace, files)
    myapp = importlib.import_module("myapp")
    jobs = importlib.import_module("myapp.jobs")
    app = myapp.create_app()
    with app.app_context():
        run_snippet(snippets[0], {"celery": myapp.celery, "add": jobs.add})


def test_quickstart_examples_run_in_eager_mode(workspace):
    files, snippets = split(python_blocks(ROOT / "docs" / "quickstart.rst"))
    assert sorted(files) == ["myapp/__init__.py", "myapp/jobs.py", "tests/test_jobs.py"]
    _write(workspace, files)
    myapp = importlib.import_module("myapp")
    jobs = importlib.import_module("myapp.jobs")
    importlib.import_module("tests_doc.test_jobs").test_add()  # the eager test it shows
    app = myapp.create_app({"CELERY_TASK_ALWAYS_EAGER": True})
    with app.app_context():
        for snippet in snippets:
            run_snippet(snippet, {"celery": myapp.celery, "add": jobs.add})
