"""
Starting fork servers and asking them for workers: the one place where the
supervisor touches processes, behind a small interface so that its decisions
are tested without any.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IReactorProcess, IReactorSocket
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from tlsgate.workers._wire import ForkServerSetup, pack_setup


class IForkServer(Interface):
    """A running fork server of one generation."""

    ended: Deferred[None] = Attribute("Fires once the process has ended.")

    def spawn(slot: int, control: IProtocol) -> None:
        """Fork worker C{slot}, its control socket connected to C{control}."""

    def retire() -> None:
        """Fork no more; end once the last worker has exited."""


class ILauncher(Interface):
    def start(setup: ForkServerSetup, fds: dict[int, int]) -> IForkServer:
        """
        Start a fork server for C{setup}, with each descriptor of ours in
        C{fds} (values) inherited at its number (keys).
        """


class _Ended(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


@implementer(IForkServer)
class ForkServerProcess:
    """A fork server child process and our end of its control socket."""

    def __init__(
        self, sock: socket.socket, ended: Deferred[None], reactor: IReactorSocket
    ) -> None:
        self._sock = sock
        self.ended = ended
        self._reactor = reactor

    def spawn(self, slot: int, control: IProtocol) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            message = json.dumps({"slot": slot}).encode()
            socket.send_fds(self._sock, [message], [theirs.fileno()])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        factory = Factory()
        factory.buildProtocol = lambda addr: control  # type: ignore[assignment,method-assign,return-value]
        self._reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, factory)  # type: ignore[arg-type]
        ours.close()

    def retire(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.send(json.dumps({"retire": True}).encode())
        self._sock.close()


@implementer(ILauncher)
class ProcessLauncher:
    """Starts C{python -m tlsgate.workers._forkserver} children."""

    def __init__(self, reactor: IReactorProcess) -> None:
        self._reactor = reactor

    def start(self, setup: ForkServerSetup, fds: dict[int, int]) -> IForkServer:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        protocol = _Ended()
        child_fds: dict[int, int | str] = {0: 0, 1: 1, 2: 2, 3: theirs.fileno()}
        child_fds.update(fds)
        argv = [sys.executable, "-m", "tlsgate.workers._forkserver"]
        self._reactor.spawnProcess(
            protocol, sys.executable, argv, env=dict(os.environ), childFDs=child_fds
        )
        theirs.close()
        ours.send(pack_setup(setup))
        return ForkServerProcess(ours, protocol.ended, self._reactor)  # type: ignore[arg-type]
