"""
The gateway's TCP transports: Twisted's own, minus the system calls a relay
does not need.

Twisted's C{tcp.Server} and C{tcp.Client} are general; on the gateway's path
(accept, handshake, one backend connection, relay, close) they spend about
50 system calls per connection where about 30 do the work. The profile of
issue 10 found the gap there. These subclasses keep Twisted's behaviour
(buffering, producers, half-close, aborts, reasons) and drop what the relay
never needs:

  - B{writes go out at once} when nothing is queued: C{FileDescriptor.write}
    queues, registers for writability (C{epoll_ctl}), sends on the next turn
    and unregisters (C{epoll_ctl} again). Only what the kernel does not take
    is queued, through the stock path (which also reports socket errors);
  - B{no zero-length C{send}}: the stock C{doWrite} sends the empty buffer
    before a close or a half-close;
  - B{no C{shutdown()} before C{close()}}: Twisted's own comment calls it
    unnecessary, since the descriptor is this process's alone (close-on-exec,
    and made after any fork of the worker model);
  - B{a close with nothing left to send closes} at the start of the next
    reactor turn (one C{callLater(0)} for all the connections closed in a
    turn), instead of registering for writability, waiting for the event,
    flushing nothing and unregistering (three C{epoll_ctl}s and a turn);
  - B{pauses are lazy}: C{pauseProducing()} only marks the transport, and
    the reactor registration is dropped when data actually arrives while
    paused. A pause that a resume follows before any data (the relay pauses
    the client while it dials the backend) costs no C{epoll_ctl} pair;
  - B{C{TCP_NODELAY} is inherited} from the listening socket (Linux copies
    it to accepted sockets), so the relay's C{setTcpNoDelay(True)} costs
    nothing on an accepted connection;
  - B{backends given as an IP address are dialled directly}
    (L{LeanClient.dial}): a non-blocking socket made non-blocking by
    C{socket()} itself, C{connect()}, one wait for writability, and
    C{SO_ERROR}; no connector, no address resolution, no C{callLater(0)},
    no Deferred chain.

The gateway's listening ports accept L{LeanServer}s (L{use_lean_transports}),
or for TLS L{tlsgate._leantls.LeanTLSServer}s, TCP and TLS in one; the
relay's backends given as C{tcp:IP:PORT} are dialled with L{LeanClient}, and
other backends' stock transports are switched to L{LeanDialledClient}.
Embedders' ports (the C{tlsgate:} endpoint, L{tlsgate.TLSStack}) keep
Twisted's stock transports.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
from collections.abc import Callable
from functools import lru_cache
from operator import methodcaller
from typing import Any, cast

from twisted.internet import abstract, error, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableDescriptor,
    IProtocol,
    IProtocolFactory,
    IReactorFDSet,
    IReactorTime,
)
from twisted.internet.main import CONNECTION_LOST
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python import log
from twisted.python.failure import Failure
from twisted.python.runtime import platformType

from tlsgate._batch import LINGERING, Batch, cancel, per_clock
from tlsgate._dispatch import DISPATCHING, HALF_CLOSING, POLLS, watch

#: What one connection's log events are prefixed with (the stock transports
#: format a per-connection string at accept or connect).
LOG_PREFIX = "tlsgate"
#: The largest read a lean transport grows to (L{_Lean._read_size}): with the
#: transport's 64 KiB write mark, what one connection holds in a bulk
#: transfer stays bounded, at a few hundred KiB.
MAX_READ = 2**18

#: The socket type of the gateway's own connections (those L{LeanPort}
#: accepts, and the backends its relay dials): C{_socket.socket}, the C type
#: that C{socket.socket} subclasses in Python. The subclass's C{__init__} and
#: C{close} are Python frames (four calls and about 100 bytecodes per relayed
#: connection, its two sockets), for what the lean transports never use:
#: C{makefile}, C{dup}, C{with}, weak references, enum-typed C{family} and
#: C{type} (here plain integers, equal to the enums). Typed as the subclass,
#: whose every method the transports call is the base's; a socket a
#: protocol of someone else's may reach by C{getHandle()} stays a
#: C{socket.socket} (L{LeanClient.dial}'s C{c_socket}).
_CSocket = cast("type[socket.socket]", _socket.socket)


#: What closes at the start of the next turn: one C{callLater(0)} per
#: reactor however many close in a turn (see L{_Lean.loseConnection}).
_CLOSERS: dict[Any, Batch[_Lean]] = {}


#: What each closer does with a transport.
_CLOSE_NOW = methodcaller("_close_now")


def _closer(reactor: Any) -> Batch[_Lean]:
    return per_clock(_CLOSERS, reactor, Batch, reactor, 0, _CLOSE_NOW, "closing")


class _Deadlines:
    """
    The connection attempts of one clock that have the same timeout, in the
    order they were dialled (so the first is the first due), timed by one
    delayed call at the first one's deadline. A delayed call made and
    cancelled per attempt cost each relayed connection about 0.7% of its
    instructions; here an attempt costs a clock reading and a dictionary
    entry, and the call, once due, expires what is due and waits for the
    next (or ends, with nothing left). When the last attempt connects the
    call is cancelled, except on the gateway's own reactor (L{linger}).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        #: attempt -> its deadline, in the order they were dialled.
        self.pending: dict[LeanClient, float] = {}
        self._call: Any = None
        self._expiring = False
        #: Keep the call when nothing is left (see L{linger}).
        self.linger = clock in LINGERING

    def add(self, client: LeanClient) -> None:
        self.pending[client] = self.clock.seconds() + self.timeout
        # While _expire runs (an attempt timed out, and its caller dialled
        # again), it times what is left itself when done. A call cancelled
        # from outside (a test's reactor clean-up) must not leave attempts
        # without a timeout.
        if not self._expiring and (self._call is None or not self._call.active()):
            self._call = self.clock.callLater(self.timeout, self._expire)

    def discard(self, client: LeanClient) -> None:
        pending = self.pending
        pending.pop(client, None)
        if not pending and not self.linger:
            cancel(self)

    def _expire(self) -> None:
        self._call = None
        pending = self.pending
        now = self.clock.seconds()
        self._expiring = True
        try:
            while pending:
                client, deadline = next(iter(pending.items()))
                if deadline > now:
                    break
                del pending[client]
                try:
                    client._timed_out()
                except Exception:
                    self._log.failure("timing out {client!r}", client=client)
        finally:
            self._expiring = False
        if pending:
            # One call, for the first deadline left.
            deadline = next(iter(pending.values()))
            self._call = self.clock.callLater(max(0.0, deadline - now), self._expire)


#: (clock, timeout) -> its deadlines (as L{_CLOSERS}: a gateway has one
#: entry per backend timeout).
_DEADLINES: dict[tuple[Any, float], _Deadlines] = {}


def _deadlines(clock: IReactorTime, timeout: float) -> _Deadlines:
    return per_clock(_DEADLINES, (clock, timeout), _Deadlines, clock, timeout)


class _Lean:
    """
    What L{LeanServer} and L{LeanClient} change in C{tcp.Connection} (no
    C{__slots__}: Twisted's transports keep their state in C{__dict__}).
    """

    _shouldShutdown = False
    #: C{pauseProducing()} was called; the registration goes at the next read.
    _pause_pending = False
    #: C{TCP_NODELAY} is known to be on already (inherited from the listener).
    _no_delay = False
    #: What one read asks the kernel for: Twisted's 64 KiB, made four times
    #: larger (up to L{MAX_READ}) each time a read comes back full. A bulk
    #: transfer then crosses the Python layers once per 256 KiB rather than
    #: per 64 KiB, a fifth less CPU per MB relayed (docs/benchmarks.md); a
    #: connection whose reads are small never grows it.
    _read_size = 2**16

    def logPrefix(self) -> str:
        return LOG_PREFIX

    def write(self, data: bytes) -> None:
        this: Any = self
        if (
            this._tempDataBuffer
            or this.dataBuffer
            or this.TLS  # STARTTLS on this transport: the stock path encrypts
            or this.disconnecting
            or this._writeDisconnected
            or not this.connected
            or type(data) is not bytes
        ):
            tcp.Connection.write(this, data)
            return
        try:
            sent = this.socket.send(data)
        except OSError:
            sent = 0  # full (EAGAIN), or an error doWrite reports
        if sent < len(data):
            tcp.Connection.write(this, data[sent:] if sent else data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        this: Any = self
        if (
            this.connected
            and not this.disconnecting
            and not this._aborting
            and not this._writeDisconnected
            and not this.dataBuffer
            and not this._tempDataBuffer
            and this.producer is None
            and not this.TLS
        ):
            this.disconnecting = 1
            _closer(this.reactor).add(self)
            return
        tcp.Connection.loseConnection(this)

    def _close_now(self) -> None:
        """The turn after C{loseConnection()}: close, unless writes came since."""
        this: Any = self
        if not this.connected or this.disconnected or this._aborting:
            return  # lost meanwhile (reset), or aborting (which ends it)
        if this.dataBuffer or this._tempDataBuffer or this.producer is not None:
            # Written to after loseConnection(): flush first, as Twisted does.
            this.stopReading()
            this.startWriting()
            return
        this.connectionLost(connectionDone)  # which unregisters it

    def writeSomeData(self, data: bytes) -> Any:
        if not data:
            return 0  # the stock doWrite flushing an empty buffer: no send(b"")
        return tcp.Connection.writeSomeData(self, data)  # type: ignore[arg-type]

    def pauseProducing(self) -> None:
        self._pause_pending = True

    def resumeProducing(self) -> None:
        # Always the stock path: a pause pending now may follow an earlier
        # one that stopped reading already (pause, read, pause, resume).
        self._pause_pending = False
        tcp.Connection.resumeProducing(self)  # type: ignore[arg-type]

    def startReading(self) -> None:
        self._pause_pending = False
        tcp.Connection.startReading(self)  # type: ignore[arg-type]

    def stopReading(self) -> None:
        self._pause_pending = False
        tcp.Connection.stopReading(self)  # type: ignore[arg-type]

    def doRead(self) -> Any:
        if self.disconnecting:  # type: ignore[attr-defined]
            return None  # closing at the start of the next turn: read nothing
        if self._pause_pending:
            # Paused since the last read: stop now, before anything is read.
            self.stopReading()
            return None
        # tcp.Connection.doRead, with the read's size its own.
        size = self._read_size
        try:
            data = self.socket.recv(size)  # type: ignore[attr-defined]
        except OSError as se:
            if se.args[0] == errno.EWOULDBLOCK:
                return None
            return CONNECTION_LOST
        if len(data) == size and size < MAX_READ:
            self._read_size = min(size * 4, MAX_READ)
        return self._dataReceived(data)  # type: ignore[attr-defined]

    def setTcpNoDelay(self, enabled: bool) -> None:
        if enabled and self._no_delay:
            return
        self._no_delay = bool(enabled)
        tcp.Connection.setTcpNoDelay(self, enabled)  # type: ignore[arg-type]


def _connection_lost(transport: Any, reason: Failure) -> None:
    """
    C{tcp.Connection.connectionLost}, with the descriptor's reactor
    registration dropped in one step (L{_unregister}) and its test for an
    abort made by C{isinstance} rather than C{Failure.check}, which spells the
    class's qualified name on each call (two per relayed connection).
    """
    if not hasattr(transport, "socket"):
        return  # reported once already
    # abstract.FileDescriptor.connectionLost, in its order.
    transport.disconnected = 1
    transport.connected = 0
    producer = transport.producer
    if producer is not None:
        producer.stopProducing()
        transport.producer = None
    _unregister(transport)
    transport._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
    protocol = transport.protocol
    del transport.protocol
    del transport.socket
    del transport.fileno
    protocol.connectionLost(reason)


def _unregister(transport: Any) -> None:
    """
    C{stopReading()} and C{stopWriting()} of a transport about to close: on
    Twisted's epoll reactor at most one C{epoll_ctl} (L{watch}), where the
    reactor's own way is a method call per direction and a test of each of
    its sets in both (about ten Python calls per connection).
    """
    transport._pause_pending = False
    if not watch(transport.reactor, transport, False, False):
        transport.stopReading()
        transport.stopWriting()


def _read_instead_of_write(transport: Any) -> None:
    """
    C{stopWriting()} then C{startReading()}, for a connection that was only
    being written to: one C{epoll_ctl} on Twisted's epoll reactor (L{watch})
    where the reactor's own calls make two.
    """
    transport._pause_pending = False  # as startReading() does
    if not watch(transport.reactor, transport, True, False):
        transport.stopWriting()
        transport.startReading()


class LeanServer(_Lean, tcp.Server):
    """An accepted TCP connection for the gateway (see the module)."""

    def __init__(
        self,
        sock: socket.socket,
        protocol: IProtocol,
        client: tuple[Any, ...],
        server: Any,
        sessionno: int,
        reactor: IReactorFDSet,
    ) -> None:
        # tcp.Server.__init__ without the per-connection log and repr strings.
        tcp.Connection.__init__(self, sock, protocol, reactor)
        if len(client) != 2:
            self._addressType = IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self._no_delay = server is not None and getattr(server, "_no_delay", False)
        #: lean_dispatch's batch count when this was accepted (see MADE_IN).
        self._made_in: int | None = getattr(reactor, POLLS, None)
        self.startReading()
        self.connected = 1

    def __repr__(self) -> str:
        protocol = getattr(self, "protocol", None)  # gone after connectionLost
        return f"<{type(protocol).__name__} #{self.sessionno} (tlsgate)>"

    def connectionLost(self, reason: Failure) -> None:
        _connection_lost(self, reason)


class LeanPort(tcp.Port):
    """
    A listening port whose accept loop is the stock one's, without its
    buffering logger, generator and logger lookups per wake-up: the same
    batch size and its scaling, C{EPERM} skipped, the IPv6 scope ID kept, a
    socket closed when no protocol is built, and an error from a protocol
    logged with the batch size left as it was. Running out of descriptors or
    buffers (C{EMFILE}, C{ENOBUFS}, ...) or an aborted connection is left to
    the stock loop, with what is left of the batch: it handles and logs them
    (C{EMFILE} with its reserved descriptor).
    """

    def _accept(self) -> tuple[socket.socket, Any]:
        """
        C{socket.accept()} without its conversions of the listening socket's
        family and type to enums: eight Python calls per connection, about
        0.4% of one. The socket object is made from the numbers, read once
        per port; the rest is the stock call's (which sets no timeout on it,
        the listening socket being non-blocking; Twisted then makes it so).
        """
        listening: Any = self.socket
        made = self.__dict__.get("_accept_args")
        if made is None:
            made = (int(listening.family), int(listening.type), listening.proto)
            self._accept_args = made
        fd, addr = listening._accept()
        return _CSocket(made[0], made[1], made[2], fd), addr

    def doRead(self) -> None:
        accept = self._accept
        factory: Any = self.factory
        # A factory of TLS over the tracker that allows it (the gateway's own
        # listeners, tlsgate._leantls): each connection is one transport
        # doing TCP and TLS, around the tracker's protocol.
        tls: Any = getattr(factory, "lean_tls", None)
        build = (factory if tls is None else tls.factory).buildProtocol
        transport = self.transport if tls is None else tls.transport
        limit = self.numberAccepts
        accepted = 0
        try:
            for _ in range(limit):
                try:
                    skt, addr = accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.EPERM:
                        continue  # refused by a firewall rule: on to the next
                    self.numberAccepts = max(1, limit - accepted)
                    tcp.Port.doRead(self)
                    self.numberAccepts += accepted
                    return
                accepted += 1
                if len(addr) == 4:  # IPv6: the scope ID, as the stock loop keeps it
                    host = socket.getnameinfo(
                        addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
                    )
                    addr = (host[0], *addr[1:])
                protocol = build(self._buildAddr(addr))
                if protocol is None:
                    skt.close()
                    continue
                s = self.sessionno
                self.sessionno = s + 1
                protocol.makeConnection(
                    transport(skt, protocol, addr, self, s, self.reactor)
                )
            # The stock loop's scaling: more next time after a full batch,
            # else no more than were there.
            if accepted == limit:
                self.numberAccepts = limit + 20
            else:
                self.numberAccepts = max(1, accepted)
        except BaseException:
            log.deferr()  # as the stock loop does


def use_lean_transports(port: object) -> None:
    """
    Have a TCP listening port accept L{LeanServer}s with C{TCP_NODELAY} set,
    through L{LeanPort}'s accept loop (ports of other kinds are left alone).
    """
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = LeanServer
        if type(port) is tcp.Port and platformType == "posix":
            # (Windows' select loop must accept one connection per wake-up.)
            port.__class__ = LeanPort
        try:
            port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return  # not TCP after all (nothing relies on it but speed)
        port._no_delay = True  # type: ignore[attr-defined]


class LeanDialledClient(_Lean, tcp.Client):
    """
    A stock C{tcp.Client} (a backend reached through its endpoint: a host
    name, TLS) switched to lean writes and closes once connected
    (L{lean_transport_on}); its class is switched in place.
    """


def lean_transport_on(transport: object) -> None:
    """Switch a connected stock C{tcp.Client} to L{LeanDialledClient}."""
    if type(transport) is tcp.Client:
        transport.__class__ = LeanDialledClient


#: Called once with the connected transport, or with why none could be made.
DialDone = Callable[["LeanClient | None", "Failure | None"], None]


@lru_cache(maxsize=256)
def _address_of(kind: Any, host: str, port: int) -> IPv4Address | IPv6Address:
    """
    A backend's address object, made once: every connection to one backend
    has the same peer, and making one (attrs, with a validator) is two Python
    calls. Twisted's address objects are values, not changed once made.
    """
    address: IPv4Address | IPv6Address = kind("TCP", host, port)
    return address


class LeanClient(_Lean, tcp.Connection):
    """
    A TCP connection dialled to an IP address (see the module).

    Made by L{LeanClient.dial}; until it connects, L{cancel} abandons it.
    Like Twisted's connector, it calls the factory's C{doStart} when it
    dials and C{doStop} when the attempt fails or the connection ends, and
    builds the protocol only once connected.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[Any, ...],
        factory: IProtocolFactory,
        reactor: Any,
        done: DialDone,
        family: int,
    ) -> None:
        # tcp.Connection.__init__ without setblocking (socket() made it so).
        abstract.FileDescriptor.__init__(self, reactor=reactor)
        self.socket = sock
        self.fileno = sock.fileno
        self.realAddress = address
        self._address_type = IPv6Address if family == socket.AF_INET6 else IPv4Address
        self._factory: IProtocolFactory | None = factory
        self._done: DialDone | None = done
        #: The deadlines this attempt waits in, until it ends.
        self._timeout: _Deadlines | None = None
        #: The call that starts watching the socket (outside lean_dispatch).
        self._watch_call: IDelayedCall | None = None
        # Nothing is read until connected: a read event before then is that
        # of a socket closed earlier in the batch whose number this one took
        # (see MADE_IN), and doRead reads nothing while a pause is pending.
        # Connected, the socket is moved to reading, which clears it.
        self._pause_pending = True
        self._no_delay = True
        #: lean_dispatch's batch count when this was dialled (None: the
        #: reactor's own loop runs, and every wake-up is checked; MADE_IN).
        self._made_in: int | None = getattr(reactor, POLLS, None)

    @classmethod
    def dial(
        cls,
        reactor: Any,
        address: tuple[Any, ...],
        factory: IProtocolFactory,
        done: DialDone,
        timeout: float = 0,
        clock: IReactorTime | None = None,
        c_socket: bool = False,
    ) -> LeanClient:
        """
        Connect a protocol of C{factory} to C{address} (an IP address and a
        port, or the 4-tuple of an IPv6 address). C{done} is called once: with
        the transport, after the protocol's C{makeConnection}; or with the
        failure (no socket to be had, refused, unreachable, C{timeout} seconds
        passed on C{clock}, the factory built no protocol). It may be called
        before this returns.

        @param c_socket: make the socket L{_CSocket} rather than
            C{socket.socket}: for the gateway's own relay, whose protocol
            never sees it. A protocol that may call C{getHandle()} (an
            embedder's) gets the usual C{socket.socket}.
        """
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        make = _CSocket if c_socket else socket.socket
        try:
            sock = make(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:  # out of descriptors or buffers, as stock reports it
            done(None, Failure(error.ConnectBindError(e.errno, e.strerror)))
            return cls._unusable(address, factory, reactor, family)
        client = cls(sock, address, factory, reactor, done, family)
        factory.doStart()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(address)
        except OSError as e:
            code = e.errno or errno.EINVAL
        if code not in (0, errno.EINPROGRESS):
            client._fail(code)
            return client
        if timeout > 0:
            client._timeout = _deadlines(clock or reactor, timeout)
            client._timeout.add(client)
        # Connected or not, writability says so (at once when it is).
        if client._made_in is None:
            # The reactor's own loop hands out the rest of a batch of events
            # after this handler, and cannot tell an event of a socket closed
            # earlier in the batch, whose number this one may have, from this
            # one's: watched from the next turn, as Twisted's connector does.
            # Under lean_dispatch the loop tells them apart (MADE_IN).
            client._watch_call = reactor.callLater(0, client._watch)
        else:
            client.startWriting()
        return client

    def _watch(self) -> None:
        self._watch_call = None
        if self._done is not None:
            self.startWriting()

    def stopReading(self) -> None:
        _Lean.stopReading(self)
        if self._done is not None:
            # Still dialling: doRead stopped at a read event that was not
            # this socket's, and the next one must find the pause too.
            self._pause_pending = True

    @classmethod
    def _unusable(
        cls,
        address: tuple[Any, ...],
        factory: IProtocolFactory,
        reactor: Any,
        family: int,
    ) -> LeanClient:
        """A client that never had a socket: cancelling it does nothing."""
        client = cls.__new__(cls)
        abstract.FileDescriptor.__init__(client, reactor=reactor)
        client.realAddress = address
        client._address_type = IPv6Address if family == socket.AF_INET6 else IPv4Address
        client._factory = None
        client._done = None
        client._timeout = None
        client._watch_call = None
        client._made_in = None
        client.disconnected = 1
        return client

    def getPeer(self) -> IPv4Address | IPv6Address:
        return _address_of(self._address_type, *self.realAddress[:2])

    def getHost(self) -> IPv4Address | IPv6Address:
        try:
            host, port = self.socket.getsockname()[:2]
        except (OSError, AttributeError):  # closed: the attempt failed or ended
            host, port = ("::" if self._address_type is IPv6Address else "0.0.0.0"), 0
        return self._address_type("TCP", host, port)

    def __repr__(self) -> str:
        return f"<LeanClient to {self.realAddress[0]}:{self.realAddress[1]}>"

    # -- connecting ----------------------------------------------------------

    def doWrite(self) -> Any:
        if self._done is None:
            return tcp.Connection.doWrite(self)
        dialled = self._made_in
        if dialled is None or dialled >= getattr(self.reactor, DISPATCHING):
            # connect() again, as Twisted's connector does: it answers for
            # this socket, whatever event woke us (EISCONN: connected).
            code = self.socket.connect_ex(self.realAddress)
            if code in (errno.EINPROGRESS, errno.EALREADY):
                return None  # not yet
            if code not in (0, errno.EISCONN):
                self._fail(code)
                return None
        # Under lean_dispatch, writability reported by a later epoll_wait
        # than the dial's alone means connected: the kernel reports no
        # EPOLLOUT while the SYN waits for an answer, and a failed attempt
        # comes with EPOLLERR, which the loop hands to connectionLost, never
        # to doWrite. One system call fewer per backend connection. An event
        # of the dial's own batch may be a closed socket's of the same
        # number (an earlier handler closed it, this dial reused it): that
        # one is checked as above.
        done, self._done = self._done, None
        self._cancel_timers()
        factory = self._factory
        assert factory is not None
        try:
            protocol = factory.buildProtocol(self.getPeer())
        except Exception:
            self._factory = None
            self._close_attempt()
            factory.doStop()
            done(None, Failure())
            return None
        if protocol is None:
            self._factory = None
            self._close_attempt()
            factory.doStop()
            done(None, Failure(error.NoProtocol()))
            return None
        self.protocol = protocol
        self.connected = 1
        _read_instead_of_write(self)
        protocol.makeConnection(self)
        done(self, None)
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self._done is not None:
            # The reactor saw the attempt fail (EPOLLERR/EPOLLHUP): SO_ERROR
            # says why. (Not another socket's event of the same number: see
            # dial and MADE_IN.) Or the reactor is shutting down.
            code = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(code)
            else:
                # No error on the socket: the reactor let go of it (shutdown).
                self._end_attempt(
                    Failure(error.ConnectError(string=reason.getErrorMessage()))
                )
            return
        if not self.connected:
            return  # the attempt ended before it connected: nothing more to end
        _connection_lost(self, reason)
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.doStop()

    def cancel(self) -> None:
        """Abandon the attempt (nothing is called back); once connected: abort."""
        if self._done is None:
            if self.connected:
                self.abortConnection()
            return
        self._done = None
        self._close_attempt()
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.doStop()

    def _timed_out(self) -> None:
        self._timeout = None
        if self._done is None:
            return
        self._end_attempt(
            Failure(error.TimeoutError(f"connecting to {self.realAddress[0]}"))
        )

    def _fail(self, code: int) -> None:
        self._end_attempt(Failure(error.getConnectError((code, os.strerror(code)))))

    def _end_attempt(self, reason: Failure) -> None:
        done, self._done = self._done, None
        self._close_attempt()
        factory, self._factory = self._factory, None
        if factory is not None:
            factory.doStop()
        if done is not None:
            done(None, reason)

    def _cancel_timers(self) -> None:
        """The attempt's timers, gone: its timeout, and a watch to start."""
        if self._timeout is not None:
            self._timeout.discard(self)
            self._timeout = None
        if self._watch_call is not None:
            self._watch_call.cancel()
            self._watch_call = None

    def _close_attempt(self) -> None:
        self._cancel_timers()
        self.stopWriting()
        self.disconnected = 1
        self.socket.close()


# The peer's FIN on these is handled in lean_dispatch's loop.
for _half_closing in (LeanServer, LeanClient):
    if IHalfCloseableDescriptor.implementedBy(_half_closing):
        HALF_CLOSING.add(_half_closing)
