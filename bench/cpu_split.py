"""
Where each server's CPU goes per full handshake, by shared object: OpenSSL,
the interpreter, the kernel, libc. Time, where bench/instructions.py counts
instructions.

    python bench/cpu_split.py                                  # ecdsa, 3 rounds
    python bench/cpu_split.py --key rsa --servers tlsgate,floor,hitch --rounds 5

Each server (started as bench/peers.py starts it, alone on the server core,
in front of its nginx backend) is loaded by hsload for C{--duration}
seconds while C{perf record -e cpu-clock -c 100000} samples the processes of
its session: one sample per 100 µs of CPU they use, with the shared object
the sample fell in. Samples times 100 µs over the handshakes hsload
completed gives µs per handshake for each group, which the table shows as
medians over the rounds (servers in a new order each round). The last column
is the same CPU read from /proc, as bench/peers.sh reads it, to check the
sampling against.

Why: instruction counts say how much work each layer does, not what it
costs. This says whether, say, OpenSSL's share of an RSA handshake takes
longer in tlsgate than in a lean Python relay on the same OpenSSL (which
would point at caches), or whether the difference is the interpreter's own
time. Needs perf (software events are enough; as root, or with
C{kernel.perf_event_paranoid} low enough to sample the kernel, else its
column reads 0 and falls short of /proc's) and what bench/peers.sh needs.
Not a test and not run in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers

#: µs of CPU per perf sample (C{-c 100000} on cpu-clock, which counts ns).
SAMPLE_US = 100
#: The groups of the table, in its order.
GROUPS = ("openssl", "interpreter", "kernel", "libc", "other")


def group_of(dso: str) -> str:
    """The table's group for a shared object as perf names it."""
    name = os.path.basename(dso)
    if name.startswith(("libcrypto", "libssl", "_rust.abi3")):
        # cryptography's wheel links its OpenSSL into _rust (with its own
        # Rust and bindings, a small part of the samples there).
        return "openssl"
    if name.startswith(("libpython", "python")):
        return "interpreter"  # a shared libpython, or a static python3.11
    if dso.startswith("[kernel"):
        return "kernel"
    if name.startswith(("libc.so", "libc-", "ld-linux", "libm.so")):
        return "libc"
    return "other"


def split(data: str) -> dict[str, int]:
    """Samples per group in a perf.data file."""
    out = subprocess.run(
        ["perf", "report", "-i", data, "--sort", "dso", "--stdio", "-q", "-n"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts: dict[str, int] = defaultdict(int)
    for line in out.splitlines():
        m = re.match(r"\s*[\d.]+%\s+(\d+)\s+(.+?)\s*$", line)
        if m:
            counts[group_of(m.group(2))] += int(m.group(1))
    return counts


def measure(
    bench: peers.Bench, name: str, key: str, seconds: float, folder: str, tag: str
) -> dict[str, float]:
    """One server, one load: µs per handshake by group, and from /proc."""
    proc, port = bench.start_server(name, key)
    try:
        bench.probe(port, key)
        bench.run_hsload(port, 2.0)  # warm-up
        pids = peers.session_pids(proc.pid)
        data = os.path.join(folder, f"{tag}.data")
        before = peers.tree_cpu(proc.pid)
        perf = subprocess.Popen(
            ["taskset", "-c", str(bench.s.load_cpu), "perf", "record", "-q",
             "-e", "cpu-clock", "-c", str(SAMPLE_US * 1000),
             "-p", ",".join(map(str, pids)), "-o", data],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            time.sleep(0.3)  # perf attaches
            r = bench.run_hsload(port, seconds)
        finally:
            perf.send_signal(2)  # SIGINT: perf writes its file and exits
            _, err = perf.communicate(timeout=60)
        after = peers.tree_cpu(proc.pid)
        if perf.returncode not in (0, -2) or not os.path.exists(data):
            raise peers.BenchError(f"perf failed: {err.decode()[-500:]}")
        n = r["requests"]
        if not n or r["errors"]:
            raise peers.BenchError(f"{name}: {n} handshakes, {r['errors']} errors")
        counts = split(data)
        row = {g: counts.get(g, 0) * SAMPLE_US / n for g in GROUPS}
        row["total"] = sum(row[g] for g in GROUPS)
        row["proc"] = 1e6 * (after - before) / n
        return row
    finally:
        bench.procs.stop(proc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="tlsgate,floor,hitch",
                   help="comma-separated, as bench/peers.sh names them")  # fmt: skip
    p.add_argument("--key", choices=["ecdsa", "rsa"], default="ecdsa")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--backend-cpu", type=int, default=None,
                   help="core for the nginx backend (bench/peers.sh's option)")  # fmt: skip
    p.add_argument("--tools", default=peers.default_tools())
    a = p.parse_args()
    if not shutil.which("perf"):
        raise SystemExit("needs perf (Debian: linux-perf)")
    names = a.servers.split(",")
    argv = ["--only", ",".join([*names, a.key]), "--tools", a.tools]
    if a.backend_cpu is not None:
        argv += ["--backend-cpu", str(a.backend_cpu)]
    s = peers.settings(peers.parse_args(argv))
    folder = os.path.join(
        peers.BENCH, "results", time.strftime("cpu-split-%Y%m%d-%H%M%S")
    )
    s = dataclasses.replace(s, results=folder)
    os.makedirs(folder, exist_ok=True)
    bench = peers.Bench(s, folder)
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    try:
        bench.setup()
        for r in range(a.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                row = measure(bench, name, a.key, a.duration, folder, f"{name}-{r}")
                rows[name].append(row)
                bench.log(
                    f"round {r + 1} {name}: "
                    + ", ".join(f"{g} {row[g]:.0f}" for g in (*GROUPS, "total"))
                    + f" µs/hs (/proc: {row['proc']:.0f})"
                )
    finally:
        bench.procs.stop_all()
    cols = (*GROUPS, "total", "proc")
    lines = [
        f"µs of CPU per {a.key.upper()} handshake by shared object (median of"
        f" {a.rounds} rounds of {a.duration:g} s; {time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "| server | OpenSSL | interpreter | kernel | libc | other | all sampled"
        " | /proc |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in names:
        med = {c: statistics.median(row[c] for row in rows[name]) for c in cols}
        lines.append(f"| {name} | " + " | ".join(f"{med[c]:.0f}" for c in cols) + " |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(folder, "split.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(folder, "rounds.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
