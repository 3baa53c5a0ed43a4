"""
Relaying bytes between clients and backends.

Owns the choice of backend (round robin with failover, connect timeouts) and
the relay protocols, which cross-register producers so that memory per
connection stays bounded whatever either peer does.
"""

from tlsgate.relay._backends import Backend, BackendPool
from tlsgate.relay._relay import MAX_EARLY_BYTES, RelayFactory, RelayProtocol

__all__ = ["MAX_EARLY_BYTES", "Backend", "BackendPool", "RelayFactory", "RelayProtocol"]
