"""
tlsgate beside hitch, HAProxy, nginx C{stream} and a bare Twisted forwarder,
per server core, side by side in one run (issue 10's benchmark).

Every server terminates TLS in front of the same nginx HTTP backend on
loopback. For each server and round it measures:

  - C{ecdsa}, C{rsa}: full handshakes/s with an ECDSA P-256 and an RSA-2048
    certificate (hsload: Go crypto/tls, no resumption, one GET per connection);
  - C{ka}: keep-alive requests/s and latency percentiles (wrk, 1 thread);
  - C{bulk}: MB/s of a 64 MiB download (curl, one transfer after another);
  - C{idle}: KiB of server RSS per idle TLS connection (2,000 connections held
    by one client process, each after a handshake and one request);

and, for each, the server's CPU time (all its processes, from /proc) over the
measured interval divided by the work done. The server runs on core 0, the
clients on core 1; the order of the servers is reversed every other round and
the table gives the median of the rounds. Session tickets are off everywhere:
C{OPENSSL_CONF=shared/tools/openssl-notickets.cnf} (C{NumTickets = 0}) for
every server, C or Python (cryptography's OpenSSL reads it too), with
C{session_resumption = off} for tlsgate and a no-resumption policy for the
bare forwarder (C{bench/gateway_variant.py --variant static}; and, when named
in C{--only}, Twisted's stock forwarder, C{bench/portforward.py}; and
C{floor}, the least a Python relay over pyOpenSSL does, C{bench/floor_relay.py},
and C{twfloor}, the same on Twisted's reactor).

Not a test and not run in CI; see docs/benchmarks.md ("tlsgate beside its
peers"). Usually started as C{bench/peers.sh [options]}.

    python bench/peers.py --quick --only tlsgate,hitch,ecdsa,ka
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

import hstool  # noqa: E402  (the CPU accounting of handshakes.sh)
from peers_report import (  # noqa: E402
    DEFAULT_SERVERS,
    FIGURES,
    SERVERS,
    report,
    summarize_profile,
)

HOST = "127.0.0.1"
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(RuntimeError):
    """A server or a client did not do what the benchmark needs."""


# -- processes -----------------------------------------------------------------


class Processes:
    """
    Every long-running process the benchmark starts, each in a session of its
    own so that it and its children (hitch's workers, tlsgate's workers) can
    be told apart in /proc and stopped together, and so that a Ctrl-C in the
    terminal reaches only this script, which then stops them in order.
    """

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], cpu: int, log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["taskset", "-c", str(cpu), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        # A worker that outlived its parent is still in the session.
        for pid in session_pids(proc.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            self.stop(proc)


def session_pids(sid: int) -> list[int]:
    """The processes of a session: a server and everything it forked."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state (field 3); the session id is field 6.
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def tree_cpu(sid: int) -> float:
    return sum(tree_cpu_split(sid))


def tree_cpu_split(sid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a session's processes."""
    user = system = 0.0
    for pid in session_pids(sid):
        with suppress(OSError):
            u, k = hstool._proc_cpu_split(pid)
            user, system = user + u, system + k
    return user, system


def tree_rss_kib(sid: int) -> int:
    total = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except OSError:
            pass
    return total


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_listening(proc: subprocess.Popen[bytes], port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with {proc.returncode} before listening")
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {HOST}:{port} after {seconds:g}s")


# -- the run -------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int
    duration: float
    warmup: float
    conc: int
    idle_conns: int
    bulk_mib: int
    server_cpu: int
    load_cpu: int
    backend_cpu: int
    servers: list[str]
    figures: list[str]
    quick: bool
    tools: str
    results: str
    hsload: str | None


@dataclass
class Bench:
    s: Settings
    work: str
    procs: Processes = field(default_factory=Processes)
    backend_port: int = 0
    backend_sid: int = 0
    hsload: str = ""
    certs: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    # -- setup ---------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    def setup(self) -> None:
        self.make_certs()
        self.build_hsload()
        self.start_backend()

    def make_certs(self) -> None:
        """Self-signed ECDSA P-256 and RSA-2048 leaves for localhost/127.0.0.1."""
        for key, newkey in (
            ("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            ("rsa", ["-newkey", "rsa:2048"]),
        ):
            cert, keyf, pem = (
                self.path(f"{key}.crt"),
                self.path(f"{key}.key"),
                self.path(f"{key}.pem"),
            )
            subprocess.run(
                ["openssl", "req", "-x509", *newkey, "-nodes", "-sha256",
                 "-keyout", keyf, "-out", cert, "-days", "7", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            with open(pem, "wb") as out:  # hitch and HAProxy: one file, cert + key
                for part in (cert, keyf):
                    with open(part, "rb") as f:
                        out.write(f.read())
            for name in (cert, keyf, pem):
                os.chmod(name, 0o644)  # hitch's worker may run as another user
                # As old as a deployed certificate: the reloading factory
                # re-reads files changed within the last 2 s on every connection.
                past = time.time() - 3600
                os.utime(name, (past, past))
            self.certs[key] = (cert, keyf, pem)

    def build_hsload(self) -> None:
        if self.s.hsload:
            self.hsload = self.s.hsload
            return
        src = os.path.join(self.s.tools, "hsload", "hsload.go")
        out = os.path.join(BENCH, "results", ".bin", "hsload")
        if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
            self.hsload = out
            return
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.log("building hsload")
        subprocess.run(
            ["go", "build", "-o", out, src],
            check=True,
            timeout=300,
            env=dict(os.environ, GO111MODULE="off"),
        )
        self.hsload = out

    def start_backend(self) -> None:
        """nginx answering /small ("ok") and /big (the bulk file), keep-alive on."""
        (self.backend_port,) = free_ports(1)
        big = self.path("big.bin")
        with open(big, "wb") as f:
            for _ in range(self.s.bulk_mib):
                f.write(os.urandom(1 << 20))
        os.makedirs(self.path("backend"), exist_ok=True)
        conf = self.path("backend.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {self.path("backend/nginx.pid")};
error_log {self.path("backend.log")} warn;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    client_body_temp_path {self.path("backend/body")};
    proxy_temp_path {self.path("backend/proxy")};
    fastcgi_temp_path {self.path("backend/fastcgi")};
    uwsgi_temp_path {self.path("backend/uwsgi")};
    scgi_temp_path {self.path("backend/scgi")};
    sendfile on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {{
        listen {HOST}:{self.backend_port} backlog=4096;
        location = /small {{ default_type text/plain; return 200 "ok\\n"; }}
        location = /big {{ default_type application/octet-stream; alias {big}; }}
        location / {{ return 404; }}
    }}
}}
""")
        proc = self.procs.start(
            [nginx_bin(), "-p", self.path("backend"), "-c", conf,
             "-e", self.path("backend.log")],
            self.s.backend_cpu, self.path("backend.log"),
        )  # fmt: skip
        wait_listening(proc, self.backend_port, 10)
        self.backend_sid = proc.pid
        self.log(f"nginx backend on {HOST}:{self.backend_port} (pid {proc.pid})")

    # -- servers -------------------------------------------------------------

    def start_server(self, name: str, key: str) -> tuple[subprocess.Popen[bytes], int]:
        """Start NAME with KEY's certificate on the server core; wait for it."""
        (port,) = free_ports(1)
        cert, keyf, pem = self.certs[key]
        backend = f"{HOST}:{self.backend_port}"
        tag = f"{name}-{key}"
        log = self.path(f"{tag}.log")
        notickets = os.path.join(self.s.tools, "openssl-notickets.cnf")
        c_env = dict(os.environ, OPENSSL_CONF=notickets)
        py_env = dict(
            os.environ,
            PYTHONDONTWRITEBYTECODE="1",
            # <repo> for twisted/plugins/tlsgate_plugin.py, src for tlsgate.
            PYTHONPATH=os.pathsep.join([os.path.join(REPO, "src"), REPO]),
        )
        # The same config for the Python servers: cryptography's OpenSSL reads
        # it too, and it is the only way to stop the two TLS 1.3 tickets that
        # OpenSSL sends even with session_resumption = off (no binding has
        # SSL_CTX_set_num_tickets); they cost about 1% of an RSA handshake.
        # (Its config_diagnostics = 1 makes client contexts fail, NumTickets
        # being server-only: fine here, where no server dials TLS backends.)
        py_env["OPENSSL_CONF"] = notickets
        if name == "tlsgate":
            ini = self.path(f"{tag}.ini")
            with open(ini, "w") as f:
                f.write(f"""[listener:bench]
listen = tcp:{port}:interface={HOST}:backlog=4096
backend = tcp:{backend}
cert = {cert}
key = {keyf}
session_resumption = off
""")
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            if not os.path.exists(twistd):
                twistd = shutil.which("twistd") or "twistd"
            argv = [twistd, "-n", "--pidfile", self.path(f"{tag}.pid"),
                    "--logfile", log, "tlsgate", "--config", ini]  # fmt: skip
            env = py_env
        elif name == "portforward":
            argv = [sys.executable, os.path.join(BENCH, "portforward.py"),
                    "--cert", cert, "--key", keyf,
                    "--listen", f"tcp:{port}:interface={HOST}:backlog=4096",
                    "--backend", backend]  # fmt: skip
            env = py_env
        elif name == "floor":
            argv = [sys.executable, os.path.join(BENCH, "floor_relay.py"),
                    "--cert", cert, "--key", keyf, "--port", str(port),
                    "--backend", backend]  # fmt: skip
            env = py_env
        elif name == "twfloor":
            argv = [sys.executable, os.path.join(BENCH, "floor_relay.py"),
                    "--cert", cert, "--key", keyf, "--port", str(port),
                    "--backend", backend, "--twisted"]  # fmt: skip
            env = py_env
        elif name == "bare":
            argv = [sys.executable, os.path.join(BENCH, "gateway_variant.py"),
                    "--variant", "static", "--cert", cert, "--key", keyf,
                    "--listen", f"tcp:{port}:interface={HOST}:backlog=4096",
                    "--backend", f"tcp:{backend}", "--log", log]  # fmt: skip
            env = py_env
        elif name == "hitch":
            conf = self.path(f"{tag}.conf")
            os.makedirs(self.path("hitch-ocsp"), exist_ok=True)
            with open(conf, "w") as f:
                f.write(f"""frontend = "[{HOST}]:{port}"
backend = "[{HOST}]:{self.backend_port}"
pem-file = "{pem}"
workers = 1
daemon = off
backlog = 4096
tls-protos = TLSv1.2 TLSv1.3
ocsp-dir = "{self.path("hitch-ocsp")}"
syslog = off
""")
                if os.geteuid() == 0:  # hitch refuses to run its workers as root
                    f.write('user = "_hitch"\ngroup = "_hitch"\n')
            argv = [hitch_bin(), f"--config={conf}"]
            env = c_env
        elif name == "haproxy":
            conf = self.path(f"{tag}.cfg")
            with open(conf, "w") as f:
                f.write(f"""global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend bench
    bind {HOST}:{port} ssl crt {pem} no-tls-tickets
    maxconn 8000
    default_backend backend
backend backend
    server nginx {backend}
""")
            argv = [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", conf]
            env = c_env
        elif name == "nginx":
            os.makedirs(self.path(f"{tag}"), exist_ok=True)
            conf = self.path(f"{tag}.conf")
            with open(conf, "w") as f:
                f.write(f"""load_module {nginx_stream_module()};
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {self.path(f"{tag}/nginx.pid")};
error_log {log} warn;
events {{ worker_connections 16000; }}
stream {{
    server {{
        listen {HOST}:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {keyf};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        proxy_pass {backend};
        proxy_timeout 300s;
    }}
}}
""")
            argv = [nginx_bin(), "-p", self.path(tag), "-c", conf, "-e", log]
            env = c_env
        else:
            raise BenchError(f"unknown server {name}")
        proc = self.procs.start(argv, self.s.server_cpu, log, env)
        try:
            wait_listening(proc, port, 30)
        except BenchError as e:
            self.procs.stop(proc)
            raise BenchError(f"{tag}: {e}; see {log}") from None
        return proc, port

    def probe(self, port: int, key: str) -> dict[str, Any]:
        """TLS 1.3, the right leaf, 200 from the backend, nothing resumed."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        first = fetch(port, ctx, None)
        second = fetch(port, ctx, first["session"])
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        leaf = x509.load_der_x509_certificate(first["leaf"]).public_key()
        ok_key = (
            isinstance(leaf, ec.EllipticCurvePublicKey)
            and leaf.curve.name == "secp256r1"
            if key == "ecdsa"
            else isinstance(leaf, rsa.RSAPublicKey) and leaf.key_size == 2048
        )
        problems = []
        if first["version"] != "TLSv1.3":
            problems.append(f"{first['version']}, not TLS 1.3")
        if not ok_key:
            problems.append(f"leaf is not {key}")
        for r in (first, second):
            if not r["body"].startswith(b"HTTP/1.1 200") or not r["body"].endswith(
                b"ok\n"
            ):
                problems.append("backend did not answer 200 ok")
        if second["reused"]:
            problems.append("a session was resumed")
        if problems:
            raise BenchError("probe failed: " + "; ".join(problems))
        return {"version": first["version"], "cipher": first["cipher"]}

    # -- measuring -----------------------------------------------------------

    @contextmanager
    def accounting(self, sid: int) -> Iterator[dict[str, Any]]:
        """CPU of the server, the clients (this process's children), the
        backend and the cores over the block; filled in when it ends."""
        acct: dict[str, Any] = {}
        (u0, k0), b0 = tree_cpu_split(sid), tree_cpu(self.backend_sid)
        l0, cores0, t0 = (
            hstool._children_cpu_seconds(),
            hstool._cores(),
            time.monotonic(),
        )
        yield acct
        (u1, k1), b1 = tree_cpu_split(sid), tree_cpu(self.backend_sid)
        l1, cores1, t1 = (
            hstool._children_cpu_seconds(),
            hstool._cores(),
            time.monotonic(),
        )
        wall = t1 - t0
        busy = {c: (cores1[c][0] - cores0[c][0]) / hstool.TICK for c in cores1}
        server, load, back = (u1 + k1) - (u0 + k0), l1 - l0, b1 - b0

        def pct(x: float) -> float:
            return round(100 * x / wall, 1)

        acct.update(
            wall_s=round(wall, 3),
            server_cpu_s=round(server, 3),
            server_user_s=round(u1 - u0, 3),
            server_cpu_pct=pct(server),
            client_cpu_pct=pct(load),
            backend_cpu_pct=pct(back),
            other_cpu_pct=pct(sum(busy.values()) - server - load - back),
            server_core_busy_pct=pct(busy.get(f"cpu{self.s.server_cpu}", math.nan)),
            load_core_busy_pct=pct(busy.get(f"cpu{self.s.load_cpu}", math.nan)),
        )

    def client(self, argv: list[str], timeout: float) -> str:
        """Run a load client on the load core, bounded in time."""
        proc = subprocess.run(
            ["taskset", "-c", str(self.s.load_cpu), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, GOMAXPROCS="1"),
        )
        if proc.returncode != 0:
            raise BenchError(
                f"{argv[0]} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}"
            )
        return proc.stdout

    def run_hsload(self, port: int, seconds: float) -> dict[str, Any]:
        out = self.client(
            [self.hsload, "-addr", f"{HOST}:{port}", "-path", "/small",
             "-c", str(self.s.conc), "-d", f"{seconds:g}s"],
            seconds + 30,
        )  # fmt: skip
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise BenchError(f"no result from hsload: {out[-500:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def measure_handshakes(self, sid: int, port: int) -> dict[str, Any]:
        if self.s.warmup:
            self.run_hsload(port, self.s.warmup)
        with self.accounting(sid) as acct:
            r = self.run_hsload(port, self.s.duration)
        if not r["requests"]:
            raise BenchError(f"no handshake completed ({r['errors']} errors)")
        return {
            "value": r["rps"],
            "unit": "handshakes/s",
            "p50_ms": r["p50_ms"],
            "p99_ms": r["p99_ms"],
            "errors": r["errors"],
            "work": r["requests"],
            "cpu_us_per_unit": round(1e6 * acct["server_cpu_s"] / r["requests"], 1),
            "user_us_per_unit": round(1e6 * acct["server_user_s"] / r["requests"], 1),
            **acct,
        }

    def wrk(self, port: int, seconds: float) -> dict[str, Any]:
        out = self.client(
            [shutil.which("wrk") or "wrk", "-t1", f"-c{self.s.conc}",
             f"-d{max(1, round(seconds))}s", "--timeout", "5s", "--latency",
             f"https://{HOST}:{port}/small"],
            seconds + 30,
        )  # fmt: skip
        return parse_wrk(out)

    def measure_keepalive(self, sid: int, port: int) -> dict[str, Any]:
        if self.s.warmup:
            self.wrk(port, self.s.warmup)
        with self.accounting(sid) as acct:
            r = self.wrk(port, self.s.duration)
        if not r["requests"]:
            raise BenchError(f"wrk completed no request: {r}")
        return {
            "value": r["rps"],
            "unit": "requests/s",
            **{k: r[k] for k in ("p50_ms", "p75_ms", "p90_ms", "p99_ms", "errors")},
            "work": r["requests"],
            "cpu_us_per_unit": round(1e6 * acct["server_cpu_s"] / r["requests"], 2),
            **acct,
        }

    def measure_bulk(self, sid: int, port: int) -> dict[str, Any]:
        """Transfers one after another until the duration is spent (2 at least)."""
        size = self.s.bulk_mib << 20
        curl = [shutil.which("curl") or "curl", "-sk", "--http1.1",
                "--max-time", "120", "-o", "/dev/null",
                "-w", "%{http_code} %{size_download} %{time_total}",
                f"https://{HOST}:{port}/big"]  # fmt: skip
        self.client(curl, 150)  # warm-up: one transfer
        total_bytes, total_time, n = 0, 0.0, 0
        with self.accounting(sid) as acct:
            start = time.monotonic()
            while n < 2 or (time.monotonic() - start < self.s.duration and n < 200):
                code, got, secs = self.client(curl, 150).split()
                if code != "200" or int(got) != size:
                    raise BenchError(f"bulk transfer: HTTP {code}, {got} of {size} B")
                total_bytes += int(got)
                total_time += float(secs)
                n += 1
        mb = total_bytes / 1e6
        return {
            "value": round(mb / total_time, 1),
            "unit": "MB/s",
            "transfers": n,
            "work": round(mb, 1),
            "cpu_us_per_unit": round(1e6 * acct["server_cpu_s"] / mb, 1),
            **acct,
        }

    def measure_idle(self, sid: int, port: int) -> dict[str, Any]:
        """RSS of the server's processes before and after N idle connections."""
        time.sleep(0.5)
        before = tree_rss_kib(sid)
        n = self.s.idle_conns
        proc = subprocess.Popen(
            ["taskset", "-c", str(self.s.load_cpu), sys.executable,
             os.path.abspath(__file__), "idle-client", "--port", str(port),
             "-n", str(n), "--seconds", "120"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        t0 = time.monotonic()
        try:
            line = read_line(proc, 150)
            open_s = time.monotonic() - t0
            m = re.match(r"open (\d+) failed (\d+)", line)
            if not m:
                err = proc.stderr.read(500) if proc.stderr else b""
                raise BenchError(f"idle client: {line!r} {err!r}")
            opened, failed = int(m[1]), int(m[2])
            if opened < n * 0.99:
                raise BenchError(f"idle client opened {opened} of {n} connections")
            time.sleep(1.0)  # let the server finish its side of the last ones
            after = tree_rss_kib(sid)
        except BaseException:
            proc.kill()
            raise
        finally:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return {
            "value": round((after - before) / opened, 1),
            "unit": "KiB/connection",
            "rss_before_kib": before,
            "rss_after_kib": after,
            "connections": opened,
            "failed": failed,
            "open_s": round(open_s, 1),
        }

    # -- rounds ----------------------------------------------------------------

    def run(self, out: str) -> None:
        # (key, figures measured on that server process)
        instances: list[tuple[str, list[str]]] = []
        ec_figs: list[str] = [
            f for f in ("idle", "ecdsa", "ka", "bulk") if f in self.s.figures
        ]
        if ec_figs:
            instances.append(("ecdsa", ec_figs))
        if "rsa" in self.s.figures:
            instances.append(("rsa", ["rsa"]))
        cells: dict[str, Callable[[int, int], dict[str, Any]]] = {
            "idle": self.measure_idle,
            "ecdsa": self.measure_handshakes,
            "rsa": self.measure_handshakes,
            "ka": self.measure_keepalive,
            "bulk": self.measure_bulk,
        }
        for rnd in range(1, self.s.rounds + 1):
            order = self.s.servers if rnd % 2 else self.s.servers[::-1]
            self.log(f"round {rnd}/{self.s.rounds}: {' '.join(order)}")
            for name in order:
                for key, figs in instances:
                    proc, port = self.start_server(name, key)
                    try:
                        info = self.probe(port, key)
                        self.log(f"  {name} ({key}) on :{port}, pid {proc.pid}: {info}")
                        for fig in figs:
                            r = cells[fig](proc.pid, port)
                            if proc.poll() is not None:
                                raise BenchError(f"{name} died during {fig}")
                            r.update(server=name, figure=fig, round=rnd)
                            with open(out, "a") as f:
                                f.write(json.dumps(r) + "\n")
                            self.log(f"    {fig}: {describe(r)}")
                    finally:
                        self.procs.stop(proc)

    # -- profile ---------------------------------------------------------------

    def profile(self, folder: str) -> str:
        """
        Where tlsgate's time goes: py-spy samples the gateway (and any worker
        processes) under handshake load and under keep-alive load, in a pass
        of its own after the rounds, since sampling slows what it samples.
        """
        pyspy = shutil.which("py-spy") or os.path.join(
            os.path.dirname(sys.executable), "py-spy"
        )
        if not os.path.exists(pyspy):
            raise BenchError("--profile needs py-spy: pip install py-spy")
        loads = {
            "ecdsa": lambda port, secs: self.run_hsload(port, secs),
            "ka": lambda port, secs: self.wrk(port, secs),
        }
        out = []
        for fig, load in loads.items():
            if fig not in self.s.figures:
                continue
            proc, port = self.start_server("tlsgate", "ecdsa")
            try:
                self.probe(port, "ecdsa")
                if self.s.warmup:
                    load(port, self.s.warmup)
                raw = os.path.join(folder, f"profile-{fig}.txt")
                spy = subprocess.Popen(
                    ["taskset", "-c", str(self.s.load_cpu), pyspy, "record",
                     "--pid", str(proc.pid), "--subprocesses", "--rate", "250",
                     "--duration", str(max(1, round(self.s.duration))),
                     "--format", "raw", "--output", raw],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                )  # fmt: skip
                try:
                    time.sleep(0.5)  # py-spy attaches
                    load(port, self.s.duration)
                    _, err = spy.communicate(timeout=60)
                except BaseException:
                    spy.kill()
                    spy.wait()
                    raise
                if spy.returncode != 0 or not os.path.exists(raw):
                    raise BenchError(f"py-spy failed: {err.decode()[-500:]}")
            finally:
                self.procs.stop(proc)
            what = "full ECDSA handshakes" if fig == "ecdsa" else "keep-alive requests"
            out.append(summarize_profile(raw, f"tlsgate under {what}"))
            self.log(f"profile of tlsgate under {what}: {raw}")
        return "\n\n".join(out)


def fetch(port: int, ctx: ssl.SSLContext, session: Any) -> dict[str, Any]:
    """
    One connection: handshake, C{GET /small} with C{Connection: close}, read
    to EOF. Like hstool's, but it takes the handshake's facts before reading,
    since a server that ends without close_notify (Twisted's portforward)
    leaves an C{SSLSocket} that no longer answers C{getpeercert}.
    """
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            cipher = s.cipher()
            facts: dict[str, Any] = {
                "version": s.version(),
                "cipher": cipher[0] if cipher else None,
                "leaf": s.getpeercert(binary_form=True),
                "reused": s.session_reused,
            }
            s.sendall(
                b"GET /small HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            body = b""
            while chunk := s.recv(65536):
                body += chunk
            # Tickets, if any, come after the handshake: reading to EOF saw them.
            facts.update(body=body, session=s.session)
            return facts


def read_line(proc: subprocess.Popen[bytes], seconds: float) -> str:
    """One line of a child's stdout, waiting at most SECONDS."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(seconds):
        raise BenchError(f"no answer within {seconds:g}s")
    return proc.stdout.readline().decode().strip()


def describe(r: dict[str, Any]) -> str:
    s = f"{r['value']:,} {r['unit']}"
    if "connections" in r:
        s += f" ({r['connections']} opened in {r['open_s']} s, {r['failed']} failed)"
    if "p99_ms" in r:
        s += f", p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
    if "cpu_us_per_unit" in r:
        s += f", server CPU {r['server_cpu_pct']}% ({r['cpu_us_per_unit']} µs/unit)"
        s += f", load core {r['load_core_busy_pct']}%, other {r['other_cpu_pct']}%"
    if r.get("errors"):
        s += f", {r['errors']} errors"
    return s


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, latency percentiles (ms) and errors from wrk --latency."""
    r: dict[str, Any] = {"errors": 0}
    m = re.search(r"^\s*(\d+) requests in", out, re.M)
    r["requests"] = int(m[1]) if m else 0
    m = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    r["rps"] = float(m[1]) if m else 0.0
    for pct, value, unit in re.findall(
        r"^\s*(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M
    ):
        r[f"p{pct}_ms"] = round(float(value) * _UNITS[unit], 3)
    m = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if m:
        r["errors"] += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += int(m[1])
    for k in ("p50_ms", "p75_ms", "p90_ms", "p99_ms"):
        r.setdefault(k, math.nan)
    return r


# -- the idle client -------------------------------------------------------------


def idle_client(args: argparse.Namespace) -> int:
    """
    Open N TLS connections, each with one keep-alive request answered (so the
    server's relay and its backend connection are set up), print how many,
    hold them until stdin closes, then close them. One process, one core.
    """
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n"
    held: list[ssl.SSLSocket] = []
    failed = 0
    deadline = time.monotonic() + args.seconds
    while len(held) + failed < args.n and time.monotonic() < deadline:
        try:
            raw = socket.create_connection((HOST, args.port), timeout=5)
            # As Go, wrk and curl do: without it, the request waits on Nagle
            # for the ACK of the client's Finished, delayed 40 ms by a server
            # that has nothing to send (no session tickets).
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(request)
            buf = b""
            while not (b"\r\n\r\n" in buf and buf.endswith(b"ok\n")):
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
            held.append(s)
        except OSError:
            failed += 1
    print(f"open {len(held)} failed {failed}", flush=True)
    sys.stdin.read()  # until the orchestrator closes our stdin
    for s in held:
        s.close()
    return 0


# -- the machine -------------------------------------------------------------------


def first_line(argv: list[str], pattern: str = "") -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    for line in (p.stdout + p.stderr).splitlines():
        if re.search(pattern, line):
            return line.strip()
    return "?"


def machine(s: Settings) -> str:
    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"]
    head = first_line(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", REPO, "status", "--porcelain", "--", "src"], ".")
    lines.append(
        f"tlsgate: {head}" + (" + uncommitted changes in src/" if dirty != "?" else "")
    )
    with open("/proc/cpuinfo") as f:
        model = next(
            (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
            "?",
        )
    lines += [
        f"cpu: {model}; {os.cpu_count()} cores",
        f"kernel: {platform.release()}",
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"python: {platform.python_version()}",
    ]
    try:
        import cryptography
        import OpenSSL
        import twisted
        from OpenSSL import SSL

        lines.append(
            f"twisted {twisted.__version__}, pyopenssl {OpenSSL.__version__},"
            f" cryptography {cryptography.__version__},"
            f" {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()} (tlsgate, bare)"
        )
    except ImportError:
        lines.append("twisted/pyopenssl: not importable by this python")
    lines += [
        f"system openssl (C servers, wrk, curl): {first_line(['openssl', 'version'])}",
        f"hitch: {first_line([hitch_bin(), '--version'], 'hitch')}",
        f"haproxy: {first_line(['haproxy', '-v'], 'version')}",
        f"nginx: {first_line([nginx_bin(), '-v'], 'version')}",
        f"wrk: {first_line(['wrk', '-v'], 'wrk')}",
        f"curl: {first_line(['curl', '--version'], '^curl')}",
        f"go (hsload): {first_line(['go', 'version'], 'go')}",
    ]
    return "\n".join(lines)


def settings_line(s: Settings) -> str:
    return (
        f"{'QUICK smoke run, not a measurement; ' if s.quick else ''}"
        f"{s.duration:g} s per cell after {s.warmup:g} s warm-up, {s.conc} connections"
        f" (hsload, wrk -t1), bulk {s.bulk_mib} MiB with curl, {s.idle_conns} idle"
        f" connections; server on core {s.server_cpu}, clients on core {s.load_cpu},"
        f" nginx backend on core {s.backend_cpu}; TLS 1.3, no session tickets;"
        f" server order reversed every other round."
    )


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def hitch_bin() -> str:
    return shutil.which("hitch") or "/usr/sbin/hitch"


def nginx_stream_module() -> str:
    for p in (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/share/nginx/modules/ngx_stream_module.so",
    ):
        if os.path.exists(p):
            return p
    raise BenchError(
        "ngx_stream_module.so not found: apt-get install libnginx-mod-stream"
    )


# -- main --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("idle-client", help="internal: hold idle TLS connections")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("-n", type=int, default=2000)
    c.add_argument("--seconds", type=float, default=120)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, 3 s per cell, 1 s warm-up")  # fmt: skip
    p.add_argument("--only", default="",
                   help="comma-separated servers and/or figures to run: "
                   f"{','.join(SERVERS)}; {','.join(FIGURES)} (default: all"
                   " but portforward, floor and twfloor)")  # fmt: skip
    p.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    p.add_argument("--duration", type=float, help="seconds per cell (default 10)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up (default 2)")
    p.add_argument("--conc", type=int, default=32, help="hsload and wrk connections")
    p.add_argument("--idle-conns", type=int, default=2000)
    p.add_argument("--bulk-mib", type=int, default=64)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--backend-cpu", type=int, help="default: the load core")
    p.add_argument("--tools", default=os.environ.get("TOOLS") or default_tools(),
                   help="shared/tools (hsload, openssl-notickets.cnf);"
                   " default $TOOLS, else ../shared/tools beside the repository")  # fmt: skip
    p.add_argument("--hsload", default=os.environ.get("HSLOAD"),
                   help="a built hsload (default: built into bench/results/.bin)")  # fmt: skip
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, sample tlsgate with py-spy under handshake and"
        " keep-alive load (a pass of its own) and add where its time goes",
    )
    p.add_argument("--results", help="output folder (default bench/results/peers-TIME)")
    p.add_argument("--report", metavar="RESULTS_JSONL",
                   help="only print the table of an earlier run's results.jsonl")  # fmt: skip
    return p.parse_args(argv)


def default_tools() -> str:
    beside = os.path.normpath(os.path.join(REPO, "..", "shared", "tools"))
    return beside if os.path.isdir(beside) else "/work/shared/tools"


def settings(a: argparse.Namespace) -> Settings:
    only = [x.strip().lower() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in SERVERS + FIGURES]
    if unknown:
        raise SystemExit(
            f"--only: unknown {', '.join(unknown)}; known: {SERVERS + FIGURES}"
        )
    servers = [s for s in SERVERS if s in only] or list(DEFAULT_SERVERS)
    figures = [f for f in FIGURES if f in only] or list(FIGURES)
    quick = a.quick
    return Settings(
        rounds=a.rounds or (1 if quick else 3),
        duration=a.duration or (3.0 if quick else 10.0),
        warmup=a.warmup if a.warmup is not None else (1.0 if quick else 2.0),
        conc=a.conc,
        idle_conns=a.idle_conns,
        bulk_mib=a.bulk_mib,
        server_cpu=a.server_cpu,
        load_cpu=a.load_cpu,
        backend_cpu=a.load_cpu if a.backend_cpu is None else a.backend_cpu,
        servers=servers,
        figures=figures,
        quick=quick,
        tools=os.path.abspath(a.tools),
        results=a.results
        or os.path.join(BENCH, "results", time.strftime("peers-%Y%m%d-%H%M%S")),
        hsload=a.hsload,
    )


def check_tools(s: Settings) -> None:
    missing = []
    need = {"openssl": "openssl", "taskset": "util-linux", "curl": "curl", "wrk": "wrk"}
    need["go" if not s.hsload else "taskset"] = "golang-go"
    for tool, pkg in need.items():
        if not shutil.which(tool):
            missing.append(pkg)
    if "hitch" in s.servers and not os.path.exists(hitch_bin()):
        missing.append("hitch")
    if "haproxy" in s.servers and not shutil.which("haproxy"):
        missing.append("haproxy")
    if not os.path.exists(nginx_bin()):
        missing.append("nginx")
    if "nginx" in s.servers:
        try:
            nginx_stream_module()
        except BenchError:
            missing.append("libnginx-mod-stream")
    if missing:
        raise SystemExit(
            "missing: apt-get install -y " + " ".join(sorted(set(missing)))
        )
    cnf = os.path.join(s.tools, "openssl-notickets.cnf")
    if not os.path.exists(cnf):
        raise SystemExit(f"{cnf} not found: set TOOLS or --tools to shared/tools")


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.command == "idle-client":
        return idle_client(a)
    s = settings(a)
    if a.report:
        # The settings of the run that wrote the file, from its machine.txt.
        line = settings_line(s)
        saved = os.path.join(os.path.dirname(a.report), "machine.txt")
        if os.path.exists(saved):
            with open(saved) as f:
                line = f.read().strip().splitlines()[-1]
        print(report(a.report, line))
        return 0
    check_tools(s)
    if len(os.sched_getaffinity(0)) < 2 or os.cpu_count() in (None, 1):
        print(
            "warning: fewer than 2 cores; server and load will compete", file=sys.stderr
        )
    # Ctrl-C and SIGTERM unwind through the finally below, which stops every
    # server and the backend; clients run under subprocess.run, which kills
    # its child when interrupted.
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if inherited off
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers
    os.makedirs(s.results, exist_ok=True)
    out = os.path.join(s.results, "results.jsonl")
    open(out, "w").close()
    info = machine(s)
    with open(os.path.join(s.results, "machine.txt"), "w") as f:
        f.write(info + "\n" + settings_line(s) + "\n")
    print(info, file=sys.stderr)
    work = tempfile.mkdtemp(prefix="tlsgate-peers.")
    os.chmod(work, 0o755)  # hitch's workers run as _hitch
    bench = Bench(s, work)
    profile = ""
    try:
        bench.setup()
        bench.run(out)
        if a.profile and "tlsgate" in s.servers:
            profile = bench.profile(s.results)
    finally:
        bench.procs.stop_all()
        logs = os.path.join(s.results, "logs")
        os.makedirs(logs, exist_ok=True)
        for name in os.listdir(work):
            if name.endswith((".log", ".conf", ".cfg", ".ini")):
                shutil.copy(os.path.join(work, name), logs)
        shutil.rmtree(work, ignore_errors=True)
    end_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    table = report(out, settings_line(s))
    text = f"{info}\nload average at end: {end_load}\n\n{table}\n"
    if profile:
        text += f"\n{profile}\n"
    with open(os.path.join(s.results, "table.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    bench.log(f"results in {s.results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"peers: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("peers: interrupted; every server stopped", file=sys.stderr)
        sys.exit(130)
