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
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import Logger

from tlsgate._drain import StagedDrain
from tlsgate._sdnotify import INotifier, NoNotifier
from tlsgate.config import GatewayConfig
from tlsgate.errors import ListenError, TlsgateError
from tlsgate.tracker import SharedCounts
from tlsgate.tracker._shared import RegionLayout
from tlsgate.workers._control import WorkerControl, WorkerHandle
from tlsgate.workers._decisions import Backoff, SampleKey
from tlsgate.workers._launcher import IForkServer, ILauncher
from tlsgate.workers._sockets import Binder, BoundSocket, bind
from tlsgate.workers._wire import ForkServerSetup

_log = Logger()

#: Ticket keys live in the fork server's contexts; a new generation of
#: workers (new fork server, new keys) is started this often.
TICKET_KEY_LIFETIME = 24 * 3600.0
#: Descriptor numbers the fork server inherits listening sockets at.
FIRST_LISTEN_FD = 4


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
        #: Each live generation's connection counts (tracker/_shared.py).
        self._regions: dict[int, SharedCounts] = {}
        #: The highest certificate generation workers reported, per listener.
        self.certificate_generations: dict[str, int] = {}
        self._said_ready = False
        self._stop = StagedDrain(
            self.clock, self._announce_drain, self._stop_accepting, self._workers_gone
        )
        #: Told when the gateway serves, reloads and drains (twistd gives it a
        #: systemd notifier under C{NOTIFY_SOCKET}); workers tell nobody.
        self.notifier: INotifier = NoNotifier()

    # -- starting ----------------------------------------------------------

    def privilegedStartService(self) -> None:
        for lc in self.config.listeners:
            if lc.listen not in self.sockets:
                self.sockets[lc.listen] = self._bind(
                    self.reactor,
                    lc.listen,
                    self.config.where(f"listener:{lc.name}", "listen"),
                )
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.sockets:
            self.privilegedStartService()
        super().startService()
        self._start_generation(self.config, "start")

    def _start_generation(self, config: GatewayConfig, why: str) -> None:
        """
        A new fork server (so new ticket keys) and a full set of workers;
        nothing once draining (no worker would serve, and the new fork server
        would hold the stop up).
        """
        if self.draining:
            return
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
        self._release_regions()
        counts = SharedCounts([lc.name for lc in config.listeners], config.workers)
        self._regions[self.generation] = counts
        counts_number = next(numbers)
        fds[counts_number] = counts.fd
        older: list[tuple[int, RegionLayout]] = []
        for generation_older, region in self._regions.items():
            if generation_older != self.generation:
                number = next(numbers)
                fds[number] = region.fd
                older.append((number, region.layout))
        first = {name: n + 1 for name, n in self.certificate_generations.items()}
        setup = ForkServerSetup(
            config, sockets, self.generation, (counts_number, counts.layout),
            tuple(older), per_slot, first,
        )  # fmt: skip
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
        handle.listening = frozenset(hello.get("listening", ()))
        self.note_generations(hello.get("generations", {}))
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

    def note_generations(self, generations: dict[str, int]) -> None:
        """A worker's certificate generations (from its hello and reports)."""
        for name, n in generations.items():
            if n > self.certificate_generations.get(name, 0):
                self.certificate_generations[name] = n

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
            # READY=1 once, at start; a SIGHUP's comes from its handler.
            if not self.draining and not self._said_ready:
                self._said_ready = True
                self.notifier.ready()
                self.notifier.start_watchdog()

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
        self._release_regions()
        if not self.workers:
            waiters, self._all_gone = self._all_gone, []
            for d in waiters:
                d.callback(None)

    def _release_regions(self) -> None:
        """Let go of the counts of older generations with no worker left."""
        alive = {w.generation for w in self.workers} | {self.generation}
        for generation in [g for g in self._regions if g not in alive]:
            self._regions.pop(generation).close()

    def _forkserver_ended(self, generation: int) -> None:
        self.forkservers.pop(generation, None)
        if generation == self.generation and not self.draining:
            _log.error("workers: the fork server of generation {generation} ended;"
                       " starting a new one", generation=generation,
                       event="forkserver_died")  # fmt: skip
            delay = self.backoff.died(-1, 0.0)
            self.restarts += 1
            self.clock.callLater(delay, self._start_generation, self.config,
                                 "the fork server ended")  # fmt: skip

    # -- acting on every worker ---------------------------------------------

    def drain(self) -> Deferred[None]:
        """
        Drain the gateway (L{StagedDrain}): readiness turns false at once and
        no worker is replaced any more; every worker goes on accepting for
        C{drain_delay}; then every worker stops accepting and drains its
        connections under C{drain_timeout}. Fires once no worker is left.
        Idempotent.
        """
        return self._stop.start(self.config.drain_delay, self.config.drain_timeout)

    def _announce_drain(self) -> None:
        self.draining = True
        self.notifier.stopping()
        for call in self._respawns.values():
            if call.active():
                call.cancel()
        self._respawns.clear()
        if self._rotation is not None and self._rotation.active():
            self._rotation.cancel()

    def _stop_accepting(self) -> None:
        for w in self.workers:
            w.state = "draining"
            if w.control is not None:
                w.control.tell("drain")
        # Nothing is to accept any more: once every process lets go of its
        # copy of a socket, new clients are refused rather than queued. (So
        # this waits for drain_delay: shutting a shared socket down stops
        # every worker's copy of it at once.)
        for server in self.forkservers.values():
            server.retire()
        for bound in self.sockets.values():
            bound.close()
        self.sockets.clear()

    def _workers_gone(self, timeout: float) -> Deferred[None]:
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
            for region in self._regions.values():
                region.close()
            self._regions.clear()
            self.notifier.stop_watchdog()

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
        @raise TlsgateError: when draining (nothing new is served then).
        """
        if self.draining:
            raise TlsgateError("the gateway is draining; a new config is not applied")
        wanted = {lc.listen: lc.name for lc in config.listeners}
        fresh: dict[str, BoundSocket] = {}
        try:
            for listen in set(wanted) - set(self.sockets):
                where = config.where(f"listener:{wanted[listen]}", "listen")
                fresh[listen] = self._bind(self.reactor, listen, where)
        except ListenError:
            for bound in fresh.values():
                bound.close()
            raise
        self.sockets.update(fresh)
        changes = [f"bound {listen}" for listen in sorted(fresh)]
        if on_serving is not None:
            self._on_serving.setdefault(self.generation + 1, []).append(on_serving)
        self._start_generation(config, "new config")
        for listen in set(self.sockets) - set(wanted):
            self.sockets.pop(listen).close()
            changes.append(f"released {listen}")
        changes.append(
            f"new workers (generation {self.generation}) serve it; the old ones"
            " drain once every new one serves"
        )
        return changes

    def serving_slots(self) -> set[int]:
        """Slots with a worker that serves every listener of the config."""
        wanted = {lc.name for lc in self.config.listeners}
        return {
            w.slot
            for w in self.workers
            if w.state == "serving" and wanted <= w.listening
        }
