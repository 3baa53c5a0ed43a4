"""
The C{tlsgate:} server endpoint: tlsgate's reloading TLS and connection limits
for any Twisted server that takes an endpoint string.

    twist web --listen tlsgate:port=8443:cert=fullchain.pem:key=privkey.pem

L{ReloadingTLSServerEndpoint} is the same thing for code: it wraps any
C{IStreamServerEndpoint}.
"""

from tlsgate.endpoint._description import (
    KEYS,
    EndpointError,
    endpoint_from_description,
    parse_description,
)
from tlsgate.endpoint._endpoint import ReloadingTLSServerEndpoint

__all__ = [
    "KEYS",
    "EndpointError",
    "ReloadingTLSServerEndpoint",
    "endpoint_from_description",
    "parse_description",
]
