"""The limits a tracker enforces, and the reasons a connection can end."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class CloseReason(StrEnum):
    """
    Why a connection ended: the C{reason} label of
    C{tlsgate_connections_closed_total}.
    """

    CLIENT = "client"
    BACKEND = "backend"
    IDLE_TIMEOUT = "idle_timeout"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    LIFETIME = "lifetime"
    ROTATION = "rotation"
    DRAIN = "drain"
    LIMIT = "limit"
    BACKEND_ERROR = "backend_error"
    TLS_ERROR = "tls_error"
    DENIED = "denied"


@dataclass(frozen=True)
class Limits:
    """
    Per-listener connection limits; C{0} disables a limit.

    @ivar handshake_timeout: seconds from accept to a completed TLS handshake.
    @ivar idle_timeout: seconds with no byte either way before a graceful close.
    @ivar max_lifetime: seconds after which a connection is closed gracefully,
        even while busy, so clients reconnect and pick up new certificates.
    @ivar lifetime_jitter: fraction (0..1) by which each connection's lifetime
        is shortened at random, so clients do not all reconnect at once.
    @ivar close_grace: seconds a graceful close may take: first to reach a
        quiet point, then for the client to answer close_notify; then abort.
    @ivar rotation_grace: after a certificate change, connections made under
        older certificates are closed gracefully, spread over this many seconds.
    @ivar max_connections: beyond it the listener stops accepting.
    @ivar max_connections_per_client: beyond it, new connections from the same
        source address are closed at once.
    """

    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_lifetime: float = 0.0
    lifetime_jitter: float = 0.1
    close_grace: float = 5.0
    rotation_grace: float = 0.0
    max_connections: int = 10000
    max_connections_per_client: int = 0

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "idle_timeout", "max_lifetime",
                     "close_grace", "rotation_grace"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0 <= self.lifetime_jitter <= 1:
            raise ValueError("lifetime_jitter must be between 0 and 1")
        if self.max_connections < 0 or self.max_connections_per_client < 0:
            raise ValueError("connection caps must not be negative")
