"""``python -m tests.apps.surface``: an entry point, never a module of submittable functions."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    sys.exit(f"usage: python -m tests.apps.surface ({argv!r})")


if __name__ == "__main__":
    main()
