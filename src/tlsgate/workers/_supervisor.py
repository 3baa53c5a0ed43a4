"""
The supervisor: binds every listener, keeps N workers serving them, fans
signals and admin requests out to them and sums what they report.

It runs in the twistd process (its reactor, its admin endpoint) and never
serves a client connection itself. Workers are forked by a fork server
(L{tlsgate.workers._forkserver}) of the current I{generation}; a new
generation (a config change by SIGHUP, or the daily ticket key rotation)
starts a new fork server and new workers, and drains the old workers only
once every new one serves, so the gateway never stops accepting.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    ensureDeferred,
    succeed,
)
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorCore,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from tlsgate.config import GatewayConfig
from tlsgate.errors import ListenError
from tlsgate.workers._decisions import Backoff, SampleKey
from tlsgate.workers._launcher import IForkServer, ILauncher
from tlsgate.workers._wire import MAX_LINE, ForkServerSetup, decode, encode

_log = Logger()

#: Ticket keys live in the fork server's contexts; a new generation of
#: workers (new fork server, new keys) is started this often.
TICKET_KEY_LIFETIME = 24 * 3600.0
#: How long a worker may take to answer a status, metrics or reload request.
REQUEST_TIMEOUT = 5.0
#: Descriptor numbers the fork server inherits listening sockets at.
FIRST_LISTEN_FD = 4


@dataclass
class BoundSocket:
    """
    A listening socket bound by the supervisor (which never accepts on it).

    With C{SO_REUSEPORT} (L{bind_reuseport}), each worker slot gets its own
    socket bound to the same address instead, made on demand.
    """

    port: IListeningPort | None
    fd: int
    family: int
    _slots: list[socket.socket] = field(default_factory=list)

    def fd_for(self, slot: int) -> int:
        """The descriptor worker C{slot} accepts on."""
        if not self._slots:
            return self.fd
        first = self._slots[0]
        while len(self._slots) <= slot:
            self._slots.append(_reuseport_socket(self.family, first.getsockname()[:2]))
        return self._slots[slot].fileno()

    def close(self) -> None:
        if self.port is not None:
            self.port.stopListening()
        for s in self._slots:
            s.close()


def bind(reactor: IReactorCore, description: str) -> BoundSocket:
    """
    Bind C{description} (any stream server endpoint: tcp, tcp6, unix,
    systemd) and stop reading from it: workers accept, the supervisor only
    holds it. Every worker accepts from this one socket.

    @raise ListenError: naming the endpoint, when it cannot be bound.
    """
    failures: list[Failure] = []
    ports: list[IListeningPort] = []
    try:
        endpoint = serverFromString(reactor, description)
        endpoint.listen(Factory.forProtocol(Protocol)).addCallbacks(
            ports.append, failures.append
        )
    except (IndexError, KeyError, ValueError, OSError) as e:
        # e.g. a systemd: index that socket activation did not pass
        raise ListenError(f"cannot listen on {description}: {e!r}") from None
    if failures or not ports:
        why = failures[0].getErrorMessage() if failures else "no port"
        raise ListenError(f"cannot listen on {description}: {why}")
    port = ports[0]
    port.stopReading()  # type: ignore[attr-defined]
    return BoundSocket(port, port.fileno(), int(port.addressFamily))  # type: ignore[attr-defined]


def _reuseport_socket(
    family: int, address: tuple[str, int], backlog: int = 1024
) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind(address)
        s.listen(backlog)
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


def bind_reuseport(reactor: IReactorCore, description: str) -> BoundSocket:
    """
    L{bind}, but a C{tcp:}/C{tcp6:} listener gets one C{SO_REUSEPORT} socket
    per worker, so the kernel hashes connections over them. Kept as the
    other side of the measurement in C{bench/workers.py} (set
    C{TLSGATE_REUSEPORT=1}); the shared socket is what runs, because it
    spread as evenly and a dead worker's C{SO_REUSEPORT} socket would hold
    the connections hashed to it until the worker is replaced.
    """
    endpoint = serverFromString(reactor, description)
    if not isinstance(endpoint, TCP4ServerEndpoint | TCP6ServerEndpoint):
        return bind(reactor, description)
    family = (
        socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    )
    try:
        first = _reuseport_socket(
            family, (endpoint._interface or "", endpoint._port), endpoint._backlog
        )
    except OSError as e:
        raise ListenError(f"cannot listen on {description}: {e.strerror}") from None
    return BoundSocket(None, first.fileno(), family, [first])


Binder = Callable[[IReactorCore, str], BoundSocket]


@dataclass
class WorkerHandle:
    """What the supervisor knows of one worker process."""

    slot: int
    generation: int
    started: float
    state: str = "starting"  # starting | serving | draining
    pid: int | None = None
    control: WorkerControl | None = None
    counters: dict[SampleKey, float] = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"worker {self.slot} (pid {self.pid or '?'}, generation {self.generation})"
        )


class WorkerControl(LineReceiver):
    """The supervisor's end of one worker's control socket."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, supervisor: SupervisorService, handle: WorkerHandle) -> None:
        self.supervisor = supervisor
        self.handle = handle
        self._ids = itertools.count(1)
        self._pending: dict[int, Deferred[dict[str, Any]]] = {}

    def connectionMade(self) -> None:
        self.handle.control = self

    def lineReceived(self, line: bytes) -> None:
        try:
            message = decode(line)
        except ValueError:
            _log.error("{worker}: garbled control line", worker=self.handle.describe())
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if "log" in message:
            publish_worker_log(self.handle, message["log"])
            return
        if "hello" in message:
            self.supervisor.worker_ready(self.handle, message["hello"])
            return
        pending = self._pending.pop(message.get("id", -1), None)
        if pending is not None:
            pending.callback(message)

    def request(self, command: str) -> Deferred[dict[str, Any]]:
        """Ask the worker; fires with its answer, or fails after L{REQUEST_TIMEOUT}."""
        ident = next(self._ids)
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[ident] = d
        self.sendLine(encode({"id": ident, "cmd": command})[:-1])
        clock: IReactorTime = self.supervisor.reactor  # type: ignore[assignment]
        d.addTimeout(REQUEST_TIMEOUT, clock)

        def forget(result: object) -> object:
            self._pending.pop(ident, None)
            return result

        return d.addBoth(forget)

    def tell(self, command: str) -> None:
        self.sendLine(encode({"cmd": command})[:-1])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(ConnectionError("worker ended"))
        self.handle.control = None
        self.supervisor.worker_lost(self.handle)


def publish_worker_log(handle: WorkerHandle, record: dict[str, Any]) -> None:
    """Log a worker's event here, as if it had happened in this process."""
    from twisted.logger import LogLevel, globalLogPublisher

    from tlsgate.logs import STABLE_KEYS

    try:
        level = LogLevel.levelWithName(str(record.get("level", "info")))
    except Exception:
        level = LogLevel.info
    event: dict[str, Any] = {
        "log_time": float(record.get("time", 0.0)),
        "log_level": level,
        "log_namespace": str(record.get("namespace", "")),
        "log_system": f"worker {handle.slot}",
        "log_format": "{log_text}",
        "log_text": str(record.get("text", "")),
        "worker": handle.slot,
    }
    for key in ("event", *STABLE_KEYS):
        if key in record:
            event[key] = record[key]
    globalLogPublisher(event)


class SupervisorService(MultiService):
    """
    The gateway as N worker processes (C{workers} above 1).

    @param launcher: starts fork servers (real processes, or fakes in tests).
    @param bind: binds one listen description.
    """

    def __init__(
        self,
        config: GatewayConfig,
        reactor: IReactorCore,
        launcher: ILauncher,
        *,
        binder: Binder = bind,
        rotate_every: float = TICKET_KEY_LIFETIME,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self._launcher = launcher
        self._bind = binder
        self._rotate_every = rotate_every
        self.sockets: dict[str, BoundSocket] = {}  # by listen description
        self.generation = 0
        self.forkservers: dict[int, IForkServer] = {}
        self.workers: list[WorkerHandle] = []
        self.backoff = Backoff()
        self.restarts = 0
        self.draining = False
        #: Counters of workers that have ended, as they last reported them.
        self.retired: dict[SampleKey, float] = {}
        self._respawns: dict[int, IDelayedCall] = {}
        self._rotation: IDelayedCall | None = None
        self._all_gone: list[Deferred[None]] = []
        self._on_serving: dict[int, list[Callable[[], object]]] = {}
        self.admin: Any = None

    # -- starting ----------------------------------------------------------

    def privilegedStartService(self) -> None:
        for lc in self.config.listeners:
            if lc.listen not in self.sockets:
                self.sockets[lc.listen] = self._bind(self.reactor, lc.listen)
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.sockets:
            self.privilegedStartService()
        super().startService()
        self._start_generation(self.config, "start")

    def _start_generation(self, config: GatewayConfig, why: str) -> None:
        """A new fork server (so new ticket keys) and a full set of workers."""
        for call in self._respawns.values():  # the new generation fills every slot
            if call.active():
                call.cancel()
        self._respawns.clear()
        self.generation += 1
        self.config = config
        sockets: dict[str, tuple[int, int]] = {}
        per_slot: dict[str, list[int]] = {}
        fds: dict[int, int] = {}
        numbers = itertools.count(FIRST_LISTEN_FD)
        for lc in config.listeners:
            bound = self.sockets[lc.listen]
            number = next(numbers)
            sockets[lc.name] = (number, bound.family)
            fds[number] = bound.fd
            if bound.fd_for(1) != bound.fd:
                per_slot[lc.name] = []
                for slot in range(config.workers):
                    number = next(numbers)
                    fds[number] = bound.fd_for(slot)
                    per_slot[lc.name].append(number)
        setup = ForkServerSetup(config, sockets, self.generation, per_slot)
        old = [g for g in self.forkservers if g != self.generation]
        server = self._launcher.start(setup, fds)
        generation = self.generation
        self.forkservers[generation] = server
        server.ended.addCallback(lambda _: self._forkserver_ended(generation))
        _log.info("workers: starting generation {generation} of {count} ({why})",
                  generation=generation, count=config.workers, why=why,
                  event="workers_generation")  # fmt: skip
        for generation_old in old:
            self.forkservers[generation_old].retire()
        for slot in range(config.workers):
            self._spawn(slot)
        self._schedule_rotation()

    def _spawn(self, slot: int) -> None:
        self._respawns.pop(slot, None)
        server = self.forkservers.get(self.generation)
        if server is None or self.draining:
            return
        handle = WorkerHandle(slot, self.generation, self.clock.seconds())
        self.workers.append(handle)
        try:
            server.spawn(slot, WorkerControl(self, handle))
        except OSError as e:
            _log.error("workers: cannot fork worker {slot}: {error}", slot=slot,
                       error=str(e), event="worker_spawn_failed")  # fmt: skip
            self.workers.remove(handle)

    def _schedule_rotation(self) -> None:
        if self._rotation is not None and self._rotation.active():
            self._rotation.cancel()
        if self._rotate_every > 0:
            self._rotation = self.clock.callLater(self._rotate_every, self.rotate)

    def rotate(self) -> None:
        """Replace every worker gracefully: new session ticket keys."""
        if not self.draining:
            self._start_generation(self.config, "session ticket key rotation")

    # -- what workers tell us ------------------------------------------------

    def worker_ready(self, handle: WorkerHandle, hello: dict[str, Any]) -> None:
        handle.pid = hello.get("pid")
        if self.draining or handle.generation != self.generation:
            handle.state = "draining"
            if handle.control is not None:
                handle.control.tell("drain")
            return
        handle.state = "serving"
        _log.info("{worker} serving {listeners}", worker=handle.describe(),
                  listeners=", ".join(hello.get("listening", [])) or "nothing",
                  event="worker_serving")  # fmt: skip
        current = [w for w in self.workers if w.generation == self.generation]
        if {w.slot for w in current if w.state == "serving"} >= set(
            range(self.config.workers)
        ):
            self._drain_older()

    def _drain_older(self) -> None:
        """
        The current generation serves in every slot: the older workers stop
        accepting (each says when it has) and drain their connections.
        """
        stopped = []
        for w in self.workers:
            if w.generation < self.generation and w.state != "draining":
                w.state = "draining"
                if w.control is not None:
                    stopped.append(w.control.request("retire"))
        generation = self.generation
        callbacks = [
            callback
            for g in sorted(self._on_serving)
            if g <= generation
            for callback in self._on_serving.pop(g)
        ]

        def alone(_: object) -> None:
            _log.info("workers: generation {generation} serves alone",
                      generation=generation, event="workers_generation_serving")  # fmt: skip
            for callback in callbacks:
                callback()

        DeferredList(stopped, consumeErrors=True).addCallback(alone)

    def worker_lost(self, handle: WorkerHandle) -> None:
        if handle in self.workers:
            self.workers.remove(handle)
        for key, value in handle.counters.items():
            self.retired[key] = self.retired.get(key, 0.0) + value
        lived = self.clock.seconds() - handle.started
        if handle.state == "draining":
            _log.info("{worker} has exited", worker=handle.describe(),
                      event="worker_exited")  # fmt: skip
        elif not self.draining and handle.generation == self.generation:
            delay = self.backoff.died(handle.slot, lived)
            self.restarts += 1
            _log.error("{worker} died after {lived:.1f}s; replacing it in {delay:g}s",
                       worker=handle.describe(), lived=lived, delay=delay,
                       event="worker_died")  # fmt: skip
            self._respawns[handle.slot] = self.clock.callLater(
                delay, self._spawn, handle.slot
            )
        if not self.workers:
            waiters, self._all_gone = self._all_gone, []
            for d in waiters:
                d.callback(None)

    def _forkserver_ended(self, generation: int) -> None:
        self.forkservers.pop(generation, None)
        if generation == self.generation and not self.draining:
            _log.error("workers: the fork server of generation {generation} ended;"
                       " starting a new one", generation=generation,
                       event="forkserver_died")  # fmt: skip
            delay = self.backoff.died(-1, 0.0)
            self.clock.callLater(delay, self._start_generation, self.config,
                                 "the fork server ended")  # fmt: skip

    # -- acting on every worker ---------------------------------------------

    def drain(self) -> Deferred[None]:
        """
        Every worker stops accepting and drains its connections (each under
        C{drain_timeout}); fires once none is left. Idempotent.
        """
        self.draining = True
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        if self._rotation is not None and self._rotation.active():
            self._rotation.cancel()
        for w in self.workers:
            w.state = "draining"
            if w.control is not None:
                w.control.tell("drain")
        # Nothing is to accept any more: once every process lets go of its
        # copy of a socket, new clients are refused rather than queued.
        for server in self.forkservers.values():
            server.retire()
        for bound in self.sockets.values():
            bound.close()
        self.sockets.clear()
        if not self.workers:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._all_gone.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        async def stop() -> None:
            await self.drain()
            await DeferredList([s.ended for s in self.forkservers.values()])
            await super(SupervisorService, self).stopService()

        return ensureDeferred(stop())

    def apply(
        self, config: GatewayConfig, on_serving: Callable[[], object] | None = None
    ) -> list[str]:
        """
        Serve C{config} (already validated): bind what is new, start a new
        generation of workers, release sockets no listener uses any more.
        C{on_serving} is called once the new workers alone accept.

        @raise ListenError: before anything changed, when a new socket
            cannot be bound.
        """
        wanted = {lc.listen for lc in config.listeners}
        fresh: dict[str, BoundSocket] = {}
        try:
            for listen in wanted - set(self.sockets):
                fresh[listen] = self._bind(self.reactor, listen)
        except ListenError:
            for bound in fresh.values():
                bound.close()
            raise
        self.sockets.update(fresh)
        changes = [f"bound {listen}" for listen in sorted(fresh)]
        if on_serving is not None:
            self._on_serving.setdefault(self.generation + 1, []).append(on_serving)
        self._start_generation(config, "new config")
        for listen in set(self.sockets) - wanted:
            self.sockets.pop(listen).close()
            changes.append(f"released {listen}")
        changes.append(
            f"new workers (generation {self.generation}) serve it; the old ones"
            " drain once every new one serves"
        )
        return changes

    def serving_slots(self) -> set[int]:
        return {w.slot for w in self.workers if w.state == "serving"}
