"""
Helpers for bench/handshakes.sh: free ports, readiness, a TLS probe, waiting
for a quiet machine, a measured hsload run with CPU accounting, two servers
loaded head to head, and the final tables.

Standard library only (plus C{cryptography} for the probe's key check), so it
runs with whatever python3 runs the gateway. Not a test, not run in CI.

    python3 bench/hstool.py ports 3
    python3 bench/hstool.py wait PORT [SECONDS]
    python3 bench/hstool.py probe PORT
    python3 bench/hstool.py quiet [--max-busy PCT] [--timeout S]
    python3 bench/hstool.py measure --name NAME --round N --pid PID --out FILE -- CMD...
    python3 bench/hstool.py duel --a NAME:PID:PORT --b NAME:PID:PORT --hsload PATH
    python3 bench/hstool.py report FILE [--duels FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
    print(
        f"nothing listens on {HOST}:{args.port} after {args.seconds}s", file=sys.stderr
    )
    return 1


# -- probe ---------------------------------------------------------------------


def _fetch(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> dict:
    with socket.create_connection((HOST, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
            s.sendall(
                b"GET /small HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
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
    return sum(_proc_cpu_split(pid))


def _proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return int(fields[11]) / TICK, int(fields[12]) / TICK


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


def _children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def cmd_measure(args: argparse.Namespace) -> int:
    """
    Run the load command; add CPU accounting to its JSON line: the server's
    CPU, the load generator's, the backend's, the busy share of each core, and
    what is left over for everything else (kernel softirqs, other processes).
    """
    others = args.backend_pid or []
    cpu0, cores0, t0 = _proc_cpu_seconds(args.pid), _cores(), time.monotonic()
    load0 = _children_cpu_seconds()
    back0 = sum(_proc_cpu_seconds(p) for p in others)
    proc = subprocess.run(args.cmd, capture_output=True, text=True)
    cpu1, cores1, t1 = _proc_cpu_seconds(args.pid), _cores(), time.monotonic()
    load1 = _children_cpu_seconds()
    back1 = sum(_proc_cpu_seconds(p) for p in others)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        sys.stderr.write(f"no result from {args.cmd}:\n{proc.stdout}{proc.stderr}")
        return 1
    result = json.loads(lines[-1])
    wall = t1 - t0
    server_cpu = cpu1 - cpu0
    busy = {c: (cores1[c][0] - cores0[c][0]) / TICK for c in cores1}
    accounted = server_cpu + (load1 - load0) + (back1 - back0)
    n = result["requests"]

    def pct(x: float) -> float:
        return round(100 * x / wall, 1)

    result.update(
        server=args.name,
        round=args.round,
        server_cpu_pct=pct(server_cpu),
        cpu_us_per_hs=round(1e6 * server_cpu / n, 1) if n else None,
        load_cpu_pct=pct(load1 - load0),
        backend_cpu_pct=pct(back1 - back0),
        other_cpu_pct=pct(sum(busy.values()) - accounted),
        core_busy_pct={c: pct(b) for c, b in busy.items()},
        server_core_busy_pct=pct(busy.get(f"cpu{args.server_cpu}", float("nan"))),
        load_core_busy_pct=pct(busy.get(f"cpu{args.load_cpu}", float("nan"))),
    )
    noisy = args.max_other is not None and result["other_cpu_pct"] > args.max_other
    if noisy and not args.accept_noisy:
        result["rejected"] = f"other CPU above {args.max_other:g}%"
    elif noisy:
        result["noisy"] = True
    line = json.dumps(result)
    out = args.rejected if "rejected" in result else args.out
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    print(line)
    return 3 if "rejected" in result else 0


def cmd_duel(args: argparse.Namespace) -> int:
    """
    Load two servers at once, both pinned to the same core, each with its own
    hsload: the scheduler gives each half of the core, so the ratio of their
    handshakes/s is the inverse ratio of their CPU per handshake, measured in
    the same seconds and so immune to the machine getting faster or slower.
    """
    sides = []
    for spec in (args.a, args.b):
        name, pid, port = spec.split(":")
        sides.append({"name": name, "pid": int(pid), "port": int(port)})
    env = dict(os.environ, GOMAXPROCS="1")
    before = [_proc_cpu_seconds(s["pid"]) for s in sides]
    cores0, t0 = _cores(), time.monotonic()
    procs = [
        subprocess.Popen(
            ["taskset", "-c", str(args.load_cpu), args.hsload, "-addr",
             f"{HOST}:{s['port']}", "-path", "/small", "-c", str(args.conc),
             "-d", args.duration],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for s in sides
    ]  # fmt: skip
    outs = [p.communicate() for p in procs]
    after = [_proc_cpu_seconds(s["pid"]) for s in sides]
    cores1, t1 = _cores(), time.monotonic()
    result: dict = {"duel": args.round}
    for side, p, (stdout, stderr), c0, c1 in zip(
        sides, procs, outs, before, after, strict=True
    ):
        if p.returncode != 0:
            sys.stderr.write(stderr)
            return 1
        r = json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])
        cpu = c1 - c0
        result[side["name"]] = {
            "rps": r["rps"],
            "errors": r["errors"],
            "p50_ms": r["p50_ms"],
            "cpu_pct": round(100 * cpu / (t1 - t0), 1),
            "cpu_us_per_hs": round(1e6 * cpu / r["requests"], 1)
            if r["requests"]
            else None,
        }
    busy = {c: (cores1[c][0] - cores0[c][0]) / TICK for c in cores1}
    result["core_busy_pct"] = {
        c: round(100 * b / (t1 - t0), 1) for c, b in busy.items()
    }
    a, b = sides[0]["name"], sides[1]["name"]
    result["pair"] = f"{a}/{b}"
    result["rps_ratio"] = round(result[a]["rps"] / result[b]["rps"], 4)
    line = json.dumps(result)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    print(line)
    return 0


def cmd_quiet(args: argparse.Namespace) -> int:
    """
    Wait until the machine is quiet: less than --max-busy percent of one core
    used by anything (sampled over one second), for at most --timeout seconds.
    Exit 1 (after the timeout) when it never was.
    """
    deadline = time.monotonic() + args.timeout
    while True:
        a = _cores()
        time.sleep(1.0)
        b = _cores()
        busy = sum(b[c][0] - a[c][0] for c in b) / TICK * 100
        if busy <= args.max_busy:
            return 0
        if time.monotonic() > deadline:
            print(f"machine still busy ({busy:.0f}% of a core)", file=sys.stderr)
            return 1


# -- report --------------------------------------------------------------------

ORDER = ["reloading", "static", "rebuild", "stunnel", "twistd"]
LABELS = {
    "reloading": "tlsgate, reloading context factory",
    "static": "tlsgate relay, static context",
    "rebuild": "tlsgate relay, new context per connection",
    "stunnel": "stunnel",
    "twistd": "twistd -n tlsgate --config (shipped)",
    "static2": "a second static process (control)",
}
RATIOS = [
    ("reloading", "static", 0.97),
    ("reloading", "rebuild", 1.4),
    ("reloading", "stunnel", None),
    ("twistd", "reloading", None),
]


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _duel_table(path: str) -> list[str]:
    duels: dict[str, list[dict]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                duels.setdefault(d["pair"], []).append(d)
    out = [
        "| head to head, one core shared | rounds | handshakes/s ratio: median (min-max)"
        " | server CPU per handshake, inverted | CPU share each | target |",
        "|---|---:|---:|---:|---|---|",
    ]
    targets = {(a, b): t for a, b, t in RATIOS if t is not None}
    for pair, ds in duels.items():
        a, b = pair.split("/")
        ratios = sorted(d["rps_ratio"] for d in ds)
        cpu = _median([d[b]["cpu_us_per_hs"] / d[a]["cpu_us_per_hs"] for d in ds])
        share = (
            f"{_median([d[a]['cpu_pct'] for d in ds]):.0f}% / "
            f"{_median([d[b]['cpu_pct'] for d in ds]):.0f}%"
        )
        target = targets.get((a, b))
        verdict = ""
        if target is not None:
            verdict = (
                f">= {target} ({'met' if _median(ratios) >= target else 'MISSED'})"
            )
        elif a == f"{b}2":
            verdict = "control: 1.0 but for noise"
        out.append(
            f"| {a} / {b} | {len(ds)} | {_median(ratios):.3f}"
            f" ({ratios[0]:.3f}-{ratios[-1]:.3f}) | {cpu:.3f} | {share} | {verdict} |"
        )
    return out


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

    dueled = set()
    if args.duels and os.path.exists(args.duels):
        with open(args.duels) as f:
            dueled = {json.loads(line)["pair"] for line in f if line.strip()}

    out = []
    per_round = " | handshakes/s per round" if rounds > 1 else ""
    out.append(
        "| server | handshakes/s | p50 ms | p99 ms | errors | server CPU"
        f" | server CPU µs/handshake | load core busy | other CPU{per_round} |"
    )
    out.append(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if rounds > 1 else "")
    )
    for n in names:
        rs = rows[n]

        def m(key: str, rs: list[dict] = rs) -> float:
            return _median([float("nan") if r.get(key) is None else r[key] for r in rs])

        cols = [
            f"{n}: {LABELS.get(n, n)}",
            f"{med[n]:.0f}",
            f"{m('p50_ms'):.1f}",
            f"{m('p99_ms'):.1f}",
            str(sum(r["errors"] for r in rs)),
            f"{m('server_cpu_pct'):.0f}%",
            f"{m('cpu_us_per_hs'):.0f}",
            f"{m('load_core_busy_pct'):.0f}%",
            f"{m('other_cpu_pct'):.0f}%",
        ]
        if rounds > 1:
            cols.append(
                ", ".join(
                    f"{r['rps']:.0f}" + ("*" if r.get("noisy") else "") for r in rs
                )
            )
        out.append("| " + " | ".join(cols) + " |")
    out.append("")
    us = {
        n: _median([r.get("cpu_us_per_hs") or float("nan") for r in rows[n]])
        for n in names
    }
    by_round = {n: {r["round"]: r["rps"] for r in rows[n]} for n in names}
    out.append(
        "| ratio | handshakes/s (medians) | same-round pairs: median (min-max)"
        " | server CPU per handshake, inverted | target |"
    )
    out.append("|---|---:|---:|---:|---|")
    for a, b, target in RATIOS:
        if a in med and b in med and med[b]:
            value = med[a] / med[b]
            pairs = sorted(
                by_round[a][k] / by_round[b][k] for k in by_round[a] if k in by_round[b]
            )
            paired = (
                f"{_median(pairs):.3f} ({pairs[0]:.3f}-{pairs[-1]:.3f})"
                if pairs
                else "-"
            )
            verdict = ""
            if target is not None:
                verdict = f">= {target} ({'met' if value >= target else 'MISSED'})"
                if f"{a}/{b}" in dueled:
                    verdict += "; to be read head to head"
            out.append(
                f"| {a} / {b} | {value:.3f} | {paired} | {us[b] / us[a]:.3f} | {verdict} |"
            )
    if args.duels and os.path.exists(args.duels):
        out += ["", *_duel_table(args.duels)]
    if any(r.get("noisy") for rs in rows.values() for r in rs):
        out.append("")
        out.append(
            "\\* measured while other work used the machine (other CPU over the limit)"
        )
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
    s.add_argument(
        "--backend-pid", type=int, action="append", help="the backend process"
    )
    s.add_argument(
        "--max-other",
        type=float,
        help="reject the run (exit 3) when"
        " CPU not used by server, load or backend exceeds this percent",
    )
    s.add_argument(
        "--accept-noisy",
        action="store_true",
        help="keep a run over --max-other, marked noisy",
    )
    s.add_argument("--rejected", help="append rejected runs' JSON lines here")
    s.add_argument("--server-cpu", type=int, default=0, help="the server's core")
    s.add_argument("--load-cpu", type=int, default=1, help="the load generator's core")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_measure)
    s = sub.add_parser("duel")
    s.add_argument("--a", required=True, help="NAME:PID:PORT")
    s.add_argument("--b", required=True, help="NAME:PID:PORT")
    s.add_argument("--round", type=int, default=1)
    s.add_argument("--hsload", required=True)
    s.add_argument("--conc", type=int, default=32)
    s.add_argument("--duration", default="10s")
    s.add_argument("--load-cpu", type=int, default=1)
    s.add_argument("--out")
    s.set_defaults(func=cmd_duel)
    s = sub.add_parser("quiet")
    s.add_argument("--max-busy", type=float, default=10.0)
    s.add_argument("--timeout", type=float, default=120.0)
    s.set_defaults(func=cmd_quiet)
    s = sub.add_parser("report")
    s.add_argument("file")
    s.add_argument("--duels", help="the head-to-head results, if any")
    s.set_defaults(func=cmd_report)
    args = p.parse_args()
    if getattr(args, "cmd", None) and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
