"""
A twisted.web site on the C{tlsgate:} endpoint string: reloading
certificates and connection limits with one line.

    python docs/examples/endpoint_web.py            # serve https://127.0.0.1:8445/
    python docs/examples/endpoint_web.py --self-test

The certificates live in a temporary directory (printed at start), made by
tlsgate.testing's throwaway CA. Renew them there and the next connection is
served the new certificate. With --self-test it connects, renews, connects
again and prints what the page said both times (the docs are tested this way).
"""

from __future__ import annotations

import sys
import tempfile

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from tlsgate.testing import CertificateAuthority, CertificateFiles


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        peer = request.transport.getPeerCertificate()  # type: ignore[union-attr]
        return (
            f"hello over {request.prePathURL().decode()}"
            f" (secure: {request.isSecure()}, client certificate: {peer is not None})\n"
        ).encode()


class Fetch(Protocol):
    """Sends one HTTP request and collects the answer, for the self-test."""

    def __init__(self) -> None:
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.data = b""
        self.serial = 0

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        served = self.transport.getPeerCertificate()  # type: ignore[union-attr]
        self.serial = served.to_cryptography().serial_number

    def connectionLost(self, reason: object) -> None:
        self.done.callback(self.data)


async def self_test(
    port: int, ca: CertificateAuthority, files: CertificateFiles
) -> None:
    trust = ssl.Certificate.loadPEM(ca.cert_pem)
    for round_ in (1, 2):
        options = ssl.optionsForClientTLS("localhost", trustRoot=trust)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
        fetch = await connectProtocol(endpoint, Fetch())
        body = await fetch.done
        page = body.split(b"\r\n\r\n", 1)[1].decode().strip()
        print(f"round {round_}: {page}; certificate serial {fetch.serial:x}")
        if round_ == 1:
            files.write(ca.issue("localhost"))  # a renewal, renamed into place
            print("renewed")


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="tlsgate-example-")
    ca = CertificateAuthority()
    files = CertificateFiles(workdir, ca.issue("localhost", "127.0.0.1"))
    port = 0 if "--self-test" in sys.argv else 8445
    description = (
        f"tlsgate:port={port}:interface=127.0.0.1:cert={files.cert}:key={files.key}"
        ":idle_timeout=2m:max_connections=1000:rotation_grace=10m"
    )
    endpoint = serverFromString(reactor, description)
    listening = endpoint.listen(Site(Hello()))
    if "--self-test" in sys.argv:
        d = listening.addCallback(
            lambda p: defer.ensureDeferred(self_test(p.getHost().port, ca, files))
        )
        d.addErrback(lambda f: (f.printTraceback(), setattr(sys, "exitcode", 1)))
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
    else:
        print(f"serving https://127.0.0.1:{port}/ with the certificate in {workdir}")
        print(f"trust {workdir}/ca.pem in your client:")
        with open(f"{workdir}/ca.pem", "wb") as f:
            f.write(ca.cert_pem)
    reactor.run()  # type: ignore[attr-defined]
    sys.exit(getattr(sys, "exitcode", 0))


if __name__ == "__main__":
    main()
