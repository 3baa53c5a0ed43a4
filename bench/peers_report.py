"""
The tables of bench/peers.py: medians over rounds, the goals of issue 10,
ratios against hitch, HAProxy and the bare forwarder, and a py-spy profile
summed up. Standard library only; C{peers.py --report FILE} prints them
again from a run's results.jsonl.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from typing import Any

SERVERS = [
    "tlsgate", "bare", "portforward", "floor", "twfloor", "hitch", "haproxy", "nginx",
]  # fmt: skip
# portforward (Twisted's stock forwarder, bench/portforward.py), floor (the
# least a Python relay over pyOpenSSL does, bench/floor_relay.py) and twfloor
# (the same on Twisted's reactor) run when named.
OPTIONAL = ("portforward", "floor", "twfloor")
DEFAULT_SERVERS = [s for s in SERVERS if s not in OPTIONAL]
LABELS = {
    "tlsgate": "tlsgate (twistd -n tlsgate --config)",
    "bare": "bare Twisted forwarder, static context",
    "portforward": "twisted.protocols.portforward, static context",
    "floor": "floor: minimal Python relay over pyOpenSSL, no Twisted, no features",
    "twfloor": "the same floor on Twisted's epoll reactor",
    "hitch": "hitch",
    "haproxy": "HAProxy",
    "nginx": "nginx stream",
}
FIGURES = ["ecdsa", "rsa", "ka", "bulk", "idle"]
# A measured interval in which anything but the server, the client and the
# backend used more than this share of a core is marked noisy (*).
OTHER_MAX_PCT = 10.0
# A throughput figure during which the server's core was busy less than this,
# or the load core more than LOAD_FULL_PCT, was limited by something else than
# the server (the client core, the backend): marked (c).
SATURATED_PCT = 90.0
LOAD_FULL_PCT = 95.0


def load_results(path: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                cells.setdefault((r["server"], r["figure"]), []).append(r)
    return cells


def med(rs: list[dict[str, Any]], key: str) -> float:
    xs = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def flags(rs: list[dict[str, Any]], throughput: bool) -> str:
    f = ""
    if any(r.get("other_cpu_pct", 0) > OTHER_MAX_PCT for r in rs):
        f += "*"
    if throughput and (
        med(rs, "server_core_busy_pct") < SATURATED_PCT
        or med(rs, "load_core_busy_pct") > LOAD_FULL_PCT
    ):
        f += "(c)"
    return f


def paired(
    cells: dict[tuple[str, str], list[dict[str, Any]]], a: str, b: str, fig: str
) -> str:
    """A's figure over B's, round by round: median (min-max)."""
    bs = {r["round"]: r["value"] for r in cells.get((b, fig), [])}
    xs = sorted(
        r["value"] / bs[r["round"]]
        for r in cells.get((a, fig), [])
        if bs.get(r["round"])
    )
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f}x"
    return f"{statistics.median(xs):.2f}x ({xs[0]:.2f}-{xs[-1]:.2f})"


def fmt(x: float, digits: int = 0) -> str:
    if math.isnan(x):
        return "-"
    return f"{x:,.{digits}f}"


def report(path: str, settings_line: str) -> str:
    cells = load_results(path)
    servers = [s for s in SERVERS if any(k[0] == s for k in cells)]

    def value(server: str, fig: str, key: str = "value") -> float:
        return med(cells.get((server, fig), []), key)

    def cell(server: str, fig: str, key: str, digits: int, tp: bool = False) -> str:
        rs = cells.get((server, fig), [])
        return fmt(med(rs, key), digits) + (flags(rs, tp) if rs else "")

    out = [
        "| per server core | ECDSA hs/s | RSA hs/s | keep-alive req/s | ka p50 ms"
        " | ka p99 ms | bulk MB/s | KiB per idle conn | CPU µs per ECDSA hs"
        " | CPU µs per RSA hs | CPU µs per ka req | CPU µs per bulk MB |",
        "|---|" + "---:|" * 11,
    ]
    for s in servers:
        out.append(
            "| "
            + " | ".join(
                [
                    LABELS[s],
                    cell(s, "ecdsa", "value", 0, True),
                    cell(s, "rsa", "value", 0, True),
                    cell(s, "ka", "value", 0, True),
                    cell(s, "ka", "p50_ms", 2),
                    cell(s, "ka", "p99_ms", 2),
                    cell(s, "bulk", "value", 0, True),
                    cell(s, "idle", "value", 1),
                    cell(s, "ecdsa", "cpu_us_per_unit", 0),
                    cell(s, "rsa", "cpu_us_per_unit", 0),
                    cell(s, "ka", "cpu_us_per_unit", 1),
                    cell(s, "bulk", "cpu_us_per_unit", 0),
                ]
            )
            + " |"
        )

    split = [
        s for s in servers
        if any("user_us_per_unit" in r for f in ("ecdsa", "rsa") for r in cells.get((s, f), []))
    ]  # fmt: skip
    if split:
        out += [
            "",
            "Where each handshake's server CPU went: user space (OpenSSL, the"
            " server's own code, libc) and the kernel (sockets, epoll), µs per"
            " handshake, medians:",
            "",
            "| server | ECDSA user | ECDSA kernel | RSA user | RSA kernel |",
            "|---|---:|---:|---:|---:|",
        ]
        for s in split:
            row = [LABELS[s]]
            for fig in ("ecdsa", "rsa"):
                user = value(s, fig, "user_us_per_unit")
                row += [fmt(user, 0), fmt(value(s, fig, "cpu_us_per_unit") - user, 0)]
            out.append("| " + " | ".join(row) + " |")

    def ratio(a: float, b: float) -> str:
        return "-" if math.isnan(a) or math.isnan(b) or not b else f"{a / b:.2f}x"

    def verdict(r: str, goal: float, lower_is_better: bool = False) -> str:
        if r == "-":
            return "-"
        x = float(r.rstrip("x"))
        ok = x <= goal if lower_is_better else x >= goal
        return "met" if ok else "missed"

    def noisy(*names_and_fig: str) -> str:
        *names, fig = names_and_fig
        rs = [r for n in names for r in cells.get((n, fig), [])]
        return " (noisy)" if "*" in flags(rs, False) else ""

    t = "tlsgate"
    goals = []
    for fig, ref, goal, text in (
        ("ecdsa", "hitch", 0.65, "ECDSA full handshakes/s vs hitch"),
        ("rsa", "hitch", 0.80, "RSA-2048 full handshakes/s vs hitch"),
        ("ka", "hitch", 0.50, "keep-alive requests/s vs hitch"),
        ("bulk", "haproxy", 1.0, "bulk MB/s vs HAProxy"),
        ("ecdsa", "bare", 1.2, "ECDSA full handshakes/s vs bare Twisted forwarder"),
    ):
        r = ratio(value(t, fig), value(ref, fig))
        by_cpu = ratio(
            value(ref, fig, "cpu_us_per_unit"), value(t, fig, "cpu_us_per_unit")
        )
        said = verdict(r, goal)
        if said != "-":
            said += noisy(t, ref, fig)
            # A client-bound rate understates the faster server: then the
            # CPU per unit says more, and the verdict gives both.
            bound = [
                n for n in (t, ref) if "(c)" in flags(cells.get((n, fig), []), True)
            ]
            if bound and by_cpu != "-":
                said += (
                    f"; by CPU {verdict(by_cpu, goal)}"
                    f" ({', '.join(bound)} client-bound)"
                )
        goals.append(
            f"| {text} | {r} | {paired(cells, t, ref, fig)} | {by_cpu}"
            f" | >= {goal}x | {said} |"
        )
    p99 = value(t, "ka", "p99_ms")
    goals.append(
        f"| keep-alive p99 ms | {fmt(p99, 2)} | | | <= 1.0 ms"
        f" | {'-' if math.isnan(p99) else ('met' if p99 <= 1.0 else 'missed')}"
        f"{noisy(t, 'ka') if not math.isnan(p99) else ''} |"
    )
    kib = value(t, "idle")
    hap = value("haproxy", "idle")
    goals.append(
        f"| KiB per idle TLS connection (HAProxy: {fmt(hap, 1)}) | {fmt(kib, 1)} | |"
        f" | <= 16 | {'-' if math.isnan(kib) else ('met' if kib <= 16 else 'missed')} |"
    )
    out += [
        "",
        "| tlsgate's goal (issue 10) | now (medians) | same-round ratios"
        " | by server CPU per unit | goal | verdict |",
        "|---|---:|---:|---:|---:|---|",
        *goals,
    ]

    refs = [r for r in ("hitch", "haproxy", "bare") if r in servers]
    if refs:
        names = " / ".join(LABELS[r] for r in refs)
        head = ["ECDSA hs/s", "RSA hs/s", "ka req/s", "bulk MB/s", "KiB per idle conn"]
        out += [
            "",
            f"| ratio vs {names} | " + " | ".join(head) + " |",
            "|---|" + "---:|" * len(head),
        ]
        for s in servers:
            row = [
                " / ".join(ratio(value(s, fig), value(r, fig)) for r in refs)
                for fig in ("ecdsa", "rsa", "ka", "bulk", "idle")
            ]
            out.append(f"| {LABELS[s]} | " + " | ".join(row) + " |")
    errors = [
        f"{LABELS[srv]} {fig}: {sum(r.get('errors') or 0 for r in rs)}"
        for (srv, fig), rs in sorted(cells.items())
        if any(r.get("errors") for r in rs)
    ]
    failed = [
        f"{LABELS[srv]}: {sum(r.get('failed') or 0 for r in rs)}"
        for (srv, fig), rs in sorted(cells.items())
        if fig == "idle" and any(r.get("failed") for r in rs)
    ]
    if errors:
        out += ["", "Errors reported by the load generators: " + "; ".join(errors)]
    if failed:
        out += ["", "Idle connections that failed to open: " + "; ".join(failed)]
    rounds = max((len(v) for v in cells.values()), default=0)
    out += [
        "",
        f"Medians of {rounds} round(s). {settings_line}",
        f"`*`: some round had more than {OTHER_MAX_PCT:g}% of a core used by other"
        " work (another program, or kernel time charged to none) during the interval."
        f" `(c)`: the server's core was busy less than {SATURATED_PCT:g}% of the"
        f" time, or the load core more than {LOAD_FULL_PCT:g}%: the client core or"
        " the backend may have set the rate, not the server.",
        "KiB per idle connection: lower is better, so its ratios below 1 are good."
        ' "By server CPU per unit" is the reference\'s server CPU per handshake,'
        " request or MB over tlsgate's: the ratio the rates would have if each"
        " server had its core to itself, which neither a client-bound cell nor"
        " other work on the machine skews as much as the rates.",
    ]
    return "\n".join(out)


_LINE_NO = re.compile(r":\d+\)$")


def summarize_profile(path: str, title: str, top: int = 25) -> str:
    """
    A py-spy raw file (collapsed stacks) as two tables: the functions most
    often on the stack (inclusive) and most often at its top (self), in
    percent of the samples in which the gateway was running.
    """
    inclusive: dict[str, int] = {}
    self_: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_LINE_NO.sub(")", fr) for fr in stack.split(";")]
            # py-spy puts the process and thread first; skip non-code frames.
            frames = [fr for fr in frames if "(" in fr]
            for fr in set(frames):
                inclusive[fr] = inclusive.get(fr, 0) + n
            if frames:
                self_[frames[-1]] = self_.get(frames[-1], 0) + n
    if not total:
        return f"{title}: no samples"
    lines = [
        f"{title}: {total} samples (py-spy, 250 Hz, Python frames, busy threads only)",
        "",
        "| on the stack (inclusive; frames on every stack left out) | %"
        " | | at the top (self) | % |",
        "|---|---:|---|---|---:|",
    ]
    # Frames on every stack (twistd's start-up, the reactor's loop) say nothing.
    inc = sorted(
        ((fr, n) for fr, n in inclusive.items() if n < 0.995 * total),
        key=lambda kv: -kv[1],
    )[:top]
    slf = sorted(self_.items(), key=lambda kv: -kv[1])[:top]
    for i in range(max(len(inc), len(slf))):
        a = inc[i] if i < len(inc) else ("", 0)
        b = slf[i] if i < len(slf) else ("", 0)
        lines.append(
            f"| `{a[0]}` | {100 * a[1] / total:.1f} | | `{b[0]}`"
            f" | {100 * b[1] / total:.1f} |"
        )
    return "\n".join(lines)
