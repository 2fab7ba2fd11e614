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
     └── TaskNotFound (LookupError)            get() of an id nobody knows
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
