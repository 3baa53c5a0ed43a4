"""
The container image: built with Podman from deploy/container/Containerfile on
a Debian base made with mmdebstrap (no registry here) and the wheels built on
this machine; it serves TLS as a non-root user, passes its health check, and
exits 0 on the stop signal.

Podman in this sandbox needs runc and explicit (lowered) rlimits: crun and
runc cannot raise RLIMIT_NOFILE/RLIMIT_NPROC here, so a containers.conf
passed through CONTAINERS_CONF sets both. The base image tarball is cached
between runs (TLSGATE_TEST_CACHE, default ~/.cache/tlsgate-tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import trustme

from tests.integration._tools import require
from tests.integration.conftest import REPO, Site, free_port, wait_for_port

BASE_IMAGE = "localhost/tlsgate-test-base:bookworm"
CONTAINERS_CONF = """\
[engine]
runtime = "runc"
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
"""


def run(
    cmd: list[str], env: dict[str, str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (
        f"{cmd}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    return result


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = Path(os.environ.get("TLSGATE_TEST_CACHE", default / "tlsgate-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_image(podman: str, mmdebstrap: str, env: dict[str, str]) -> str:
    """A Debian bookworm with python3 and venv, imported once and cached."""
    exists = subprocess.run([podman, "image", "exists", BASE_IMAGE], env=env)
    if exists.returncode == 0:
        return BASE_IMAGE
    tarball = cache_dir() / "bookworm-minbase-python3.tar"
    if not tarball.exists():
        # mmdebstrap picks its output format from the name: keep ".tar".
        partial = tarball.with_name(f"partial-{os.getpid()}.tar")
        run([mmdebstrap, "--variant=minbase", "--include=python3,python3-venv",
             "bookworm", str(partial)], env)  # fmt: skip
        partial.rename(tarball)
    run([podman, "import", str(tarball), BASE_IMAGE], env)
    return BASE_IMAGE


def test_image_serves_tls_as_non_root_and_stops_cleanly(
    tmp_path: Path, echo_backend: int
) -> None:
    podman, mmdebstrap, _ = require("podman", "mmdebstrap", "runc",
                                    package="podman mmdebstrap runc")  # fmt: skip
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    base = base_image(podman, mmdebstrap, env)

    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels),
         str(REPO)], env)  # fmt: skip
    tag = f"localhost/tlsgate-test:{uuid.uuid4().hex[:8]}"
    run([podman, "build", "-q", "--format", "docker", "--build-arg", f"BASE={base}",
         "-f", str(REPO / "deploy/container/Containerfile"), "-t", tag,
         str(wheels)], env)  # fmt: skip

    # Config and certificates mounted read-only, owned by the image's user.
    etc = tmp_path / "etc"
    etc.mkdir()
    site = Site(etc, trustme.CA(), echo_backend)
    admin = free_port()
    site.ini(admin=f"tcp:{admin}:interface=127.0.0.1", drain_delay="500ms",
             cert="/etc/tlsgate/fullchain.pem", key="/etc/tlsgate/privkey.pem")  # fmt: skip
    for path in etc.iterdir():
        os.chown(path, 10001, 10001)
    name = tag.rsplit(":", 1)[1]
    try:
        # Host networking: the gateway reaches the echo backend on loopback.
        # No health timer (it needs systemd as PID 1); run checks by hand.
        run([podman, "run", "-d", "--name", name, "--network", "host",
             "--health-interval", "disable",
             "-e", f"TLSGATE_HEALTHCHECK_URL=http://127.0.0.1:{admin}/healthz",
             "-v", f"{etc}:/etc/tlsgate:ro", tag], env)  # fmt: skip
        wait_for_port(site.port, timeout=60)
        assert site.served() == site.first.fingerprint

        pid = run([podman, "inspect", "--format", "{{.State.Pid}}", name], env)
        status = Path(f"/proc/{pid.stdout.strip()}/status").read_text()
        (uids,) = [
            ln.split()[1:] for ln in status.splitlines() if ln.startswith("Uid:")
        ]
        assert uids == ["10001"] * 4, status

        run([podman, "healthcheck", "run", name], env)
        config = run([podman, "image", "inspect", "--format",
                      "{{.Config.User}} {{.Config.StopSignal}}", tag], env)  # fmt: skip
        assert config.stdout.split() == ["10001:10001", "SIGTERM"]

        started = time.monotonic()
        run([podman, "stop", "-t", "30", name], env)
        assert time.monotonic() - started < 25
        code = run([podman, "inspect", "--format", "{{.State.ExitCode}}", name], env)
        assert code.stdout.strip() == "0"
        logs = run([podman, "logs", name], env)
        assert "Traceback" not in logs.stdout + logs.stderr
    finally:
        subprocess.run([podman, "rm", "-f", name], env=env, capture_output=True)
        subprocess.run([podman, "rmi", "-f", tag], env=env, capture_output=True)
