"""
The listener keys that an ini C{[listener:NAME]} section and a C{tlsgate:}
endpoint description share: one table of names, targets and value parsers,
and one check of C{client_ca}/C{client_auth}/C{allow}, so that the two
spellings of a listener cannot drift apart.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from typing import Any

from tlsgate.auth import parse_allow
from tlsgate.certs import check_cipher_string
from tlsgate.config._values import (
    parse_alpn,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_groups,
    parse_percent,
    parse_positive_int,
)

Parse = Callable[[str], Any]


def parse_cipher_string(text: str) -> str:
    """An OpenSSL cipher string that OpenSSL accepts."""
    problem = check_cipher_string(text.strip())
    if problem is not None:
        raise ValueError(problem)
    return text.strip()


#: key -> (what it fills: "listener" (the ListenerConfig), "tls" (its
#: TLSPolicy) or "limits" (its Limits), the field, the value parser).
#: C{None} as the parser: a file path, which each caller reads against its
#: own directory (the ini file's; the working directory for an endpoint).
TLS_LISTENER_FIELDS: dict[str, tuple[str, str, Parse | None]] = {
    "cert": ("listener", "cert", None),
    "key": ("listener", "key", None),
    "sni_dir": ("listener", "sni_dir", None),
    "sni_strict": ("listener", "sni_strict", parse_bool),
    "client_ca": ("listener", "client_ca", None),
    "client_auth": ("listener", "client_auth", lambda t: parse_choice(t, ("none", "request", "require"))),
    "allow": ("listener", "allow", parse_allow),
    "ocsp_response": ("listener", "ocsp_response", None),
    "alpn": ("tls", "alpn", parse_alpn),
    "min_version": ("tls", "min_version", lambda t: parse_choice(t, ("1.2", "1.3"))),
    "ciphers": ("tls", "ciphers", parse_cipher_string),
    "groups": ("tls", "groups", parse_groups),
    "session_resumption": ("tls", "session_resumption", parse_bool),
    "session_timeout": ("tls", "session_timeout", parse_duration),
    "handshake_timeout": ("limits", "handshake_timeout", parse_duration),
    "idle_timeout": ("limits", "idle_timeout", parse_duration),
    "max_lifetime": ("limits", "max_lifetime", parse_duration),
    "lifetime_jitter": ("limits", "lifetime_jitter", parse_percent),
    "close_grace": ("limits", "close_grace", parse_duration),
    "rotation_grace": ("limits", "rotation_grace", parse_duration),
    "max_connections": ("limits", "max_connections", parse_positive_int),
    "max_connections_per_client": ("limits", "max_connections_per_client", parse_positive_int),
}  # fmt: skip

#: The shared keys whose values are lists (space-separated in the ini).
LIST_KEYS = ("alpn", "groups")


def did_you_mean(word: str, known: Collection[str]) -> str:
    """C{" (did you mean 'x'?)"} for a near miss among C{known}, else C{""}."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def client_auth_problems(
    given: Collection[str], listener: dict[str, Any]
) -> list[tuple[str, str]]:
    """
    (key, message) for each of C{client_auth} and C{allow} that cannot work
    as given; with C{client_ca} and no C{client_auth}, sets C{client_auth}
    to C{require} in C{listener} (the parsed listener values).

    @param given: the keys that were written (parsed or not).
    """
    problems = []
    if "client_ca" in listener:
        listener.setdefault("client_auth", "require")
        if "allow" in listener and listener["client_auth"] == "none":
            problems.append(("allow", "has no effect with client_auth = none"))
    else:
        for key in ("client_auth", "allow"):
            if key in given and (key != "client_auth" or listener.get(key) != "none"):
                problems.append(
                    (key, "needs client_ca (the CAs client certificates must chain to)")
                )
    return problems
