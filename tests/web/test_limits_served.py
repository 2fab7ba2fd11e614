"""One client must not starve the app: a real served app, real sockets, real Redis.

The host app (``tests.apps.served``) runs under gunicorn's ``gthread`` worker with a few
threads, as production servers do, and the standalone monitor runs as ``flask celery
monitor`` runs it. A client opens live pages and long result waits (on a task no worker will
run) until the caps are reached; the host app's own ``/`` must still answer at once. A control
run without the caps shows that the same load does starve the server.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from tests.apps.served import app_env
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TASK = "tests.apps.served.noop"


def _get(url: str, timeout: float, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post_json(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout} s")


@contextmanager
def served(args: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """Run ``python -m <args>`` serving on ``port``; yields its base URL once it answers."""
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                _get(base + "/", timeout=2)
            except OSError:
                return False
            return True

        _until(up, 60, "the server to answer")
        yield base
    finally:
        tree = []
        try:
            tree = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        proc.kill()
        proc.wait()
        for child in tree:
            if child.is_running():
                child.kill()


def _gunicorn(threads: int) -> list[str]:
    return [
        "gunicorn", "-k", "gthread", "--threads", str(threads), "-w", "1", "--timeout", "120",
        "--graceful-timeout", "1", "--no-control-socket", "tests.apps.served:create_app()",
    ]  # fmt: skip


class FeedClient:
    """A websocket client on wsproto that sees every event the server sends.

    (simple-websocket's client can leave a first message that arrives with the handshake in
    its parser until more data comes, which here would be the next ping, 15 s later.)
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Any] = deque()
        self.timeout = timeout
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        self.sock.sendall(self.conn.send(Request(host=parts.netloc, target=target)))
        accepted = self.next_event()
        assert isinstance(accepted, AcceptConnection), accepted

    def next_event(self) -> Any:
        deadline = time.monotonic() + self.timeout
        while not self.events:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            self.conn.receive_data(data or None)
            self.events.extend(self.conn.events())
            if not data and not self.events:
                raise ConnectionError("the server closed the connection")
        return self.events.popleft()

    def close(self) -> None:
        self.sock.close()


class Load:
    """Live pages and result waits opened against one server, all ended by :meth:`close`."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.ws_url = base.replace("http://", "ws://") + "/monitor/ws?view=workers"
        self.sockets: list[Any] = []
        self.pool = ThreadPoolExecutor(32)
        self.waits: list[Future] = []

    def live_page(self) -> dict[str, Any]:
        """Open a live page's websocket and read its first message."""
        ws = FeedClient(self.ws_url)
        self.sockets.append(ws)
        event = ws.next_event()
        assert isinstance(event, TextMessage), event
        return json.loads(event.data)

    def refused_live_page(self) -> tuple[int, str]:
        """Open one websocket more; the server must close it: (close code, reason)."""
        ws = FeedClient(self.ws_url)
        self.sockets.append(ws)
        event = ws.next_event()
        assert isinstance(event, CloseConnection), event
        return event.code, event.reason

    def pending_task(self) -> str:
        """A task the monitor knows and no worker will ever run."""
        status, body = _post_json(f"{self.base}/monitor/api/task/async-apply/{TASK}", {})
        assert status == 200, body
        task_id = body["task-id"]
        info = f"{self.base}/monitor/api/task/info/{task_id}"
        _until(lambda: _get(info, timeout=5)[0] == 200, 15, "the monitor to know the task")
        return task_id

    def wait_for_result(self, task_id: str, n: int) -> None:
        url = f"{self.base}/monitor/api/task/result/{task_id}?timeout=40"

        def one() -> tuple[int, Any, float]:
            t0 = time.monotonic()
            status, body = _get(url, timeout=90)
            return status, json.loads(body), time.monotonic() - t0

        self.waits += [self.pool.submit(one) for _ in range(n)]

    def close(self) -> None:
        for ws in self.sockets:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - the server may be gone already
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def env(redis_url, tmp_path):
    def make(**config: Any) -> dict[str, str]:
        return app_env(str(tmp_path), redis_url, **config)

    return make


def _chunked_post(base: str, path: str, size: int) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        body = iter([b'{"args": ["', b"x" * size, b'"]}'])
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )  # fmt: skip
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _handshake(base: str, path: str, origin: str) -> tuple[int, Any]:
    """A browser's websocket handshake from ``origin``: (status, JSON body or None)."""
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    try:
        conn.request(
            "GET", path, headers={
                "Connection": "Upgrade", "Upgrade": "websocket", "Origin": origin,
                "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )  # fmt: skip
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read()) if resp.status != 101 else None
    finally:
        conn.close()


def test_live_pages_and_result_waits_beyond_the_caps_leave_the_host_app_answering(env, tmp_path):
    port = free_port()
    config = env(
        CELERY_MONITOR_MAX_LIVE_SOCKETS=2,
        CELERY_MONITOR_MAX_CONCURRENT_WAITS=1,
        CELERY_MONITOR_MAX_WAIT_SECONDS=60,
        CELERY_MONITOR_MAX_CONTENT_LENGTH=10_000,
    )
    args = [*_gunicorn(threads=6), "-b", f"127.0.0.1:{port}"]
    with served(args, config, port, tmp_path / "gunicorn.log") as base:
        load = Load(base)
        try:
            assert [load.live_page() for _ in range(2)] == [
                {"type": "hello", "view": "workers"}
            ] * 2
            assert load.refused_live_page() == (
                4503,
                "2 live pages are open (CELERY_MONITOR_MAX_LIVE_SOCKETS)",
            )
            task_id = load.pending_task()
            load.wait_for_result(task_id, 12)
            # all but one answer at once with the state so far; one holds the only wait
            _until(lambda: sum(f.done() for f in load.waits) == 11, 15, "11 waits to answer")
            answered = [f.result() for f in load.waits if f.done()]
            assert {(s, json.dumps(b)) for s, b, _ in answered} == {
                (200, json.dumps({"task-id": task_id, "state": "PENDING"}))
            }
            # the host app's own page, and the monitor's API, still answer at once
            for path in ("/", "/", "/monitor/api/workers", "/"):
                t0 = time.monotonic()
                status, body = _get(base + path, timeout=10)
                took = time.monotonic() - t0
                assert status == 200, (path, body)
                assert took < 2.0, (path, took)
            assert _get(base + "/", timeout=10)[1] == b"the host app's own page"
            # a body over the cap, of unknown length, is refused as it is read
            assert _chunked_post(base, f"/monitor/api/task/async-apply/{TASK}", 20_000) == (
                413,
                {
                    "error": "the request body is larger than 10000 bytes "
                    "(CELERY_MONITOR_MAX_CONTENT_LENGTH); send less, or raise the setting"
                },
            )
            # a page of another origin cannot open the feed
            status, body = _handshake(base, "/monitor/ws?view=tasks", "http://evil.example")
            assert status == 403
            assert body["error"].startswith(
                "live feed refused: Origin 'http://evil.example' is not this server"
            )
            assert _handshake(base, "/monitor/ws?view=tasks", base)[0] == 101
        finally:
            load.close()


def _starved(url: str) -> bool:
    """True when ``url`` gets no answer within 3 s."""
    try:
        _get(url, timeout=3)
    except TimeoutError:
        return True
    return False


def test_without_the_caps_the_same_load_starves_the_host_app(env, tmp_path):
    """The control run: what the caps prevent does happen to a server of this size."""
    port = free_port()
    config = env(CELERY_MONITOR_MAX_LIVE_SOCKETS=100, CELERY_MONITOR_MAX_CONCURRENT_WAITS=100)
    args = [*_gunicorn(threads=6), "-b", f"127.0.0.1:{port}"]
    with served(args, config, port, tmp_path / "gunicorn.log") as base:
        load = Load(base)
        try:
            assert [load.live_page() for _ in range(2)] == [
                {"type": "hello", "view": "workers"}
            ] * 2
            load.wait_for_result(load.pending_task(), 12)
            _until(lambda: _starved(base + "/"), 20, "the host app to stop answering")
        finally:
            load.close()


def test_the_standalone_monitor_caps_from_its_threads_and_serves_only_loopback_names(env, tmp_path):
    port = free_port()
    config = {**env(), "FLASK_APP": "tests.apps.served:create_app()"}
    args = ["flask", "celery", "monitor", "--worker-class", "gthread", "--threads", "8",
            "--port", str(port)]  # fmt: skip
    with served(args, config, port, tmp_path / "monitor.log") as base:
        load = Load(base)
        try:
            # 8 threads: 4 live pages, 1 wait
            assert [load.live_page() for _ in range(4)] == [
                {"type": "hello", "view": "workers"}
            ] * 4
            assert load.refused_live_page()[0] == 4503
            load.wait_for_result(load.pending_task(), 10)
            _until(lambda: sum(f.done() for f in load.waits) == 9, 15, "9 waits to answer")
            for path, expected in (("/", 302), ("/monitor/", 200), ("/monitor/api/workers", 200)):
                t0 = time.monotonic()
                assert _get(base + path, timeout=10)[0] == expected, path
                assert time.monotonic() - t0 < 2.0, path
            # DNS rebinding: another name for this address is refused
            status, body = _get(base + "/monitor/", timeout=10, Host=f"evil.example:{port}")
            assert status == 400
            assert json.loads(body)["error"].startswith(
                f"host 'evil.example:{port}' is not served by this monitor"
            )
            assert _get(base + "/", timeout=10, Host=f"evil.example:{port}")[0] == 400
            assert _get(base + "/monitor/", timeout=10, Host=f"localhost:{port}")[0] == 200
        finally:
            load.close()


def _silent_handshakes(base: str, n: int) -> list[socket.socket]:
    """``n`` websocket handshakes at once from a client that then never reads nor answers.

    It never sends the close frame a refused feed waits for, nor closes its end: the server
    must not hold a thread for it.
    """
    parts = urlsplit(base)
    request = (
        "GET /monitor/ws?view=workers HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()
    socks = [socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in range(n)]
    for s in socks:
        s.sendall(request)
    return socks


def _first_frame(sock: socket.socket) -> tuple[int, int | None]:
    """Read a handshake's answer (101) and the first frame: (opcode byte, close code)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 4:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, frame = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    if frame[0] == 0x88:  # close: the code is the payload's first two bytes
        return 0x88, int.from_bytes(frame[2:4], "big")
    return frame[0], None


def test_refused_live_pages_hold_no_thread_so_an_eighth_always_answers(env, tmp_path):
    """``flask celery monitor --worker-class gthread`` (32 threads: 16 live pages, 4 waits):
    40 handshakes at once from a client that never answers the close frame must not stall
    the other requests (each refusal used to hold a thread waiting for the peer)."""
    port = free_port()
    config = {**env(), "FLASK_APP": "tests.apps.served:create_app()"}
    args = ["flask", "celery", "monitor", "--worker-class", "gthread", "--port", str(port)]
    with served(args, config, port, tmp_path / "monitor.log") as base:
        socks = _silent_handshakes(base, 40)
        try:
            time.sleep(1.0)  # the handshakes are all in
            for path in ("/monitor/healthcheck", "/monitor/api/workers", "/monitor/"):
                for _ in range(3):
                    t0 = time.monotonic()
                    status, body = _get(base + path, timeout=30)
                    took = time.monotonic() - t0
                    assert status == 200, (path, body)
                    assert took < 2.0, (path, took)
            # the refused ones got the 4503 close frame (the page polls), not a silent drop
            firsts = [_first_frame(s) for s in socks]
            assert firsts.count((0x88, 4503)) == 40 - 16, firsts
            assert firsts.count((0x81, None)) == 16, firsts  # the hello of an open feed
        finally:
            for s in socks:
                s.close()
