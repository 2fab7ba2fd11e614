"""``@celery.schedule(...)`` -> Celery ``beat_schedule`` entries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery.schedules import crontab, schedule, solar

from .errors import ConfigurationError

CRONTAB_KEYS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


@dataclass(frozen=True)
class ScheduleEntry:
    """One periodic task: beat entry name, task name and when to run it."""

    name: str
    task: str
    schedule: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def as_beat_entry(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "schedule": self.schedule,
            "args": tuple(self.args),
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
        }


def make_schedule(every: Any = None, **crontab_kw: Any) -> Any:
    """A Celery schedule from seconds, a timedelta, a crontab/solar object or crontab keywords.

    Raises :class:`ConfigurationError` when both or neither are given, or a keyword is unknown.
    """
    unknown = sorted(set(crontab_kw) - set(CRONTAB_KEYS))
    if unknown:
        raise ConfigurationError(
            f"celery.schedule() got unknown keyword(s) {', '.join(unknown)}; crontab keywords "
            f"are {', '.join(CRONTAB_KEYS)}"
        )
    if every is not None and crontab_kw:
        raise ConfigurationError(
            "celery.schedule() takes either a schedule (seconds, timedelta, crontab, solar) or "
            f"crontab keywords, not both: got {every!r} and {crontab_kw!r}"
        )
    if crontab_kw:
        return crontab(**crontab_kw)
    if every is None:
        raise ConfigurationError(
            "celery.schedule() needs a schedule: seconds, a timedelta, a crontab or solar "
            "object, or crontab keywords such as hour=0, minute=0"
        )
    if isinstance(every, bool):
        raise ConfigurationError(f"celery.schedule() got {every!r}; give seconds or a timedelta")
    if isinstance(every, (int, float)):
        if every <= 0:
            raise ConfigurationError(f"celery.schedule() interval must be > 0 seconds, not {every}")
        return timedelta(seconds=every)
    if isinstance(every, timedelta):
        if every.total_seconds() <= 0:
            raise ConfigurationError(f"celery.schedule() interval must be positive, not {every}")
        return every
    if isinstance(every, (crontab, solar, schedule)):
        return every
    raise ConfigurationError(
        f"celery.schedule() cannot use {every!r}: give seconds, a timedelta, a crontab or a solar"
    )
