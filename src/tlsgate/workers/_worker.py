"""
A worker process: a fresh reactor serving the gateway on sockets its
supervisor bound, controlled over one Unix socket.

A worker is an ordinary one-process gateway (the same L{build_service}, the
same per-connection path) with three differences: its listeners adopt
inherited sockets instead of binding, its TLS contexts were built before the
fork (so all workers share ticket keys), and it serves no admin endpoint;
instead it answers its supervisor's requests for status and metrics, and
drains when told to, when the supervisor goes away, or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from prometheus_client.core import Metric
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from tlsgate._assembly import Certificates
from tlsgate._gateway import GatewayService
from tlsgate._heap import settle_when_running
from tlsgate.config import ListenerConfig
from tlsgate.tracker import SharedCounts
from tlsgate.workers._process import die_with_parent
from tlsgate.workers._wire import MAX_LINE, ForkServerSetup, decode, encode

_log = Logger()

#: How long the connections of a worker replaced by a new generation (a
#: config change, the daily ticket key rotation) may go on: as long as they
#: last, up to one rotation period, so at most two generations overlap.
#: SIGTERM cuts it to drain_timeout.
RETIRED_LIMIT = 24 * 3600.0
#: How often a retired worker looks at its certificate files (seconds).
FILE_CHECK_INTERVAL = 5.0


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    Listens on a socket bound elsewhere (by the supervisor), so that every
    worker accepts from the same queue.
    """

    def __init__(self, reactor: IReactorSocket, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        port = self._reactor.adoptStreamPort(
            self._fd,
            socket.AddressFamily(self._family),
            factory,  # type: ignore[arg-type]
        )
        return succeed(port)


def metric_families(families: list[Metric]) -> list[dict[str, Any]]:
    """Metric families as JSON-able values, for the supervisor to sum."""
    return [
        {
            "name": f.name,
            "documentation": f.documentation,
            "type": f.type,
            "samples": [[s.name, s.labels, s.value] for s in f.samples],
        }
        for f in families
    ]


class WorkerControl(LineReceiver):
    """The worker's end of its control socket."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.on_lost: Callable[[], object] | None = None

    def connectionMade(self) -> None:
        self.worker.control = self
        self.sendLine(encode({"hello": self.worker.hello()}))

    def lineReceived(self, line: bytes) -> None:
        message = decode(line)
        reply = self.worker.handle(message)
        if reply is not None:
            self.sendLine(encode({"id": message.get("id"), **reply}))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.transport = None
        self.worker.stop("the supervisor went away")
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()


class Worker:
    """What a worker does on its supervisor's requests."""

    def __init__(
        self, slot: int, gateway: GatewayService, reactor: IReactorCore
    ) -> None:
        self.slot = slot
        self.gateway = gateway
        self.reactor = reactor
        self.stopping = False
        self.retiring = False
        self.control: WorkerControl | None = None
        self._files: LoopingCall | None = None

    def hello(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "slot": self.slot,
            "listening": sorted(
                n for n, lsn in self.gateway.listeners.items() if lsn.service.listening
            ),
            "generations": self.generations(),
        }

    def report(self) -> dict[str, Any]:
        """Its metrics and certificate generations, for the supervisor to sum."""
        from tlsgate.admin import GatewayCollector

        families = list(GatewayCollector(lambda: self.gateway.listeners).collect())
        return {"metrics": metric_families(families), "generations": self.generations()}

    def generations(self) -> dict[str, int]:
        """Each listener's certificate generation, so that the next fork
        server's numbers go on from these rather than start again at 1."""
        return {n: lsn.contexts.generation for n, lsn in self.gateway.listeners.items()}

    def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        from tlsgate.admin import gateway_status, reload_now

        command = message.get("cmd")
        if command == "report":
            return {"status": gateway_status(self.gateway), **self.report()}
        if command == "reload":
            ok, result = reload_now(self.gateway)
            return {"ok": ok, "result": result}
        if command == "drain":
            # The supervisor has already waited drain_delay for the gateway.
            self.stop("the supervisor asked", delay=0)
            return None
        if command == "retire":
            self.retire(message.get("id"))
            return None
        return {"error": f"unknown command {command!r}"}

    def retire(self, ident: object) -> None:
        """
        Replaced by a new generation: stop accepting at once (the new workers
        accept on the same sockets), say so, then drain.
        """

        def say(_: object) -> None:
            if self.control is not None:
                self.control.sendLine(encode({"id": ident, "accepting": False}))
            if self.stopping:
                return
            self.stopping = self.retiring = True
            _log.info("worker {slot}: replaced by a new generation; its {count}"
                      " connections may go on for up to {limit:g}s",
                      slot=self.slot, limit=RETIRED_LIMIT, event="worker_retired",
                      count=sum(len(lsn.tracker.connections)
                                for lsn in self.gateway.listeners.values()))  # fmt: skip
            self.gateway.drain(RETIRED_LIMIT, delay=0).addBoth(lambda _: self._exit())
            # It accepts nothing, so no new connection makes it look at its
            # certificate files: look every few seconds, so that a renewal
            # still counts its connections as old (rotation_grace, metrics).
            self._files = LoopingCall(self.look_at_files)
            self._files.clock = self.reactor  # type: ignore[assignment]
            self._files.start(FILE_CHECK_INTERVAL, now=False)

        self.gateway.stop_accepting().addCallback(say)

    def look_at_files(self) -> None:
        """One look at each listener's certificate files (a stat each)."""
        for lsn in self.gateway.listeners.values():
            lsn.contexts.getContext()

    def stop(self, why: str, delay: float | None = None) -> None:
        """
        Drain (accept for C{delay}, by default C{drain_delay}; then stop
        accepting and let connections finish for C{drain_timeout}), then exit.
        A retired worker's longer wait is cut to C{drain_timeout}.
        """
        if self.retiring:
            self.retiring = False
            self.gateway.drain()  # the shorter of the two limits wins
            return
        if self.stopping:
            return
        self.stopping = True
        _log.info("worker {slot}: draining: {why}", slot=self.slot, why=why,
                  event="worker_draining")  # fmt: skip
        self.gateway.drain(delay=delay)
        d = self.gateway.stopService()  # joins that drain
        d.addBoth(lambda _: self._exit())

    def _exit(self) -> None:
        """
        Close the control socket first, so that the log lines still buffered
        for the supervisor are written, then stop the reactor.
        """
        if self._files is not None and self._files.running:
            self._files.stop()
        control = self.control
        if control is None or control.transport is None:
            self.reactor.stop()
            return
        control.sendLine(encode({"final": self.report()}))
        control.on_lost = self.reactor.stop
        clock: IReactorTime = self.reactor  # type: ignore[assignment]
        clock.callLater(5, lambda: control.on_lost and control.on_lost())
        control.transport.loseConnection()


class LogForwarder:
    """
    A worker's log observer: each event goes to the supervisor, which logs
    it where and how twistd was told to (C{--logfile}, C{log_format}), so
    there is one log for the gateway. Before the control socket is up, and
    after it is gone, events go to the inherited standard output instead.
    """

    def __init__(self, slot: int, fallback: ILogObserver) -> None:
        self.slot = slot
        self.fallback = fallback
        self.control: WorkerControl | None = None
        self._busy = False

    def __call__(self, event: LogEvent) -> None:
        event.setdefault("log_system", f"worker {self.slot}")
        control = self.control
        if control is None or control.transport is None or self._busy:
            self.fallback(event)
            return
        self._busy = True
        try:
            control.sendLine(encode({"log": log_record(event)}))
        finally:
            self._busy = False


def log_record(event: LogEvent) -> dict[str, Any]:
    """One log event as plain values, for the supervisor to log again."""
    from tlsgate.logs import STABLE_KEYS

    level = event.get("log_level")
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text += "\n" + failure.getTraceback()
    record: dict[str, Any] = {
        "time": event.get("log_time", 0.0),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "text": text,
    }
    for key in ("event", *STABLE_KEYS):
        if key in event:
            value = event[key]
            ok = isinstance(value, str | int | float | bool) or value is None
            record[key] = value if ok else str(value)
    return record


def _begin_logging(slot: int, json_lines: bool) -> LogForwarder:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from tlsgate import logs

    fallback = (
        logs.json_observer(sys.stdout)
        if json_lines
        else textFileLogObserver(sys.stdout)
    )
    forwarder = LogForwarder(slot, fallback)
    # The buffer holds what the fork server logged before forking (the
    # supervisor has said it already): not repeated once per worker.
    globalLogBeginner.beginLoggingTo(
        [implementer(ILogObserver)(forwarder)],
        discardBuffer=True,
        redirectStandardIO=False,
    )
    return forwarder


def serve(
    slot: int,
    control_fd: int,
    setup: ForkServerSetup,
    certificates: dict[str, Certificates],
    counts: SharedCounts,
    older: list[SharedCounts],
) -> None:
    """
    Run worker C{slot} until it has drained (called in the forked child).

    @param counts: its generation's connection counts.
    @param older: those of older generations still holding connections,
        which caps count too.
    """
    parent = os.getppid()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent(signal.SIGTERM, parent)

    from twisted.internet import default

    default.install()
    from twisted.internet import reactor

    from tlsgate.service import build_service

    forwarder = _begin_logging(slot, setup.config.log_format == "json")

    def endpoint_for(lc: ListenerConfig, r: IReactorCore) -> IStreamServerEndpoint:
        fd, family = setup.sockets[lc.name]
        if lc.name in setup.per_slot:
            fd = setup.per_slot[lc.name][slot]
        return AdoptedEndpoint(r, fd, family)  # type: ignore[arg-type]

    gateway = build_service(
        setup.config, reactor, certificates=certificates, endpoint_for=endpoint_for,
        admin=False, shared={n: counts.for_worker(n, slot, older) for n in certificates},
    )  # fmt: skip
    assert isinstance(gateway, GatewayService)
    gateway.privilegedStartService()
    gateway.startService()
    for fd in setup.descriptors():
        os.close(fd)  # adopted ports hold their own duplicates
    worker = Worker(slot, gateway, reactor)

    def on_signal(number: int, frame: FrameType | None) -> None:
        reactor.callFromThread(worker.stop, signal.Signals(number).name)  # type: ignore[attr-defined]

    def install() -> None:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor's job

    reactor.callWhenRunning(install)
    settle_when_running(reactor)

    def control() -> WorkerControl:
        protocol = WorkerControl(worker)
        forwarder.control = protocol
        return protocol

    factory = Factory.forProtocol(control)
    reactor.adoptStreamConnection(control_fd, socket.AF_UNIX, factory)  # type: ignore[attr-defined]
    os.close(control_fd)
    _log.info("worker {slot} (pid {pid}) serving", slot=slot, pid=os.getpid(),
              event="worker_started")  # fmt: skip
    reactor.run()
