"""The ini parser: values, every error naming file, section and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tlsgate.config import (
    load_config,
    parse_bool,
    parse_config,
    parse_duration,
    parse_percent,
)
from tlsgate.config._parser import GATEWAY_KEYS, LISTENER_KEYS
from tlsgate.errors import ConfigErrors

GOOD = """\
[gateway]
drain_timeout = 10s   ; comment
log_format = text
workers = 1

[listener:web]
listen = tcp:8443:interface=127.0.0.1
backend = tcp:127.0.0.1:8080  unix:/run/app.sock
cert = certs/fullchain.pem
key = /etc/tlsgate/privkey.pem
min_version = 1.3
ciphers = ECDHE+AESGCM
session_resumption = off
session_timeout = 2m
backend_connect_timeout = 250ms
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as raised:
        parse_config(text, file="/etc/tlsgate/gateway.ini")
    return [str(e) for e in raised.value.errors]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400),
     ("12", 12), ("0", 0), ("1.5s", 1.5)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "1w", "s"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_bools_and_percentages() -> None:
    assert parse_bool("On") is True and parse_bool("off") is False
    assert parse_percent("10%") == pytest.approx(0.1)
    with pytest.raises(ValueError):
        parse_percent("150%")
    with pytest.raises(ValueError):
        parse_bool("maybe")


def test_a_full_listener_parses() -> None:
    config = parse_config(GOOD, file="/etc/tlsgate/gateway.ini")
    assert config.drain_timeout == 10
    (web,) = config.listeners
    assert web.name == "web"
    assert web.backends == ("tcp:127.0.0.1:8080", "unix:/run/app.sock")
    assert web.cert == "/etc/tlsgate/certs/fullchain.pem"  # relative to the file
    assert web.key == "/etc/tlsgate/privkey.pem"
    assert web.tls.min_version == "1.3"
    assert web.tls.session_resumption is False
    assert web.tls.session_timeout == 120
    assert web.backend_connect_timeout == 0.25


def test_unknown_key_names_file_section_key_and_a_near_miss() -> None:
    (error,) = errors_of(GOOD.replace("session_timeout", "sesion_timeout"))
    assert error == (
        "/etc/tlsgate/gateway.ini: [listener:web] sesion_timeout: unknown key"
        " (did you mean 'session_timeout'?)"
    )


def test_unknown_section_is_an_error() -> None:
    (error,) = errors_of(GOOD + "\n[listner:api]\nlisten = tcp:1\n")
    assert "[listner:api]: unknown section" in error
    assert "did you mean [listener:api]?" in error


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace("drain_timeout = 10s", "drain_timeout = soon").replace(
        "min_version = 1.3", "min_version = 1.1"
    )
    found = errors_of(text)
    assert len(found) == 2
    assert any("[gateway] drain_timeout" in e for e in found)
    assert any("[listener:web] min_version" in e for e in found)


def test_every_interface_key_is_accepted_together(tmp_path: Path) -> None:
    """All 36 keys of the interface page parse: nothing is refused or ignored."""
    text = """\
[gateway]
admin = tcp:9900:interface=127.0.0.1
admin_token_file = admin.token
workers = 1
drain_delay = 5s
drain_timeout = 30s
log_format = json

[listener:web]
listen = tcp:8443:interface=0.0.0.0
backend = tcp:127.0.0.1:8080 tcp:127.0.0.1:8081
cert = web/fullchain.pem
key = web/privkey.pem
sni_dir = certs
sni_strict = off
client_ca = clients-ca.pem
client_auth = require
allow = dns:*.corp.example uri:spiffe://example.org/billing/* cn:ops
ocsp_response = web/ocsp.der
alpn = h2 http/1.1
min_version = 1.2
ciphers = ECDHE+AESGCM:ECDHE+CHACHA20
session_resumption = on
session_timeout = 5m
handshake_timeout = 10s
idle_timeout = 5m
max_lifetime = 0
lifetime_jitter = 10%
close_grace = 5s
rotation_grace = off
max_connections = 10000
max_connections_per_client = 0
proxy_protocol = v2
backend_tls = on
backend_ca = backend-ca.pem
backend_server_name = app.internal
backend_cert = client.pem
backend_key = client.key
backend_connect_timeout = 5s
"""
    config = parse_config(text, file=str(tmp_path / "g.ini"))
    (web,) = config.listeners
    assert web.tls.alpn == ("h2", "http/1.1")
    assert web.allow is not None and len(web.allow.rules) == 3
    assert web.sni_dir == str(tmp_path / "certs") and web.client_auth == "require"
    assert config.drain_delay == 5.0


def test_every_interface_key_is_known() -> None:
    """The key lists match the interface page, every key implemented."""
    assert len(LISTENER_KEYS) == 31 and len(GATEWAY_KEYS) == 6


def test_missing_required_keys() -> None:
    found = errors_of("[listener:web]\nlisten = tcp:8443\n")
    assert sorted(found) == [
        "/etc/tlsgate/gateway.ini: [listener:web] backend: required key is missing",
        "/etc/tlsgate/gateway.ini: [listener:web] cert: required key is missing",
    ]


def test_no_listener_is_an_error() -> None:
    (error,) = errors_of("[gateway]\ndrain_timeout = 1s\n")
    assert "no [listener:NAME] section" in error


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("listen", "ssl:8443", "is a TLS endpoint"),
        ("listen", "bogus:1", "not a server endpoint description"),
        ("backend", "tls:example.com:443", "is a TLS endpoint"),
        ("backend", "tcp:onlyhost", "not a client endpoint description"),
        ("ciphers", "NOTACIPHER", "accepts no cipher"),
        ("session_resumption", "sometimes", "not on or off"),
    ],
)
def test_bad_values_name_their_key(key: str, value: str, message: str) -> None:
    text = "\n".join(
        f"{key} = {value}" if line.startswith(f"{key} =") else line
        for line in GOOD.splitlines()
    )
    (error,) = errors_of(text)
    assert f"[listener:web] {key}: " in error and message in error


def test_duplicate_key_and_garbage_lines() -> None:
    (dup,) = errors_of(GOOD + "listen = tcp:9999\n")
    assert "[listener:web] listen: key appears twice" in dup
    (garbage,) = errors_of("this is not ini\n")
    assert "comes before any [section]" in garbage


def test_workers_is_a_count_or_auto() -> None:
    """auto is the CPUs the process may run on; nonsense names the key."""
    assert (
        parse_config(GOOD.replace("workers = 1", "workers = 3"), file="g.ini").workers
        == 3
    )
    auto = parse_config(GOOD.replace("workers = 1", "workers = auto"), file="g.ini")
    assert auto.workers == len(os.sched_getaffinity(0))
    for bad in ("0", "-2", "many", "1.5"):
        (error,) = errors_of(GOOD.replace("workers = 1", f"workers = {bad}"))
        assert "[gateway] workers" in error and "or auto" in error


def test_log_format_is_text_or_json() -> None:
    config = parse_config(
        GOOD.replace("log_format = text", "log_format = json"), file="g.ini"
    )
    assert config.log_format == "json"
    (error,) = errors_of(GOOD.replace("log_format = text", "log_format = xml"))
    assert "[gateway] log_format: 'xml' is not one of text, json" in error


def test_load_config_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as raised:
        load_config(str(tmp_path / "missing.ini"))
    assert "missing.ini: cannot read the file" in str(raised.value)


def test_systemd_listen_is_accepted_outside_socket_activation() -> None:
    """systemd: endpoints are only usable under socket activation; check must not fail."""
    config = parse_config(
        GOOD.replace("tcp:8443:interface=127.0.0.1", "systemd:domain=INET:index=0"),
        file="/etc/tlsgate/gateway.ini",
    )
    assert config.listeners[0].listen == "systemd:domain=INET:index=0"


def test_backend_tls_settings_need_backend_tls() -> None:
    (error,) = errors_of(
        GOOD.replace("[listener:web]\n", "[listener:web]\nbackend_ca = ca.pem\n")
    )
    assert "[listener:web] backend_ca: has no effect without backend_tls = on" in error


def test_tls_to_a_unix_backend_needs_a_server_name() -> None:
    text = GOOD.replace("[listener:web]\n", "[listener:web]\nbackend_tls = on\n")
    (error,) = errors_of(text)
    assert (
        "'unix:/run/app.sock' has no host name to check; set backend_server_name"
        in error
    )
    config = parse_config(
        text.replace("backend_tls = on", "backend_tls = on\nbackend_server_name = app"),
        file="g.ini",
    )
    assert config.listeners[0].backend_server_name == "app"


def test_proxy_protocol_values() -> None:
    config = parse_config(
        GOOD.replace("[listener:web]\n", "[listener:web]\nproxy_protocol = v2\n"),
        file="g.ini",
    )
    assert config.listeners[0].proxy_protocol == "v2"
    (error,) = errors_of(
        GOOD.replace("[listener:web]\n", "[listener:web]\nproxy_protocol = v3\n")
    )
    assert "proxy_protocol: 'v3' is not one of off, v1, v2" in error
