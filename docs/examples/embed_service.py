"""
Embedding the whole gateway: build_service() from a GatewayConfig made in code.

    PYTHONPATH=src python docs/examples/embed_service.py

It starts a small TCP echo backend in this process, builds a gateway with one
listener in front of it (TLS on a free loopback port, with a self-signed
certificate made in a temporary directory), sends one line through the
gateway over verified TLS and checks that it comes back. It prints
"echoed through tlsgate" and exits 0; on any failure it exits 1.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.demo import ensure_demo_certificate
from tlsgate.service import build_service

MESSAGE = b"hello through the gateway\n"


class Echo(Protocol):
    """The backend: sends back whatever it receives."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Probe(Protocol):
    """The client: sends MESSAGE and fires C{done} with as many bytes back."""

    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(MESSAGE)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(MESSAGE) and not self.done.called:
            self.done.callback(self.received)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(reason)


def free_port() -> int:
    """A loopback port that nothing listens on (the endpoint string needs one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run(workdir: str) -> None:
    ensure_demo_certificate(workdir)
    cert = os.path.join(workdir, "cert.pem")
    key = os.path.join(workdir, "key.pem")

    echo = ServerFactory()
    echo.protocol = Echo
    backend = reactor.listenTCP(0, echo, interface="127.0.0.1")
    backend_port = backend.getHost().port  # type: ignore[attr-defined]
    port = free_port()
    config = GatewayConfig(
        listeners=(
            ListenerConfig(
                name="echo",
                listen=f"tcp:{port}:interface=127.0.0.1",
                backends=(f"tcp:127.0.0.1:{backend_port}",),
                cert=cert,
                key=key,
            ),
        ),
        drain_timeout=1.0,  # how long stopService() lets open connections go on
    )
    service = build_service(config, reactor)
    service.startService()
    try:
        with open(cert, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        endpoint = SSL4ClientEndpoint(
            reactor,
            "127.0.0.1",
            port,
            ssl.optionsForClientTLS("localhost", trustRoot=trust),
        )
        probe = await connectProtocol(endpoint, Probe())
        echoed = await probe.done
        if echoed != MESSAGE:
            raise AssertionError(f"sent {MESSAGE!r}, got back {echoed!r}")
        print("echoed through tlsgate")
    finally:
        await defer.maybeDeferred(service.stopService)
        await defer.maybeDeferred(backend.stopListening)


def main() -> int:
    outcome: list[int] = []

    def start(workdir: str) -> None:
        d = defer.ensureDeferred(run(workdir))
        d.addTimeout(30, reactor)

        def failed(failure: Failure) -> None:
            failure.printTraceback(file=sys.stderr)
            outcome.append(1)

        d.addCallbacks(lambda _: outcome.append(0), failed)
        d.addBoth(lambda _: reactor.stop())

    with tempfile.TemporaryDirectory() as workdir:
        reactor.callWhenRunning(start, workdir)
        reactor.run()
    return outcome[0] if outcome else 1


if __name__ == "__main__":
    sys.exit(main())
