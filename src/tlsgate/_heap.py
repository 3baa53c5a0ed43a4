"""
A gateway process's heap, settled once it runs: what start-up made is put
out of the cyclic garbage collector's reach.

Python's collector walks every tracked object in a full (generation 2)
collection. A gateway process holds about 45,000 of them from start-up
(Twisted, pyOpenSSL, cryptography, tlsgate's modules, the config and the
TLS contexts), and they live as long as it does. Under handshake load a full
collection came about once per 2,000 connections and took 28 ms, with every
connection in flight waiting for it: a latency spike, and about 14 µs of CPU
per connection on average (measured in-process, docs/benchmarks.md).
C{gc.freeze()} moves them to a permanent generation that collections skip,
so a full collection walks only what connections made since.

L{settle_when_running} is called by the twistd plugin for a one-process
gateway and by each worker, never by the embeddable parts: an embedder's
heap is the embedder's business.

The price: what start-up made and a later config reload drops is freed by
reference counting as before, but what of it sits in a reference cycle is
never collected. That is bounded and happens once (what a reload makes is
not frozen): at most the first config's listener stacks.
"""

from __future__ import annotations

import gc

from twisted.internet.interfaces import IReactorCore


def settle() -> int:
    """
    Collect what start-up left behind, then freeze the rest.

    @return: how many objects are now frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def settle_when_running(reactor: IReactorCore) -> None:
    """L{settle} once C{reactor} runs: after the listeners are built and bound."""
    reactor.callWhenRunning(settle)
