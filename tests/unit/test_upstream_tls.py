"""
The backend session cache rules, with whole TLS handshakes in memory: a
verified handshake caches a session, a reconnect resumes it, a backend with a
new certificate costs one full handshake and drops the stale sessions, and a
failed attempt leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from zope.interface import implementer

from tests.helpers import make_pair, write, write_atomically
from tlsgate.certs import ReloadingContextFactory, session_reused
from tlsgate.relay._relay import _BackendFactory
from tlsgate.upstream import BackendTLS, TLSBackendEndpoint


class Echo(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]


class Client:
    """Stands in for the relay's client side."""

    def __init__(self) -> None:
        self.received = b""

    def backend_data(self, data: bytes) -> None:
        self.received += data

    def backend_lost(self) -> None:
        pass


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Connects each attempt to a fresh in-memory TLS server; or refuses."""

    def __init__(self, server: TLSMemoryBIOFactory) -> None:
        self.server = server
        self.refuse = False
        self.refuse_next = 0
        self.pumps: list[iosim.IOPump] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        if self.refuse or self.refuse_next:
            self.refuse_next = max(0, self.refuse_next - 1)
            return defer.fail(ConnectionRefusedError())
        addr = IPv4Address("TCP", "127.0.0.1", 8443)
        client = factory.buildProtocol(addr)
        server = self.server.buildProtocol(addr)
        self.pumps.append(
            iosim.connect(server, iosim.makeFakeServer(server), client,
                          iosim.makeFakeClient(client), greet=False)
        )  # fmt: skip
        return defer.succeed(client)


@pytest.fixture
def setup(
    tmp_path: Path,
) -> tuple[TLSBackendEndpoint, MemoryEndpoint, Path, trustme.CA]:
    ca = trustme.CA()
    pair = make_pair(ca, "backend.internal")
    write(tmp_path / "s.pem", pair.chain)
    write(tmp_path / "s.key", pair.key)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    contexts = ReloadingContextFactory(str(tmp_path / "s.pem"), str(tmp_path / "s.key"))
    server = TLSMemoryBIOFactory(
        contexts, False, Factory.forProtocol(Echo), clock=Clock()
    )
    plain = MemoryEndpoint(server)
    tls = BackendTLS(ca=str(tmp_path / "ca.pem"))
    return TLSBackendEndpoint(plain, tls, "backend.internal"), plain, tmp_path, ca


def attempt(endpoint: TLSBackendEndpoint, plain: MemoryEndpoint) -> Any:
    results: list[Any] = []
    d = endpoint.connect(_BackendFactory(Client()))  # type: ignore[arg-type]
    d.addBoth(results.append)
    for _ in range(20):
        for pump in list(plain.pumps):
            pump.flush()
        if results:
            break
    assert results, "the attempt never finished"
    for pump in plain.pumps:  # deliver what follows the handshake (1.3 tickets, data)
        pump.flush()
    return results[0]


def close(protocol: Any, plain: MemoryEndpoint) -> None:
    protocol.transport.loseConnection()
    for pump in plain.pumps:
        pump.flush()


def test_verified_handshakes_are_cached_and_reconnects_resume(setup: Any) -> None:
    endpoint, plain, _, _ = setup
    first = attempt(endpoint, plain)
    assert not session_reused(first.transport)
    assert endpoint.sessions
    close(first, plain)
    second = attempt(endpoint, plain)
    assert session_reused(second.transport)


def test_a_backend_with_a_new_certificate_drops_the_stale_sessions(setup: Any) -> None:
    endpoint, plain, tmp, ca = setup
    close(attempt(endpoint, plain), plain)
    old_fingerprint = endpoint.sessions[-1][1]
    new = make_pair(ca, "backend.internal")
    write_atomically(tmp / "s.key", new.key)
    write_atomically(tmp / "s.pem", new.chain)
    third = attempt(
        endpoint, plain
    )  # offered the old session; the server cannot resume it
    assert not session_reused(third.transport)
    assert {fp for _, fp in endpoint.sessions} == {new.fingerprint} != {old_fingerprint}


def test_a_failed_attempt_leaves_nothing_in_the_cache(setup: Any) -> None:
    endpoint, plain, _, _ = setup
    plain.refuse = True
    result = attempt(endpoint, plain)
    result.trap(ConnectionRefusedError)
    assert not endpoint.sessions


def test_the_wrong_name_fails_verification(setup: Any) -> None:
    endpoint, plain, _, _ = setup
    endpoint.hostname = "someone-else.internal"
    result = attempt(endpoint, plain)
    assert not hasattr(result, "transport")  # a Failure, not a protocol
    assert not endpoint.sessions


def test_new_ca_files_drop_every_session(setup: Any) -> None:
    endpoint, plain, tmp, ca = setup
    close(attempt(endpoint, plain), plain)
    assert endpoint.sessions
    other = trustme.CA()
    write_atomically(tmp / "ca.pem", ca.cert_pem.bytes() + other.cert_pem.bytes())
    endpoint.tls.options_for("backend.internal")
    assert not endpoint.sessions


def test_a_failure_while_resuming_is_retried_once_with_a_full_handshake(
    setup: Any,
) -> None:
    """The client waiting on this backend never sees the failed resumption."""
    endpoint, plain, _, _ = setup
    close(attempt(endpoint, plain), plain)
    assert endpoint.sessions
    plain.refuse_next = 1  # the resuming attempt fails
    protocol = attempt(endpoint, plain)
    assert hasattr(protocol, "transport"), protocol
    assert not session_reused(protocol.transport)  # the retry was a full handshake


def test_without_a_session_a_failure_is_not_retried(setup: Any) -> None:
    endpoint, plain, _, _ = setup
    plain.refuse_next = 1
    result = attempt(endpoint, plain)
    result.trap(ConnectionRefusedError)
    assert plain.refuse_next == 0 and len(plain.pumps) == 0
