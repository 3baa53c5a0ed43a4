"""
The attribute reads, calls and other instructions on a relayed connection's
path that CPython 3.11 could not specialise: each one runs the interpreter's
generic, slower path every time.

    python bench/unspecialized.py                  # tlsgate's and Twisted's code
    python bench/unspecialized.py --all            # every module
    python bench/unspecialized.py --connections 1000

The gateway (this tree's C{src}) runs in this process, as C{bench/opcodes.py}
runs it, for C{--connections} relayed connections. Then each function's
quickened code is read (C{dis.get_instructions(code, adaptive=True)}): an
instruction still in its C{*_ADAPTIVE} form whose inline counter has backed
off (the low four bits, 6 or more here) tried to specialise and failed, over
and over; one whose counter is 0 never ran. Typical causes: an attribute
found on the class through an instance (a class default), a class with
C{__getattr__} (every lookup on its instances), a method stored in the
instance, a C{property}. Needs CPython 3.11 (3.12 changed the layout).
Not a test and not run in CI.
"""

from __future__ import annotations

import argparse
import dis
import gc
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import instructions  # noqa: E402
from opcodes import short  # noqa: E402

#: Backoff exponents this high mean many failed attempts to specialise.
FAILED = 6
#: Where the relay path's own code lives (with --all, everything).
PATH = ("tlsgate/", "twisted/internet/", "twisted/protocols/", "OpenSSL/")


def failures(code: types.CodeType) -> list[tuple[int, str, object]]:
    """(backoff, instruction, argument) of each failed instruction in C{code}."""
    raw = code._co_code_adaptive  # type: ignore[attr-defined]
    out = []
    for ins in dis.get_instructions(code, adaptive=True):  # type: ignore[call-arg]
        if not ins.opname.endswith("_ADAPTIVE"):
            continue
        counter = int.from_bytes(raw[ins.offset + 2 : ins.offset + 4], "little")
        if counter and counter & 15 >= FAILED:
            out.append((counter & 15, ins.opname[: -len("_ADAPTIVE")], ins.argval))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--all", action="store_true", help="every module, not the path's")
    a = p.parse_args()
    if sys.version_info[:2] != (3, 11):
        raise SystemExit("needs CPython 3.11: the inline caches it reads are 3.11's")
    instructions.in_process(a.connections, a.concurrency, lambda: None, lambda: None)
    gc.unfreeze()  # the gateway froze its start-up heap, functions included
    seen: set[types.CodeType] = set()
    rows = []
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType) or obj.__code__ in seen:
            continue
        code = obj.__code__
        seen.add(code)
        if not a.all and not any(k in code.co_filename for k in PATH):
            continue
        for backoff, op, arg in failures(code):
            rows.append((short(code.co_filename), code.co_qualname, op, arg, backoff))
    for filename, name, op, arg, backoff in sorted(rows):
        print(f"{filename} {name}: {op} {arg!r} (backoff {backoff})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
