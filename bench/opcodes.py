"""
Python bytecodes per relayed connection, by module and by function: where
the interpreter's share of a connection goes, layer by layer.

    python bench/opcodes.py                          # 300 connections, 16 at a time
    python bench/opcodes.py --connections 500 --concurrency 1 --top 60
    python bench/opcodes.py --callers Connection._raise_ssl_error
    python bench/opcodes.py --requests 2000 --concurrency 4   # per keep-alive request

The gateway (this tree's C{src}, C{session_resumption = off}) runs in this
process on Twisted's reactor; client threads open C{--connections} TLS 1.3
connections (ECDSA P-256, a full handshake each, one C{GET} relayed to a
loopback backend that answers and closes), C{--concurrency} at a time. After
30 warm-up connections, C{sys.settrace} counts every bytecode the reactor's
thread runs (C{f_trace_opcodes}) and every Python call, by code object; the
client and backend threads are not traced. The figures are per connection.
With C{--requests N}, they are per keep-alive request instead:
C{--concurrency} connections are opened and warmed up first, then N
requests are made over them (each connection waits for an answer before
its next request), to a backend that answers each and keeps the connection.

Counts, not times: they do not move with the machine's load, and they say
which layer a rewrite could take work from. C code (OpenSSL, the kernel) is
not in them: bench/instructions.py counts all of it. With one connection at
a time the reactor's per-turn work (polling, timers) is paid by each
connection; with several it is shared, as under load. Not a test and not
run in CI.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import instructions  # noqa: E402


def short(filename: str) -> str:
    """A code object's file, relative to site-packages or the repository."""
    for marker in ("site-packages/", f"{REPO}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--top", type=int, default=30, help="functions to list")
    p.add_argument("--requests", type=int, default=0, metavar="N",
                   help="count N keep-alive requests instead of connections")  # fmt: skip
    p.add_argument("--callers", metavar="QUALNAME", default=None,
                   help="also count who calls the function of this qualified"
                   " name (its caller and the caller's caller)")  # fmt: skip
    a = p.parse_args()

    opcodes: collections.Counter[tuple[str, str]] = collections.Counter()
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    callers: collections.Counter[tuple[str, str]] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        where = (code.co_filename, code.co_qualname)
        if event == "call":
            calls[where] += 1
            if code.co_qualname == a.callers and frame.f_back is not None:
                back = frame.f_back
                above = back.f_back.f_code.co_qualname if back.f_back else "-"
                callers[(back.f_code.co_qualname, above)] += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            opcodes[where] += 1
        return trace

    if a.requests:
        run, n, unit = instructions.in_process_requests, a.requests, "request"
        what = f"{n} keep-alive requests over {a.concurrency} connections"
    else:
        run, n, unit = instructions.in_process, a.connections, "connection"
        what = f"{n} connections, {a.concurrency} at a time"
    run(n, a.concurrency, lambda: sys.settrace(trace), lambda: sys.settrace(None))
    print(
        f"{sum(opcodes.values()) / n:,.0f} bytecodes and"
        f" {sum(calls.values()) / n:,.0f} Python calls per {unit} ({what})"
    )
    by_module: collections.Counter[str] = collections.Counter()
    for (filename, _), count in opcodes.items():
        by_module[short(filename)] += count
    print(f"\nbytecodes per {unit}, by module:")
    for module, count in by_module.most_common(25):
        print(f"  {count / n:8.1f}  {module}")
    print(f"\nthe {a.top} functions with the most (bytecodes, calls per {unit}):")
    for (filename, name), count in opcodes.most_common(a.top):
        per_call = calls[(filename, name)] / n
        print(f"  {count / n:8.1f} {per_call:6.2f}  {short(filename)} {name}")
    if a.callers:
        print(f"\ncalls of {a.callers} per {unit}, by caller (and its caller):")
        for (caller, above), count in callers.most_common():
            print(f"  {count / n:6.2f}  {caller}  <-  {above}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
