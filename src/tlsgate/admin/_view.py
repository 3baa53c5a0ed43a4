"""
What the admin API reads and acts on: one interface, two implementations.

A single process answers from its own listeners (L{LocalView}); a supervisor
of worker processes answers by asking every worker and summing
(L{tlsgate.workers.SupervisorView}). The resources only see the interface,
so they do not know which process model runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric
from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from tlsgate.admin._metrics import GatewayCollector
from tlsgate.admin._status import gateway_status, reload_now

if TYPE_CHECKING:
    from tlsgate._gateway import GatewayService


class IGatewayView(Interface):
    """The gateway as the admin API sees it."""

    def readiness() -> str | None:
        """C{None} when ready to serve, else why not (for C{/readyz})."""

    def status() -> Deferred[dict[str, Any]]:
        """The C{/status} document."""

    def metrics() -> Deferred[list[Metric]]:
        """Every C{tlsgate_*} metric family, read now."""

    def reload() -> Deferred[tuple[bool, dict[str, Any]]]:
        """Look at every certificate file now (C{POST /reload})."""

    def drain() -> bool:
        """Start draining; whether it had already started."""


@implementer(IGatewayView)
class LocalView:
    """The admin view of the gateway running in this process."""

    def __init__(self, gateway: GatewayService) -> None:
        self.gateway = gateway

    def readiness(self) -> str | None:
        gateway = self.gateway
        if gateway.draining:
            return "draining"
        down = [n for n, lsn in gateway.listeners.items() if not lsn.service.listening]
        if down:
            return f"not listening: {', '.join(sorted(down))}"
        return None

    def status(self) -> Deferred[dict[str, Any]]:
        return succeed(gateway_status(self.gateway))

    def metrics(self) -> Deferred[list[Metric]]:
        return succeed(list(GatewayCollector(lambda: self.gateway.listeners).collect()))

    def reload(self) -> Deferred[tuple[bool, dict[str, Any]]]:
        return succeed(reload_now(self.gateway))

    def drain(self) -> bool:
        if self.gateway.draining:
            return True
        self.gateway.drain()
        return False
