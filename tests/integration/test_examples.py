"""
The embedding examples run as the docs say, from the checkout (PYTHONPATH=src)
and from an installed package alike, writing only into temporary directories.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, source_env

pytestmark = pytest.mark.integration

EXAMPLES = REPO / "docs" / "examples"


def installed_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.parametrize("where", ["checkout", "installed"])
def test_the_endpoint_example_serves_securely_and_follows_a_renewal(
    tmp_path: Path, where: str
) -> None:
    env = source_env() if where == "checkout" else installed_env()
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "endpoint_web.py"), "--self-test"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    serials = re.findall(r"secure: True.*certificate serial (\w+)", out.stdout)
    assert len(serials) == 2 and serials[0] != serials[1], out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written into the cwd


def test_the_listen_ssl_example_writes_nothing_into_the_cwd(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "listen_ssl.py"), "--self-test"],
        cwd=tmp_path, env=installed_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "generation 2" in out.stdout
    assert list(tmp_path.iterdir()) == []
