"""
One tracked connection: a thin layer between the TLS transport and the
application protocol that enforces the limits and closes gracefully.

It is the application protocol's transport (it forwards writes, producer
calls and everything else), and the TLS layer's protocol (it forwards reads
and the handshake notice).

The per-chunk work is three attribute stores and a byte count: the idle
clock is reset by copying the tracker's coarse clock (a float the tracker
refreshes once per resolution tick), so no chunk reads the time or
allocates for it. Deadlines (handshake, idle, lifetime) live in the
tracker's timing wheel, not in a DelayedCall per connection; a connection is
looked at only when its bucket comes due, and re-filed if traffic moved its
idle deadline. Short-lived timers (quiet checks, the abort after
close_grace, rotation closes) use callLater, as they exist only while closing.

It is transparent, as Twisted's C{ProtocolWrapper} is: the wrapped protocol
sees the interfaces of the transport it would see unwrapped (C{ISSLTransport}
behind TLS, so that C{request.isSecure()} holds; C{ITLSTransport} on plain
TCP, so that STARTTLS is offered; C{ITCPTransport}), declared per connection
from a cache keyed by the transport's own declarations.
"""

from __future__ import annotations

from operator import attrgetter
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProducer,
    IProtocol,
    IPushProducer,
    ISSLTransport,
    ISystemHandle,
    ITCPTransport,
    ITLSTransport,
    ITransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy
from zope.interface.declarations import Provides
from zope.interface.interface import InterfaceClass

from tlsgate._declarations import once_per_kind
from tlsgate._halfclose import can_half_close
from tlsgate.certs import negotiated_group, session_reused
from tlsgate.tracker._limits import CloseReason
from tlsgate.tracker._unsent import unsent_bytes

if TYPE_CHECKING:
    from tlsgate.tracker._tracker import ConnectionTracker

#: While closing gracefully, how often the connection is checked for a quiet
#: point (nothing moved since the last look, and the last bytes went out).
QUIET_INTERVAL = 0.05


def _declaration(
    cls: type, transport: Any, tls: bool, half_close: bool = False
) -> object:
    """
    What a wrapper around C{transport} provides: what the transport provides,
    and for a TLS layer also what the connection under it provides (Twisted's
    TLS layer keeps only one of them), with C{ISSLTransport} and without
    C{ITLSTransport} (a TLS connection cannot start TLS again); and
    C{IHalfCloseableProtocol} when the wrapped protocol takes half-closes.
    Made once per kind of connection (L{once_per_kind}).
    """
    own = providedBy(transport)
    under = providedBy(transport.transport) if tls else None
    key = (cls, own, under, half_close)
    return once_per_kind(key, _make_declaration, cls, own, under, tls, half_close)


def _make_declaration(
    cls: type, own: Any, under: Any, tls: bool, half_close: bool
) -> object:
    interfaces: list[InterfaceClass] = list(own)
    if under is not None:
        interfaces += [i for i in under if i not in interfaces]
    if tls:
        interfaces = [i for i in interfaces if not i.isOrExtends(ITLSTransport)]
        if ISSLTransport not in interfaces:
            interfaces.append(ISSLTransport)
    if not issubclass(cls, TransparentTrackedProtocol):
        # Without the fallback, only what the wrapper has members for: each
        # of those the transport provides, also through an interface of its
        # own that extends it.
        interfaces = [f for f in FORWARDED if any(i.isOrExtends(f) for i in interfaces)]
    if half_close:
        interfaces.append(IHalfCloseableProtocol)
    return Provides(cls, *interfaces)


#: The transport interfaces whose every member L{TrackedProtocol} forwards
#: itself: all a wrapper without the attribute fallback may declare.
FORWARDED = (
    ISSLTransport,
    ITCPTransport,
    ITLSTransport,
    ITransport,
    INegotiated,
    ISystemHandle,
    IConsumer,
    IPushProducer,
    IProducer,
)


def _forwarded(name: str) -> Any:
    """
    A read-only property: the wrapper's C{transport}'s own C{name}, looked up
    when asked for (C{attrgetter}, so no Python frame per lookup).
    """
    return property(attrgetter(f"transport.{name}"), doc=f"The transport's {name}.")


@implementer(IHandshakeListener, IPushProducer)
class TrackedProtocol(Protocol):
    """
    The tracker's wrapper around one application protocol.

    @ivar generation: the certificate generation the connection was made under.
    @ivar reason: why it closed (or is closing), once known.
    @ivar group: the key exchange group of its handshake, once done (C{None}:
        none, as in a TLS 1.2 resumption, or not TLS).
    """

    # Slots keep the per-connection cost small (see docs/benchmarks.md).
    __slots__ = (
        "__provides__", "_aborting", "_active", "_bucket", "_finished", "_handshake_from",
        "_last", "_last_out", "_lifetime_at",
        "_quiet_deadline", "_rotation", "_timer", "_tls", "_unsent", "bytes_in", "bytes_out",
        "closing", "connected", "generation", "group", "handshake_done", "identity", "peer", "reason",
        "started", "tracker", "transport", "wrapped",
    )  # fmt: skip

    def __init__(
        self, tracker: ConnectionTracker, wrapped: IProtocol, peer: str | None
    ) -> None:
        self.transport: Any = None
        self.connected = 0
        self.tracker = tracker
        self.wrapped = wrapped
        self.peer = peer
        #: Set in connectionMade, once the TLS layer picked the certificate.
        self.generation = 0
        self.started = self._handshake_from = tracker.clock.seconds()
        self.bytes_in = 0
        self.bytes_out = 0
        self.reason: CloseReason | None = None
        #: The verified client certificate's identity (mutual TLS), if any.
        self.identity: Any = None
        self.closing = False
        self.handshake_done = False
        self.group: str | None = None
        self._tls = False
        self._active = False
        self._last_out = True
        self._last = tracker.now
        self._lifetime_at: float | None = None
        self._timer: IDelayedCall | None = None
        self._bucket: int | None = None
        self._rotation: IDelayedCall | None = None
        self._finished = False
        self._aborting = False
        self._quiet_deadline = 0.0
        #: Bytes the client had not taken at the last look of the abort
        #: timer (None: it cannot be told).
        self._unsent: int | None = None

    # -- the TLS layer's side ----------------------------------------------

    def connectionMade(self) -> None:
        assert self.transport is not None
        transport = self.transport
        # The TLS layer picked the certificate just now (a renewal may have
        # been swapped in for this very connection): tag with what it serves.
        self.generation = self.tracker.generation()
        # The isinstance test is the common, cheap case; providedBy covers
        # other TLS transports.
        layered = isinstance(transport, TLSMemoryBIOProtocol)
        self._tls = layered or INegotiated.providedBy(transport)
        self.__provides__ = _declaration(
            type(self),
            transport,
            layered,
            IHalfCloseableProtocol.providedBy(self.wrapped),
        )
        self.wrapped.makeConnection(self)  # type: ignore[arg-type]
        if not self._tls:
            self._begin()
        else:
            self._arm()

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        tracker = self.tracker
        if session_reused(self.transport):
            tracker.handshakes_resumed += 1
        else:
            tracker.handshakes_full += 1
        self.group = group = negotiated_group(self.transport)
        tracker.handshakes_by_group[group or "none"] += 1
        self._begin()
        if IHandshakeListener.providedBy(self.wrapped):
            self.wrapped.handshakeCompleted()

    def client_verified(self, identity: Any) -> None:
        """Called during the handshake with the verified client identity."""
        self.identity = identity

    def client_denied(self, identity: Any) -> None:
        """Called during the handshake when no C{allow} rule admits the client."""
        self.identity = identity
        self.reason = CloseReason.DENIED

    def dataReceived(self, data: bytes) -> None:
        self._last = self.tracker.now
        self._active = True
        self._last_out = False
        self.bytes_in += len(data)
        # Once a graceful close began, no new request may start: bytes the
        # client sends now are not forwarded (the client sees the close
        # instead of an answer, never half an answer).
        if not self.closing:
            self.wrapped.dataReceived(data)

    def readConnectionLost(self) -> None:
        """
        The client finished sending (declared only when the wrapped protocol
        takes half-closes): it waits for the answer, which the idle and
        lifetime limits still bound.
        """
        self._last = self.tracker.now
        self.wrapped.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        # Declared only when the wrapped protocol takes half-closes.
        self.wrapped.writeConnectionLost()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.tracker._disarm(self)
        self._cancel_timer()
        if self._rotation is not None and self._rotation.active():
            self._rotation.cancel()
        if self.reason is None:
            self.reason = self._reason_from(reason)
        if self._tls and not self.handshake_done:
            self.tracker.handshakes_failed += 1
        self.tracker._forget(self)
        self.wrapped.connectionLost(reason)

    def _reason_from(self, reason: Failure) -> CloseReason:
        told = getattr(self.wrapped, "close_reason", None)
        if isinstance(told, CloseReason):
            return told
        # A TLS failure (garbage, a refused certificate) arrives as SSL.Error; a
        # client that merely connects and leaves, as TCP health checks do, is a
        # plain client close even before any handshake.
        if isinstance(reason.value, SSL.Error):
            # A client certificate missing or not trusted is a denial, not a
            # TLS fault of the client's.
            text = str(reason.value)
            if (
                "did not return a certificate" in text
                or "certificate verify failed" in text
            ):
                return CloseReason.DENIED
            return CloseReason.TLS_ERROR
        return CloseReason.CLIENT

    # -- the application protocol's transport ------------------------------

    def write(self, data: bytes) -> None:
        self._last = self.tracker.now
        self._active = True
        self._last_out = True
        self.bytes_out += len(data)
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """The application closes: flush, close_notify, and bound the wait."""
        transport: Any = self.transport
        # Read on, so the client's close_notify or FIN is seen, and abort if
        # it never comes: a closing connection must not live forever.
        transport.resumeProducing()
        transport.loseConnection()
        self._arm_abort()

    def loseWriteConnection(self) -> None:
        """
        The application finished sending (close_notify, or FIN on plain TCP)
        and reads on: the client may go on sending until it closes too,
        which the idle and lifetime limits still bound. Twisted's own TLS
        layer cannot half-close (a bare FIN would be a truncation): there
        it is a full close.
        """
        if can_half_close(self.transport):
            self.transport.loseWriteConnection()
        else:
            self.loseConnection()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        """
        STARTTLS (C{ITLSTransport}): the handshake it begins is bounded by
        C{handshake_timeout} like one made at accept.
        """
        self.transport.startTLS(contextFactory, normal)
        self._tls = True
        self.handshake_done = False
        self._handshake_from = self.tracker.clock.seconds()
        self.__provides__ = _declaration(
            type(self),
            self.transport,
            False,
            IHalfCloseableProtocol.providedBy(self.wrapped),
        )
        self._arm()

    def getPeerCertificate(self) -> Any:
        return self.transport.getPeerCertificate()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        # While closing, reads stay paused whatever the backend's buffer says:
        # no new request may start on a connection that is going away.
        if not self.closing:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # The rest of the transport interfaces the wrapper may declare
    # (ITCPTransport, ISystemHandle, INegotiated), and the one attribute that
    # Twisted's line and stateful protocols read on their transport. Each is
    # the transport's own, looked up when asked for: where the transport
    # lacks it, so does the wrapper (getattr(wrapper, name, None) is None),
    # as with the fallback.
    getTcpNoDelay = _forwarded("getTcpNoDelay")
    setTcpNoDelay = _forwarded("setTcpNoDelay")
    getTcpKeepAlive = _forwarded("getTcpKeepAlive")
    setTcpKeepAlive = _forwarded("setTcpKeepAlive")
    getHandle = _forwarded("getHandle")
    negotiatedProtocol = _forwarded("negotiatedProtocol")
    disconnecting = _forwarded("disconnecting")

    # -- limits ------------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _begin(self) -> None:
        """Start the idle and lifetime clocks (after the handshake, for TLS)."""
        limits = self.tracker.limits
        if limits.max_lifetime:
            spread = 1 - limits.lifetime_jitter * self.tracker.random()
            self._lifetime_at = self.started + limits.max_lifetime * spread
        self._arm()

    def _next_check(self) -> float | None:
        """The earliest moment a limit could be reached, or None: no limit applies."""
        limits = self.tracker.limits
        if self._tls and not self.handshake_done:
            timeout = limits.handshake_timeout
            return self._handshake_from + timeout if timeout else None
        at = self._lifetime_at
        if limits.idle_timeout:
            # _last may lag the real last byte by up to one tick: never early.
            idle_at = self._last + limits.idle_timeout + self.tracker.resolution
            if at is None or idle_at < at:
                at = idle_at
        return at

    def _arm(self) -> None:
        self.tracker._arm(self, self._next_check())

    def _limits_changed(self) -> None:
        """
        A reload's new limits: deadlines re-filed from them, and the next
        look at the client's progress begins a new interval (one taken under
        the old limits may be a tick old when the new deadline comes).
        """
        self._unsent = None
        self._arm()

    def _due(self, now: float) -> None:
        """Called by the tracker's wheel when this connection's bucket is due."""
        if self.closing or self.transport is None:
            return
        at = self._next_check()
        if at is None:
            return
        if now < at:
            # Traffic moved the idle deadline; a look taken before it says
            # nothing of the client's progress at the next.
            self._unsent = None
            self.tracker._arm(self, at)
        elif self._tls and not self.handshake_done:
            self._handshake_expired()
        elif self._lifetime_at is not None and now >= self._lifetime_at:
            self.close_gracefully(CloseReason.LIFETIME)
        elif self._aborting:
            # The application closed it: its abort timer, which looks at the
            # client's progress, bounds it now instead of idle_timeout.
            if self._lifetime_at is not None:
                self.tracker._arm(self, self._lifetime_at)
        elif self._still_taking():
            # Nothing written for idle_timeout, but the client is still
            # taking what was: not idle. Looked at again after a grace (and
            # no later than its lifetime).
            look = now + max(self.tracker.limits.close_grace, self.tracker.resolution)
            if self._lifetime_at is not None and self._lifetime_at < look:
                look = self._lifetime_at
            self.tracker._arm(self, look)
        else:
            self.close_gracefully(CloseReason.IDLE_TIMEOUT, quiet=True)

    def _handshake_expired(self) -> None:
        self.reason = CloseReason.HANDSHAKE_TIMEOUT
        self.closing = True
        self.abortConnection()

    @property
    def idle_seconds(self) -> float:
        """Time since the last byte, to the tracker's clock resolution."""
        return max(0.0, self.tracker.clock.seconds() - self._last)

    # -- graceful close ----------------------------------------------------

    def close_gracefully(self, reason: CloseReason, *, quiet: bool = False) -> None:
        """
        Close without cutting anything short: stop reading the client, wait for
        a quiet point (bytes already received answered and flushed), send
        close_notify, and abort if the client has not finished by C{close_grace}.

        @param quiet: the connection is known to be quiet (idle), skip the wait.
        """
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.tracker._disarm(self)
        if self._aborting:
            # The application closed it already (its backend went), and the
            # abort armed then bounds it: from now on within close_grace,
            # whether or not the client is still reading (_grace_over). The
            # close stays the application's.
            return
        self.reason = reason
        self._cancel_timer()
        if self._tls and not self.handshake_done:
            self.abortConnection()
            return
        self.transport.pauseProducing()
        grace = self.tracker.limits.close_grace
        self._quiet_deadline = self.tracker.clock.seconds() + grace
        if quiet:
            self._finish()
            return
        self._active = False
        self._timer = self.tracker.clock.callLater(
            min(QUIET_INTERVAL, grace) if grace else QUIET_INTERVAL, self._quiet_check
        )

    def _quiet_check(self) -> None:
        self._timer = None
        now = self.tracker.clock.seconds()
        grace = self.tracker.limits.close_grace
        if (not self._active and self._last_out) or (
            grace and now >= self._quiet_deadline
        ):
            self._finish()
            return
        self._active = False
        self._timer = self.tracker.clock.callLater(QUIET_INTERVAL, self._quiet_check)

    def _finish(self) -> None:
        """Flush, send close_notify, and let the client answer for close_grace."""
        self._finished = True
        transport: Any = self.transport
        # The TLS layer waits for its producer to go before close_notify;
        # reading resumes so the client's own close_notify is seen.
        transport.unregisterProducer()
        transport.resumeProducing()
        transport.loseConnection()
        self._arm_abort()

    def _arm_abort(self) -> None:
        grace = self.tracker.limits.close_grace
        if grace and not self._aborting:
            self._aborting = True
            self._cancel_timer()
            # Nothing is measured now: most clients answer within the grace,
            # and the timer is cancelled unread (_grace_over's first look).
            self._unsent = None
            self._timer = self.tracker.clock.callLater(grace, self._grace_over)

    def _grace_over(self) -> None:
        """
        C{close_grace} passed since the close began, or since the last look.
        A close the gateway decided (idle, lifetime, rotation, drain) ends
        now, as the drain's bound on a stop needs. After the application's
        own close, a client still taking what it was sent (L{_still_taking})
        gets another C{close_grace}; one that took nothing is aborted.
        """
        self._timer = None
        grace = self.tracker.limits.close_grace
        if not grace:
            # A reload made close_grace 0 (no bound) since: none now.
            return
        if not self.closing and self._still_taking():
            self._timer = self.tracker.clock.callLater(grace, self._grace_over)
            return
        self.abortConnection()

    def _still_taking(self) -> bool:
        """
        Whether the client took some of what it was sent since the last look
        (at the first look: whether it has some left to take), on a slow link
        where its answer waits in the gateway's buffer and the kernel's send
        queue. A client that just took its last bytes counts as taking, so
        that it has a whole look's time to answer a close_notify. Asked only
        when a limit runs out (never per connection), it takes a look.
        """
        unsent = unsent_bytes(self.transport)
        last, self._unsent = self._unsent, unsent
        if unsent is None:
            return False
        return unsent < last if last is not None else unsent > 0

    def schedule_rotation_close(self, delay: float) -> None:
        if self._rotation is None and not self.closing:
            self._rotation = self.tracker.clock.callLater(
                delay, self.close_gracefully, CloseReason.ROTATION
            )


class TransparentTrackedProtocol(TrackedProtocol):
    """
    A L{TrackedProtocol} through which any other attribute of the transport
    is reached too, as through Twisted's C{ProtocolWrapper}: what a tracker
    builds unless told its protocols need no more than the transport
    interfaces (L{ConnectionTracker}'s C{attribute_fallback}).

    The fallback has a price beyond the calls that use it. A class with
    C{__getattr__} has every attribute lookup on its instances made through
    Python's C{__getattr__} hook, and none of them specialised by the
    interpreter, the wrapper's own ones included: about 1% of a relayed
    connection's instructions (docs/benchmarks.md, seventh pass).
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the class lacks: the transport's own extras,
        # as ProtocolWrapper does.
        if name.startswith("__") or self.transport is None:
            raise AttributeError(name)
        return getattr(self.transport, name)
