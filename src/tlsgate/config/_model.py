"""
The parsed configuration: frozen values, independent of the ini syntax.

Embedders build these directly; the ini parser is only one way to get them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tlsgate.auth import AllowRules
from tlsgate.certs import TLSPolicy
from tlsgate.tracker import Limits


@dataclass(frozen=True)
class ListenerConfig:
    """
    One listening socket: where it listens, what it serves, where it relays.

    @ivar listen: a Twisted server endpoint description (C{tcp:8443}).
    @ivar backends: Twisted client endpoint descriptions, tried round robin.
    """

    name: str
    listen: str
    backends: tuple[str, ...]
    cert: str
    key: str | None = None
    tls: TLSPolicy = field(default_factory=TLSPolicy)
    limits: Limits = field(default_factory=Limits)
    backend_connect_timeout: float = 5.0
    proxy_protocol: str | None = None
    backend_tls: bool = False
    backend_ca: str | None = None
    backend_server_name: str | None = None
    backend_cert: str | None = None
    backend_key: str | None = None
    client_ca: str | None = None
    client_auth: str = "none"
    allow: AllowRules | None = None
    ocsp_response: str | None = None
    sni_dir: str | None = None
    sni_strict: bool = False


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway: process-wide settings and its listeners."""

    listeners: tuple[ListenerConfig, ...]
    admin: str | None = None
    admin_token_file: str | None = None
    #: After a drain starts, how long listeners keep accepting while /readyz
    #: already says 503, so that load balancers stop sending first.
    drain_delay: float = 0.0
    drain_timeout: float = 30.0
    log_format: str = "text"
    workers: int = 1
    source: str | None = None

    def where(self, section: str, key: str) -> str:
        """How an error names a key: file, section and key."""
        return f"{self.source or '<config>'}: [{section}] {key}"
