"""
Twisted's stock port-forwarder behind TLS, with one static context: the
"bare Twisted forwarder" that owes nothing to tlsgate's relay, for
bench/peers.py (its C{portforward} row).

C{bench/gateway_variant.py --variant static} (the C{bare} row) runs tlsgate's
own relay without the tracker, so it moves when the relay does. This one runs
C{twisted.protocols.portforward} (Twisted's C{ProxyServer}, a
C{reactor.connectTCP} per connection, producers wired both ways) under
C{TLSMemoryBIOFactory}, so it stays put while tlsgate's data path changes.
The context is gateway_variant's C{StaticContextFactory}: same TLS policy,
no session resumption.

Not a test and not run in CI.

    python bench/portforward.py --cert cert.pem --key key.pem \\
        --listen tcp:8443:interface=127.0.0.1 --backend 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from gateway_variant import StaticContextFactory  # noqa: E402  (puts src/ on the path)
from OpenSSL import SSL  # noqa: E402
from twisted.protocols import portforward  # noqa: E402

from tlsgate.certs import TLSPolicy  # noqa: E402


class NoDelayProxyClient(portforward.ProxyClient):
    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        super().connectionMade()


class QuietClientFactory(portforward.ProxyClientFactory):
    """Twisted's, without the two log lines per connection ("Starting factory")."""

    noisy = False
    protocol = NoDelayProxyClient


class QuietProxyServer(portforward.ProxyServer):
    """
    Twisted's, with TCP_NODELAY on both sockets as every other server here
    has (tlsgate's relay sets it): without it, a request that follows the
    client's Finished waits 40 ms for a delayed ACK.
    """

    clientProtocolFactory = QuietClientFactory

    def connectionMade(self) -> None:
        # TLSMemoryBIOProtocol hands unknown attributes to the TCP transport.
        self.transport.setTcpNoDelay(True)
        super().connectionMade()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--listen", required=True, help="tcp:8443:interface=...")
    parser.add_argument("--backend", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.protocols.tls import TLSMemoryBIOFactory

    # Errors to the log file the caller gives as stdout; nothing per connection.
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout)], redirectStandardIO=False
    )
    host, port = args.backend.rsplit(":", 1)
    forward = portforward.ProxyFactory(host, int(port))
    forward.protocol = QuietProxyServer
    forward.noisy = False
    context = StaticContextFactory(
        args.cert, args.key, TLSPolicy(session_resumption=False)
    )
    tls = TLSMemoryBIOFactory(context, False, forward, clock=reactor)
    serverFromString(reactor, args.listen).listen(tls)
    print(
        f"portforward: {args.listen} -> {args.backend}"
        f" ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})",
        flush=True,
    )
    reactor.run()


if __name__ == "__main__":
    main()
