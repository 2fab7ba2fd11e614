"""An app package with everything a real one has lying around, for the allowlist tests.

Module imports, names imported from elsewhere, re-exports of its own submodule, classes with
methods, a ``functools.partial``, decorated functions (with and without ``functools.wraps``),
a proxy, an object with a ``run`` attribute, a module ``__getattr__`` and a registered task.
Only :data:`RUNNABLE` may be run by reference.
"""

from __future__ import annotations

import functools
import os  # noqa: F401 - the attack surface: ``surface:os.popen``
import subprocess  # noqa: F401
from os import popen, system  # noqa: F401
from subprocess import run  # noqa: F401

from flask import current_app, g  # noqa: F401 - proxies

from flask_celerymon import Celery

from .sub import helper  # noqa: F401 - re-exported; defined in surface.sub

celery = Celery()


def plain(x):
    return x


def _decorate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def _decorate_badly(fn):
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@_decorate
def wrapped(x):
    return x


@_decorate_badly
def unwrapped(x):
    return x


@functools.lru_cache
def cached(x):
    return x


@celery.task
def registered(x):
    return x * 2


class Helper:
    attr = os

    def method(self, x):
        return x

    @staticmethod
    def static(x):
        return x

    @classmethod
    def klass(cls, x):
        return x


class Runner:
    def run(self, *args):
        return os.system(*args)


runner = Runner()
bound = Helper().method
partial_popen = functools.partial(os.popen, "true")
partial_plain = functools.partial(plain, 1)
lam = lambda x: x  # noqa: E731
alias = os.path.join
shell = os.system
builtin = print
number = 42


def __getattr__(name):
    if name == "dynamic":
        return os.system
    raise AttributeError(name)


#: the names of this module that may be run by reference
RUNNABLE = {"plain", "wrapped", "registered", "_decorate", "_decorate_badly"}
