"""
Twisted's C{tls:} server endpoint and tlsgate's C{tlsgate:}, side by side,
each behind C{twist web} as a user would run them: what the application
sees, what happens on a renewal and on a broken file, and what a connection
costs the server.

    python bench/endpoint_compare.py [--connections 300] [--rounds 3]

Needs the project installed (C{twist} and the C{tlsgate:} plugin on the
path of this Python). Facts first, then cost: server CPU seconds per
connection (full handshake, one HTTP/1.0 request, close; no resumption), read
from /proc for the server process, in alternating rounds; medians.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlsgate.testing import CertificateAuthority, CertificateFiles

RESOURCE = """
from twisted.web.resource import Resource

class Where(Resource):
    isLeaf = True

    def render_GET(self, request):
        return f"secure={request.isSecure()}".encode()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, label: str, description: str, workdir: Path, port: int) -> None:
        self.label, self.port = label, port
        twist = shutil.which("twist", path=os.path.dirname(sys.executable)) or "twist"
        env = dict(os.environ, PYTHONPATH=str(workdir))
        self.log = open(workdir / f"{label}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [twist, "web", "--listen", description, "--class", "where_app.Where"],
            cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)

    def cpu(self) -> float:
        fields = (
            Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        )
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(20)
        self.log.close()
        return code


def fetch(port: int, ca: bytes, name: str = "localhost") -> tuple[str, str]:
    """(body, SHA-256 of the served leaf) of one request, or ("error: ...", "")."""
    ctx = ssl.create_default_context(cadata=ca.decode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                body = b""
                while chunk := tls.recv(65536):
                    body += chunk
                der = tls.getpeercert(binary_form=True) or b""
    except (OSError, ssl.SSLError) as e:
        return f"error: {e.__class__.__name__}", ""
    return body.split(b"\r\n\r\n", 1)[-1].decode(), hashlib.sha256(der).hexdigest()


def start_error(description: str, workdir: Path) -> str:
    twist = shutil.which("twist", path=os.path.dirname(sys.executable)) or "twist"
    out = subprocess.run(
        [twist, "web", "--listen", description], cwd=workdir, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    lines = (out.stderr + out.stdout).strip().splitlines()
    return f"exit {out.returncode}: {lines[-1] if lines else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="endpoint-compare-"))
    (work / "where_app.py").write_text(RESOURCE)
    ca = CertificateAuthority()
    first, renewed = ca.issue("localhost"), ca.issue("localhost")
    pems = work / "tls-dir"
    pems.mkdir()
    (pems / "localhost.pem").write_bytes(first.chain + first.key)
    files = CertificateFiles(work / "tlsgate", first)
    ports = {"tls:": free_port(), "tlsgate:": free_port()}
    servers = {
        "tls:": Server("tls", f"tls:{pems}:port={ports['tls:']}:interface=127.0.0.1",
                       work, ports["tls:"]),
        "tlsgate:": Server(
            "tlsgate",
            f"tlsgate:port={ports['tlsgate:']}:interface=127.0.0.1:cert={files.cert}"
            f":key={files.key}:session_resumption=off",
            work, ports["tlsgate:"],
        ),
    }  # fmt: skip
    try:
        print("facts (each behind `twist web`):")
        for label, s in servers.items():
            body, fp = fetch(s.port, ca.cert_pem)
            print(f"  {label:9} request.isSecure(): {body!r}; serves the first cert: "
                  f"{fp == first.fingerprint}")  # fmt: skip
        # A renewal: each server's file replaced by an atomic rename.
        tmp = pems / "localhost.pem.tmp"
        tmp.write_bytes(renewed.chain + renewed.key)
        os.replace(tmp, pems / "localhost.pem")
        files.write(renewed)
        time.sleep(1.5)
        for label, s in servers.items():
            _, fp = fetch(s.port, ca.cert_pem)
            which = {
                first.fingerprint: "the old one",
                renewed.fingerprint: "the renewed one",
            }
            print(f"  {label:9} after renewal + 1.5 s, next connection gets "
                  f"{which.get(fp, fp or 'no certificate')}")  # fmt: skip
        # Garbage over the file while running, then a name not in the map.
        tmp.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        os.replace(tmp, pems / "localhost.pem")
        files.write_raw(b"-----BEGIN CERTIFICATE-----\ngarbage\n", b"garbage")
        for label, s in servers.items():
            body, fp = fetch(s.port, ca.cert_pem)
            other, _ = fetch(s.port, ca.cert_pem, name="unknown.example")
            print(f"  {label:9} garbage written over it: next connection {body!r} "
                  f"(renewed cert: {fp == renewed.fingerprint}); an unknown SNI name: "
                  f"{other!r}; alive: {s.proc.poll() is None}")  # fmt: skip
        tmp.write_bytes(renewed.chain + renewed.key)
        os.replace(tmp, pems / "localhost.pem")
        files.write(renewed)
        print("  start with a broken file:")
        bad = work / "bad"
        bad.mkdir()
        (bad / "broken.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        print(f"    tls:      {start_error(f'tls:{bad}:port={free_port()}', work)}")
        print(
            f"    tlsgate:  {start_error(f'tlsgate:port={free_port()}:cert={bad}/broken.pem', work)}"
        )

        n = args.connections
        cpu: dict[str, list[float]] = {k: [] for k in servers}
        wall: dict[str, list[float]] = {k: [] for k in servers}
        order = list(servers)
        for r in range(args.rounds):
            for label in order if r % 2 == 0 else order[::-1]:
                s = servers[label]
                c0, t0 = s.cpu(), time.perf_counter()
                for _ in range(n):
                    fetch(s.port, ca.cert_pem)
                wall[label].append((time.perf_counter() - t0) / n * 1e3)
                cpu[label].append((s.cpu() - c0) / n * 1e3)
        print(f"cost per connection ({n} connections x {args.rounds} rounds, alternating;"
              " medians; full handshake, ECDSA P-256, one request):")  # fmt: skip
        for label in servers:
            print(f"  {label:9} server CPU {statistics.median(cpu[label]):.2f} ms,"
                  f" client-observed {statistics.median(wall[label]):.2f} ms"
                  f"   (rounds: {', '.join(f'{c:.2f}' for c in cpu[label])})")  # fmt: skip
        ratio = statistics.median(cpu["tlsgate:"]) / statistics.median(cpu["tls:"])
        print(f"  server CPU ratio tlsgate:/tls: = {ratio:.2f}")
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
