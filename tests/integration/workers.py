"""Helpers for the real-process tests of C{workers = 2}: the process table and /status."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.integration.conftest import Site, recv_exactly
from tests.integration.test_admin import get


def children(pid: int) -> list[int]:
    """Every live descendant of C{pid}, from /proc (zombies left out)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (OSError, AssertionError, KeyError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


def status(admin_port: int) -> dict[str, Any]:
    code, body = get(admin_port, "/status")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def accepted_by_pid(admin_port: int, listener: str = "web") -> dict[int, int]:
    """Connections each serving worker has accepted, by its pid."""
    return {
        w["pid"]: w["listeners"][listener]["connections"]["accepted"]
        for w in status(admin_port)["workers"]
        if w["listeners"] is not None and w["state"] == "serving"
    }


@contextmanager
def held_connection(site: Site) -> Iterator[ssl.SSLSocket]:
    """One TLS connection through the gateway, echoed once, then kept open."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with site.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"a")
            assert recv_exactly(tls, 1) == b"a"
            yield tls


def ready(admin_port: int) -> bool:
    return get(admin_port, "/readyz")[0] == 200


def echo_once(
    site: Site,
    ctx: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
    port: int | None = None,
) -> tuple[ssl.SSLSession | None, bool]:
    """One TLS connection with an echo; its session (for the next) and whether it resumed."""
    ctx = ctx or site.client_context()
    with socket.create_connection(("127.0.0.1", port or site.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            tls.sendall(b"ping")
            assert recv_exactly(tls, 4) == b"ping"
            return tls.session, tls.session_reused


def served_by(
    site: Site, admin_port: int, listener: str = "web", **kw: Any
) -> tuple[int, bool, ssl.SSLSession | None]:
    """Make one connection; the pid of the worker that accepted it, resumed, session."""
    before = accepted_by_pid(admin_port, listener)
    session, reused = echo_once(site, **kw)
    after = wait_until(
        lambda: (a := accepted_by_pid(admin_port, listener)) != before and a,
        what="a count to move",
    )
    (pid,) = [p for p, n in after.items() if n != before.get(p, 0)]
    return pid, reused, session
