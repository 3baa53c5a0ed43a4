"""
tlsgate.testing does what its users rely on: each renewal style is one that
the reloading factory follows, the clock drives both the factory and the
tracker, and connect_tls completes a verified handshake in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.internet.protocol import Factory, Protocol

from tlsgate.certs import ReloadingContextFactory
from tlsgate.testing import (
    CertificateAuthority,
    CertificateFiles,
    TestClock,
    connect_tls,
)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Client(Protocol):
    received = b""

    def connectionMade(self) -> None:
        self.transport.write(b"hello")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def served(contexts: ReloadingContextFactory, ca: CertificateAuthority) -> str:
    client = Client()
    conn = connect_tls(
        Factory.forProtocol(Echo), client, trust=ca.cert_pem, contexts=contexts
    )
    assert client.received == b"hello"
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    peer = conn.client.getPeerCertificate().to_cryptography()
    return hashlib.sha256(peer.public_bytes(Encoding.DER)).hexdigest()


@pytest.mark.parametrize("how", ["rename", "in_place", "data_swap"])
def test_each_renewal_style_is_served_on_the_next_connection(
    tmp_path: Path, how: str
) -> None:
    ca = CertificateAuthority()
    first, second = ca.issue(), ca.issue()
    files = CertificateFiles(tmp_path, first, how=how)
    clock = TestClock()
    contexts = ReloadingContextFactory(
        str(files.cert), str(files.key), wallclock=clock.wallclock
    )
    assert served(contexts, ca) == first.fingerprint
    inode = os.stat(files.cert).st_ino
    files.write(second)
    assert served(contexts, ca) == second.fingerprint
    assert contexts.generation == 2
    assert (os.stat(files.cert).st_ino == inode) == (how == "in_place")
    if how == "data_swap":
        assert os.readlink(tmp_path / "..data") == "..0002"


def test_garbage_keeps_the_last_good_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority()
    good = ca.issue()
    files = CertificateFiles(tmp_path, good)
    contexts = ReloadingContextFactory(str(files.cert), str(files.key))
    files.write_raw(b"garbage", b"garbage")
    assert served(contexts, ca) == good.fingerprint
    assert contexts.state.last_error is not None


def test_the_clock_is_a_wall_clock_too() -> None:
    clock = TestClock()
    start = clock.wallclock()
    clock.advance(2.5)
    assert clock.wallclock() - start == pytest.approx(2.5e9, abs=1e3)


def test_an_unknown_renewal_style_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'copy' is not rename, in_place or data_swap"):
        CertificateFiles(tmp_path, CertificateAuthority().issue(), how="copy")
