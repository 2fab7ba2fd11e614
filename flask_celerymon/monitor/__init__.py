"""The monitor service core: event ingest, task/worker state, history, queries, inspection.

Nothing here imports Flask, so the service also runs in a standalone monitor process or in tests
by itself. One :class:`MonitorService` per Flask app; the blueprint, the live feed, the metrics
and the CLI all read from it.
"""

from __future__ import annotations

from .model import TaskPage
from .query import SearchError
from .service import MonitorService
from .settings import MonitorSettings
from .subscriptions import Subscription

__all__ = ["MonitorService", "MonitorSettings", "SearchError", "Subscription", "TaskPage"]
