"""
What the cyclic garbage collector costs a gateway process under handshake
load: collections per generation, their total time, and per connection.

    python bench/gc_cost.py                 # as the gateway runs (settled heap)
    python bench/gc_cost.py --no-settle     # without tlsgate._heap's freeze
    python bench/gc_cost.py --connections 5000 --concurrency 32

The gateway (this tree's C{src}, C{session_resumption = off}) runs in this
process on the epoll reactor, as C{bench/opcodes.py} runs it; client threads
open C{--connections} TLS 1.3 connections (a full handshake and one relayed
C{GET} each), and C{gc.callbacks} times every collection meanwhile. A full
(generation 2) collection stops every connection for as long as it takes,
so its time is a latency spike as well as CPU. Not a test and not run in CI.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import instructions  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--no-settle", action="store_true",
                   help="leave the heap as start-up made it")  # fmt: skip
    a = p.parse_args()

    from twisted.internet import epollreactor

    epollreactor.install()
    from tlsgate import tap

    if a.no_settle:
        tap.settle_when_running = lambda reactor: None  # type: ignore[assignment]

    spent: dict[int, list[float]] = {0: [], 1: [], 2: []}
    began = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent[info["generation"]].append(time.perf_counter() - began[0])

    # makeService settles the heap once the reactor runs, as under twistd.
    instructions.in_process(
        a.connections,
        a.concurrency,
        lambda: gc.callbacks.append(timed),
        lambda: gc.callbacks.remove(timed),
    )

    n = a.connections
    print(
        f"{n} connections, {a.concurrency} at a time;"
        f" {gc.get_freeze_count()} objects frozen,"
        f" {len(gc.get_objects())} tracked at the end"
    )
    for generation, times in spent.items():
        longest = max(times, default=0.0)
        print(
            f"  generation {generation}: {len(times)} collections,"
            f" {sum(times) * 1000:.1f} ms in all ({sum(times) * 1e6 / n:.1f} µs per"
            f" connection), the longest {longest * 1000:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
