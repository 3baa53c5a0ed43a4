"""
Assembling a supervised gateway from a config, and re-reading its config
on SIGHUP: the C{workers > 1} twin of L{tlsgate.service.build_service} and
L{tlsgate.tap.reload_config}.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from tlsgate import _changes
from tlsgate.config import GatewayConfig, load_config
from tlsgate.errors import ConfigErrors, TlsgateError
from tlsgate.workers._launcher import ILauncher, ProcessLauncher
from tlsgate.workers._sockets import bind, bind_reuseport
from tlsgate.workers._supervisor import SupervisorService

_log = Logger()


def check_certificates(config: GatewayConfig, reactor: IReactorCore) -> None:
    """
    Load every listener's certificates once, here, so that unusable files
    are refused with the same message as with one process, before any
    worker exists.

    @raise tlsgate.errors.CertificateError: naming the files.
    """
    from tlsgate.service import build_contexts, build_pool

    for lc in config.listeners:
        build_contexts(lc)
        build_pool(lc, reactor)


def build_supervisor(
    config: GatewayConfig,
    reactor: IReactorCore,
    launcher: ILauncher | None = None,
) -> SupervisorService:
    """
    The gateway for C{config} as a supervisor of C{config.workers} workers.

    @raise tlsgate.errors.TlsgateError: when a certificate cannot be served.
    """
    check_certificates(config, reactor)
    binder = bind
    if os.environ.get("TLSGATE_REUSEPORT") == "1":  # bench/workers.py's experiment
        binder = bind_reuseport
    supervisor = SupervisorService(
        config,
        reactor,
        launcher or ProcessLauncher(reactor),  # type: ignore[arg-type]
        binder=binder,
    )
    if config.admin:
        from tlsgate.service import build_admin
        from tlsgate.workers._view import SupervisorView

        supervisor.admin = build_admin(config, SupervisorView(supervisor), reactor)
        supervisor.admin.setServiceParent(supervisor)
    return supervisor


def reload_supervisor(supervisor: SupervisorService, path: str) -> Deferred[None]:
    """
    SIGHUP: read C{path} once, here; refuse it (everything keeps serving)
    or hand it to a new generation of workers.
    """
    try:
        new = load_config(path)
        check_certificates(new, supervisor.reactor)
    except ConfigErrors as e:
        for error in e.errors:
            _log.error("SIGHUP: refusing {path}, keeping the running config: {error}",
                       path=path, error=str(error), event="config_refused")  # fmt: skip
        return succeed(None)
    except TlsgateError as e:
        _log.error("SIGHUP: refusing {path}, keeping the running config: {error}",
                   path=path, error=str(e), event="config_refused")  # fmt: skip
        return succeed(None)
    if new == supervisor.config:
        _log.info("SIGHUP: {path}: nothing changed", path=path, event="config_reloaded")
        return succeed(None)
    kept = []
    if new.admin != supervisor.config.admin:
        new = replace(new, admin=supervisor.config.admin)
        kept.append(_changes.admin_kept())
    if new.log_format != supervisor.config.log_format:
        new = replace(new, log_format=supervisor.config.log_format)
        kept.append(_changes.log_format_kept())
    if new.admin_token_file != supervisor.config.admin_token_file and supervisor.admin:
        from tlsgate.admin import use_token_file

        use_token_file(supervisor.admin, new.admin_token_file)
        kept.append(_changes.token_file_changed())
    applied = config_changes(supervisor.config, new)
    done: Deferred[None] = Deferred()

    def serving() -> None:
        for change in applied:
            _log.info("SIGHUP: {path}: {change}", path=path, change=change,
                      event="config_reloaded")  # fmt: skip
        done.callback(None)

    try:
        changes = supervisor.apply(new, serving)
    except TlsgateError as e:
        _log.error("SIGHUP: refusing {path}, keeping the running config: {error}",
                   path=path, error=str(e), event="config_refused")  # fmt: skip
        return succeed(None)
    for change in [*kept, *changes]:
        _log.info("SIGHUP: {path}: {change}", path=path, change=change,
                  event="config_reloaded")  # fmt: skip
    return done


def config_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """
    What a new config changes, applied by new workers, in the words
    (L{tlsgate._changes}) and order of a one-process reload: first, by name,
    each listener of the old config removed, moved away or updated in place;
    then, by name, each listening anew; then the number of workers and the
    drain settings. (C{admin}, C{log_format} and the token file are the
    supervisor's own, logged by L{reload_supervisor}.)
    """
    before = {lc.name: lc for lc in old.listeners}
    after = {lc.name: lc for lc in new.listeners}
    out = []
    for name, was in sorted(before.items()):
        lc = after.get(name)
        if lc is None or lc.listen != was.listen:
            out.append(_changes.retired(name, None if lc is None else lc.listen))
        elif lc != was:
            out.append(_changes.updated(name))
    for name, fresh in sorted(after.items()):
        earlier = before.get(name)
        if earlier is None or earlier.listen != fresh.listen:
            out.append(_changes.listening(name, fresh.listen))
    if new.workers != old.workers:
        out.append(f"workers: now {new.workers}")
    if new.drain_delay != old.drain_delay:
        out.append(_changes.drain_delay(new.drain_delay))
    if new.drain_timeout != old.drain_timeout:
        out.append(_changes.drain_timeout(new.drain_timeout))
    return out
