"""A C{systemd:} listener whose socket was not passed: one line naming file, section and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from twisted.internet.testing import MemoryReactorClock

from tests.helpers import make_pair, write
from tlsgate.config import parse_config
from tlsgate.errors import ListenError
from tlsgate.service import build_service, server_endpoint
from tlsgate.tap import service_for


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    pair = make_pair(trustme.CA())
    write(tmp_path / "c.pem", pair.chain)
    write(tmp_path / "k.pem", pair.key)
    path = tmp_path / "g.ini"
    path.write_text(
        "[listener:web]\nlisten = systemd:domain=INET:index=0\n"
        f"backend = tcp:127.0.0.1:9\ncert = {tmp_path / 'c.pem'}\n"
        f"key = {tmp_path / 'k.pem'}\n"
    )
    return path


def test_missing_index(ini: Path) -> None:
    # This test process inherited no sockets, so Twisted knows none.
    config = parse_config(ini.read_text(), file=str(ini))
    with pytest.raises(ListenError) as e:
        build_service(config, MemoryReactorClock())
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{ini}: [listener:web] listen = systemd:domain=INET")
    assert "--fdname" in message and "FileDescriptorName=" in message


def test_missing_name() -> None:
    with pytest.raises(ListenError, match="no socket named 'web' was passed"):
        server_endpoint(
            MemoryReactorClock(), "systemd:domain=INET:name=web", "[gateway] admin"
        )


def test_other_endpoint_errors_are_not_disguised() -> None:
    with pytest.raises(ValueError):
        server_endpoint(MemoryReactorClock(), "systemd:domain=INET", "x")


def test_twistd_plugin_ends_with_the_one_line(ini: Path) -> None:
    with pytest.raises(SystemExit) as e:
        service_for({"config": str(ini)}, MemoryReactorClock())
    assert str(e.value).startswith("tlsgate: cannot start: ")
    assert "\n" not in str(e.value)
