"""
The supervisor's end of a worker's control socket: what it knows of each
worker, requests with answers, and the worker's log events logged here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from tlsgate.workers._decisions import SampleKey, counter_samples
from tlsgate.workers._wire import MAX_LINE, decode, encode

if TYPE_CHECKING:
    from tlsgate.workers._supervisor import SupervisorService

_log = Logger()

#: How long a worker may take to answer a status, metrics or reload request.
REQUEST_TIMEOUT = 5.0


@dataclass
class WorkerHandle:
    """What the supervisor knows of one worker process."""

    slot: int
    generation: int
    started: float
    state: str = "starting"  # starting | serving | draining
    pid: int | None = None
    #: The listeners it said it serves.
    listening: frozenset[str] = frozenset()
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
        if "final" in message:
            # A worker about to exit: what it counted since the last scrape
            # is kept, so the gateway's counters lose nothing.
            final = message["final"]
            self.handle.counters = counter_samples(final.get("metrics", []))
            self.supervisor.note_generations(final.get("generations", {}))
            return
        pending = self._pending.pop(message.get("id", -1), None)
        if pending is not None:
            pending.callback(message)

    def request(self, command: str) -> Deferred[dict[str, Any]]:
        """Ask the worker; fires with its answer, or fails after L{REQUEST_TIMEOUT}."""
        ident = next(self._ids)
        d: Deferred[dict[str, Any]] = Deferred()
        self._pending[ident] = d
        self.sendLine(encode({"id": ident, "cmd": command}))
        clock: IReactorTime = self.supervisor.reactor  # type: ignore[assignment]
        d.addTimeout(REQUEST_TIMEOUT, clock)

        def forget(result: object) -> object:
            self._pending.pop(ident, None)
            return result

        return d.addBoth(forget)

    def tell(self, command: str) -> None:
        self.sendLine(encode({"cmd": command}))

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
