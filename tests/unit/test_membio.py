"""
L{tlsgate._membio}: the memory BIOs' fill level, and fresh BIOs once a
burst has passed, on a real pyOpenSSL connection pair over memory BIOs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

import pytest
import trustme
from OpenSSL import SSL

from tlsgate import _membio


def pump(a: SSL.Connection, b: SSL.Connection) -> None:
    """Move every byte each side wrote to the other until both are quiet."""
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                data = src.bio_read(1 << 20)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
            moved = True


def handshake(ca: trustme.CA) -> tuple[SSL.Connection, SSL.Connection]:
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ca.issue_cert("localhost").configure_cert(server_ctx)  # type: ignore[no-untyped-call]
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                side.do_handshake()
        pump(client, server)
    return client, server


def read_all(side: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += side.recv(1 << 16)
        except SSL.WantReadError:
            return out


def test_pending_counts_what_each_bio_holds(ca: trustme.CA) -> None:
    client, server = handshake(ca)
    assert _membio.pending(server, _membio.INTO) == 0
    assert _membio.pending(server, _membio.FROM) == 0
    client.send(b"x" * 1000)
    wire = client.bio_read(1 << 20)
    server.bio_write(wire)
    assert _membio.pending(server, _membio.INTO) == len(wire)
    assert read_all(server) == b"x" * 1000
    assert _membio.pending(server, _membio.INTO) == 0
    server.send(b"y")
    assert _membio.pending(server, _membio.FROM) > 0
    assert _membio.pending(object(), _membio.FROM) == _membio.UNKNOWN


def test_bios_holding_bytes_are_not_renewed(ca: trustme.CA) -> None:
    _client, server = handshake(ca)
    server.send(b"answer")
    into, out = server._into_ssl, server._from_ssl  # type: ignore[attr-defined]
    assert not _membio.renew(server)
    assert (server._into_ssl, server._from_ssl) == (into, out)  # type: ignore[attr-defined]


def test_renewed_bios_carry_the_connection_on_both_ways(ca: trustme.CA) -> None:
    client, server = handshake(ca)
    burst = bytes(range(256)) * 256  # 64 KiB
    client.sendall(burst)
    pump(client, server)
    assert read_all(server) == burst
    assert _membio.renew(server)
    client.send(b"after")
    pump(client, server)
    assert read_all(server) == b"after"
    server.send(b"answer")
    pump(client, server)
    assert read_all(client) == b"answer"
    assert _membio.renew(server)
    server.shutdown()  # close_notify goes out through the fresh BIO
    pump(client, server)
    with pytest.raises(SSL.ZeroReturnError):
        client.recv(10)


def test_renewing_after_a_burst_gives_the_grown_buffers_back(ca: trustme.CA) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc 2.33 or later: no mallinfo2 to measure with")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )]  # fmt: skip

    libc.mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return int(info.uordblks + info.hblkhd)

    pairs = [handshake(ca) for _ in range(10)]
    burst = b"z" * 65536
    for client, server in pairs:
        client.sendall(burst)
        pump(client, server)
        read_all(server)
        server.sendall(burst)
        pump(client, server)
        read_all(client)
    before = in_use()
    for _, server in pairs:
        assert _membio.renew(server)
    freed = before - in_use()
    # Each idle server kept well over 64 KiB of grown BIO buffers.
    assert freed > 10 * 100_000


def _pair(
    ca: trustme.CA, server_ctx: SSL.Context | None = None
) -> tuple[SSL.Connection, SSL.Connection]:
    if server_ctx is None:
        server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ca.issue_cert("localhost").configure_cert(server_ctx)  # type: ignore[no-untyped-call]
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.set_alpn_protos([b"h2"])
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    return client, server


@pytest.mark.parametrize("direct", [True, False])
def test_handshake_says_not_yet_then_done(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """
    C{handshake} answers C{False} (not an exception) while the server waits
    for its client, having written its flight, and C{True} once complete:
    on OpenSSL directly and through pyOpenSSL's method alike.
    """
    monkeypatch.setattr(_membio, "DIRECT", direct and _membio.DIRECT)
    client, server = _pair(ca)
    assert _membio.handshake(server) is False  # nothing from the client yet
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    pump(client, server)  # ClientHello in; nothing read out yet
    steps = []
    for _ in range(5):
        steps.append(_membio.handshake(server))
        if steps[-1]:
            break
        pump(server, client)
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        pump(client, server)
    assert steps == [False, True]
    client.send(b"ping")
    pump(client, server)
    assert read_all(server) == b"ping"


@pytest.mark.parametrize("direct", [True, False])
def test_handshake_raises_what_a_callback_raised(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """
    A callback that raises while OpenSSL still waits for the client (ALPN,
    on the ClientHello) is raised from C{handshake}, not taken for "not yet".
    """
    monkeypatch.setattr(_membio, "DIRECT", direct and _membio.DIRECT)
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)

    def select(connection: SSL.Connection, offered: list[bytes]) -> bytes:
        raise LookupError("no protocol for you")

    server_ctx.set_alpn_select_callback(select)
    client, server = _pair(ca, server_ctx)
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    pump(client, server)
    with pytest.raises(LookupError, match="no protocol for you"):
        _membio.handshake(server)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("step", ["waiting", "completing"])
def test_handshake_never_hides_a_pending_callback_error(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, direct: bool, step: str
) -> None:
    """
    An error a callback left with pyOpenSSL (its helper keeps it to raise
    after the OpenSSL call) is raised, whether OpenSSL itself only waits for
    the client or has just completed the handshake.
    """
    monkeypatch.setattr(_membio, "DIRECT", direct and _membio.DIRECT)
    server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_ctx.set_alpn_select_callback(lambda connection, offered: b"h2")
    client, server = _pair(ca, server_ctx)
    if step == "completing":
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        pump(client, server)
        assert _membio.handshake(server) is False
        pump(server, client)
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        pump(client, server)  # the client's Finished: the next call completes
    helper = server_ctx._alpn_select_helper  # type: ignore[attr-defined]
    helper._problems.append(LookupError("left by a callback"))
    with pytest.raises(LookupError, match="left by a callback"):
        _membio.handshake(server)


@pytest.mark.parametrize("direct", [True, False])
def test_recv_tells_the_peers_close_notify(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """
    After the data before it, the peer's close_notify is C{b""} directly, or
    pyOpenSSL's C{ZeroReturnError} through its method: never data, never
    "nothing yet".
    """
    monkeypatch.setattr(_membio, "DIRECT", direct and _membio.DIRECT)
    client, server = handshake(ca)
    client.send(b"last words")
    client.shutdown()
    pump(client, server)
    assert _membio.recv(server, 1 << 16) == b"last words"
    if direct:
        assert _membio.recv(server, 1 << 16) == b""
    else:
        with pytest.raises(SSL.ZeroReturnError):
            _membio.recv(server, 1 << 16)
