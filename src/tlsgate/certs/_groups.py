"""
Key exchange groups: which names OpenSSL accepts, and which one a
connection negotiated.

The names are checked against the OpenSSL that serves (the one inside the
cryptography wheel), not a static list, so a group that build offers (such
as the X25519MLKEM768 post-quantum hybrid) is usable and a misspelt one is
refused when the config is loaded rather than when the first context is
built.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

#: Post-quantum hybrid first (what browsers, Go and Traefik offer by
#: default), then the classical groups every client has.
DEFAULT_GROUPS: tuple[str, ...] = ("X25519MLKEM768", "X25519", "P-256", "P-384")

#: Names suggested for a near miss ("did you mean"); OpenSSL decides validity.
_SUGGESTIONS = (
    "X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "X25519", "X448",
    "P-256", "P-384", "P-521", "secp256r1", "secp384r1", "secp521r1", "prime256v1",
    "MLKEM512", "MLKEM768", "MLKEM1024", "ffdhe2048", "ffdhe3072", "ffdhe4096",
    "ffdhe6144", "ffdhe8192", "brainpoolP256r1tls13", "brainpoolP384r1tls13",
    "brainpoolP512r1tls13",
)  # fmt: skip

#: A plain group name: OpenSSL's list syntax also has "?name", "-name",
#: "*name", "/" and keywords such as DEFAULT, which are not group names.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")

#: pyOpenSSL's bindings, looked up once; absent in an older build.
_set_groups = getattr(_lib, "SSL_CTX_set1_curves_list", None)
_group_name = getattr(_lib, "SSL_get0_group_name", None)


@functools.lru_cache(maxsize=64)
def _openssl_accepts(name: str) -> bool:
    if _set_groups is None:
        return True  # nothing to set them with: build_server_context says so
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    return bool(_set_groups(ctx._context, name.encode("ascii")))


def _hint(name: str) -> str:
    lowered = {s.lower(): s for s in _SUGGESTIONS}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    """
    C{groups} as a tuple, once OpenSSL accepts every one of them.

    @raise ValueError: naming the first group OpenSSL does not know, with a
        near match when there is one.
    """
    out = tuple(groups)
    if not out:
        raise ValueError("no group given (e.g. X25519MLKEM768 X25519 P-256 P-384)")
    seen: set[str] = set()
    for name in out:
        if not _NAME.match(name) or name.upper() == "DEFAULT":
            raise ValueError(f"{name!r} is not a key exchange group name")
        if not _openssl_accepts(name):
            raise ValueError(
                f"unknown key exchange group {name!r}{_hint(name)};"
                f" this OpenSSL ({SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()})"
                " does not offer it"
            )
        if name.lower() in seen:
            raise ValueError(f"group {name!r} is listed twice")
        seen.add(name.lower())
    if not _openssl_accepts(":".join(out)):
        raise ValueError(f"OpenSSL refuses the list {' '.join(out)!r} as a whole")
    return out


def set_groups(ctx: SSL.Context, groups: tuple[str, ...]) -> None:
    """
    Restrict C{ctx}'s key exchange to C{groups}, in that order of preference.

    @raise SSL.Error: when OpenSSL refuses the list, or this pyOpenSSL has no
        binding to set it (never silently OpenSSL's default list).
    """
    if _set_groups is None:
        raise SSL.Error("this pyOpenSSL cannot set key exchange groups")
    if not _set_groups(ctx._context, ":".join(groups).encode("ascii")):
        raise SSL.Error(f"OpenSSL refused the key exchange groups {groups!r}")


#: OpenSSL's names for the groups the C{groups} key usually names: metric
#: labels and /status use the key's spelling, so that C{groups = P-256}
#: matches C{group="P-256"}. Other groups keep OpenSSL's name.
_CONFIG_NAMES = {
    "x25519": "X25519",
    "x448": "X448",
    "secp256r1": "P-256",
    "prime256v1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
}


def negotiated_group(transport: object) -> str | None:
    """
    The key exchange group of the handshake of the TLS connection under
    C{transport}, spelt as the C{groups} key spells it (C{X25519MLKEM768},
    C{X25519}, C{P-256}, C{P-384}...), or C{None} when there was none (a
    TLS 1.2 resumption) or OpenSSL cannot tell.

    Called once per handshake, never per chunk.
    """
    get_handle = getattr(transport, "getHandle", None)
    ssl = getattr(get_handle(), "_ssl", None) if get_handle is not None else None
    if _group_name is None or ssl is None:
        return None
    name = _group_name(ssl)
    if name == _ffi.NULL:
        return None
    found = str(_ffi.string(name).decode("ascii", "replace"))
    return _CONFIG_NAMES.get(found, found)
