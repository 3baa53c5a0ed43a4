"""
tlsgate: a TLS gateway on Twisted whose certificates and long-lived
connections never take the service down.

The pieces are usable on their own in any Twisted program:
L{tlsgate.certs.ReloadingContextFactory} (a server context factory that
follows its files on disk), L{tlsgate.relay} (byte relay to backends with
backpressure) and L{tlsgate.service.build_service} (an C{IService} from a
parsed config).
"""

from tlsgate._version import __version__

__all__ = ["__version__"]
