"""
The fork server: a small process that never runs a reactor, builds every
listener's TLS contexts once, and forks workers on request.

Why a separate process: pyOpenSSL cannot set session ticket keys, so workers
can only share them by inheriting one C{SSL.Context} through C{fork}; and
forking the supervisor, which runs a Twisted reactor (an epoll descriptor,
timers, threads), would hand each worker a copy of live reactor state. This
process imports no reactor, so each forked worker installs a fresh one.

It is started as C{python -m tlsgate.workers._forkserver} with its control
socket at descriptor 3 and the listening sockets at the numbers its setup
names. It ends when its supervisor closes the control socket (or tells it
to retire) and its last worker has exited; if the supervisor dies, the
kernel kills it (C{PR_SET_PDEATHSIG}) and its workers are told to drain.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import traceback

from tlsgate.workers._process import die_with_parent
from tlsgate.workers._wire import unpack_setup

CONTROL_FD = 3


def _say(text: str, event: str, json_lines: bool, level: str = "info") -> None:
    """One log line in the gateway's format (no Twisted logging runs here)."""
    import time

    if json_lines:
        from twisted.logger import LogLevel

        from tlsgate.logs import format_json_line

        line = format_json_line({
            "log_time": time.time(), "log_level": LogLevel.levelWithName(level),
            "log_format": "{text}", "text": text, "event": event,
            "log_namespace": "tlsgate.workers.forkserver",
        })  # fmt: skip
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        line = f"{stamp} [tlsgate fork server] {text}\n"
    sys.stdout.write(line)
    sys.stdout.flush()


def _reap(children: set[int], block: bool, json_lines: bool) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        if os.WIFSIGNALED(status):
            how = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exit status {os.waitstatus_to_exitcode(status)}"
        _say(f"worker pid {pid} ended ({how})", "worker_ended", json_lines)


def main() -> int:
    die_with_parent(signal.SIGKILL, os.getppid())
    # Signals for the process group (Ctrl-C, systemd's SIGTERM to the whole
    # cgroup) are the supervisor's and the workers' business.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    control = socket.socket(fileno=CONTROL_FD)
    setup = unpack_setup(control.recv(16 * 1024 * 1024))
    json_lines = setup.config.log_format == "json"

    from tlsgate.errors import TlsgateError
    from tlsgate.service import build_certificates

    try:
        certificates = {
            lc.name: build_certificates(lc, setup.first_generation.get(lc.name, 1))
            for lc in setup.config.listeners
        }
    except TlsgateError as e:
        _say(f"cannot start: {e}", "forkserver_failed", json_lines, "error")
        return 2
    for built in certificates.values():
        built.contexts.share_sessions()
    from tlsgate.tracker import SharedCounts

    number, layout = setup.counts
    counts = SharedCounts.mapped(layout, number)
    older = [SharedCounts.mapped(lay, n) for n, lay in setup.older_counts]

    children: set[int] = set()
    while True:
        message, fds, _flags, _addr = socket.recv_fds(control, 65536, 1)
        _reap(children, False, json_lines)
        if not message:
            break
        request = json.loads(message)
        if request.get("retire"):
            break
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                control.close()
                from tlsgate.workers._worker import serve

                serve(int(request["slot"]), fds[0], setup, certificates, counts, older)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(fds[0])
        children.add(pid)
    control.close()
    # Retired: the listening sockets are the workers' (and the supervisor's)
    # alone now, so they close when those let go of them.
    for fd in setup.descriptors():
        os.close(fd)
    _reap(children, True, json_lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
