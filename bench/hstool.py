"""
Helpers for bench/handshakes.sh: free ports, readiness, a TLS probe, a
measured hsload run with CPU accounting, and the final table.

Standard library only (plus C{cryptography} for the probe's key check), so it
runs with whatever python3 runs the gateway. Not a test, not run in CI.

    python3 bench/hstool.py ports 3
    python3 bench/hstool.py wait PORT [SECONDS]
    python3 bench/hstool.py probe PORT
    python3 bench/hstool.py measure --name NAME --round N --pid PID --out FILE -- CMD...
    python3 bench/hstool.py report FILE
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"
TICK = os.sysconf("SC_CLK_TCK")


# -- ports ---------------------------------------------------------------------


def cmd_ports(args: argparse.Namespace) -> int:
    """Print N distinct free loopback ports (bound together, then released)."""
    socks = []
    for _ in range(args.n):
        s = socket.socket()
        s.bind((HOST, 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def cmd_wait(args: argparse.Namespace) -> int:
    """Wait until something accepts TCP connections on the port."""
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        if args.pid is not None and not _alive(args.pid):
            print(f"process {args.pid} is gone", file=sys.stderr)
            return 1
        try:
            socket.create_connection((HOST, args.port), timeout=0.5).close()
            return 0
        except OSError:
            time.sleep(0.05)
    print(f"nothing listens on {HOST}:{args.port} after {args.seconds}s", file=sys.stderr)
    return 1


# -- probe ---------------------------------------------------------------------


def _fetch(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> dict:
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(b"GET /small HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
            # Tickets (if any) arrive after the handshake; reading to EOF saw them.
            cipher = s.cipher()
            return {
                "version": s.version(),
                "cipher": cipher[0] if cipher else None,
                "leaf": s.getpeercert(binary_form=True),
                "body": body,
                "session": s.session,
                "reused": s.session_reused,
            }


def cmd_probe(args: argparse.Namespace) -> int:
    """
    Check one server before it is measured: TLS 1.3, an ECDSA P-256 leaf, an
    HTTP 200 from the backend, and no session resumption (a second connection
    offering the first one's session must get a full handshake).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    first = _fetch(args.port, ctx, None)
    leaf = x509.load_der_x509_certificate(first["leaf"])
    key = leaf.public_key()
    key_desc = (
        f"ECDSA {key.curve.name}"
        if isinstance(key, ec.EllipticCurvePublicKey)
        else type(key).__name__
    )
    session = first["session"]
    second = _fetch(args.port, ctx, session)
    body, body2 = first["body"], second["body"]
    info = {
        "version": first["version"],
        "cipher": first["cipher"],
        "leaf_key": key_desc,
        "status": body.split(b"\r\n", 1)[0].decode("latin-1"),
        "ticket_issued": bool(session is not None and session.has_ticket),
        "resumed": second["reused"],
    }
    problems = []
    if info["version"] != "TLSv1.3":
        problems.append("not TLS 1.3")
    if key_desc != "ECDSA secp256r1":
        problems.append("leaf is not ECDSA P-256")
    if not info["status"].startswith("HTTP/1.1 200") or not body2.endswith(b"ok\n"):
        problems.append("backend did not answer 200 ok")
    if info["resumed"]:
        problems.append("a session was resumed")
    print(json.dumps(info))
    if problems:
        print("probe failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


# -- measure -------------------------------------------------------------------


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (live or exited)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


def _cores() -> dict[str, tuple[int, int]]:
    """(busy, total) jiffies per core, from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]
                idle = v[3] + v[4]
                out[name] = (sum(v) - idle, sum(v))
    return out


def cmd_measure(args: argparse.Namespace) -> int:
    """Run the load command; add server CPU and per-core load to its JSON line."""
    cpu0, cores0, t0 = _proc_cpu_seconds(args.pid), _cores(), time.monotonic()
    proc = subprocess.run(args.cmd, capture_output=True, text=True)
    cpu1, cores1, t1 = _proc_cpu_seconds(args.pid), _cores(), time.monotonic()
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        sys.stderr.write(f"no result from {args.cmd}:\n{proc.stdout}{proc.stderr}")
        return 1
    result = json.loads(lines[-1])
    server_cpu = cpu1 - cpu0
    result.update(
        server=args.name,
        round=args.round,
        server_cpu_s=round(server_cpu, 2),
        server_cpu_pct=round(100 * server_cpu / (t1 - t0), 1),
        cpu_us_per_hs=round(1e6 * server_cpu / result["requests"], 1)
        if result["requests"]
        else None,
        core_busy_pct={
            c: round(100 * (cores1[c][0] - cores0[c][0]) / max(1, cores1[c][1] - cores0[c][1]), 1)
            for c in cores1
        },
    )
    line = json.dumps(result)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    print(line)
    return 0


# -- report --------------------------------------------------------------------

ORDER = ["reloading", "static", "rebuild", "stunnel", "twistd"]
LABELS = {
    "reloading": "tlsgate, reloading context factory",
    "static": "tlsgate relay, static context",
    "rebuild": "tlsgate relay, new context per connection",
    "stunnel": "stunnel",
    "twistd": "twistd -n tlsgate --config (shipped)",
}
RATIOS = [
    ("reloading", "static", 0.97),
    ("reloading", "rebuild", 1.4),
    ("reloading", "stunnel", None),
    ("twistd", "reloading", None),
]


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def cmd_report(args: argparse.Namespace) -> int:
    """Median per server over rounds; the table and the ratios, as Markdown."""
    rows: dict[str, list[dict]] = {}
    with open(args.file) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows.setdefault(r["server"], []).append(r)
    names = [n for n in ORDER if n in rows] + sorted(set(rows) - set(ORDER))
    rounds = max(len(v) for v in rows.values()) if rows else 0
    med = {n: _median([r["rps"] for r in rows[n]]) for n in names}

    out = []
    per_round = " | handshakes/s per round" if rounds > 1 else ""
    out.append(
        "| server | handshakes/s | p50 ms | p99 ms | errors | server CPU"
        f" | server CPU µs/handshake | load core busy{per_round} |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if rounds > 1 else ""))
    for n in names:
        rs = rows[n]
        cols = [
            f"{n}: {LABELS.get(n, n)}",
            f"{med[n]:.0f}",
            f"{_median([r['p50_ms'] for r in rs]):.1f}",
            f"{_median([r['p99_ms'] for r in rs]):.1f}",
            str(sum(r["errors"] for r in rs)),
            f"{_median([r['server_cpu_pct'] for r in rs]):.0f}%",
            f"{_median([r['cpu_us_per_hs'] or float('nan') for r in rs]):.0f}",
            f"{_median([r['core_busy_pct'].get('cpu1', float('nan')) for r in rs]):.0f}%",
        ]
        if rounds > 1:
            cols.append(", ".join(f"{r['rps']:.0f}" for r in rs))
        out.append("| " + " | ".join(cols) + " |")
    out.append("")
    out.append("| ratio (handshakes/s) | value | target |")
    out.append("|---|---:|---|")
    for a, b, target in RATIOS:
        if a in med and b in med and med[b]:
            value = med[a] / med[b]
            verdict = ""
            if target is not None:
                verdict = f">= {target} ({'met' if value >= target else 'MISSED'})"
            out.append(f"| {a} / {b} | {value:.3f} | {verdict} |")
    print("\n".join(out))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd_name", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(func=cmd_ports)
    s = sub.add_parser("wait")
    s.add_argument("port", type=int)
    s.add_argument("seconds", type=float, nargs="?", default=15.0)
    s.add_argument("--pid", type=int, help="give up when this process exits")
    s.set_defaults(func=cmd_wait)
    s = sub.add_parser("probe")
    s.add_argument("port", type=int)
    s.set_defaults(func=cmd_probe)
    s = sub.add_parser("measure")
    s.add_argument("--name", required=True)
    s.add_argument("--round", type=int, default=1)
    s.add_argument("--pid", type=int, required=True, help="the server process")
    s.add_argument("--out", help="append the JSON line to this file")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_measure)
    s = sub.add_parser("report")
    s.add_argument("file")
    s.set_defaults(func=cmd_report)
    args = p.parse_args()
    if getattr(args, "cmd", None) and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
