"""
Upstream TLS: the gateway as a TLS client of its backends.

Owns trust and client certificates for backends (reloaded by file stamp),
hostname checks (service-identity, through Twisted's client options), and
per-backend session caches that heal when a backend changes its certificate.
"""

from tlsgate.upstream._tls import BackendTLS, TLSBackendEndpoint

__all__ = ["BackendTLS", "TLSBackendEndpoint"]
