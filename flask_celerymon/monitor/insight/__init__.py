"""Insight over the monitor's history: error groups, task analytics, the beat schedule, alerts.

* :mod:`.error_groups`: which failures are the same error (pure functions);
* :mod:`.store`: the ``insight_*`` tables (per-minute roll-ups, error groups, alerts) in
  SQLite; :mod:`.pg_store`: the same tables in the history's PostgreSQL database, shared by
  the processes of a cluster;
* :mod:`.engine`: :class:`Insight`, the thread that fills them from the service's events and
  evaluates the alert rules;
* :mod:`.analytics`: per-task figures over a window and against the previous one;
* :mod:`.beat`: the beat schedule in words, next and last runs;
* :mod:`.alerts`: the rules of ``CELERY_MONITOR_ALERTS`` and the webhook.

Like the rest of :mod:`flask_celerymon.monitor`, nothing here imports Flask.
"""

from __future__ import annotations

from .alerts import AlertRule, parse_rules
from .engine import Insight, InsightSettings
from .store import InsightStore

__all__ = ["AlertRule", "Insight", "InsightSettings", "InsightStore", "parse_rules"]
