"""
SIGHUP re-reads the ini file: a valid one applies to new connections without
dropping open ones; an invalid one is refused with file, section and key.
"""

from __future__ import annotations

import signal
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import (
    EchoServer,
    Site,
    free_port,
    recv_exactly,
    wait_for_port,
)


def tagged_backend(tag: bytes) -> EchoServer:
    class Tagged(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(tag + data)

    server = EchoServer(("127.0.0.1", 0), Tagged)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def backends() -> Iterator[tuple[int, int]]:
    a, b = tagged_backend(b"A:"), tagged_backend(b"B:")
    yield a.server_address[1], b.server_address[1]
    for s in (a, b):
        s.shutdown()
        s.server_close()


def ask(site: Site, port: int, tls: object | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with site.client_context().wrap_socket(raw, server_hostname="localhost") as t:
            t.sendall(b"hi")
            return recv_exactly(t, 4)


def wait_for_log(site: Site, text: str, timeout: float = 10) -> None:
    assert site.gateway is not None
    deadline = time.monotonic() + timeout
    while text not in site.gateway.log:
        assert time.monotonic() < deadline, (
            f"{text!r} never logged:\n{site.gateway.log}"
        )
        time.sleep(0.05)


def test_valid_reload_applies_to_new_connections_only(
    site: Site, backends: tuple[int, int]
) -> None:
    a, b = backends
    site.backend_port = a
    gateway = site.start()
    assert ask(site, site.port) == b"A:hi"
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with site.client_context().wrap_socket(
            raw, server_hostname="localhost"
        ) as held:
            held.sendall(b"x1")
            assert recv_exactly(held, 4) == b"A:x1"
            site.backend_port = b
            second = free_port()
            text = site.ini(idle_timeout="1h").read_text()
            text += (
                f"[listener:api]\nlisten = tcp:{second}:interface=127.0.0.1\n"
                f"backend = tcp:127.0.0.1:{a}\ncert = {site.cert}\nkey = {site.key}\n"
            )
            site.ini_path().write_text(text)
            gateway.proc.send_signal(signal.SIGHUP)
            wait_for_log(site, "listener api: listening on")
            assert ask(site, site.port) == b"B:hi"  # new connections: new backend
            wait_for_port(second)
            assert ask(site, second) == b"A:hi"  # the added listener
            held.sendall(b"x2")
            assert recv_exactly(held, 4) == b"A:x2"  # the open one kept its backend
    assert gateway.proc.poll() is None


def test_invalid_reload_is_refused_and_the_old_config_serves(
    site: Site, backends: tuple[int, int]
) -> None:
    site.backend_port = backends[0]
    gateway = site.start()
    path = site.ini_path()
    path.write_text(path.read_text() + "idle_timout = 5m\n")
    gateway.proc.send_signal(signal.SIGHUP)
    wait_for_log(site, "idle_timout")
    assert f"{path}: [listener:web] idle_timout: unknown key" in gateway.log
    assert "keeping the running config" in gateway.log
    assert ask(site, site.port) == b"A:hi"


def test_removed_listener_stops_accepting_but_keeps_its_connections(
    site: Site, backends: tuple[int, int]
) -> None:
    site.backend_port = backends[0]
    other = free_port()
    gateway = site.start()
    path = site.ini_path()
    base = path.read_text()
    path.write_text(base + f"[listener:api]\nlisten = tcp:{other}:interface=127.0.0.1\n"
                    f"backend = tcp:127.0.0.1:{backends[1]}\ncert = {site.cert}\n"
                    f"key = {site.key}\n")  # fmt: skip
    gateway.proc.send_signal(signal.SIGHUP)
    wait_for_log(site, "listener api: listening on")
    with socket.create_connection(("127.0.0.1", other), timeout=10) as raw:
        with site.client_context().wrap_socket(
            raw, server_hostname="localhost"
        ) as held:
            held.sendall(b"k1")
            assert recv_exactly(held, 4) == b"B:k1"
            path.write_text(base)
            gateway.proc.send_signal(signal.SIGHUP)
            wait_for_log(site, "listener api: removed")
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", other), timeout=2).close()
            held.sendall(b"k2")
            assert recv_exactly(held, 4) == b"B:k2"
