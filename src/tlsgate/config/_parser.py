"""
The ini file parser: text in, a L{GatewayConfig} or every problem out.

It reports all problems at once, each naming file, section and key, with a
"did you mean" for near misses; an unknown key is refused, never silently
ignored.
"""

from __future__ import annotations

import configparser
import difflib
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import clientFromString, serverFromString

from tlsgate.certs import TLSPolicy
from tlsgate.config._fields import (
    TLS_LISTENER_FIELDS,
    client_auth_problems,
    did_you_mean,
)
from tlsgate.config._model import GatewayConfig, ListenerConfig
from tlsgate.config._values import (
    parse_bool,
    parse_choice,
    parse_duration,
    parse_path,
)
from tlsgate.errors import ConfigError, ConfigErrors
from tlsgate.tracker import Limits

GATEWAY_KEYS = (
    "admin", "admin_token_file", "workers", "drain_delay", "drain_timeout",
    "log_format",
)  # fmt: skip
LISTENER_KEYS = (
    "listen", "backend", "cert", "key", "sni_dir", "sni_strict", "client_ca",
    "client_auth", "allow", "ocsp_response", "alpn", "min_version", "ciphers",
    "groups", "session_resumption", "session_timeout", "handshake_timeout", "idle_timeout",
    "max_lifetime", "lifetime_jitter", "close_grace", "rotation_grace",
    "max_connections", "max_connections_per_client", "proxy_protocol",
    "backend_tls", "backend_ca", "backend_server_name", "backend_cert",
    "backend_key", "backend_connect_timeout",
)  # fmt: skip

_REQUIRED = ("listen", "backend", "cert")
_TLS_ENDPOINTS = ("ssl", "tls")


class _NoReactor:
    """Stands in for a reactor while endpoint strings are only parsed, not used."""


def _section_hint(section: str) -> str:
    kind, _colon, name = section.partition(":")
    close = difflib.get_close_matches(
        kind.strip().lower(), ("gateway", "listener"), 1, 0.6
    )
    if not close:
        return ""
    suggestion = (
        f"listener:{name.strip() or 'NAME'}" if close[0] == "listener" else "gateway"
    )
    return f" (did you mean [{suggestion}]?)"


class _Collector:
    """Gathers errors for one file so all are reported together."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[ConfigError] = []

    def add(
        self, message: str, section: str | None = None, key: str | None = None
    ) -> None:
        self.errors.append(
            ConfigError(message, file=self.file, section=section, key=key)
        )

    def value(
        self, section: str, key: str, raw: str, parse: Callable[[str], Any]
    ) -> Any:
        try:
            return parse(raw)
        except ValueError as e:
            self.add(str(e), section, key)
            return None


def _check_server_endpoint(text: str) -> str:
    kind = text.split(":", 1)[0].strip().lower()
    if kind in _TLS_ENDPOINTS:
        raise ValueError(
            f"{text!r} is a TLS endpoint; give a plain one (tcp:, unix:, systemd:),"
            " tlsgate adds TLS itself"
        )
    if kind == "systemd":
        # Twisted reads the inherited descriptors when it parses these; outside
        # socket activation (tlsgate check, a shell) there are none to read.
        return text
    try:
        serverFromString(_NoReactor(), text)
    except Exception as e:  # endpoint parsers raise many kinds
        raise ValueError(
            f"{text!r} is not a server endpoint description: {e}"
        ) from None
    return text


def _check_client_endpoints(text: str) -> tuple[str, ...]:
    descriptions = tuple(text.split())
    if not descriptions:
        raise ValueError("no backend given")
    for d in descriptions:
        if d.split(":", 1)[0].strip().lower() in _TLS_ENDPOINTS:
            raise ValueError(
                f"{d!r} is a TLS endpoint; give a plain one and set"
                " backend_tls = on (its keys check the backend's certificate)"
            )
        try:
            clientFromString(_NoReactor(), d)
        except Exception as e:
            raise ValueError(
                f"{d!r} is not a client endpoint description: {e}"
            ) from None
    return descriptions


def _proxy_protocol(text: str) -> str | None:
    word = parse_choice(text, ("off", "v1", "v2"))
    return None if word == "off" else word


def _server_name(text: str) -> str:
    name = text.strip()
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"{text!r} is not a host name")
    return name


def _workers(text: str) -> int:
    word = text.strip().lower()
    if word == "auto":
        # The CPUs this process may run on (taskset, cgroup cpusets), not
        # the machine's count.
        return max(1, len(os.sched_getaffinity(0)))
    if not word.isdigit() or not 1 <= int(word) <= 1024:
        raise ValueError(f"{text!r} is not a number of processes (1 to 1024) or auto")
    return int(word)


def _log_format(text: str) -> str:
    return parse_choice(text, ("text", "json"))


def parse_config(text: str, *, file: str, base_dir: str | None = None) -> GatewayConfig:
    """
    Parse ini C{text}; C{file} names it in errors.

    Relative certificate paths are taken from C{base_dir} (by default the
    directory of C{file}), so a config works whatever the process's cwd.

    @raise ConfigErrors: with every problem found.
    """
    errors = _Collector(file)
    base = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(file))
    parser = configparser.ConfigParser(
        interpolation=None,
        inline_comment_prefixes=(";", "#"),
        default_section="\x00tlsgate-no-defaults",
        strict=True,
    )
    try:
        parser.read_string(text, source=file)
    except configparser.DuplicateSectionError as e:
        errors.add(f"section appears twice (line {e.lineno})", e.section)
    except configparser.DuplicateOptionError as e:
        errors.add(
            f"key appears twice in the section (line {e.lineno})", e.section, e.option
        )
    except configparser.MissingSectionHeaderError as e:
        errors.add(f"line {e.lineno} comes before any [section]: {e.line.strip()!r}")
    except configparser.ParsingError as e:
        for lineno, line in e.errors:
            errors.add(f"line {lineno} is not 'key = value': {line.strip()!r}")
    if errors.errors:
        raise ConfigErrors(errors.errors)

    gateway: dict[str, Any] = {}
    listeners: list[ListenerConfig] = []
    for section in parser.sections():
        if section == "gateway":
            gateway = _parse_gateway(errors, parser[section], base)
        elif section.startswith("listener:") and section[len("listener:") :].strip():
            listener = _parse_listener(errors, section, parser[section], base)
            if listener is not None:
                listeners.append(listener)
        else:
            hint = _section_hint(section)
            errors.add(
                "unknown section; expected [gateway] or [listener:NAME]" + hint, section
            )
    if not listeners and not errors.errors:
        errors.add("no [listener:NAME] section; nothing to serve")
    if errors.errors:
        raise ConfigErrors(errors.errors)
    return GatewayConfig(listeners=tuple(listeners), source=file, **gateway)


def _unknown_key(
    errors: _Collector, section: str, key: str, known: tuple[str, ...]
) -> bool:
    """Report C{key} if it is not one of C{known}; C{True} when it was reported."""
    if key not in known:
        errors.add("unknown key" + did_you_mean(key, known), section, key)
        return True
    return False


def _parse_gateway(
    errors: _Collector, items: configparser.SectionProxy, base: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    parsers: dict[str, Callable[[str], Any]] = {
        "admin": _check_server_endpoint,
        "admin_token_file": lambda text: parse_path(text, base),
        "workers": _workers,
        "drain_delay": parse_duration,
        "drain_timeout": parse_duration,
        "log_format": _log_format,
    }
    for key, raw in items.items():
        if _unknown_key(errors, "gateway", key, GATEWAY_KEYS):
            continue
        value = errors.value("gateway", key, raw, parsers[key])
        if value is not None:
            out[key] = value
    return out


def _parse_listener(
    errors: _Collector, section: str, items: configparser.SectionProxy, base: str
) -> ListenerConfig | None:
    name = section[len("listener:") :].strip()
    before = len(errors.errors)
    values: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    limits: dict[str, Any] = {}

    def path(text: str) -> str:
        return parse_path(text, base)

    parts = {"listener": values, "tls": tls, "limits": limits}
    parsers: dict[str, tuple[dict[str, Any], str, Callable[[str], Any]]] = {
        "listen": (values, "listen", _check_server_endpoint),
        "backend": (values, "backends", _check_client_endpoints),
        "backend_connect_timeout": (values, "backend_connect_timeout", parse_duration),
        "proxy_protocol": (values, "proxy_protocol", _proxy_protocol),
        "backend_tls": (values, "backend_tls", parse_bool),
        "backend_ca": (values, "backend_ca", path),
        "backend_server_name": (values, "backend_server_name", _server_name),
        "backend_cert": (values, "backend_cert", path),
        "backend_key": (values, "backend_key", path),
    }
    for key, (part, field, parse) in TLS_LISTENER_FIELDS.items():
        parsers[key] = (parts[part], field, parse or path)
    for key, raw in items.items():
        if _unknown_key(errors, section, key, LISTENER_KEYS):
            continue
        target, attr, parse = parsers[key]
        value = errors.value(section, key, raw, parse)
        if value is not None:
            target[attr] = value
    for key in _REQUIRED:
        if key not in items:
            errors.add("required key is missing", section, key)
    for key, problem in client_auth_problems(items, values):
        errors.add(problem, section, key)
    if not values.get("backend_tls"):
        for key in ("backend_ca", "backend_server_name", "backend_cert", "backend_key"):
            if key in items:
                errors.add("has no effect without backend_tls = on", section, key)
    elif "backend_key" in items and "backend_cert" not in items:
        errors.add("needs backend_cert beside it", section, "backend_key")
    elif "backend_server_name" not in items:
        for d in values.get("backends", ()):
            if not d.lower().startswith(("tcp:", "tcp6:", "host:")):
                errors.add(
                    f"{d!r} has no host name to check; set backend_server_name",
                    section,
                    "backend",
                )
    if len(errors.errors) != before:
        return None
    return ListenerConfig(
        name=name, tls=TLSPolicy(**tls), limits=Limits(**limits), **values
    )


def load_config(path: str) -> GatewayConfig:
    """Read and parse the ini file at C{path}."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigErrors(
            [ConfigError(f"cannot read the file: {reason}", file=path)]
        ) from None
    return parse_config(text, file=path)
