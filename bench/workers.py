"""
workers = 1 against workers = 2, side by side in one run: full TLS
handshakes per second, CPU per handshake, and how evenly connections spread
over the workers, for workers sharing one inherited socket (what ships) and
for one SO_REUSEPORT socket per worker (see docs/benchmarks.md, "Workers").

    python3 bench/workers.py [--duration 5] [--rounds 2] [--conc 32]
                             [--hsload /tmp/hsload] [--server-cpu 0] [--load-cpu 1]

Both gateways get the same CPU (--server-cpu, one core by default), so the
figures compare the cost of the process model, not core counts: this machine
has two cores and the load generator needs one. hsload (Go crypto/tls, no
resumption) and nginx (the backend, `return 200`) share --load-cpu. Rounds
alternate the order. CPU is the sum over the gateway's whole process tree
(supervisor, fork server, workers), read from /proc; the supervisor's own
share is reported separately. Not a test, not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tree(pid: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [pid], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def admin_get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def accepted(admin: int, workers: int) -> dict[int, int]:
    """Connections accepted so far, per worker pid."""
    doc = admin_get(admin, "/status")
    if workers == 1:
        return {0: doc["listeners"]["web"]["connections"]["accepted"]}
    return {
        w["pid"]: w["listeners"]["web"]["connections"]["accepted"]
        for w in doc["workers"]
        if w["listeners"]
    }


def wait_ready(admin: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gateway exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{admin}/readyz", timeout=2
            ) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("gateway not ready within 30 s")


def make_cert(work: Path) -> Path:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = work / "cert.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def start_nginx(work: Path, port: int, cpu: str) -> subprocess.Popen[bytes]:
    conf = work / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {work}/nginx.pid;"
        f" error_log {work}/nginx.err;\nevents {{}}\nhttp {{ access_log off;"
        f" server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok\\n'; }} }} }}\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen(["taskset", "-c", cpu, nginx, "-c", str(conf)])


VARIANTS = {
    # name: (workers, SO_REUSEPORT per worker)
    "w1": (1, False),
    "w2": (2, False),
    "w2-reuseport": (2, True),
}


def run_one(args: argparse.Namespace, work: Path, cert: Path, backend: int,
            variant: str) -> dict[str, float]:  # fmt: skip
    workers, reuseport = VARIANTS[variant]
    port, admin = free_ports(2)
    ini = work / f"w{workers}.ini"
    ini.write_text(
        f"[gateway]\nworkers = {workers}\nadmin = tcp:{admin}:interface=127.0.0.1\n"
        f"[listener:web]\nlisten = tcp:{port}:interface=127.0.0.1\n"
        f"backend = tcp:127.0.0.1:{backend}\ncert = {cert}\n"
        "session_resumption = off\nidle_timeout = 0\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'src'}:{REPO}")
    env["TLSGATE_REUSEPORT"] = "1" if reuseport else "0"
    twistd = str(Path(sys.executable).with_name("twistd"))
    log = open(work / f"w{workers}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        ["taskset", "-c", args.server_cpu, twistd, "-n", "--pidfile=", "tlsgate",
         "--config", str(ini)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(admin, proc)
        subprocess.run(
            [
                args.hsload,
                "-addr",
                f"127.0.0.1:{port}",
                "-c",
                str(args.conc),
                "-d",
                "1s",
            ],
            capture_output=True,
            check=True,
        )  # fmt: skip  (warm-up)
        pids = tree(proc.pid)
        before_cpu, before_acc = cpu_seconds(pids), accepted(admin, workers)
        out = subprocess.run(
            ["taskset", "-c", args.load_cpu, args.hsload, "-addr", f"127.0.0.1:{port}",
             "-c", str(args.conc), "-d", f"{args.duration}s"],
            capture_output=True, check=True, env=dict(os.environ, GOMAXPROCS="1"),
        )  # fmt: skip
        after_cpu, after_acc = cpu_seconds(pids), accepted(admin, workers)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    result = json.loads(out.stdout)
    used = {p: after_cpu.get(p, 0) - before_cpu.get(p, 0) for p in before_cpu}
    total_cpu = sum(used.values())
    shares = [after_acc[p] - before_acc.get(p, 0) for p in after_acc]
    hs = result["requests"]
    return {
        "hs_per_s": result["rps"],
        "errors": result["errors"],
        "cpu_s": total_cpu,
        "us_cpu_per_hs": 1e6 * total_cpu / hs if hs else float("nan"),
        "supervisor_cpu_s": used.get(proc.pid, 0.0) if workers > 1 else 0.0,
        "spread_max_share": max(shares) / sum(shares) if sum(shares) else float("nan"),
        "p99_ms": result["p99_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--conc", type=int, default=32)
    parser.add_argument("--hsload", default=os.environ.get("HSLOAD", "/tmp/hsload"))
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--load-cpu", default="1")
    args = parser.parse_args()
    if not os.access(args.hsload, os.X_OK):
        raise SystemExit(
            f"no hsload at {args.hsload}: GO111MODULE=off go build -o /tmp/hsload"
            " ../shared/tools/hsload/hsload.go"
        )
    work = Path(tempfile.mkdtemp(prefix="tlsgate-workers-"))
    cert = make_cert(work)
    (backend,) = free_ports(1)
    nginx = start_nginx(work, backend, args.load_cpu)
    names = list(VARIANTS)
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    try:
        time.sleep(0.5)
        for r in range(args.rounds):
            for variant in names if r % 2 == 0 else names[::-1]:
                row = run_one(args, work, cert, backend, variant)
                rows[variant].append(row)
                print(f"round {r + 1} {variant}: {json.dumps(row)}", flush=True)
    finally:
        nginx.terminate()
        nginx.wait(10)
    print(f"\nmedians over {args.rounds} rounds, gateway on CPU {args.server_cpu},"
          f" hsload -c {args.conc} and nginx on CPU {args.load_cpu}:")  # fmt: skip
    keys = ["hs_per_s", "us_cpu_per_hs", "supervisor_cpu_s", "spread_max_share", "p99_ms",
            "errors"]  # fmt: skip
    print(f"| {'':18} | " + " | ".join(f"{n:>12}" for n in names) + " | w2/w1 |")
    print("|---" * (len(names) + 2) + "|")
    for k in keys:
        med = [statistics.median(x[k] for x in rows[n]) for n in names]
        ratio = f"{med[1] / med[0]:.2f}" if med[0] else "-"
        print(f"| {k:18} | " + " | ".join(f"{m:12.3f}" for m in med) + f" | {ratio} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
