"""
Interface declarations that a connection's objects would make one by one,
made once per kind of connection.

Three objects on a connection's path declare interfaces on themselves:
Twisted's TLS layer declares what its transport provides, the protocol that
Twisted's endpoints wrap around a backend protocol gets
C{IHalfCloseableProtocol} from the relay, and the tracker's wrapper shows
what its transport provides. zope.interface builds a new specification for
each such declaration, which under handshake load cost several percent of
the gateway's time, though the result depends only on a few types: the
kind of transport, the kind of wrapped protocol.

A declaration is immutable once made, so one can be shared by every object
of its kind: L{once_per_kind} makes it the first time a key is seen and hands
the same object out afterwards. Keys are a handful per process (one per
combination of classes), so the table stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = object()

#: key -> the declaration made for it (or C{None}: nothing to declare).
_MADE: dict[Hashable, object] = {}


def once_per_kind(key: Hashable, make: Callable[..., T], *args: Any) -> T:
    """
    The declaration for C{key}: C{make(*args)}'s result the first time, the
    same object every time after. C{key} must name everything the
    declaration depends on (the classes involved and their own
    declarations). C{make} is best a plain function, not a closure made per
    call: this runs for every connection.
    """
    found = _MADE.get(key, _MISSING)
    if found is _MISSING:
        found = _MADE[key] = make(*args)
    return found  # type: ignore[return-value]
