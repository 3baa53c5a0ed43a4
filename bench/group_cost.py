"""
What each key exchange group costs the server per full TLS 1.3 handshake,
in time and in memory kept for the connection's life, and what the
per-handshake group lookup costs.

    PYTHONPATH=src python bench/group_cost.py [--handshakes 300] [--rounds 3]
    PYTHONPATH=src python bench/group_cost.py --memory 2000

Handshakes run over memory BIOs in one process, with tlsgate's own server
context (default policy, ECDSA P-256 certificate, no resumption); only the
time spent inside the server's C{do_handshake} calls is counted, so the
client's share of the work is not in the figure. Groups alternate within
each round, and the median of the rounds is quoted.

With C{--memory N}, N server connections per group are kept after their
handshake, with their memory BIOs renewed as the gateway renews an idle
connection's (L{tlsgate._membio.renew}) and the clients freed; the growth of
glibc's heap in use (C{mallinfo2}) divided by N is what OpenSSL keeps per
connection (Python's own small objects live in pymalloc's arenas, outside
that count). Allocations are counted, not timed: the figure does not move
with the machine's load. Why: OpenSSL keeps the client's key share
(C{s3.peer_tmp}) until the connection is freed, and a hybrid ML-KEM share
is far larger than an X25519 one.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import trustme
from OpenSSL import SSL
from OpenSSL._util import lib

from tlsgate._membio import renew
from tlsgate.certs import (
    TLSPolicy,
    build_server_context,
    negotiated_group,
    parse_certified_key,
)

GROUPS = ("X25519MLKEM768", "X25519", "P-256", "P-384")


class _Handle:
    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


def _move(a: SSL.Connection, b: SSL.Connection) -> None:
    while True:
        try:
            b.bio_write(a.bio_read(65536))
        except SSL.WantReadError:
            return


def server_seconds(server_ctx: SSL.Context, group: str) -> tuple[float, SSL.Connection]:
    """One full handshake; the time the server spent in it."""
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    assert lib.SSL_CTX_set1_curves_list(client_ctx._context, group.encode()) == 1
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    spent = 0.0
    done = False
    for _ in range(10):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        _move(client, server)
        started = time.perf_counter()
        try:
            server.do_handshake()
            done = True
        except SSL.WantReadError:
            pass
        spent += time.perf_counter() - started
        _move(server, client)
        if done:
            break
    assert done
    return spent, server


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back (all arenas)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def retained_bytes(server_ctx: SSL.Context, group: str, n: int) -> float:
    """Heap kept per server connection after its handshake (see the module)."""
    kept = []
    server_seconds(server_ctx, group)  # first-use allocations out of the count
    gc.collect()
    before = heap_in_use()
    for _ in range(n):
        _, server = server_seconds(server_ctx, group)
        assert renew(server)
        kept.append(server)
    gc.collect()
    grown = heap_in_use() - before
    del kept
    gc.collect()
    return grown / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", type=int, default=0, metavar="N",
                        help="also the heap kept per connection, over N of them")  # fmt: skip
    args = parser.parse_args()
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    material = parse_certified_key(
        chain, leaf.private_key_pem.bytes(), cert_path="c", key_path="k"
    )
    ctx = build_server_context(material, TLSPolicy(session_resumption=False))
    per_group: dict[str, list[float]] = {g: [] for g in GROUPS}
    for round_ in range(args.rounds):
        order = GROUPS if round_ % 2 == 0 else GROUPS[::-1]
        for group in order:
            total = sum(server_seconds(ctx, group)[0] for _ in range(args.handshakes))
            per_group[group].append(total / args.handshakes)
    base = statistics.median(per_group["X25519"])
    print(f"server time per full handshake, median of {args.rounds} rounds of"
          f" {args.handshakes}:")  # fmt: skip
    for group, times in per_group.items():
        median = statistics.median(times)
        print(f"  {group:16} {median * 1e6:7.0f} us  ({median / base:.2f}x X25519)")
    if args.memory:
        print(
            f"heap kept per connection after its handshake ({args.memory} per group):"
        )
        kept = {g: retained_bytes(ctx, g, args.memory) for g in GROUPS}
        for group, size in kept.items():
            print(
                f"  {group:16} {size:7.0f} bytes  ({size - kept['X25519']:+6.0f} vs X25519)"
            )
    _, server = server_seconds(ctx, "X25519MLKEM768")
    handle = _Handle(server)
    n = 100_000
    lookup = min(timeit.repeat(lambda: negotiated_group(handle), number=n, repeat=3))
    print(f"negotiated_group lookup: {lookup / n * 1e9:.0f} ns per handshake")


if __name__ == "__main__":
    main()
