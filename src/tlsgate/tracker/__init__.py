"""
Connection tracking: limits on how long connections may take, idle and live.

Owns the handshake, idle and lifetime limits, graceful closes (quiet point,
close_notify, abort after a grace), connection caps, closes on certificate
rotation, draining, and the count of closes by reason.
"""

from tlsgate.tracker._connection import QUIET_INTERVAL, TrackedProtocol
from tlsgate.tracker._limits import CloseReason, Limits
from tlsgate.tracker._shared import ListenerCounts, SharedCounts
from tlsgate.tracker._tracker import ConnectionInfo, ConnectionTracker

__all__ = [
    "QUIET_INTERVAL",
    "CloseReason",
    "ConnectionInfo",
    "ConnectionTracker",
    "Limits",
    "ListenerCounts",
    "SharedCounts",
    "TrackedProtocol",
]
