"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.helpers import make_pair, write
from tlsgate.certs import ReloadingContextFactory


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A folder holding a certificate (C{c.pem}) and its key (C{k.pem})."""
    pair = make_pair(trustme.CA())
    write(tmp_path / "c.pem", pair.chain)
    write(tmp_path / "k.pem", pair.key)
    return tmp_path


@pytest.fixture
def ca() -> trustme.CA:
    """A throwaway CA (a test file may define its own)."""
    return trustme.CA()


@pytest.fixture
def contexts(tmp_path: Path, ca: trustme.CA) -> ReloadingContextFactory:
    """A reloading factory over a certificate from C{ca}, written to files."""
    pair = make_pair(ca)
    write(tmp_path / "c.pem", pair.chain)
    write(tmp_path / "k.pem", pair.key)
    return ReloadingContextFactory(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
