"""
The twistd command line: C{twistd -n tlsgate [--config PATH]}.

Problems in the config file or its certificates end twistd with the message
that names them and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from tlsgate._signals import install_stop_handlers
from tlsgate.config import GatewayConfig, load_config
from tlsgate.errors import TlsgateError


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Terminate TLS and relay to backends, following certificate files on disk"
        " for every new connection. With no --config, serve the embedded demo on"
        " https://127.0.0.1:8443/."
    )
    optParameters = [
        ["config", "c", None, "The gateway's ini file (see docs/configuration.md)."],
    ]

    def postOptions(self) -> None:
        self.gateway_config: GatewayConfig | None = None
        if self["config"] is not None:
            try:
                self.gateway_config = load_config(self["config"])
            except TlsgateError as e:
                raise usage.UsageError(f"invalid config:\n{e}") from None


def makeService(options: dict[str, Any] | Options) -> IService:
    """Build the gateway from parsed options (called by twistd)."""
    from twisted.internet import reactor

    service = _ExitOnStartError()
    service_for(options, reactor).setServiceParent(service)
    install_stop_handlers(reactor)
    return service


class _ExitOnStartError(MultiService):
    """
    Under twistd, a listener that cannot bind ends the process with the
    reason and exit status 1, not a traceback.
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except TlsgateError as e:
            raise SystemExit(f"tlsgate: cannot start: {e}") from None


def service_for(
    options: dict[str, Any] | Options, reactor: IReactorCore | None = None
) -> IService:
    """L{makeService} with the reactor injectable, for tests and embedders."""
    config = options.gateway_config if isinstance(options, Options) else None
    if config is None and options.get("config"):
        config = load_config(options["config"])
    try:
        if config is None:
            from tlsgate.demo import build_demo_service

            return build_demo_service(reactor)
        from tlsgate.service import build_service

        return build_service(config, reactor)
    except TlsgateError as e:
        raise SystemExit(f"tlsgate: cannot start: {e}") from None
