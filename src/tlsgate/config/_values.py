"""
Parsers for the value syntaxes of the ini file, as pure functions.

Each raises C{ValueError} with a message meant for the operator; the config
parser adds file, section and key.
"""

from __future__ import annotations

import os
import re

from tlsgate.certs import check_groups

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_TRUE = {"on", "yes", "true", "1"}
_FALSE = {"off", "no", "false", "0"}


def parse_duration(text: str) -> float:
    """
    Seconds from C{250ms}, C{30s}, C{5m}, C{2h}, C{1d} or a bare number.

    C{0} (or C{off}) means "no limit" to the caller; it is returned as C{0.0}.
    """
    if text.strip().lower() in ("off", "none"):
        return 0.0
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not a duration; use e.g. 250ms, 30s, 5m, 2h, 1d or seconds"
        )
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not on or off")


def parse_percent(text: str) -> float:
    """A fraction from C{10%} (or a bare C{0.1}), between 0 and 1."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a percentage such as 10%") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r} is not between 0% and 100%")
    return value


def parse_positive_int(text: str, *, allow_zero: bool = True) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(
            f"{text!r} must be {'0 or more' if allow_zero else 'at least 1'}"
        )
    return value


def parse_choice(text: str, choices: tuple[str, ...]) -> str:
    word = text.strip().lower()
    if word not in choices:
        raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
    return word


def parse_groups(text: str) -> tuple[str, ...]:
    """
    Key exchange group names, in order of preference, from
    C{X25519MLKEM768 X25519 P-256 P-384} (the ini file) or
    C{X25519MLKEM768,X25519} (the C{tlsgate:} endpoint): whitespace and
    commas both separate.

    Each name is checked against the OpenSSL that serves, so an unknown or
    misspelt one is refused here, with a near match when there is one.
    """
    return check_groups(re.split(r"[\s,]+", text.strip()) if text.strip() else ())


def parse_path(text: str, base: str) -> str:
    """A path from the ini, relative to the ini file's directory."""
    if not text.strip():
        raise ValueError("empty path")
    return os.path.join(base, os.path.expanduser(text.strip()))


def parse_alpn(text: str) -> tuple[str, ...]:
    """ALPN protocol names, in order of preference, separated by spaces."""
    protocols = tuple(text.split())
    if not protocols:
        raise ValueError("no protocol given (e.g. h2 http/1.1)")
    for p in protocols:
        if not p.isascii() or len(p) > 255:
            raise ValueError(f"{p!r} is not an ALPN protocol name")
    return protocols
