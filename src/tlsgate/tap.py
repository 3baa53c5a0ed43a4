"""
The twistd command line: C{twistd -n tlsgate [--config PATH]}.

Problems in the config file or its certificates end twistd with the message
that names them and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from tlsgate._heap import settle_when_running
from tlsgate._reconfigure import reconfigure
from tlsgate._sdnotify import SystemdNotifier
from tlsgate._signals import install_stop_handlers
from tlsgate.config import GatewayConfig, load_config
from tlsgate.errors import ConfigErrors, TlsgateError
from tlsgate.service import GatewayService

_log = Logger()


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
            if self.gateway_config.log_format == "json" and self.parent is not None:
                from tlsgate import logs

                logs.twistd_destination = (
                    self.parent.get("logfile"),
                    bool(self.parent.get("nodaemon")),
                )
                self.parent["logger"] = "tlsgate.logs.twistd_json_observer"


def makeService(options: dict[str, Any] | Options) -> IService:
    """Build the gateway from parsed options (called by twistd)."""
    from twisted.internet import reactor

    service = _ExitOnStartError()
    gateway = service_for(options, reactor)
    gateway.setServiceParent(service)
    path = options.get("config")
    notifier = SystemdNotifier.from_environ(os.environ, reactor)
    if not isinstance(gateway, GatewayService):
        from tlsgate.workers import SupervisorService, reload_supervisor

        assert isinstance(gateway, SupervisorService) and path
        supervisor = gateway
        if notifier is not None:
            supervisor.notifier = notifier

        def hangup() -> Deferred[None]:
            supervisor.notifier.reloading()
            d = reload_supervisor(supervisor, path)
            return d.addBoth(
                lambda _: None if supervisor.draining else supervisor.notifier.ready()
            )

        install_stop_handlers(reactor, hangup=hangup)
        return service
    if notifier is not None:
        gateway.notifier = notifier
    install_stop_handlers(reactor, hangup=lambda: reload_config(gateway, path, reactor))
    settle_when_running(reactor)
    return service


def reload_config(
    gateway: GatewayService, path: str | None, reactor: IReactorCore
) -> Deferred[None]:
    """
    SIGHUP: re-read C{path} and apply it; an invalid file is refused with one
    log line per problem, and the running config stays. The service manager
    hears C{RELOADING=1} before and C{READY=1} after, whatever the outcome.
    """
    gateway.notifier.reloading()
    d = _reload_config(gateway, path, reactor)

    def done(result: None) -> None:
        if not gateway.draining:
            gateway.notifier.ready()

    return d.addBoth(done)


def _reload_config(
    gateway: GatewayService, path: str | None, reactor: IReactorCore
) -> Deferred[None]:
    if not path:
        _log.warn(
            "SIGHUP: running the embedded default; there is no config file to re-read",
            event="config_reload_skipped",
        )
        return succeed(None)
    try:
        new = load_config(path)
    except ConfigErrors as e:
        for error in e.errors:
            _log.error("SIGHUP: refusing {path}, keeping the running config: {error}",
                       path=path, error=str(error), event="config_refused")  # fmt: skip
        return succeed(None)

    def applied(changes: list[str]) -> None:
        for change in changes or ["nothing changed"]:
            _log.info(
                "SIGHUP: {path}: {change}",
                path=path,
                change=change,
                event="config_reloaded",
            )

    def failed(reason: Failure) -> None:
        _log.error("SIGHUP: refusing {path}, keeping the running config: {error}",
                   path=path, error=reason.getErrorMessage(), event="config_refused")  # fmt: skip

    d = ensureDeferred(reconfigure(gateway, new, reactor))
    return d.addCallbacks(applied, failed)


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
        if config.workers > 1:
            from tlsgate.workers import build_supervisor

            assert reactor is not None
            return build_supervisor(config, reactor)
        from tlsgate.service import build_service

        return build_service(config, reactor)
    except TlsgateError as e:
        raise SystemExit(f"tlsgate: cannot start: {e}") from None
