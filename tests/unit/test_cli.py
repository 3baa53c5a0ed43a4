"""C{tlsgate check} and C{tlsgate --version}: output lines and exit codes."""

from __future__ import annotations

import datetime
import io
from pathlib import Path

import pytest
import trustme

from tests.helpers import make_pair, utcnow, write
from tlsgate import __version__
from tlsgate.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, check, main


def config(tmp_path: Path, **extra: str) -> Path:
    lines = [
        "[listener:web]",
        "listen = tcp:8443",
        "backend = tcp:127.0.0.1:8080",
        "cert = web.pem",
        "key = web.key",
    ] + [f"{k} = {v}" for k, v in extra.items()]
    path = tmp_path / "gateway.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_prints_one_line_per_certificate(tmp_path: Path) -> None:
    """
    Names, SHA-256 fingerprint, not-after and days left; exit 0. Then one line
    of the listener's protocol settings, with the default key exchange groups.
    """
    now = utcnow()
    pair = make_pair(
        trustme.CA(),
        "web.example",
        not_before=now,
        not_after=now + datetime.timedelta(days=42, hours=1),
    )
    write(tmp_path / "web.pem", pair.chain)
    write(tmp_path / "web.key", pair.key)
    out = io.StringIO()
    assert check(str(config(tmp_path)), out, now=now) == EXIT_OK
    line, tls = out.getvalue().splitlines()
    assert tls.startswith(
        "web: tls min_version=1.2 groups=X25519MLKEM768 X25519 P-256 P-384 alpn=none"
    )
    assert line.startswith(f"web: {tmp_path / 'web.pem'}: names=web.example ")
    assert f"sha256={pair.fingerprint}" in line
    assert "days_left=42" in line
    assert "not_after=" in line


def test_check_reports_each_problem_and_exits_1(tmp_path: Path) -> None:
    """A missing key and an expired certificate are each one line naming section and key."""
    now = utcnow()
    expired = make_pair(
        trustme.CA(),
        not_before=now - datetime.timedelta(days=9),
        not_after=now - datetime.timedelta(days=1),
    )
    write(tmp_path / "web.pem", expired.chain)
    write(tmp_path / "web.key", expired.key)
    out = io.StringIO()
    assert check(str(config(tmp_path)), out, now=now) == EXIT_PROBLEMS
    assert "error:" in out.getvalue() and "expired" in out.getvalue()
    (tmp_path / "web.key").unlink()
    out = io.StringIO()
    assert check(str(config(tmp_path)), out) == EXIT_PROBLEMS
    assert (
        f"[listener:web] key: {tmp_path / 'web.key'}: file not found" in out.getvalue()
    )


def test_check_reports_config_errors(tmp_path: Path) -> None:
    out = io.StringIO()
    assert check(str(config(tmp_path, idle_timout="5m")), out) == EXIT_PROBLEMS
    assert "[listener:web] idle_timout: unknown key (did you mean 'idle_timeout'?)" in (
        out.getvalue()
    )


def test_a_broken_key_file_is_reported_under_key(tmp_path: Path) -> None:
    write(tmp_path / "web.pem", make_pair(trustme.CA()).chain)
    write(tmp_path / "web.key", b"not a key")
    out = io.StringIO()
    assert check(str(config(tmp_path)), out) == EXIT_PROBLEMS
    assert (
        f"[listener:web] key: {tmp_path / 'web.key'}: key file holds no PEM"
        in out.getvalue()
    )


def test_mismatched_pair_is_an_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    write(tmp_path / "web.pem", make_pair(ca).chain)
    write(tmp_path / "web.key", make_pair(ca).key)
    out = io.StringIO()
    assert check(str(config(tmp_path)), out) == EXIT_PROBLEMS
    assert "does not match" in out.getvalue()


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == EXIT_OK
    assert capsys.readouterr().out.strip() == f"tlsgate {__version__}"
    assert main([]) == EXIT_USAGE
    assert main(["check"]) == EXIT_USAGE
    assert main(["frobnicate"]) == EXIT_USAGE


def test_check_reports_the_client_ca_and_the_ocsp_response(tmp_path: Path) -> None:
    from tests.unit.test_auth_and_ocsp import ocsp_for

    ca, clients = trustme.CA(), trustme.CA()
    pair = make_pair(ca)
    write(tmp_path / "web.pem", pair.chain)
    write(tmp_path / "web.key", pair.key)
    (tmp_path / "clients.pem").write_bytes(clients.cert_pem.bytes())
    (tmp_path / "ocsp.der").write_bytes(ocsp_for(ca, pair.chain))
    path = config(tmp_path, client_ca="clients.pem", ocsp_response="ocsp.der")
    out = io.StringIO()
    assert check(str(path), out) == EXIT_OK, out.getvalue()
    text = out.getvalue()
    assert "client_ca" in text and "1 certificates" in text
    assert "ocsp_response" in text and "status=good" in text
    (tmp_path / "ocsp.der").write_bytes(ocsp_for(ca, pair.chain, next_update_days=-1))
    out = io.StringIO()
    assert check(str(path), out) == EXIT_PROBLEMS
    assert "will not be stapled: stale" in out.getvalue()


def test_check_reports_every_certificate_of_the_sni_dir(tmp_path: Path) -> None:
    ca = trustme.CA()
    pair = make_pair(ca)
    write(tmp_path / "web.pem", pair.chain)
    write(tmp_path / "web.key", pair.key)
    (tmp_path / "certs").mkdir()
    a, b = make_pair(ca, "a.example"), make_pair(ca, "b.example")
    write(tmp_path / "certs" / "a.pem", a.chain + a.key)
    write(tmp_path / "certs" / "b.crt", b.chain)
    write(tmp_path / "certs" / "b.key", b.key)
    out = io.StringIO()
    assert check(str(config(tmp_path, sni_dir="certs")), out) == EXIT_OK, out.getvalue()
    assert f"sha256={a.fingerprint}" in out.getvalue()
    assert f"sha256={b.fingerprint}" in out.getvalue()
    write(tmp_path / "certs" / "c.pem", b"garbage")
    out = io.StringIO()
    assert check(str(config(tmp_path, sni_dir="certs")), out) == EXIT_PROBLEMS
    assert "sni_dir" in out.getvalue() and "c.pem" in out.getvalue()
