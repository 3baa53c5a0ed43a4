"""The embedded default and the twistd options, without starting a reactor."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from tlsgate import tap
from tlsgate.certs import ReloadingContextFactory
from tlsgate.demo import DemoPage, demo_config, ensure_demo_certificate
from tlsgate.service import GatewayService, build_service


def test_demo_certificate_is_made_once_and_reused(tmp_path: Path) -> None:
    """First start generates an ECDSA cert for localhost; later starts reuse it."""
    d = str(tmp_path / "demo")
    assert ensure_demo_certificate(d) is True
    first = (tmp_path / "demo" / "cert.pem").read_bytes()
    assert ensure_demo_certificate(d) is False
    assert (tmp_path / "demo" / "cert.pem").read_bytes() == first
    assert os.stat(tmp_path / "demo" / "key.pem").st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate(first)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "localhost" in san.value.get_values_for_type(x509.DNSName)


def test_an_expired_demo_certificate_is_replaced(tmp_path: Path) -> None:
    d = str(tmp_path / "demo")
    ensure_demo_certificate(d)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=400)
    assert ensure_demo_certificate(d, now=later) is True


def test_demo_page_shows_the_served_certificate(tmp_path: Path) -> None:
    d = str(tmp_path / "demo")
    ensure_demo_certificate(d)
    contexts = ReloadingContextFactory(f"{d}/cert.pem", f"{d}/key.pem")
    body = DemoPage(contexts).render_GET(DummyRequest([b""]))
    assert b"certificate generation: 1" in body
    assert contexts.state.material.fingerprint_sha256.encode() in body


def test_demo_config_parses_with_paths_under_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (listener,) = demo_config().listeners
    assert listener.listen == "tcp:8443:interface=127.0.0.1"
    assert listener.cert == os.path.join(str(tmp_path), "tlsgate-demo", "cert.pem")


def test_build_service_makes_one_listener_per_section(tmp_path: Path) -> None:
    """The service builder binds nothing until started, then listens per listener."""
    d = str(tmp_path / "demo")
    ensure_demo_certificate(d)
    ini = tmp_path / "g.ini"
    ini.write_text(
        "".join(
            f"[listener:{n}]\nlisten = tcp:{p}\nbackend = tcp:127.0.0.1:1\n"
            f"cert = demo/cert.pem\nkey = demo/key.pem\n"
            for n, p in (("a", 8443), ("b", 9443))
        )
    )
    options = tap.Options()
    options.parseOptions(["--config", str(ini)])
    reactor = MemoryReactorClock()
    assert options.gateway_config is not None
    service = build_service(options.gateway_config, reactor)
    assert isinstance(service, GatewayService)
    assert sorted(service.listeners) == ["a", "b"]
    assert reactor.tcpServers == []
    service.startService()
    assert sorted(s[0] for s in reactor.tcpServers) == [8443, 9443]


def test_twistd_options_refuse_a_broken_config_with_its_message(tmp_path: Path) -> None:
    ini = tmp_path / "g.ini"
    ini.write_text(
        "[listener:x]\nlisten = tcp:1\nbackend = tcp:h:1\ncert = c\nbogus = 1\n"
    )
    with pytest.raises(usage.UsageError) as raised:
        tap.Options().parseOptions(["-c", str(ini)])
    assert f"{ini}: [listener:x] bogus: unknown key" in str(raised.value)


def test_make_service_turns_certificate_errors_into_a_clean_exit(
    tmp_path: Path,
) -> None:
    """Unusable certificate files stop start-up with a message, not a traceback."""
    ini = tmp_path / "g.ini"
    ini.write_text("[listener:x]\nlisten = tcp:1\nbackend = tcp:h:1\ncert = nope.pem\n")
    options = tap.Options()
    options.parseOptions(["-c", str(ini)])
    with pytest.raises(SystemExit) as exited:
        tap.service_for(options, MemoryReactorClock())
    assert "nope.pem: file not found" in str(exited.value.code)
