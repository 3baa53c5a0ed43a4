"""
External tools the deployment tests drive (HAProxy, Prometheus, systemd,
Podman). CI installs them (see C{.ci/run}): there a missing tool fails the
test; on a developer's machine it skips with the install line.
"""

from __future__ import annotations

import os
import shutil

import pytest

_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]
)


def require(*tools: str, package: str) -> list[str]:
    """The full paths of C{tools}; fail (under CI=true) or skip when one is missing."""
    found = [shutil.which(t, path=_PATH) for t in tools]
    missing = [t for t, f in zip(tools, found, strict=True) if f is None]
    if missing:
        why = f"{', '.join(missing)} not installed (apt-get install {package})"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return [f for f in found if f is not None]
