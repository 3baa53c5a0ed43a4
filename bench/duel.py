"""
Two gateways head to head on one core: two trees of tlsgate (before and
after a change), or tlsgate and a peer, loaded at the same time.

The machines these benchmarks run on are shared, and their speed drifts by
10% or more between runs a few minutes apart, more than most changes to the
data path are worth. Here both servers are pinned to the same core and each
gets its own hsload (full handshakes, no resumption) at the same moment: the
scheduler splits the core between them, so each one's CPU per handshake is
measured in the same seconds, under the same drift. The figure to read is
the ratio of those, per round; the order of the two is swapped every round.

    python bench/duel.py --a base=/path/to/old/checkout --b new=. --key rsa
    python bench/duel.py --a tlsgate=. --b hitch --key ecdsa --rounds 6

The duel is for two trees of tlsgate, whose footprints are alike. Against a
peer it reads low: the two processes take turns on one core and evict each
other's caches, which costs the larger Python process more than a C one
(tlsgate against hitch: 0.58x by CPU in a duel where bench/peers.sh, each
server alone on the core, gave 0.63-0.72x the same hour). For ratios against
peers use bench/peers.sh.

A side is NAME=TREE (tlsgate from that checkout, run as users run it:
C{twistd -n tlsgate --config X.ini}, C{session_resumption = off}, under the
same no-tickets OpenSSL config as the C servers; NAME=TREE@tickets leaves it
out, so that OpenSSL sends its two TLS 1.3 tickets), or
C{hitch}, C{haproxy} or C{floor}, started as C{bench/peers.py} starts them.
Uses bench/peers.py's certificates, nginx backend and hsload. Not a test and
not run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers


def start_tree(
    bench: peers.Bench, tree: str, key: str, tag: str, tickets: bool = False
) -> tuple[Any, int]:
    """
    tlsgate from checkout C{tree}, on the server core, under the C servers'
    no-tickets OpenSSL config unless C{tickets} (see bench/peers.py).
    """
    (port,) = peers.free_ports(1)
    cert, keyf, _ = bench.certs[key]
    ini = bench.path(f"{tag}.ini")
    with open(ini, "w") as f:
        f.write(
            "[listener:bench]\n"
            f"listen = tcp:{port}:interface={peers.HOST}:backlog=4096\n"
            f"backend = tcp:{peers.HOST}:{bench.backend_port}\n"
            f"cert = {cert}\nkey = {keyf}\nsession_resumption = off\n"
        )
    root = os.path.abspath(tree)
    env = dict(
        os.environ,
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join([os.path.join(root, "src"), root]),
    )
    if tickets:
        env.pop("OPENSSL_CONF", None)
    else:
        env["OPENSSL_CONF"] = os.path.join(bench.s.tools, "openssl-notickets.cnf")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    log = bench.path(f"{tag}.log")
    argv = [twistd, "-n", "--pidfile", bench.path(f"{tag}.pid"), "--logfile", log,
            "tlsgate", "--config", ini]  # fmt: skip
    proc = bench.procs.start(argv, bench.s.server_cpu, log, env)
    peers.wait_listening(proc, port, 30)
    return proc, port


def hsload(bench: peers.Bench, port: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["taskset", "-c", str(bench.s.load_cpu), bench.hsload, "-addr",
         f"{peers.HOST}:{port}", "-path", "/small", "-c", str(bench.s.conc),
         "-d", f"{seconds}s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, GOMAXPROCS="1"),
    )  # fmt: skip


def duel(
    bench: peers.Bench, sides: list[tuple[str, int, int]], seconds: float
) -> dict[str, float]:
    """CPU µs per handshake of each side, both loaded in the same seconds."""
    before = [peers.tree_cpu(pid) for _, pid, _ in sides]
    loads = [hsload(bench, port, seconds) for _, _, port in sides]
    outs = [p.communicate() for p in loads]
    after = [peers.tree_cpu(pid) for _, pid, _ in sides]
    result = {}
    for (name, _, _), p, (out, err), c0, c1 in zip(
        sides, loads, outs, before, after, strict=True
    ):
        if p.returncode != 0:
            raise peers.BenchError(f"hsload against {name}: {err[-500:]}")
        r = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
        if r["errors"]:
            raise peers.BenchError(f"{name}: {r['errors']} failed handshakes")
        result[name] = 1e6 * (c1 - c0) / r["requests"]
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="NAME=TREE, or hitch, haproxy, floor")
    p.add_argument("--b", required=True, help="NAME=TREE, or hitch, haproxy, floor")
    p.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--tools", default=peers.default_tools())
    a = p.parse_args()
    s = peers.settings(
        peers.parse_args(["--only", "tlsgate,ecdsa", "--tools", a.tools])
    )
    s = dataclasses.replace(
        s,
        results=os.path.join(
            peers.BENCH, "results", time.strftime("duel-%Y%m%d-%H%M%S")
        ),
    )
    os.makedirs(s.results, exist_ok=True)
    bench = peers.Bench(s, s.results)
    try:
        bench.setup()
        sides = []
        for spec in (a.a, a.b):
            name, _, tree = spec.partition("=")
            if tree.endswith("@tickets"):
                tree, tickets = tree[: -len("@tickets")], True
            else:
                tickets = False
            if tickets and not tree:
                raise SystemExit(f"{spec}: @tickets follows a tree (NAME=TREE@tickets)")
            if tree:
                proc, port = start_tree(bench, tree, a.key, name, tickets=tickets)
            else:
                proc, port = bench.start_server(name, a.key)
            bench.probe(port, a.key)
            sides.append((name, proc.pid, port))
        duel(bench, sides, 2.0)  # warm-up
        names = [n for n, _, _ in sides]
        ratios = []
        for r in range(a.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            cost = duel(bench, order, a.duration)
            ratio = cost[names[1]] / cost[names[0]]
            ratios.append(ratio)
            bench.log(
                f"round {r + 1}: "
                + ", ".join(f"{n} {cost[n]:.0f} µs/hs" for n in names)
                + f"; {names[0]} by CPU = {ratio:.3f}x {names[1]}"
            )
        print(
            f"{a.key}: {names[0]} vs {names[1]} by server CPU per handshake:"
            f" median {statistics.median(ratios):.3f}x"
            f" (range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds"
            f" of {a.duration:g} s, both on core {s.server_cpu},"
            f" {time.strftime('%Y-%m-%d %H:%M')})"
        )
    finally:
        bench.procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
