"""
The tlsgate relay with a chosen server context factory, for bench/handshakes.sh.

Every variant runs exactly the relay that tlsgate's service wiring builds
(C{BackendPool} -> C{RelayFactory} -> C{TLSMemoryBIOFactory} on a server
endpoint); only the object that hands out an C{SSL.Connection} per accepted
connection differs:

  - C{reloading}: C{tlsgate.certs.ReloadingContextFactory}, which stats the
    certificate and key files for every connection and rebuilds the context
    only when they changed (what the gateway ships);
  - C{static}: one context built once at start-up, handed to every connection
    (the lower bound: no per-connection certificate work at all);
  - C{rebuild}: "Hysteria-style", re-reading and re-parsing both files and
    building a new context for every connection.

All variants use the same TLS policy, C{TLSPolicy(session_resumption=False)},
so that every handshake is a full one.

Not a test and not run in CI. It needs no install: the repository's C{src}
directory is put on C{sys.path} from this file's location.

    python bench/gateway_variant.py --variant static \\
        --cert cert.pem --key key.pem \\
        --listen tcp:8443:interface=127.0.0.1 --backend tcp:127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

from OpenSSL import SSL  # noqa: E402
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator  # noqa: E402
from zope.interface import implementer  # noqa: E402

from tlsgate.certs import (  # noqa: E402
    ReloadingContextFactory,
    TLSPolicy,
    build_server_context,
    parse_certified_key,
)

VARIANTS = ("reloading", "static", "rebuild")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _context_from_files(
    cert_path: str, key_path: str, policy: TLSPolicy
) -> SSL.Context:
    material = parse_certified_key(
        _read(cert_path), _read(key_path), cert_path=cert_path, key_path=key_path
    )
    return build_server_context(material, policy)


@implementer(IOpenSSLServerConnectionCreator)
class StaticContextFactory:
    """One context, built once; every connection shares it."""

    def __init__(self, cert_path: str, key_path: str, policy: TLSPolicy) -> None:
        self._context = _context_from_files(cert_path, key_path, policy)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


@implementer(IOpenSSLServerConnectionCreator)
class RebuildingContextFactory:
    """Hysteria-style: read, parse and build a new context for every connection."""

    def __init__(self, cert_path: str, key_path: str, policy: TLSPolicy) -> None:
        self._cert_path = cert_path
        self._key_path = key_path
        self._policy = policy
        # Fail at start-up, like the other variants, when the files are unusable.
        _context_from_files(cert_path, key_path, policy)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        ctx = _context_from_files(self._cert_path, self._key_path, self._policy)
        return SSL.Connection(ctx, None)


def make_context_factory(variant: str, cert: str, key: str) -> object:
    policy = TLSPolicy(session_resumption=False)
    if variant == "reloading":
        return ReloadingContextFactory(cert, key, policy=policy, name="bench")
    if variant == "static":
        return StaticContextFactory(cert, key, policy)
    if variant == "rebuild":
        return RebuildingContextFactory(cert, key, policy)
    raise ValueError(f"unknown variant {variant!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument(
        "--listen", required=True, help="e.g. tcp:8443:interface=127.0.0.1"
    )
    parser.add_argument("--backend", required=True, help="e.g. tcp:127.0.0.1:8080")
    parser.add_argument("--log", help="append Twisted's log to this file")
    parser.add_argument(
        "--profile",
        help="write a cProfile of the whole run to this file (adds overhead)",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from tlsgate.relay import Backend, BackendPool, RelayFactory

    if args.log:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo(
            [textFileLogObserver(open(args.log, "a"))],  # noqa: SIM115
            redirectStandardIO=False,
        )

    context_factory = make_context_factory(args.variant, args.cert, args.key)
    desc = args.backend
    pool = BackendPool(
        [Backend(desc, clientFromString(reactor, desc))],
        clock=reactor,
        connect_timeout=5.0,
        name="bench",
    )
    tls = TLSMemoryBIOFactory(context_factory, False, RelayFactory(pool), clock=reactor)
    serverFromString(reactor, args.listen).listen(tls)
    print(
        f"gateway_variant {args.variant}: {args.listen} -> {desc}"
        f" ({type(reactor).__name__}, {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})",
        flush=True,
    )
    if args.profile:
        import cProfile

        # reactor.run() stops cleanly on SIGTERM, so the profile gets written.
        cProfile.runctx("reactor.run()", globals(), {"reactor": reactor}, args.profile)
    else:
        reactor.run()


if __name__ == "__main__":
    main()
