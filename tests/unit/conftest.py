"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.helpers import make_pair, write


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A folder holding a certificate (C{c.pem}) and its key (C{k.pem})."""
    pair = make_pair(trustme.CA())
    write(tmp_path / "c.pem", pair.chain)
    write(tmp_path / "k.pem", pair.key)
    return tmp_path
