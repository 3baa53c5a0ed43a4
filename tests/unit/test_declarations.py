"""
Declarations made once per kind of connection (L{tlsgate._declarations}),
and the tracker's use of them.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.test.proto_helpers import StringTransport
from zope.interface import implementer

from tlsgate._declarations import once_per_kind
from tlsgate.tracker._connection import TrackedProtocol, _declaration


def test_made_once_per_key_and_shared_after() -> None:
    made: list[str] = []

    def make(name: str) -> object:
        made.append(name)
        return object()

    first = once_per_kind(("test", 1), lambda: make("one"))
    assert once_per_kind(("test", 1), lambda: make("again")) is first
    assert once_per_kind(("test", 2), lambda: make("two")) is not first
    assert made == ["one", "two"]


def test_nothing_to_declare_is_remembered_too() -> None:
    calls = []

    def make() -> None:
        calls.append(1)

    assert once_per_kind(("test", "none"), make) is None
    assert once_per_kind(("test", "none"), make) is None
    assert calls == [1]


@implementer(ITCPTransport)
class TCPish(StringTransport):
    pass


def test_wrappers_of_one_kind_share_a_declaration_and_kinds_do_not() -> None:
    a, b = (
        _declaration(TrackedProtocol, TCPish(), False),
        _declaration(TrackedProtocol, TCPish(), False),
    )
    assert a is b
    half = _declaration(TrackedProtocol, TCPish(), False, half_close=True)
    assert half is not a
    assert ITCPTransport in list(half) and IHalfCloseableProtocol in list(half)
    assert IHalfCloseableProtocol not in list(a)
    plain = _declaration(TrackedProtocol, StringTransport(), False)
    assert ITCPTransport not in list(plain)
