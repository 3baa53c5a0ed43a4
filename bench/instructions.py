"""
User-space instructions per relayed connection, counted by callgrind: a
figure that does not move with the machine's load, for comparing two trees
of tlsgate (before and after a change) where timings drown in noise.

    python bench/instructions.py                      # this tree
    python bench/instructions.py --tree /path/to/other/checkout --tree .
    python bench/instructions.py --connections 500 --tls-version 1.2 --key rsa
    python bench/instructions.py --server twfloor     # or floor, floor-socket-bio
    python bench/instructions.py --server hitch       # hitch 1.7 on the system OpenSSL
    python bench/instructions.py --keep /tmp/cg       # then callgrind_annotate /tmp/cg/0/*

Each tree's gateway (``twistd -n tlsgate --config X.ini`` with the tree's
``src`` on the path, ``session_resumption = off``) runs under ``valgrind
--tool=callgrind`` with instrumentation off; after 50 warm-up connections it
is switched on for N connections, each a full TLS handshake (ECDSA P-256,
no resumption), one ``GET`` relayed to a loopback backend that answers and
closes, and the client's close. The count is the server's user-space
instructions (OpenSSL, Python, libc; not the kernel's) divided by N. The
client and the backend run in this process, outside valgrind.

Needs valgrind (``callgrind_control``) and openssl. Takes about a minute per
tree. The same tree gives the same count to within about 0.5%.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def read_head(sock: socket.socket, data: bytes) -> bytes | None:
    """
    Read from C{sock} until C{data} holds a request's head; what came after
    it, or C{None} if the client closed first.
    """
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


class Backend(socketserver.BaseRequestHandler):
    """Answers one request, then closes (as nginx does for Connection: close)."""

    def handle(self) -> None:
        if read_head(self.request, b"") is not None:
            self.request.sendall(ANSWER)


KEPT_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


class KeepAliveBackend(socketserver.BaseRequestHandler):
    """Answers every request of a connection, and closes when the client does."""

    def handle(self) -> None:
        rest: bytes | None = b""
        while (rest := read_head(self.request, rest)) is not None:
            self.request.sendall(KEPT_ANSWER)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The key each count's certificate has (C{--key}).
KEYS = {
    "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}


def make_certificate(workdir: Path, kind: str = "ecdsa") -> tuple[Path, Path]:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", *KEYS[kind], "-nodes", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=localhost", "-days", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    # Dated back: the reloading factory re-reads files changed in the last 2 s.
    old = time.time() - 3600
    for path in (cert, key):
        os.utime(path, (old, old))
    return cert, key


def client_context() -> ssl.SSLContext:
    """A client context that takes the gateway's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def open_tls(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection to the gateway on C{port} (handshake done)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def one_connection(port: int, ctx: ssl.SSLContext) -> None:
    with open_tls(port, ctx) as tls:
        tls.sendall(b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = tls.recv(4096)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        if not data.endswith(b"ok\n"):
            raise RuntimeError(f"unexpected answer {data!r}")


#: What else can be counted in the gateway's place: bench/floor_relay.py's
#: floors (their arguments), for how far tlsgate is from a featureless relay.
FLOORS = {"floor": [], "floor-socket-bio": ["--socket-bio"], "twfloor": ["--twisted"]}


def setting(
    workdir: Path,
    kind: str = "ecdsa",
    handler: type[socketserver.BaseRequestHandler] = Backend,
) -> tuple[Server, int, Path, Path, Path]:
    """
    A loopback backend (serving, in a thread), a free port, a certificate and
    key, and a gateway config in C{workdir} that relays that port to that
    backend with C{session_resumption = off}.
    """
    cert, key = make_certificate(workdir, kind)
    backend = Server(("127.0.0.1", 0), handler)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    ini = workdir / "gateway.ini"
    ini.write_text(
        "[listener:bench]\n"
        f"listen = tcp:{port}:interface=127.0.0.1\n"
        f"backend = tcp:127.0.0.1:{backend.server_address[1]}\n"
        f"cert = {cert}\nkey = {key}\nsession_resumption = off\n"
    )
    return backend, port, cert, key, ini


def _gateway_in_process(
    handler: type[socketserver.BaseRequestHandler],
    load: Callable[[int, Callable[[Callable[[], object]], None]], None],
) -> None:
    """
    This tree's gateway, run in this process on the installed reactor
    (C{tlsgate.tap.makeService}, as twistd builds it; C{session_resumption =
    off}) in front of a loopback backend answering with C{handler}.
    C{load(port, in_reactor)} runs in a client thread (C{in_reactor(call)}
    runs C{call} in the reactor's thread and waits for it); the reactor stops
    when it returns, and so does this.
    """
    from twisted.internet import reactor

    from tlsgate import tap

    work = Path(tempfile.mkdtemp(prefix="tlsgate-in-process."))
    backend, port, _, _, ini = setting(work, handler=handler)
    tap.makeService({"config": str(ini)}).startService()

    def in_reactor(call: Callable[[], object]) -> None:
        done = threading.Event()
        reactor.callFromThread(lambda: (call(), done.set()))  # type: ignore[attr-defined]
        done.wait()

    def clients() -> None:
        try:
            load(port, in_reactor)
        finally:
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    reactor.callWhenRunning(  # type: ignore[attr-defined]
        threading.Thread(target=clients, daemon=True).start
    )
    reactor.run()  # type: ignore[attr-defined]
    backend.shutdown()


def in_process(
    connections: int,
    concurrency: int,
    start: Callable[[], object],
    stop: Callable[[], object],
) -> None:
    """
    Load this tree's gateway, in this process (L{_gateway_in_process}):
    after 30 warm-up connections, C{start()} is called in the reactor's
    thread, C{connections} connections (a full handshake and one C{GET}
    each) come from C{concurrency} client threads, then C{stop()} is called
    in the reactor's thread. Returns once the reactor stopped. For
    bench/opcodes.py and bench/gc_cost.py.
    """
    import concurrent.futures

    def load(port: int, in_reactor: Callable[[Callable[[], object]], None]) -> None:
        ctx = client_context()
        for _ in range(30):
            one_connection(port, ctx)
        in_reactor(start)
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: one_connection(port, ctx), range(connections)))
        in_reactor(stop)

    _gateway_in_process(Backend, load)


def requests_on(tls: ssl.SSLSocket, n: int) -> None:
    """C{n} requests on one connection, each answer read whole before the next."""
    for _ in range(n):
        tls.sendall(b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while not data.endswith(b"ok\n"):
            chunk = tls.recv(4096)
            if not chunk:
                raise RuntimeError(f"closed after {data!r}")
            data += chunk


def in_process_requests(
    requests: int,
    concurrency: int,
    start: Callable[[], object],
    stop: Callable[[], object],
) -> None:
    """
    L{in_process} for keep-alive requests: C{concurrency} TLS connections
    are opened and warmed up with 20 requests each, then C{start()} is
    called in the reactor's thread, C{requests} requests are made, shared
    out over the connections (each waits for its answer before the next),
    and C{stop()} is called. The backend answers every request and keeps
    the connection. For bench/opcodes.py C{--requests}.
    """
    import concurrent.futures

    def load(port: int, in_reactor: Callable[[Callable[[], object]], None]) -> None:
        ctx = client_context()
        connections = [open_tls(port, ctx) for _ in range(concurrency)]
        for tls in connections:
            requests_on(tls, 20)
        in_reactor(start)
        share = [requests // concurrency] * concurrency
        share[0] += requests - sum(share)
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(requests_on, connections, share))
        in_reactor(stop)
        for tls in connections:
            tls.close()

    _gateway_in_process(KeepAliveBackend, load)


def hitch_worker(conf: Path) -> str:
    """The pid of hitch's one worker (the master's child that serves)."""
    found = subprocess.run(
        ["pgrep", "-f", f"hitch --config={conf}"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip

    def stat(pid: str) -> list[str]:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    # Under valgrind (not runuser): the master, and its children, its worker
    # and its OCSP helper; the worker has used CPU (it served the warm-up).
    hitch = [
        p
        for p in found
        if b"valgrind" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
    ]
    children = [p for p in hitch if stat(p)[1] in hitch]
    return max(children, key=lambda p: int(stat(p)[11]) + int(stat(p)[12]))


def count(
    tree: Path,
    connections: int,
    version: str,
    workdir: Path,
    server: str = "tlsgate",
    kind: str = "ecdsa",
) -> int:
    """
    Instructions of the gateway of C{tree} (or of the floor C{server} names,
    L{FLOORS}) over C{connections} connections.
    """
    backend, port, cert, key, ini = setting(workdir, kind)
    out = workdir / "callgrind.out"
    pidfile = workdir / "twistd.pid"
    twistd = Path(sys.executable).with_name("twistd")
    env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{tree}")
    control = ["callgrind_control"]
    if server == "hitch":
        # One worker, as bench/peers.py runs it; it refuses to run as root,
        # so valgrind runs as its user, and callgrind_control must too.
        pem = workdir / "hitch.pem"
        pem.write_text(cert.read_text() + key.read_text())
        conf = workdir / "hitch.conf"
        conf.write_text(
            f'frontend = "[127.0.0.1]:{port}"\n'
            f'backend = "[127.0.0.1]:{backend.server_address[1]}"\n'
            f'pem-file = "{pem}"\nworkers = 1\ndaemon = off\nsyslog = off\n'
        )
        workdir.chmod(0o777)
        for f in (pem, conf):
            f.chmod(0o644)
        user = ["runuser", "-u", "_hitch", "--"] if os.geteuid() == 0 else []
        control = [*user, "callgrind_control"]
        argv = [*user, "valgrind", "--tool=callgrind", "--instr-atstart=no",
                "--trace-children=yes", f"--callgrind-out-file={out}.%p",
                "hitch", f"--config={conf}"]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    elif server == "tlsgate":
        argv = [str(twistd), "-n", "--pidfile", str(pidfile),
                "-l", str(workdir / "gateway.log"), "tlsgate", "--config", str(ini)]  # fmt: skip
    else:
        argv = [sys.executable, str(tree / "bench" / "floor_relay.py"),
                "--cert", str(cert), "--key", str(key), "--port", str(port),
                "--backend", f"127.0.0.1:{backend.server_address[1]}",
                *FLOORS[server]]  # fmt: skip
    if server != "hitch":
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", *argv],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    ctx = client_context()
    ctx.minimum_version = ctx.maximum_version = getattr(
        ssl.TLSVersion, "TLSv" + version.replace(".", "_")
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                one_connection(port, ctx)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.5)
        for _ in range(50):
            one_connection(port, ctx)
        if server == "hitch":
            pid = hitch_worker(workdir / "hitch.conf")
        elif server == "tlsgate":
            pid = pidfile.read_text().strip()
        else:
            pid = str(proc.pid)
        for step in (["-i", "on"], None, ["-i", "off"], ["-d"]):
            if step is None:
                for _ in range(connections):
                    one_connection(port, ctx)
            else:
                subprocess.run([*control, *step, pid], check=True, capture_output=True)
    finally:
        if server == "hitch":
            # runuser waits for valgrind; hitch's master ends its workers.
            subprocess.run(["pkill", "-f", f"hitch --config={workdir}"], check=False)
        else:
            proc.terminate()
        proc.wait(timeout=60)
        backend.shutdown()
        backend.server_close()
    dumps = sorted(workdir.glob("callgrind.out.*"))
    for dump in dumps:
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total = int(line.split()[1])
                if total:
                    return total
    raise RuntimeError(f"no instructions counted in {dumps}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tree",
        action="append",
        type=Path,
        help="a checkout of tlsgate (repeat to compare; default: this one)",
    )
    p.add_argument("--connections", type=int, default=300)
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy each tree's callgrind dumps into DIR/<n>/ for callgrind_annotate",
    )
    p.add_argument("--tls-version", default="1.3", choices=["1.2", "1.3"])
    p.add_argument("--key", default="ecdsa", choices=sorted(KEYS))
    p.add_argument(
        "--server",
        default="tlsgate",
        choices=["tlsgate", "hitch", *FLOORS],
        help="count a floor of bench/floor_relay.py, or hitch (one worker, run"
        " as _hitch when this runs as root), instead of the gateway",
    )
    args = p.parse_args()
    trees = args.tree or [REPO]
    for n, tree in enumerate(trees):
        with tempfile.TemporaryDirectory(prefix="tlsgate-instructions.") as tmp:
            total = count(
                tree.resolve(),
                args.connections,
                args.tls_version,
                Path(tmp),
                args.server,
                args.key,
            )
            if args.keep:
                kept = args.keep / str(n)
                kept.mkdir(parents=True, exist_ok=True)
                for dump in Path(tmp).glob("callgrind.out.*"):
                    shutil.copy(dump, kept)
        print(
            f"{tree} ({args.server}): {total / args.connections:,.0f} instructions"
            " per connection"
            f" (TLS {args.tls_version}, {args.key}, {args.connections} connections)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
