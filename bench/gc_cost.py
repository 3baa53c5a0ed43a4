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
import concurrent.futures
import gc
import ssl
import sys
import tempfile
import threading
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
    from twisted.internet import reactor

    from tlsgate import tap

    work = Path(tempfile.mkdtemp(prefix="tlsgate-gc."))
    cert, key = instructions.make_certificate(work)
    backend = instructions.Server(("127.0.0.1", 0), instructions.Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = instructions.free_port()
    ini = work / "gateway.ini"
    ini.write_text(
        "[listener:bench]\n"
        f"listen = tcp:{port}:interface=127.0.0.1\n"
        f"backend = tcp:127.0.0.1:{backend.server_address[1]}\n"
        f"cert = {cert}\nkey = {key}\nsession_resumption = off\n"
    )
    if a.no_settle:
        tap.settle_when_running = lambda reactor: None  # type: ignore[assignment]
    # makeService settles the heap once the reactor runs, as under twistd.
    tap.makeService({"config": str(ini)}).startService()

    spent: dict[int, list[float]] = {0: [], 1: [], 2: []}
    began = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            spent[info["generation"]].append(time.perf_counter() - began[0])

    def clients() -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            for _ in range(30):
                instructions.one_connection(port, ctx)
            gc.callbacks.append(timed)
            with concurrent.futures.ThreadPoolExecutor(a.concurrency) as pool:
                list(
                    pool.map(
                        lambda _: instructions.one_connection(port, ctx),
                        range(a.connections),
                    )
                )
            gc.callbacks.remove(timed)
        finally:
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    reactor.callWhenRunning(  # type: ignore[attr-defined]
        threading.Thread(target=clients, daemon=True).start
    )
    reactor.run()  # type: ignore[attr-defined]
    backend.shutdown()

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
