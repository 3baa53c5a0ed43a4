"""
The gateway as users run it: twistd plugin, relay over real sockets, failover,
hostile bytes, broken configs, the embedded default, signals, C{tlsgate check}.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import trustme

from tests.helpers import make_pair, write
from tests.integration._halfclose import round_trip
from tests.integration.conftest import (
    REPO,
    GatewayProcess,
    Site,
    free_port,
    recv_exactly,
    source_env,
    twistd,
    wait_for_port,
)


def test_installed_plugin_is_listed_by_twistd(tmp_path: Path) -> None:
    """A regular install puts the plugin where Twisted's scan finds it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [twistd(), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "tlsgate" in out.stdout, (
        "install the project: python -m pip install '.[test]'"
    )


def test_megabytes_relay_intact_both_ways(site: Site) -> None:
    """4 MiB through the gateway and back arrive byte for byte."""
    site.start()
    payload = os.urandom(4 * 1024 * 1024)
    # One thread writes and reads (a sender thread beside a reader on one
    # SSLSocket races inside OpenSSL and garbled bytes now and then).
    assert round_trip(site.port, site.client_context(), payload) == payload


def test_dead_backend_is_skipped_for_the_next(site: Site) -> None:
    """With a refusing backend listed first, every connection still gets through."""
    dead = free_port()
    site.start(backend=f"tcp:127.0.0.1:{dead} tcp:127.0.0.1:{site.backend_port}")
    for _ in range(4):
        assert site.served() == site.first.fingerprint


def test_no_backend_closes_the_client_at_once(site: Site) -> None:
    """When no backend answers, the client sees a clean close, not a hang."""
    gateway = site.start(backend=f"tcp:127.0.0.1:{free_port()}")
    with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
        with site.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(10) == b""
    assert "no backend accepted the connection" in gateway.log


def test_hostile_bytes_close_that_connection_only(site: Site) -> None:
    """Garbage on the TLS port closes that connection; the next client is served."""
    site.start()
    for garbage in (
        b"GET / HTTP/1.1\r\n\r\n",
        os.urandom(3000),
        b"\x16\x03\x01\xff\xff" + b"\0" * 64,
    ):
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as raw:
            raw.sendall(garbage)
            try:
                while raw.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    assert site.served() == site.first.fingerprint


def test_broken_config_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    """twistd prints file, section and key and exits non-zero, without a traceback."""
    ini = tmp_path / "bad.ini"
    ini.write_text(
        "[listener:web]\nlisten = tcp:1\nbackend = tcp:h:1\ncert = c.pem\nidle_timout = 5m\n"
    )
    gateway = GatewayProcess(tmp_path, ["tlsgate", "--config", str(ini)])
    assert gateway.proc.wait(60) != 0
    gateway.stop()
    assert (
        f"{ini}: [listener:web] idle_timout: unknown key (did you mean 'idle_timeout'?)"
        in gateway.log
    )
    assert "Traceback" not in gateway.log


def test_unusable_certificate_stops_start_up_cleanly(tmp_path: Path) -> None:
    ini = tmp_path / "g.ini"
    ini.write_text(
        f"[listener:web]\nlisten = tcp:{free_port()}\nbackend = tcp:127.0.0.1:1\ncert = missing.pem\n"
    )
    gateway = GatewayProcess(tmp_path, ["tlsgate", "--config", str(ini)])
    assert gateway.proc.wait(60) != 0
    gateway.stop()
    assert "missing.pem: file not found" in gateway.log
    assert "Traceback" not in gateway.log


def test_sigterm_and_sigint_exit_zero(site: Site) -> None:
    gateway = site.start()
    assert gateway.stop(signal.SIGTERM) == 0
    gateway = site.start()
    assert gateway.stop(signal.SIGINT) == 0


def demo_get(port: int = 8443) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return recv_exactly(tls, 1 << 20).decode()


def test_embedded_default_answers_and_follows_its_certificate(tmp_path: Path) -> None:
    """
    C{twistd -n tlsgate} with no config serves the demo on 127.0.0.1:8443, and
    replacing the demo certificate changes what the next request is served.
    """
    # The embedded default listens on 8443, as the README's quick start does:
    # a gateway left running from that would answer in this one's place.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 8443))
        except OSError as e:
            raise AssertionError(
                f"127.0.0.1:8443 is taken ({e.strerror}): this test starts the"
                " embedded default there; stop what listens on it (a quick-start"
                " `twistd -n tlsgate` still running?)"
            ) from e
    gateway = GatewayProcess(tmp_path, ["tlsgate"])
    try:
        wait_for_port(8443, gateway.proc)
        first = demo_get()
        assert "200 OK" in first and "certificate generation: 1" in first
        demo = tmp_path / "tlsgate-demo"
        assert (demo / "cert.pem").exists() and (demo / "key.pem").exists()
        assert str(demo / "cert.pem") in gateway.log
        new = make_pair(trustme.CA())
        write(demo / "key.pem.new", new.key)
        write(demo / "cert.pem.new", new.chain)
        os.replace(demo / "key.pem.new", demo / "key.pem")
        os.replace(demo / "cert.pem.new", demo / "cert.pem")
        assert "certificate generation: 2" in demo_get()
    finally:
        assert gateway.stop() == 0


def test_tlsgate_check_console_script(site: Site) -> None:
    """The installed C{tlsgate} command checks a config: 0 when good, 1 when not."""
    exe = shutil.which("tlsgate", path=os.path.dirname(sys.executable)) or shutil.which(
        "tlsgate"
    )
    command = [exe] if exe else [sys.executable, "-m", "tlsgate.cli"]
    good = subprocess.run([*command, "check", str(site.ini())], capture_output=True,
                          text=True, env=source_env(), timeout=60)  # fmt: skip
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"sha256={site.first.fingerprint}" in good.stdout
    site.key.write_bytes(b"garbage")
    bad = subprocess.run([*command, "check", str(site.ini())], capture_output=True,
                         text=True, env=source_env(), timeout=60)  # fmt: skip
    assert bad.returncode == 1
    assert "[listener:web]" in bad.stdout and str(site.key) in bad.stdout
    version = subprocess.run([*command, "--version"], capture_output=True, text=True,
                             env=source_env(), timeout=60)  # fmt: skip
    assert version.stdout.strip().startswith("tlsgate ")


def test_runnable_service_embedding_example(tmp_path: Path) -> None:
    """docs/examples/embed_service.py builds the service in code and relays through it."""
    example = REPO / "docs" / "examples" / "embed_service.py"
    out = subprocess.run([sys.executable, str(example)], cwd=tmp_path,
                         capture_output=True, text=True, env=source_env(), timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "echoed through tlsgate" in out.stdout


def test_runnable_embedding_example(tmp_path: Path) -> None:
    """docs/examples/listen_ssl.py runs as documented and serves through listenSSL."""
    example = REPO / "docs" / "examples" / "listen_ssl.py"
    out = subprocess.run([sys.executable, str(example), "--self-test"], cwd=tmp_path,
                         capture_output=True, text=True, env=source_env(), timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "generation 1" in out.stdout and "generation 2" in out.stdout


def test_busy_port_stops_start_up_cleanly(site: Site) -> None:
    """A port already in use ends twistd with the endpoint named, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", site.port))
        taken.listen()
        gateway = GatewayProcess(site.tmp, ["tlsgate", "--config", str(site.ini())])
        assert gateway.proc.wait(60) != 0
        gateway.stop()
    assert f"cannot listen on tcp:{site.port}:interface=127.0.0.1" in gateway.log
    assert "Traceback" not in gateway.log


def test_sighup_does_not_end_the_gateway(site: Site) -> None:
    """Until config reloads exist, SIGHUP is logged and ignored, never fatal."""
    gateway = site.start()
    gateway.proc.send_signal(signal.SIGHUP)
    assert site.served() == site.first.fingerprint
    assert gateway.proc.poll() is None
    assert "SIGHUP" in gateway.log
