"""Applying a new config to a running gateway, on a MemoryReactor."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.testing import MemoryReactorClock

from tlsgate._reconfigure import reconfigure
from tlsgate.config import parse_config
from tlsgate.errors import CertificateError
from tlsgate.service import GatewayService, build_service
from tlsgate.workers._build import config_changes


def ini(tmp: Path, *listeners: tuple[str, int, str], idle: str = "5m") -> str:
    return "".join(
        f"[listener:{name}]\nlisten = tcp:{port}\nbackend = tcp:127.0.0.1:9\n"
        f"cert = {cert}\nkey = {tmp / 'k.pem'}\nidle_timeout = {idle}\n"
        for name, port, cert in listeners
    )


def start(tmp: Path, text: str) -> tuple[GatewayService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    gateway = build_service(parse_config(text, file=str(tmp / "g.ini")), reactor)
    assert isinstance(gateway, GatewayService)
    gateway.privilegedStartService()
    gateway.startService()
    return gateway, reactor


def apply(
    gateway: GatewayService, tmp: Path, text: str, reactor: MemoryReactorClock
) -> list[str]:
    d = ensureDeferred(
        reconfigure(gateway, parse_config(text, file=str(tmp / "g.ini")), reactor)
    )
    return d.result  # type: ignore[attr-defined,no-any-return]


def test_a_new_certificate_that_cannot_be_served_changes_nothing(tmp: Path) -> None:
    cert = str(tmp / "c.pem")
    gateway, reactor = start(tmp, ini(tmp, ("web", 8443, cert)))
    before = dict(gateway.listeners)
    bad = ini(tmp, ("web", 8443, str(tmp / "missing.pem")), ("api", 9443, cert))
    d = ensureDeferred(reconfigure(gateway, parse_config(bad, file="g.ini"), reactor))
    failure = d.result  # type: ignore[attr-defined]
    assert failure.check(CertificateError)
    d.addErrback(lambda _: None)
    assert gateway.listeners == before
    assert [s[0] for s in reactor.tcpServers] == [8443]


def test_changed_limits_and_added_listener(tmp: Path) -> None:
    cert = str(tmp / "c.pem")
    gateway, reactor = start(tmp, ini(tmp, ("web", 8443, cert)))
    web = gateway.listeners["web"]
    changes = apply(
        gateway,
        tmp,
        ini(tmp, ("web", 8443, cert), ("api", 9443, cert), idle="1m"),
        reactor,
    )
    assert "listener web: new settings for new connections" in changes
    assert "listener api: listening on tcp:9443" in changes
    assert gateway.listeners["web"].tracker is web.tracker  # counters continue
    assert web.tracker.limits.idle_timeout == 60
    assert (
        gateway.listeners["web"].contexts is web.contexts
    )  # same files: same generation
    assert sorted(s[0] for s in reactor.tcpServers) == [8443, 9443]


def test_new_certificate_paths_continue_the_generation_count(tmp: Path) -> None:
    cert = str(tmp / "c.pem")
    other = tmp / "c2.pem"
    other.write_bytes((tmp / "c.pem").read_bytes())
    gateway, reactor = start(tmp, ini(tmp, ("web", 8443, cert)))
    apply(gateway, tmp, ini(tmp, ("web", 8443, str(other))), reactor)
    assert gateway.listeners["web"].contexts.generation == 2


def test_removed_listener_is_retired_until_its_connections_end(tmp: Path) -> None:
    cert = str(tmp / "c.pem")
    gateway, reactor = start(tmp, ini(tmp, ("web", 8443, cert), ("api", 9443, cert)))
    api = gateway.listeners["api"]
    changes = apply(gateway, tmp, ini(tmp, ("web", 8443, cert)), reactor)
    assert "listener api: removed; its open connections continue" in changes
    assert "api" not in gateway.listeners
    assert gateway.retired == [api]
    assert not api.service.listening


def test_a_change_of_workers_is_said_to_need_a_restart(tmp: Path) -> None:
    """One process cannot become several by SIGHUP: it says so, not "nothing changed"."""
    cert = str(tmp / "c.pem")
    gateway, reactor = start(tmp, ini(tmp, ("web", 8443, cert)))
    text = "[gateway]\nworkers = 2\n" + ini(tmp, ("web", 8443, cert))
    changes = apply(gateway, tmp, text, reactor)
    assert any(c.startswith("workers: ") and "needs a restart" in c for c in changes)
    assert gateway.config.workers == 1


def test_one_process_and_workers_word_the_same_changes_alike(tmp: Path) -> None:
    """
    An operator's log after a SIGHUP says the same thing whether one process
    or a supervisor of workers applied it: a listener updated, one moved to
    another port, one removed, one added, and the drain settings changed.
    """
    cert = str(tmp / "c.pem")
    before = "[gateway]\ndrain_delay = 1s\n" + ini(
        tmp, ("web", 8443, cert), ("api", 9443, cert), ("old", 7443, cert)
    )
    after = "[gateway]\ndrain_delay = 2s\ndrain_timeout = 9s\n" + ini(
        tmp, ("web", 8443, cert), ("new", 6443, cert), ("api", 9444, cert), idle="1m"
    )
    gateway, reactor = start(tmp, before)
    one_process = apply(gateway, tmp, after, reactor)
    supervised = config_changes(
        parse_config(before, file=str(tmp / "g.ini")),
        parse_config(after, file=str(tmp / "g.ini")),
    )
    assert one_process == supervised
    assert one_process == [
        "listener api: moved to tcp:9444; its open connections continue",
        "listener old: removed; its open connections continue",
        "listener web: new settings for new connections",
        "listener api: listening on tcp:9444",
        "listener new: listening on tcp:6443",
        "drain_delay: now 2s",
        "drain_timeout: now 9s",
    ]
    # A second reload: the moved listener now comes last in the gateway's own
    # table (it was re-added), and the order of the lines must not follow it.
    again = after.replace("idle_timeout = 1m", "idle_timeout = 2m")
    one_process = apply(gateway, tmp, again, reactor)
    assert one_process == config_changes(
        parse_config(after, file=str(tmp / "g.ini")),
        parse_config(again, file=str(tmp / "g.ini")),
    )
    assert one_process == [
        "listener api: new settings for new connections",
        "listener new: new settings for new connections",
        "listener web: new settings for new connections",
    ]
