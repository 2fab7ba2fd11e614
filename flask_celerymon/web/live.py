"""Monitor blueprint part: live (being written; registers nothing yet)."""

from __future__ import annotations

from flask import Blueprint


def register(bp: Blueprint) -> None:
    """Add this part's routes to the monitor blueprint."""
