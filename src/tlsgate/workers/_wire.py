"""
The supervisor's wire formats: pure encoders and decoders, no I/O.

Supervisor and workers speak line-delimited JSON over one Unix socket pair
per worker. The fork server's socket is a C{SOCK_SEQPACKET} pair, so
messages keep their bounds: it is told its configuration once, as one pickle
(a frozen L{GatewayConfig} and the listening descriptors), and then gets one
JSON message per worker to fork, with the worker's end of its socket pair
passed alongside (C{SCM_RIGHTS}).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from typing import Any

from tlsgate.config import GatewayConfig
from tlsgate.tracker._shared import RegionLayout

#: Enough for /status of hundreds of certificates; a line longer than this
#: ends the worker's control connection.
MAX_LINE = 16 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line (without the line end, which sendLine adds)."""
    return json.dumps(message, separators=(",", ":")).encode()


def decode(line: bytes) -> dict[str, Any]:
    """One line as one message; anything but a JSON object is an error."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"not a message: {line[:80]!r}")
    return message


@dataclass(frozen=True)
class ForkServerSetup:
    """
    What a fork server needs: the config its workers serve, and, per
    listener name, the descriptor number and address family of the socket
    the supervisor bound for it (inherited at those numbers).
    """

    config: GatewayConfig
    sockets: dict[str, tuple[int, int]]
    generation: int
    #: The descriptor number and layout of this generation's connection
    #: counts (a region the supervisor made), and of the older generations'
    #: still holding connections.
    counts: tuple[int, RegionLayout]
    older_counts: tuple[tuple[int, RegionLayout], ...] = ()
    #: With SO_REUSEPORT (an experiment): per listener, one descriptor per slot.
    per_slot: dict[str, list[int]] = field(default_factory=dict)
    #: Per listener, the certificate generation to number from (one more than
    #: the highest the workers before reported), so numbers never go back.
    first_generation: dict[str, int] = field(default_factory=dict)

    def descriptors(self) -> list[int]:
        """Every listening descriptor inherited."""
        return [fd for fd, _ in self.sockets.values()] + [
            fd for fds in self.per_slot.values() for fd in fds
        ]


def pack_setup(setup: ForkServerSetup) -> bytes:
    return pickle.dumps(setup)


def unpack_setup(data: bytes) -> ForkServerSetup:
    setup = pickle.loads(data)  # from our own supervisor, over a private pipe
    if not isinstance(setup, ForkServerSetup):
        raise ValueError("not a fork server setup")
    return setup
