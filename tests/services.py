"""Fixtures for the server-grade services: a real PostgreSQL and a real RabbitMQ.

Neither is mocked and neither is skipped when missing: CI (``.ci/run`` -> ``run-tests``)
installs both from Debian's packages, so a missing server fails the tests that need it.

* PostgreSQL: ``CELERYMON_TEST_POSTGRES`` (an admin URL) when set; otherwise a throw-away
  cluster made with ``initdb`` in a temp folder and started with ``pg_ctl`` on a free port (as
  the ``postgres`` user when the tests run as root). ``postgres_url`` hands each test a fresh
  database.
* RabbitMQ: ``CELERYMON_TEST_AMQP`` (default ``amqp://guest:guest@127.0.0.1:5672//``) with the
  management API at ``CELERYMON_TEST_RABBITMQ_API`` (default ``http://127.0.0.1:15672/api``);
  when nothing answers and ``.ci/rabbitmq`` can run (root), it is started. Each test module
  gets its own virtual host, deleted afterwards, so concurrent runs never share queues.
"""

from __future__ import annotations

import base64
import glob
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- PostgreSQL ------------------------------------------------------------------------------


def _pg_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=os.path.getmtime)
    if found:
        return os.path.dirname(found[-1])
    exe = shutil.which("initdb")
    return os.path.dirname(exe) if exe else None


class PostgresServer:
    """A PostgreSQL cluster of our own in a temp folder, or an external one given by URL."""

    def __init__(self, admin_url: str | None = None) -> None:
        self.admin_url = admin_url
        self.workdir: str | None = None
        self._as: list[str] = []
        self._bindir: str | None = None

    def start(self) -> None:
        if self.admin_url:
            return
        bindir = _pg_bindir()
        if bindir is None:
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        self._bindir = bindir
        self.workdir = tempfile.mkdtemp(prefix="celerymon-pg-")
        if os.getuid() == 0:  # postgres refuses to run as root
            shutil.chown(self.workdir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.workdir, "data")
        port = _free_port()
        subprocess.run(
            [*self._as, f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        opts = (f"-p {port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")  # fmt: skip
        subprocess.run(
            [*self._as, f"{bindir}/pg_ctl", "-D", data, "-o", opts, "-w", "-t", "60",
             "-l", os.path.join(self.workdir, "log"), "start"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        assert self.admin_url is not None
        name = f"celerymon_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))

    def stop(self) -> None:
        if self.workdir is None or self._bindir is None:
            return
        subprocess.run(
            [*self._as, f"{self._bindir}/pg_ctl", "-D", os.path.join(self.workdir, "data"),
             "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(os.environ.get("CELERYMON_TEST_POSTGRES") or None)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty PostgreSQL database for this test."""
    return postgres_server.create_database()


# -- RabbitMQ --------------------------------------------------------------------------------

_vhosts = itertools.count()


class RabbitMQ:
    """The RabbitMQ server of the run: its AMQP URL and its management API."""

    def __init__(self, amqp: str, api: str) -> None:
        self.amqp = amqp
        self.api = api.rstrip("/")
        parts = urllib.parse.urlsplit(amqp)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5672
        self.user = urllib.parse.unquote(parts.username or "guest")
        self.password = urllib.parse.unquote(parts.password or "guest")

    def request(self, method: str, path: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.api}{path}", data=data, method=method)
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - test server
            raw = resp.read()
        return json.loads(raw) if raw else None

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                pass
            self.request("GET", "/overview")
        except (OSError, urllib.error.URLError):
            return False
        return True

    def url(self, vhost: str) -> str:
        return (f"amqp://{urllib.parse.quote(self.user)}:{urllib.parse.quote(self.password)}"
                f"@{self.host}:{self.port}/{urllib.parse.quote(vhost, safe='')}")  # fmt: skip

    def add_vhost(self) -> str:
        name = f"celerymon-test-{os.getpid()}-{next(_vhosts)}"
        q = urllib.parse.quote(name, safe="")
        self.request("PUT", f"/vhosts/{q}", {})
        self.request("PUT", f"/permissions/{q}/{urllib.parse.quote(self.user)}",
                     {"configure": ".*", "write": ".*", "read": ".*"})  # fmt: skip
        return name

    def delete_vhost(self, name: str) -> None:
        try:
            self.request("DELETE", f"/vhosts/{urllib.parse.quote(name, safe='')}")
        except urllib.error.URLError:
            pass


@pytest.fixture(scope="session")
def rabbitmq() -> RabbitMQ:
    server = RabbitMQ(
        os.environ.get("CELERYMON_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//"),
        os.environ.get("CELERYMON_TEST_RABBITMQ_API", "http://127.0.0.1:15672/api"),
    )
    if not server.answers():
        script = os.path.join(REPO, ".ci", "rabbitmq")
        if os.getuid() == 0 and shutil.which("rabbitmq-server"):
            subprocess.run([script], check=False, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not server.answers():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"RabbitMQ does not answer at {server.host}:{server.port} with its "
                    f"management API at {server.api}: install rabbitmq-server and run "
                    ".ci/rabbitmq (or set CELERYMON_TEST_AMQP / CELERYMON_TEST_RABBITMQ_API)"
                )
            time.sleep(0.5)
    return server


@pytest.fixture(scope="module")
def amqp_vhost(rabbitmq: RabbitMQ) -> Iterator[str]:
    """A virtual host of its own for the test module; its AMQP URL is ``rabbitmq.url(name)``."""
    name = rabbitmq.add_vhost()
    try:
        yield name
    finally:
        rabbitmq.delete_vhost(name)
