"""
The C{tlsgate:} server endpoint: tlsgate's reloading TLS and connection limits
for any Twisted server that takes an endpoint string.

    twist web --listen tlsgate:port=8443:cert=fullchain.pem:key=privkey.pem

L{wrap_endpoint} does the same to any C{IStreamServerEndpoint} (unix,
systemd, a test's), with the same keys; L{ReloadingTLSServerEndpoint} takes
a context factory built in code.
"""

from tlsgate.endpoint._description import (
    KEYS,
    EndpointError,
    endpoint_from_description,
    parse_description,
    wrap_endpoint,
)
from tlsgate.endpoint._endpoint import ReloadingTLSServerEndpoint

__all__ = [
    "KEYS",
    "EndpointError",
    "ReloadingTLSServerEndpoint",
    "endpoint_from_description",
    "parse_description",
    "wrap_endpoint",
]
