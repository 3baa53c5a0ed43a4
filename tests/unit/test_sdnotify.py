"""sd_notify datagrams, received on a real Unix datagram socket; a Clock drives the watchdog."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from tlsgate._sdnotify import INotifier, NoNotifier, SystemdNotifier, socket_address


@pytest.fixture
def manager() -> Iterator[tuple[str, socket.socket]]:
    """A bound datagram socket standing in for systemd; yields (path, socket)."""
    # AF_UNIX paths are limited to ~108 bytes: pytest's tmp_path can be longer.
    folder = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()
    shutil.rmtree(folder)


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_nothing_without_notify_socket() -> None:
    assert SystemdNotifier.from_environ({}, Clock()) is None
    assert SystemdNotifier.from_environ({"NOTIFY_SOCKET": ""}, Clock()) is None
    assert verifyObject(INotifier, NoNotifier())


def test_ready_reloading_stopping(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = SystemdNotifier.from_environ(
        {"NOTIFY_SOCKET": path}, Clock(), monotonic=lambda: 12.5
    )
    assert notifier is not None and verifyObject(INotifier, notifier)
    notifier.ready()
    notifier.reloading()
    notifier.stopping()
    assert received(sock) == [
        "READY=1\nSTATUS=serving",
        "RELOADING=1\nMONOTONIC_USEC=12500000\nSTATUS=reloading",
        "STOPPING=1\nSTATUS=draining",
    ]
    notifier.start_watchdog()  # no WATCHDOG_USEC: no pings
    assert received(sock) == []
    notifier.close()


def test_abstract_socket_name() -> None:
    name = "tlsgate-test-" + secrets.token_hex(6)
    assert socket_address("@" + name) == b"\0" + name.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.setblocking(False)
        notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": "@" + name}, Clock())
        assert notifier is not None
        notifier.ready()
        assert received(sock) == ["READY=1\nSTATUS=serving"]


def test_watchdog_at_half_the_interval(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    clock = Clock()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}
    notifier = SystemdNotifier.from_environ(env, clock, pid=42)
    assert notifier is not None and notifier.watchdog_interval == 1.5
    notifier.start_watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    clock.advance(1.4)
    assert received(sock) == []
    clock.advance(0.1)
    assert received(sock) == ["WATCHDOG=1"]
    notifier.stop_watchdog()
    clock.advance(10)
    assert received(sock) == []


def test_watchdog_for_another_process_is_not_ours(
    manager: tuple[str, socket.socket],
) -> None:
    path, sock = manager
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "41"}
    notifier = SystemdNotifier.from_environ(env, Clock(), pid=42)
    assert notifier is not None and notifier.watchdog_interval is None
    notifier.start_watchdog()
    assert received(sock) == []


def test_a_vanished_socket_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        notifier = SystemdNotifier(str(tmp_path / "gone"), Clock())
        notifier.ready()
        notifier.stopping()
    finally:
        globalLogPublisher.removeObserver(events.append)
    failed = [e for e in events if e.get("event") == "sd_notify_failed"]
    assert len(failed) == 1 and failed[0]["log_level"] == LogLevel.warn
