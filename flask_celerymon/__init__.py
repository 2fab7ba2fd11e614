"""flask_celerymon: Celery as a first-class part of a Flask app, with a monitor built in."""

from __future__ import annotations

from .errors import (
    AlreadyRegisteredError,
    CeleryMonError,
    ConfigurationError,
    ConnectionFailed,
    DispatchRefused,
    NotInitializedError,
    StartError,
    SubmitConnectionError,
    SubmitError,
    TaskNotFound,
)
from .extension import Celery, current_task
from .futures import Future, FuturePool

__all__ = [
    "AlreadyRegisteredError",
    "Celery",
    "CeleryMonError",
    "ConfigurationError",
    "ConnectionFailed",
    "DispatchRefused",
    "Future",
    "FuturePool",
    "NotInitializedError",
    "StartError",
    "SubmitConnectionError",
    "SubmitError",
    "TaskNotFound",
    "current_task",
]
