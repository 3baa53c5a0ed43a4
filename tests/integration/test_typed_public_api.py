"""
A user's program type-checks with C{mypy --strict} against the installed
package: the public API is typed (py.typed ships in the wheel), and a misuse
is caught rather than hidden behind C{Any}. The user's mypy runs with the
mypy-zope plugin, as for any program on Twisted's interfaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

USER_PROGRAM = """
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

import tlsgate
from tlsgate import Limits, ReloadingContextFactory, ReloadingTLSServerEndpoint, TLSPolicy
from tlsgate.testing import CertificateAuthority, CertificateFiles, TestClock, connect_tls
from tlsgate.tracker import CloseReason


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def serve(reactor: Clock, endpoint: TCP4ServerEndpoint, cert: str) -> ReloadingTLSServerEndpoint:
    contexts = ReloadingContextFactory(cert, policy=TLSPolicy(min_version="1.3"))
    generation: int = contexts.generation
    assert generation >= 1
    return ReloadingTLSServerEndpoint(
        endpoint, contexts, clock=reactor, limits=Limits(idle_timeout=60.0)
    )


def in_memory(directory: str) -> bool:
    ca = CertificateAuthority()
    files = CertificateFiles(directory, ca.issue("localhost"), how="data_swap")
    clock = TestClock()
    contexts = ReloadingContextFactory(str(files.cert), str(files.key), wallclock=clock.wallclock)
    client = Protocol()
    conn = connect_tls(Factory.forProtocol(Echo), client, trust=ca.cert_pem,
                       contexts=contexts, clock=clock)
    conn.flush()
    reason: CloseReason = CloseReason.IDLE_TIMEOUT
    return reason == "idle_timeout" and tlsgate.__version__ != ""
"""

MISUSE = """
from tlsgate import Limits
Limits(idle_timeout="5m")
"""


def mypy() -> str:
    found = shutil.which("mypy", path=os.path.dirname(sys.executable))
    assert found, "mypy not found; install the test extra: pip install '.[test]'"
    return found


def check(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict on C{source}, from the installed package (no PYTHONPATH)."""
    (tmp_path / "mypy.ini").write_text(
        "[mypy]\nstrict = True\nplugins = mypy_zope:plugin\n"
    )
    program = tmp_path / "user_program.py"
    program.write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    return subprocess.run(
        [mypy(), "--strict", "--no-incremental", str(program)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_user_program_passes_mypy_strict(tmp_path: Path) -> None:
    out = check(tmp_path, USER_PROGRAM)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_misuse_is_reported(tmp_path: Path) -> None:
    """The types are really seen: a string where seconds go is an error."""
    out = check(tmp_path, MISUSE)
    assert out.returncode == 1
    assert (
        'Argument "idle_timeout" to "Limits" has incompatible type "str"' in out.stdout
    )
