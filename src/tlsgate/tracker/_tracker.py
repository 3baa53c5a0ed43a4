"""
The connection tracker: a protocol factory wrapper that enforces handshake,
idle and lifetime limits, connection caps, certificate-rotation closes and
drains, and counts every close with its reason.

Put it inside the TLS layer, around the application factory:

    TLSMemoryBIOFactory(contexts, False, ConnectionTracker(app, limits, clock))

so that its graceful closes send close_notify and it hears the handshake.
"""

from __future__ import annotations

import math
import random as _random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from tlsgate.certs import CertificateState
from tlsgate.tracker._connection import TrackedProtocol, TransparentTrackedProtocol
from tlsgate.tracker._limits import CloseReason, Limits
from tlsgate.tracker._shared import ListenerCounts


def _resolution(limits: Limits) -> float:
    """The wheel's tick: a tenth of the shortest limit, at most 1 s, at least 10 ms."""
    limits_set = [
        t
        for t in (limits.handshake_timeout, limits.idle_timeout, limits.max_lifetime)
        if t
    ]
    return max(0.01, min([1.0, *(t / 10 for t in limits_set)]))


class _Refused(Protocol):
    """Closes a connection the tracker will not take, as soon as it is made."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


@dataclass(frozen=True)
class ConnectionInfo:
    """One live connection, for the admin endpoint and logs."""

    peer: str | None
    age: float
    idle: float
    bytes_in: int
    bytes_out: int
    generation: int
    sni: str | None
    closing: bool
    identity: str | None = None
    group: str | None = None


@implementer(IProtocolFactory)
class ConnectionTracker:
    """
    Wraps any C{IProtocolFactory} with connection limits and bookkeeping.

    @param generation: the current certificate generation (e.g.
        C{lambda: contexts.generation}); each connection remembers it.
    @param attribute_fallback: whether the wrapped protocols may reach any
        attribute of their transport through the tracker's wrapper (the
        default, as through Twisted's C{ProtocolWrapper}), or only the
        members of the transport interfaces it declares (C{ITCPTransport},
        C{ISSLTransport}, C{INegotiated}, C{ISystemHandle}, producers and
        consumers) and C{disconnecting}, which makes every attribute lookup
        on the wrapper cheaper. The gateway's relay needs no more.
    @ivar port: the listening port, when known, so that C{max_connections}
        pauses accepting instead of refusing (set by the service builder).
    @ivar closed: closes so far, by reason.
    """

    _log = Logger()

    def __init__(
        self,
        wrapped: IProtocolFactory,
        limits: Limits | None = None,
        clock: IReactorTime | None = None,
        *,
        name: str = "default",
        generation: Callable[[], int] = lambda: 0,
        random: Callable[[], float] = _random.random,
        shared: ListenerCounts | None = None,
        attribute_fallback: bool = True,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self.wrapped = wrapped
        self.limits = limits or Limits()
        self.clock = clock
        self.name = name
        self.generation = generation
        self.random = random
        self.port: IListeningPort | None = None
        #: The coarse clock connections copy on every chunk, and the timing
        #: wheel's tick: refreshed every C{resolution} seconds while any
        #: connection has a deadline; nothing runs when none has.
        self.now = clock.seconds()
        self.resolution = _resolution(self.limits)
        self._wheel: dict[int, set[TrackedProtocol]] = {}
        self._processed = math.floor(self.now / self.resolution)
        self._ticker: IDelayedCall | None = None
        self.connections: set[TrackedProtocol] = set()
        #: Counters for metrics, read at scrape time (nothing per scrape is
        #: kept on the connection path).
        self.accepted = 0
        self.refused = 0
        self.handshakes_full = 0
        self.handshakes_resumed = 0
        self.handshakes_failed = 0
        #: Completed handshakes by key exchange group ("none": no key
        #: exchange, a TLS 1.2 resumption), so operators see how much
        #: traffic is post-quantum.
        self.handshakes_by_group: Counter[str] = Counter()
        self.bytes_in_closed = 0
        self.bytes_out_closed = 0
        self.closed: Counter[CloseReason] = Counter()
        #: Open connections per client address, without C{shared} only (with
        #: it, the shared counts are the ones that hold gateway-wide).
        #: A plain dict, not a Counter: Counter's __missing__ and __delitem__
        #: are Python calls, one each per connection here.
        self._per_client: dict[str, int] = {}
        self._refused_hosts: set[str] = set()
        self._accept_paused = False
        self._draining = False
        self._waiters: list[Deferred[None]] = []
        self._drain_call: IDelayedCall | None = None
        #: Counts over every worker process (None: this process is the
        #: gateway): caps are checked against them instead of local counts.
        self.shared = shared
        self._recheck: IDelayedCall | None = None
        #: What wraps each connection: with the fallback, any attribute of
        #: the transport is reached through the wrapper; without it, the
        #: transport interfaces' members only, and every lookup is cheaper.
        self._protocol_class: type[TrackedProtocol] = (
            TransparentTrackedProtocol if attribute_fallback else TrackedProtocol
        )

    # -- IProtocolFactory --------------------------------------------------

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        return f"tlsgate:{self.name}"

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        host: str | None = getattr(addr, "host", None)
        refusal = self._refusal(host)
        if refusal is not None:
            self.closed[refusal] += 1
            self.refused += 1
            return _Refused()
        wrapped = self.wrapped.buildProtocol(addr)
        if wrapped is None:
            return None
        self._refresh_clock()
        protocol = self._protocol_class(self, wrapped, host)
        self.connections.add(protocol)
        self.accepted += 1
        cap = self.limits.max_connections
        shared = self.shared
        if shared is None:
            if host is not None:
                per_client = self._per_client
                per_client[host] = per_client.get(host, 0) + 1
            if cap and len(self.connections) >= cap:
                self._pause_accepting()
        else:
            shared.opened(host)
            if cap and shared.total() >= cap:
                self._pause_accepting()
        return protocol

    def _refusal(self, host: str | None) -> CloseReason | None:
        if self._draining:
            return CloseReason.DRAIN
        cap = self.limits.max_connections
        shared = self.shared
        if (
            cap
            and not self._accept_paused
            and (shared is None or self.port is None)
            and (len(self.connections) if shared is None else shared.total()) >= cap
        ):
            # The port cannot pause accepting: refuse. (When it can, Twisted may
            # still hand over the rest of the batch it accepted in one go before
            # the pause took effect; those are admitted, not reset.) With
            # workers, the cap may have been reached in another worker: this
            # one admits the connection and pauses too (so the gateway goes
            # over by at most one connection per worker).
            return CloseReason.LIMIT
        per_client = self.limits.max_connections_per_client
        if (
            per_client
            and host is not None
            and (self._per_client.get(host, 0) if shared is None else shared.of(host))
            >= per_client
        ):
            # Logged once while the source stays at its cap, so a client that
            # keeps reconnecting cannot flood the log (the metric counts each).
            if host not in self._refused_hosts:
                self._refused_hosts.add(host)
                self._log.info(
                    "{listener}: refusing {peer}: {count} connections from it"
                    " already (max_connections_per_client); further refusals are"
                    " counted, not logged, until it is below the cap",
                    listener=self.name,
                    peer=host,
                    count=(
                        self._per_client.get(host, 0)
                        if shared is None
                        else shared.of(host)
                    ),
                    event="connection_refused",
                )
            return CloseReason.LIMIT
        return None

    def set_limits(self, limits: Limits) -> None:
        """
        New limits (a config reload), for new and open connections alike: the
        wheel is rebuilt at the new resolution and every deadline re-filed.
        """
        self.limits = limits
        armed = [c for bucket in self._wheel.values() for c in bucket]
        self._wheel.clear()
        for conn in armed:
            conn._bucket = None
        self.resolution = _resolution(limits)
        self.now = self.clock.seconds()
        self._processed = math.floor(self.now / self.resolution)
        for conn in self.connections:
            if not conn.closing and conn.transport is not None:
                conn._limits_changed()

    # -- the coarse clock and the timing wheel -----------------------------

    def _refresh_clock(self) -> None:
        """Bring the coarse clock up to date while the ticker sleeps."""
        if self._ticker is None:
            self.now = self.clock.seconds()
            self._processed = math.floor(self.now / self.resolution)

    def _arm(self, conn: TrackedProtocol, at: float | None) -> None:
        """File C{conn} to be looked at once C{at} has passed (None: never)."""
        self._disarm(conn)
        if at is None:
            return
        key = max(math.ceil(at / self.resolution), self._processed + 1)
        bucket = self._wheel.get(key)
        if bucket is None:
            bucket = self._wheel[key] = set()
        bucket.add(conn)
        conn._bucket = key
        if self._ticker is None:
            self._ticker = self.clock.callLater(self.resolution, self._tick)

    def _disarm(self, conn: TrackedProtocol) -> None:
        key = conn._bucket
        if key is not None:
            conn._bucket = None
            bucket = self._wheel.get(key)
            if bucket is not None:
                bucket.discard(conn)
                if not bucket:
                    del self._wheel[key]

    def _tick(self) -> None:
        self.now = now = self.clock.seconds()
        current = math.floor(now / self.resolution)
        for key in range(self._processed + 1, current + 1):
            bucket = self._wheel.pop(key, None)
            if bucket:
                for conn in bucket:
                    conn._bucket = None
                    conn._due(now)
        self._processed = max(self._processed, current)
        if self._wheel:
            self._ticker = self.clock.callLater(self.resolution, self._tick)
        else:
            self._ticker = None

    # -- bookkeeping -------------------------------------------------------

    def _forget(self, protocol: TrackedProtocol) -> None:
        self.connections.discard(protocol)
        self.bytes_in_closed += protocol.bytes_in
        self.bytes_out_closed += protocol.bytes_out
        peer = protocol.peer
        if self.shared is not None:
            self.shared.closed(peer)  # (the local per-client count is unused then)
        elif peer is not None:
            per_client = self._per_client
            left = per_client.get(peer, 0) - 1
            if left > 0:
                per_client[peer] = left
            else:
                per_client.pop(peer, None)
        if peer is not None:
            self._refused_hosts.discard(peer)
        assert protocol.reason is not None
        self.closed[protocol.reason] += 1
        if self._accept_paused and self._below_cap():
            self._resume_accepting()
        if self._draining and not self.connections:
            self._drained()

    def _below_cap(self) -> bool:
        shared = self.shared
        open_now = len(self.connections) if shared is None else shared.total()
        return open_now < self.limits.max_connections

    def _recheck_cap(self) -> None:
        """
        With workers, a connection closing in another worker makes room that
        this one hears nothing of: look again every 50 ms while paused.
        """
        self._recheck = None
        if not self._accept_paused:
            return
        if self._below_cap():
            self._resume_accepting()
        else:
            self._recheck = self.clock.callLater(0.05, self._recheck_cap)

    def _pause_accepting(self) -> None:
        stop = getattr(self.port, "stopReading", None)
        if stop is not None and not self._accept_paused:
            stop()
            self._accept_paused = True
            if self.shared is not None and self._recheck is None:
                self._recheck = self.clock.callLater(0.05, self._recheck_cap)
            self._log.warn(
                "{listener}: {count} connections open (max_connections); not"
                " accepting until one closes",
                listener=self.name,
                count=len(self.connections),
                event="accept_paused",
            )

    def _resume_accepting(self) -> None:
        start = getattr(self.port, "startReading", None)
        if start is not None:
            start()
        self._accept_paused = False

    def snapshot(self) -> list[ConnectionInfo]:
        """The live connections, oldest first."""
        now = self.clock.seconds()
        out = []
        for c in sorted(self.connections, key=lambda c: c.started):
            sni = None
            handle = getattr(c.transport, "getHandle", None)
            if c.handshake_done and handle is not None:
                name = getattr(handle(), "get_servername", lambda: None)()
                sni = name.decode("ascii", "replace") if name else None
            out.append(
                ConnectionInfo(
                    peer=c.peer, age=now - c.started, idle=c.idle_seconds,
                    bytes_in=c.bytes_in, bytes_out=c.bytes_out,
                    generation=c.generation, sni=sni, closing=c.closing,
                    identity=c.identity.describe() if c.identity else None,
                    group=c.group,
                )
            )  # fmt: skip
        return out

    def bytes_total(self) -> tuple[int, int]:
        """Bytes from clients and to clients, over closed and live connections."""
        live_in = sum(c.bytes_in for c in self.connections)
        live_out = sum(c.bytes_out for c in self.connections)
        return self.bytes_in_closed + live_in, self.bytes_out_closed + live_out

    def by_group(self) -> Counter[str]:
        """How many live, handshaken connections use each key exchange group."""
        return Counter(c.group or "none" for c in self.connections if c.handshake_done)

    def by_generation(self) -> Counter[int]:
        """How many live connections were made under each certificate generation."""
        return Counter(c.generation for c in self.connections)

    # -- certificate rotation ----------------------------------------------

    def certificate_changed(self, state: CertificateState) -> None:
        """
        With C{rotation_grace}, close connections made under older certificates,
        each at a random moment within the grace period.
        """
        grace = self.limits.rotation_grace
        if not grace:
            return
        # A connection not yet connected is the one whose TLS layer is
        # loading the new files now; it is served (and tagged) with them.
        older = [
            c
            for c in self.connections
            if c.generation < state.generation and c.transport is not None
        ]
        if older:
            self._log.info(
                "{listener}: certificate generation {generation}: closing {count}"
                " older connections within {grace}s",
                listener=self.name,
                generation=state.generation,
                count=len(older),
                grace=grace,
                event="rotation_closing",
            )
        for c in older:
            c.schedule_rotation_close(grace * self.random())

    # -- drain -------------------------------------------------------------

    def drain(self, timeout: float) -> Deferred[None]:
        """
        Refuse new connections, let open ones finish for C{timeout} seconds
        (0: no limit), then close the rest gracefully.

        @return: fires when no connection is left.
        """
        if not self._draining:
            self._draining = True
            if self.connections and timeout:
                self._drain_call = self.clock.callLater(timeout, self._drain_expired)
            self._log.info(
                "{listener}: draining {count} connections (up to {timeout}s)",
                listener=self.name,
                count=len(self.connections),
                timeout=timeout,
                event="drain_started",
            )
        elif self.connections and timeout:
            # Draining already, with a longer limit (a worker retired by a
            # new generation, then told to stop): the shorter limit wins.
            call = self._drain_call
            due = self.clock.seconds() + timeout
            if call is None or (call.active() and call.getTime() > due):
                if call is not None:
                    call.cancel()
                self._drain_call = self.clock.callLater(timeout, self._drain_expired)
        waiter: Deferred[None] = Deferred()
        if not self.connections:
            waiter.callback(None)
        else:
            self._waiters.append(waiter)
        return waiter

    def _drain_expired(self) -> None:
        self._drain_call = None
        for c in list(self.connections):
            c.close_gracefully(CloseReason.DRAIN)

    def _drained(self) -> None:
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)
