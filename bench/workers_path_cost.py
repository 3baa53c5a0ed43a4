"""
What workers add to a worker's per-connection path, measured alone: the
set_context switch from the fork server's context, and the shared counts
(open, close, and the two cap checks), for 2 and 16 workers.

    PYTHONPATH=src python bench/workers_path_cost.py

Not a test, not run in CI.
"""

from __future__ import annotations

import timeit

import trustme
from OpenSSL import SSL

from tlsgate.certs._material import parse_certified_key
from tlsgate.certs._policy import TLSPolicy, build_server_context
from tlsgate.tracker import SharedCounts


def per_call_ns(stmt: object, number: int = 20000) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e9


def main() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    material = parse_certified_key(
        leaf.private_key_and_cert_chain_pem.bytes(), None, cert_path="c", key_path=None
    )
    session = build_server_context(material, TLSPolicy())
    current = build_server_context(material, TLSPolicy())
    plain = per_call_ns(lambda: SSL.Connection(current, None))

    def switched() -> None:
        c = SSL.Connection(session, None)
        c.set_context(current)

    shared = per_call_ns(switched)
    print(f"SSL.Connection(ctx)                        {plain:8.0f} ns")
    print(f"SSL.Connection(session) + set_context(ctx) {shared:8.0f} ns"
          f"  (+{shared - plain:.0f} ns)")  # fmt: skip
    for slots in (2, 16):
        counts = SharedCounts(["web"], slots).for_worker("web", 0)

        def accept_and_close(c=counts) -> None:  # type: ignore[no-untyped-def]
            c.total()
            c.of("192.0.2.1")
            c.opened("192.0.2.1")
            c.total()
            c.closed("192.0.2.1")

        print(f"shared counts, {slots:2} workers: checks + open + close"
              f" {per_call_ns(accept_and_close):8.0f} ns per connection")  # fmt: skip


if __name__ == "__main__":
    main()
