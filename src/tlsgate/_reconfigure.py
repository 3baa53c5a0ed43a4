"""
Applying a new config to a running gateway (SIGHUP), without dropping a
connection.

Everything that can fail (parsing, loading new certificates, checking new
endpoints) happens before anything running is touched, so an invalid file
leaves the old config serving. Then, per listener: unchanged ones are left
alone; changed ones get their new parts for new connections on the same
socket (open connections keep theirs); ones whose C{listen} changed, or that
were removed, stop accepting and let their connections finish; new ones
start listening.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger

from tlsgate import _changes
from tlsgate._assembly import tls_over
from tlsgate.certs._expiry import ExpiryWarnings
from tlsgate.config import GatewayConfig, ListenerConfig
from tlsgate.errors import TlsgateError
from tlsgate.relay import BackendPool, RelayFactory

if TYPE_CHECKING:
    from tlsgate._assembly import Certificates
    from tlsgate._gateway import GatewayService, Listener

_log = Logger()


_CONTEXT_KEYS = (
    "cert",
    "key",
    "tls",
    "client_ca",
    "client_auth",
    "allow",
    "ocsp_response",
    "sni_dir",
    "sni_strict",
)


def _same_certificates(a: ListenerConfig, b: ListenerConfig) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in _CONTEXT_KEYS)


_BACKEND_KEYS = (
    "backends", "backend_connect_timeout", "proxy_protocol", "backend_tls",
    "backend_ca", "backend_server_name", "backend_cert", "backend_key",
)  # fmt: skip


def _same_backends(a: ListenerConfig, b: ListenerConfig) -> bool:
    return all(getattr(a, k) == getattr(b, k) for k in _BACKEND_KEYS)


async def reconfigure(
    gateway: GatewayService, new: GatewayConfig, reactor: IReactorCore
) -> list[str]:
    """
    Make C{gateway} run C{new}.

    @return: (a coroutine for) one line per change made.
    @raise tlsgate.errors.TlsgateError: before anything changed, when the new
        config cannot be applied (e.g. a new certificate cannot be served).
    """
    from tlsgate.service import build_certificates, build_listener, build_pool

    old = gateway.listeners
    wanted = {lc.name: lc for lc in new.listeners}

    # 1. Everything that can fail, with nothing running touched yet.
    fresh: dict[str, Listener] = {}
    contexts: dict[str, Certificates] = {}
    pools: dict[str, BackendPool] = {}
    for name, lc in wanted.items():
        current = old.get(name)
        if current is None or current.config.listen != lc.listen:
            fresh[name] = build_listener(lc, reactor)
            continue
        if not _same_backends(current.config, lc):
            pools[name] = build_pool(lc, reactor)
        if current.config != lc and not _same_certificates(current.config, lc):
            contexts[name] = build_certificates(lc, current.contexts.generation + 1)

    # 2. Apply. Ports given up are closed before new ones bind, so a port can
    # move from one listener to another.
    changes: list[str] = []
    closing = []
    # Listeners in name order, as the supervisor of workers words them too.
    for name, listener in sorted(old.items()):
        target = wanted.get(name)
        if target is None or name in fresh:
            closing.append(listener.service.disownServiceParent())
            listener.expiry.stop()
            gateway.retired.append(listener)
            del old[name]
            changes.append(
                _changes.retired(name, None if target is None else target.listen)
            )
        elif listener.config != target:
            old[name] = _update(
                listener, target, contexts.get(name), pools.get(name), reactor
            )
            changes.append(_changes.updated(name))
    await DeferredList([d for d in closing if isinstance(d, Deferred)])
    for name, listener in sorted(fresh.items()):
        try:
            listener.service.setServiceParent(gateway)
            listener.expiry.start()
        except TlsgateError as e:
            listener.service.disownServiceParent()
            changes.append(_changes.not_started(name, e))
            continue
        old[name] = listener
        changes.append(_changes.listening(name, listener.config.listen))

    if (
        gateway.admin is not None
        and new.admin_token_file != gateway.config.admin_token_file
    ):
        from tlsgate.admin import use_token_file

        use_token_file(gateway.admin, new.admin_token_file)
        changes.append(_changes.token_file_changed())
    if new.admin != gateway.config.admin:
        changes.append(_changes.admin_kept())
        new = replace(new, admin=gateway.config.admin)
    if new.log_format != gateway.config.log_format:
        changes.append(_changes.log_format_kept())
        new = replace(new, log_format=gateway.config.log_format)
    if new.workers != gateway.config.workers:
        changes.append(
            f"workers: going from {gateway.config.workers} to {new.workers} worker"
            " processes needs a restart; kept one process"
        )
        new = replace(new, workers=gateway.config.workers)
    if new.drain_delay != gateway.config.drain_delay:
        changes.append(_changes.drain_delay(new.drain_delay))
    if new.drain_timeout != gateway.config.drain_timeout:
        changes.append(_changes.drain_timeout(new.drain_timeout))
    gateway.config = new
    return changes


def _update(
    listener: Listener,
    lc: ListenerConfig,
    contexts: Certificates | None,
    new_pool: BackendPool | None,
    reactor: IReactorCore,
) -> Listener:
    """Give a listener on the same socket its new parts, for new connections."""

    clock: IReactorTime = reactor  # type: ignore[assignment]
    tracker = listener.tracker
    pool = listener.pool
    if new_pool is not None:
        pool = new_pool
        tracker.wrapped = RelayFactory(pool, proxy_protocol=lc.proxy_protocol)
    if lc.limits != listener.config.limits:
        tracker.set_limits(lc.limits)
    if contexts is not None:
        new_contexts = contexts.contexts
        tls = tls_over(tracker, new_contexts, clock, half_close=True)
        listener.service.replace_factory(tls, tracker)
        listener.expiry.stop()
        expiry = ExpiryWarnings(new_contexts, clock)
        expiry.start()
        return replace(
            listener,
            config=lc,
            contexts=new_contexts,
            pool=pool,
            expiry=expiry,
            sni=contexts.sni,
        )
    return replace(listener, config=lc, pool=pool)
