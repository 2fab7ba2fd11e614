"""The live feed's socket against a hostile client: odd extension offers, messages it never reads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request
from wsproto.extensions import PerMessageDeflate

from tests.web.conftest import make_monitored_app


@pytest.fixture
def base(redis_url, tmp_path) -> Iterator[tuple[str, int]]:
    app = make_monitored_app(redis_url, str(tmp_path))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_port
    server.shutdown()
    app.extensions["celerymon"].shutdown()


def _handshake(addr: tuple[str, int], offer: str) -> bytes:
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(
            (
                f"GET /monitor/ws?view=tasks HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Extensions: {offer}\r\n\r\n"
            ).encode()
        )
        return s.recv(4096).split(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    ("offer", "accepted"),
    [
        ('permessage-deflate; server_max_window_bits="10"', "server_max_window_bits=10"),
        ('permessage-deflate; client_max_window_bits="12"', "client_max_window_bits=12"),
        ("permessage-deflate; server_max_window_bits=abc", None),
        (
            "permessage-deflate; client_max_window_bits=1e3, permessage-deflate",
            "permessage-deflate",
        ),
        ("permessage-deflate; server_max_window_bits=\u0661\u0662", None),
    ],
)
def test_an_odd_extension_offer_is_accepted_cleaned_or_declined_never_a_500(base, offer, accepted):
    head = _handshake(base, offer).decode("latin-1")
    assert head.startswith("HTTP/1.1 101"), head
    ext = [line for line in head.splitlines() if line.lower().startswith("sec-websocket-ext")]
    if accepted is None:
        assert ext == []
    else:
        assert ext and accepted in ext[0]


def test_clean_extension_offers():
    from flask_celerymon.web.live import clean_extension_offers

    assert clean_extension_offers('x; a="1"; b') == "x; a=1; b"
    assert clean_extension_offers("permessage-deflate; server_max_window_bits=999") == ""
    assert clean_extension_offers(",;,") == ""


def _open(addr: tuple[str, int]) -> tuple[socket.socket, WSConnection]:
    s = socket.create_connection(addr, timeout=10)
    ws = WSConnection(ConnectionType.CLIENT)
    s.sendall(
        ws.send(
            Request(
                host=f"{addr[0]}:{addr[1]}",
                target="/monitor/ws?view=tasks",
                extensions=[PerMessageDeflate()],
            )
        )
    )
    while not any(isinstance(e, AcceptConnection) for e in _events(s, ws)):
        pass
    return s, ws


def _events(s: socket.socket, ws: WSConnection) -> list:
    ws.receive_data(s.recv(65536) or None)
    return list(ws.events())


def _close_code(s: socket.socket, ws: WSConnection, timeout: float) -> int | None:
    """The close code the server sent, 0 when it reset the stream, None when it kept it open."""
    end = time.monotonic() + timeout
    s.settimeout(1)
    while time.monotonic() < end:
        try:
            for e in _events(s, ws):
                if isinstance(e, CloseConnection):
                    return e.code
        except TimeoutError:
            continue
        except OSError:  # reset: the server ended the stream before the close frame was read
            return 0
    return None


def test_a_huge_compressed_message_closes_the_feed_instead_of_being_kept(base):
    s, ws = _open(base)
    with s:
        # 64 MB of zeros are 64 kB deflated: a server that buffers what it never reads keeps it all
        s.sendall(ws.send(BytesMessage(data=bytes(64 << 20))))
        assert _close_code(s, ws, 10) in (1009, 0)


def test_a_small_message_ends_the_feed(base):
    s, ws = _open(base)
    with s:
        s.sendall(ws.send(BytesMessage(data=b"hello")))
        assert _close_code(s, ws, 10) in (1003, 0)
