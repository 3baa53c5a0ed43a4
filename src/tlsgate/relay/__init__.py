"""
Relaying bytes between clients and backends.

Owns the choice of backend (round robin with failover, connect timeouts) and
the relay protocols, which cross-register producers so that memory per
connection stays bounded whatever either peer does. The TLS layer that
passes half-closes on to the relay (L{HalfCloseTLSFactory}) is here too.
"""

from tlsgate._halfclose import HalfCloseTLSFactory, HalfCloseTLSProtocol
from tlsgate.relay._backends import Backend, BackendPool
from tlsgate.relay._relay import MAX_EARLY_BYTES, RelayFactory, RelayProtocol

__all__ = [
    "MAX_EARLY_BYTES",
    "Backend",
    "BackendPool",
    "HalfCloseTLSFactory",
    "HalfCloseTLSProtocol",
    "RelayFactory",
    "RelayProtocol",
]
