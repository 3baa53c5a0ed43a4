"""
Process-level helpers shared by the fork server and the workers: dying with
the parent, and nothing else.
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals, parent: int) -> None:
    """
    Have the kernel send C{sig} to this process when its parent ends, so no
    worker outlives its supervisor. Linux only; elsewhere the control
    socket's end-of-file still stops it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        # The parent ended before prctl took effect.
        os.kill(os.getpid(), sig)
