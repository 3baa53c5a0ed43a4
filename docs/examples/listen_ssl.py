"""
Embedding tlsgate's reloading context factory with C{reactor.listenSSL}.

    python docs/examples/listen_ssl.py            # serve https://127.0.0.1:8444/
    python docs/examples/listen_ssl.py --self-test

It serves a twisted.web page over TLS with a certificate made in a temporary
directory (printed at start). Replace cert.pem and key.pem there and the next
connection is served the new certificate; no restart, no signal.
With --self-test it connects, swaps the certificate, connects again and
prints both generations (docs are tested by running this).
"""

from __future__ import annotations

import os
import sys
import tempfile

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import Site

from tlsgate.certs import ReloadingContextFactory
from tlsgate.demo import ensure_demo_certificate

CERTS = tempfile.mkdtemp(prefix="tlsgate-example-")


class Hello(Resource):
    isLeaf = True

    def __init__(self, contexts: ReloadingContextFactory) -> None:
        super().__init__()
        self.contexts = contexts

    def render_GET(self, request: object) -> bytes:
        return (
            f"hello from certificate generation {self.contexts.generation}\n".encode()
        )


class Fetch(Protocol):
    """Sends one HTTP request and collects the answer, for the self-test."""

    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.data = b""

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object) -> None:
        self.done.callback(self.data)


async def self_test(port: int) -> None:
    for round_ in (1, 2):
        endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", port, ssl.CertificateOptions()
        )
        fetch = await connectProtocol(endpoint, Fetch())
        body = await fetch.done
        print(body.split(b"\r\n\r\n", 1)[1].decode().strip())
        if round_ == 1:  # a renewal: new files renamed over the old ones
            renewed = tempfile.mkdtemp(prefix="tlsgate-renewed-", dir=CERTS)
            ensure_demo_certificate(renewed)
            os.replace(f"{renewed}/key.pem", f"{CERTS}/key.pem")
            os.replace(f"{renewed}/cert.pem", f"{CERTS}/cert.pem")


def main() -> None:
    ensure_demo_certificate(CERTS)
    contexts = ReloadingContextFactory(f"{CERTS}/cert.pem", f"{CERTS}/key.pem")
    port = reactor.listenSSL(  # type: ignore[attr-defined]
        0 if "--self-test" in sys.argv else 8444,
        Site(Hello(contexts)),
        contexts,
        interface="127.0.0.1",
    )
    if "--self-test" in sys.argv:
        d = defer.ensureDeferred(self_test(port.getHost().port))
        d.addErrback(lambda f: (f.printTraceback(), setattr(sys, "exitcode", 1)))
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
    else:
        print(f"serving https://127.0.0.1:8444/ from {os.path.abspath(CERTS)}")
    reactor.run()  # type: ignore[attr-defined]
    sys.exit(getattr(sys, "exitcode", 0))


if __name__ == "__main__":
    main()
