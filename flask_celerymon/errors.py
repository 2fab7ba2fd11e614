"""Exceptions raised by flask_celerymon.

Every error the package raises on purpose derives from :class:`CeleryMonError`
and, where it makes sense, from the builtin a caller would already catch::

    CeleryMonError
     ├── ConfigurationError (ValueError)      a config key has a wrong type or value
     ├── AlreadyRegisteredError (RuntimeError) init_app called twice on one app
     ├── NotInitializedError (RuntimeError)    the extension is used before init_app
     ├── SubmitError (ValueError)              submit() refused a callable, keyword or argument
     │    └── SubmitConnectionError (+ ConnectionFailed)  submit()/map() reached no server
     ├── ConnectionFailed (ConnectionError)    the broker or result backend did not answer
     ├── DispatchRefused (CeleryMonError)      a worker refused to run a reference
     ├── StartError (RuntimeError)             local workers did not come up in time
     ├── TaskNotFound (LookupError)            get() of an id nobody knows
     └── OperationError                        a monitor operation or request cannot be done
          ├── InvalidInput (ValueError)         a parameter or argument is not valid     400
          │    └── monitor.query.SearchError    a search string or task filter           400
          ├── RefusedError (PermissionError)    a worker refused a control command       403
          ├── NotFoundError (LookupError)       no such task, worker, task name, queue   404
          ├── ConflictError (RuntimeError)      the task's, pool's or broker's state
          │                                     does not allow it                        409
          └── UnavailableError (ConnectionError) the broker or result backend is down   503
               └── NoReplyError (TimeoutError)  a worker did not reply in time           503

The operations (:mod:`flask_celerymon.monitor.control`, ``.queues``, ``.send``) raise the
:class:`OperationError` family and know nothing of HTTP; the numbers on the right are the
statuses :mod:`flask_celerymon.web.errors` (the one error handler of the monitor blueprint)
answers them with. Each message names the offending value and, where there is one, the fix.
"""

from __future__ import annotations


class CeleryMonError(Exception):
    """Base class of every error raised on purpose by flask_celerymon."""


class ConfigurationError(CeleryMonError, ValueError):
    """A configuration key has a wrong type or value; the message names the key."""


class AlreadyRegisteredError(CeleryMonError, RuntimeError):
    """``init_app`` was called a second time for the same Flask app."""


class NotInitializedError(CeleryMonError, RuntimeError):
    """The extension was used for an app it was never initialised with."""


class SubmitError(CeleryMonError, ValueError):
    """``submit``/``map`` refused a callable (lambda, closure, ``__main__``) or an option."""


class ConnectionFailed(CeleryMonError, ConnectionError):
    """The broker or the result backend did not answer within ``CELERY_SEND_TIMEOUT``.

    The message names the server (its URL, password masked), the config key to check and the
    error of the client library.
    """


class SubmitConnectionError(SubmitError, ConnectionFailed):
    """``submit``/``map`` could not send the task: the broker or result backend did not answer.

    Both a :class:`SubmitError` (everything ``submit`` raises is) and a
    :class:`ConnectionFailed` (``except ConnectionError`` catches it).
    """


class DispatchRefused(CeleryMonError):
    """A worker received a function reference that is not on the allowlist."""


class StartError(CeleryMonError, RuntimeError):
    """Local worker, beat or monitor processes did not come up in time."""


class TaskNotFound(CeleryMonError, LookupError):
    """No task with the given id is known to the result backend."""


class OperationError(CeleryMonError):
    """An operation of the monitor (worker/task control, queues, sending) cannot be done.

    The message is for the user: it names the task, worker or queue and the reason.
    ``title`` is an optional short heading for it (``"Unknown worker"``), for an error page.
    """

    def __init__(self, message: str, *, title: str | None = None) -> None:
        super().__init__(message)
        self.title = title


class InvalidInput(OperationError, ValueError):
    """A parameter, argument or option is not valid; the message names it and what it takes."""


class RefusedError(OperationError, PermissionError):
    """A worker answered a control command with an error (the message gives the worker's)."""


class NotFoundError(OperationError, LookupError):
    """No task, worker, task name, queue or message with the given name or id is known."""


class ConflictError(OperationError, RuntimeError):
    """The action conflicts with the state of the task, the worker's pool or the broker."""


class UnavailableError(OperationError, ConnectionError):
    """The broker or the result backend cannot be reached, or is not configured."""


class NoReplyError(UnavailableError, TimeoutError):
    """A worker did not reply to a control command within the reply timeout."""
