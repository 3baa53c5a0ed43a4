"""
The C{tlsgate:} endpoint description: key=value pairs in, an endpoint out.

The keys are the ini file's listener keys, with the same value parsers, so
names, values and defaults agree; only lists (C{alpn}, C{groups}) are
comma-separated, as spaces do not survive a command line. The shared keys
are one table (L{tlsgate.config._fields}): a key added there is a key of both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamServerEndpoint

from tlsgate._assembly import build_contexts
from tlsgate.certs import ReloadingContextFactory, TLSPolicy
from tlsgate.config import ListenerConfig
from tlsgate.config._fields import (
    LIST_KEYS,
    TLS_LISTENER_FIELDS,
    client_auth_problems,
    did_you_mean,
)
from tlsgate.config._values import (
    parse_path,
    parse_positive_int,
)
from tlsgate.endpoint._endpoint import ReloadingTLSServerEndpoint
from tlsgate.errors import CertificateError, TlsgateError
from tlsgate.tracker import Limits

Parse = Callable[[str], Any]


class EndpointError(TlsgateError, ValueError):
    """A C{tlsgate:} description that cannot be used; the message names the key."""


def _commas(parse: Parse) -> Parse:
    """The ini's space-separated list parser, for a comma-separated value."""
    return lambda text: parse(text.replace(",", " "))


def _path_here(text: str) -> str:
    return os.path.abspath(parse_path(text, os.getcwd()))


def _port(text: str) -> int:
    port = parse_positive_int(text)
    if port > 65535:
        raise ValueError(f"{text!r} is not a port number (0 to 65535)")
    return port


def _interface(text: str) -> str:
    return text.strip()


#: key -> (what it configures, field name, value parser). "endpoint" keys
#: build the TCP endpoint; "listener", "tls" and "limits" fill the
#: ListenerConfig, TLSPolicy and Limits exactly as the ini file does.
KEYS: dict[str, tuple[str, str, Parse]] = {
    "port": ("endpoint", "port", _port),
    "interface": ("endpoint", "interface", _interface),
    "backlog": ("endpoint", "backlog", lambda t: parse_positive_int(t, allow_zero=False)),
    **{
        key: (part, field, _path_here if parse is None
              else _commas(parse) if key in LIST_KEYS else parse)
        for key, (part, field, parse) in TLS_LISTENER_FIELDS.items()
    },
}  # fmt: skip

_REQUIRED = ("port", "cert")
_FILE_KEYS = ("cert", "key", "client_ca", "ocsp_response", "sni_dir")


def _error(key: str | None, message: str) -> EndpointError:
    where = "tlsgate: endpoint" + (f" key {key!r}" if key else "")
    return EndpointError(f"{where}: {message}")


def parse_description(
    args: tuple[str, ...], kwargs: dict[str, str], *, inner: bool = False
) -> tuple[dict[str, Any], ListenerConfig]:
    """
    The values of a C{tlsgate:} description, checked, without touching files.

    @param inner: the endpoint to wrap is given, so C{port}, C{interface}
        and C{backlog} are not keys here.
    @return: the TCP endpoint's arguments and the listener's TLS settings.
    @raise EndpointError: naming the first key that is wrong.
    """
    if args:
        raise _error(
            None, f"{args[0]!r}: give every value as key=value (e.g. port=8443)"
        )
    parts: dict[str, dict[str, Any]] = {
        "endpoint": {},
        "listener": {},
        "tls": {},
        "limits": {},
    }
    for key, raw in kwargs.items():
        entry = KEYS.get(key)
        if entry is not None and inner and entry[0] == "endpoint":
            raise _error(
                key, "the endpoint to wrap is given; this key is for tlsgate: strings"
            )
        if entry is None:
            raise _error(key, "unknown key" + did_you_mean(key, KEYS))
        target, field, parse = entry
        try:
            parts[target][field] = parse(raw)
        except ValueError as e:
            raise _error(key, str(e)) from None
    for key in _REQUIRED[inner:]:
        if key not in kwargs:
            raise _error(key, "required key is missing")
    listener = parts["listener"]
    problems = client_auth_problems(kwargs, listener)
    if problems:
        raise _error(*problems[0])
    try:
        tls, limits = TLSPolicy(**parts["tls"]), Limits(**parts["limits"])
    except ValueError as e:
        raise _error(None, str(e)) from None
    name = "tlsgate" if inner else f"tlsgate:{parts['endpoint']['port']}"
    config = ListenerConfig(
        name=name, listen=name, backends=(), tls=tls, limits=limits, **listener
    )
    return parts["endpoint"], config


def endpoint_from_description(
    reactor: Any, *args: str, **kwargs: str
) -> ReloadingTLSServerEndpoint:
    """
    Build the endpoint of a C{tlsgate:} string (what C{serverFromString}
    calls); the certificates are loaded now.

    @raise EndpointError: a key is wrong, or a file cannot be served (the
        message names it).
    """
    tcp, config = parse_description(args, kwargs)
    contexts = _contexts(config)
    tcp_reactor: IReactorTCP = reactor
    interface = tcp.get("interface", "")
    kind = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    inner = kind(tcp_reactor, tcp["port"], tcp.get("backlog", 50), interface)
    clock: IReactorTime = reactor
    return ReloadingTLSServerEndpoint(
        inner, contexts, clock=clock, limits=config.limits, name=config.name
    )


def _contexts(config: ListenerConfig) -> ReloadingContextFactory:
    try:
        return build_contexts(config)
    except CertificateError as e:
        named = [k for k in _FILE_KEYS if getattr(config, k) in e.paths]
        raise _error(named[0] if named else None, str(e)) from None


def wrap_endpoint(
    inner: IStreamServerEndpoint, *, clock: IReactorTime, **keys: str
) -> ReloadingTLSServerEndpoint:
    """
    Any server endpoint (unix, systemd, a test's) with tlsgate's TLS and
    limits, configured with the keys of a C{tlsgate:} string other than
    C{port}, C{interface} and C{backlog}, as strings:

        wrap_endpoint(inner, clock=reactor, cert="fullchain.pem",
                      sni_dir="certs", client_ca="clients.pem", idle_timeout="2m")

    @raise EndpointError: a key is wrong, or a file cannot be served.
    """
    _tcp, config = parse_description((), keys, inner=True)
    return ReloadingTLSServerEndpoint(
        inner, _contexts(config), clock=clock, limits=config.limits, name=config.name
    )
