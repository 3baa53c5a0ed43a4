"""
TLS conformance of tlsgate beside its peers, with sslyze and tlsfuzzer.

Each server under test listens on loopback in front of the same small HTTP
backend, with the same certificate and the same protocol settings (TLS 1.2
and 1.3, ECDHE with AES-GCM or ChaCha20 for 1.2, server cipher order):

- tlsgate, started as users start it (C{twistd -n tlsgate --config ...});
- a bare pyOpenSSL server with tlsgate's own server context and blocking
  I/O of a few lines, so that a probe failing on both comes from OpenSSL
  4.0.3, not from tlsgate's I/O code;
- nginx C{stream} and HAProxy (Debian packages, OpenSSL 3.0), when installed.

Usage (from the repository, after C{pip install '.[test]'}):

    python bench/conformance.py --fast            # CI: tlsgate only, < 2 min
    python bench/conformance.py                   # the full comparison, both keys
    python bench/conformance.py --targets tlsgate,bare --keys rsa --markdown out.md

tlsfuzzer is not on PyPI. Its copy is found at C{shared/tools/tlsfuzzer}
beside the clone or in a folder above it, or at C{$TLSFUZZER_DIR}; it runs
under C{$TLSFUZZER_PYTHON} (a Python with C{tlslite-ng==0.9.0b2} and
C{ecdsa}). sslyze runs from C{$SSLYZE} (default: C{sslyze} on C{PATH}). With
C{CI=true}, a missing tool is a failure, never a skip.

Everything runs under C{nice} and one script at a time, so the full run
(about 15 minutes) does not crowd a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]

from conformance_servers import (  # noqa: E402 - beside this script
    PEER_BINARIES,
    REPO,
    backend,
    nice,
    serving,
    write_certificates,
)


@dataclass(frozen=True)
class Script:
    """One tlsfuzzer script, the key types it fits, and its known failures."""

    name: str
    keys: tuple[str, ...] = ("ecdsa", "rsa")
    #: Options beyond those C{options_for} finds.
    options: tuple[str, ...] = ()
    #: Probe-name patterns that fail by configuration, with why; the fast
    #: (CI) run accepts these failures and no other.
    expected: dict[str, str] = field(default_factory=dict)

    def explains(self, probe: str) -> bool:
        return any(re.search(pattern, probe) for pattern in self.expected)


#: Groups offered by every server here are the default list (nginx and
#: HAProxy without X25519MLKEM768): probes of other groups fail everywhere.
_OTHER_GROUPS = {
    r"^(sanity - )?(secp521r1|x448)\b": "group not offered (groups key)",
}


#: A TLS 1.2 suite each server offers, per key type, for scripts taking -C.
SUITE = {
    "ecdsa": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "rsa": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
}

#: The full list.
SCRIPTS: tuple[Script, ...] = (
    Script("test-tls13-conversation.py"),
    Script("test-tls13-ecdhe-curves.py", expected=_OTHER_GROUPS),
    Script("test-tls13-obsolete-curves.py"),
    # The default groups have one hybrid, X25519MLKEM768.
    Script("test-tls13-mlkem.py", options=("--kems", "x25519mlkem768")),
    Script("test-tls13-hrr.py"),
    Script("test-tls13-keyshare-omitted.py"),
    Script("test-tls13-version-negotiation.py"),
    Script("test-tls13-session-resumption.py"),
    Script("test-tls13-count-tickets.py"),
    Script("test-tls13-symetric-ciphers.py"),
    Script("test-tls13-ecdsa-support.py", keys=("ecdsa",)),
    Script("test-tls13-rsapss-signatures.py", keys=("rsa",)),
    Script("test-tls13-finished.py"),
    Script("test-tls13-record-padding.py"),
    Script("test-tls13-zero-length-data.py"),
    Script("test-tls13-unrecognised-groups.py"),
    Script("test-tls13-legacy-version.py"),
    Script("test-tls13-nociphers.py"),
    Script("test-tls13-keyupdate.py"),
    Script("test-tls13-large-number-of-extensions.py"),
    Script("test-conversation.py"),
    Script("test-alpn-negotiation.py"),
    Script("test-sessionID-resumption.py"),
    Script("test-session-ticket-resumption.py"),
    Script("test-extended-master-secret-extension.py"),
    Script("test-fallback-scsv.py"),
    Script("test-renegotiation-disabled.py"),
    Script("test-x25519.py"),
    Script("test-chacha20.py"),
    Script("test-downgrade-protection.py"),
    Script("test-no-mlkem-in-old-tls.py"),
    Script("test-truncating-of-client-hello.py"),
    Script("test-record-layer-fragmentation.py"),
    Script("test-ccs.py"),
)


def module_of(script: str) -> str:
    return "tlsfuzzer._apps." + script.removesuffix(".py").replace("-", "_")


def options_for(tlsfuzzer: Path, python: str, script: str, key: str) -> list[str]:
    """
    The options that fit an ECDHE server with C{key}'s certificate, from the
    script's own --help: for TLS 1.2 scripts, C{-C SUITE} where it takes one, else
    C{-d} (ECDHE instead of RSA key exchange) where it has that.
    """
    if script.startswith("test-tls13-"):
        return []  # their -C, where present, takes a TLS 1.3 suite
    usage = subprocess.run(
        [python, "-m", module_of(script), "--help"], cwd=tlsfuzzer,
        env=dict(os.environ, PYTHONPATH="."), capture_output=True, text=True,
    ).stdout  # fmt: skip
    if re.search(r"^ +-C ", usage, re.M):
        return ["-C", SUITE[key]]
    if re.search(r"^ +-d ", usage, re.M):
        return ["-d"]
    return []


#: The CI subset (RSA certificate): a TLS 1.3 and a TLS 1.2 conversation,
#: key exchange groups (P-384 and the HelloRetryRequest path) and the
#: post-quantum hybrid. About 30 s on an idle machine.
FAST = (
    "test-tls13-conversation.py",
    "test-tls13-ecdhe-curves.py",
    "test-tls13-hrr.py",
    "test-tls13-keyshare-omitted.py",
    "test-tls13-mlkem.py",
    "test-conversation.py",
)


def find_tlsfuzzer() -> Path | None:
    """C{$TLSFUZZER_DIR}, else C{shared/tools/tlsfuzzer} beside or above the clone."""
    override = os.environ.get("TLSFUZZER_DIR")
    if override:
        return Path(override)
    for parent in REPO.parents:
        candidate = parent / "shared" / "tools" / "tlsfuzzer"
        if (candidate / "scripts").is_dir():
            return candidate
    return None


# -- the tools -----------------------------------------------------------------------


_PROBE = re.compile(r"^(.+) \.\.\.\n(OK|.*)$", re.M)


@dataclass
class Outcome:
    """One script's run: each probe's result (a repeated probe must pass every time)."""

    probes: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed(self) -> list[str]:
        return sorted(p for p, ok in self.probes.items() if not ok)

    def cell(self) -> str:
        if self.error:
            return f"error: {self.error}"
        failed = len(self.failed)
        return f"{len(self.probes) - failed} pass" + (
            f", {failed} fail" if failed else ""
        )


def run_tlsfuzzer(
    tlsfuzzer: Path,
    python: str,
    script: Script,
    key: str,
    port: int,
    log: Path | None = None,
) -> Outcome:
    options = [*options_for(tlsfuzzer, python, script.name, key), *script.options]
    # The scripts are links to _stub.py, which runs this module; a copy that
    # lost its links (a file holding the text "_stub.py") runs the same way.
    command = [*nice(), python, "-m", module_of(script.name), "-h", "127.0.0.1", "-p", str(port),
               *options]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=".")
    try:
        done = subprocess.run(
            command, cwd=tlsfuzzer, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Outcome(error="timed out after 300 s")
    out = done.stdout
    if log is not None:
        log.write_text(out + done.stderr)
    if not re.search(r"^PASS: (\d+)$", out, re.M):
        last = (done.stderr or out).strip().splitlines()[-1:] or ["no output"]
        return Outcome(error=last[0][:200])
    probes: dict[str, bool] = {}
    for name, result in _PROBE.findall(out):
        probes[name] = probes.get(name, True) and result == "OK"
    return Outcome(probes=probes)


def run_sslyze(sslyze: str, port: int, ca: Path) -> str:
    """
    Mozilla intermediate compliance and TLS 1.2 resumption, in one cell.
    C{ca} is trusted for the certificate checks, as a public CA would be.
    """
    out = Path(tempfile.mkdtemp()) / "sslyze.json"
    try:
        done = subprocess.run(
            [*nice(), sslyze, "--mozilla_config=intermediate", "--resum",
             f"--certinfo_ca_file={ca}",
             "--resum_attempts=20", f"--json_out={out}", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "error: timed out"
    # sslyze prints "OK - Compliant." or "FAILED - Not compliant." (and the
    # issues), and exits 1 when not compliant.
    compliant = "OK - Compliant." in done.stdout and done.returncode == 0
    try:
        result = json.loads(out.read_text())["server_scan_results"][0]
        resum = result["scan_result"]["session_resumption"]["result"]
        ids = (
            f"{resum['session_id_successful_resumptions_count']}"
            f"/{resum['session_id_attempted_resumptions_count']}"
        )
        tickets = (
            "yes"
            if resum["tls_ticket_resumption_result"] == "SUCCEEDED"
            else (resum["tls_ticket_resumption_result"].lower())
        )
    except (OSError, KeyError, IndexError, ValueError, TypeError) as e:
        return f"error: {type(e).__name__} {e}"
    verdict = "intermediate: compliant" if compliant else "intermediate: NOT compliant"
    if not compliant:
        issues = re.findall(r"^ {8}\* (.+)$", done.stdout, re.M)
        verdict += " (" + "; ".join(issues[:3]) + ")" if issues else ""
    return f"{verdict}; session ID {ids}; tickets {tickets}"


# -- the run ------------------------------------------------------------------------


def require(what: str, found: object) -> bool:
    if found:
        return True
    if os.environ.get("CI") == "true":
        raise SystemExit(f"conformance: {what} is missing (CI=true: that is a failure)")
    print(f"conformance: {what} is missing; skipped", file=sys.stderr)
    return False


Results = dict[str, dict[str, dict[str, Outcome]]]  # key -> script -> target


def attribute(results: Results) -> list[str]:
    """
    Every probe that fails on tlsgate but passes on nginx or HAProxy, and
    whose fault it is: OpenSSL 4.0.3 when the bare server fails it too.
    """
    lines = []
    for key, scripts in results.items():
        for script, by_target in scripts.items():
            ours = by_target.get("tlsgate")
            if ours is None:
                continue
            bare = by_target.get("bare")
            for probe in ours.failed:
                peers = [
                    t for t in ("nginx", "haproxy")
                    if by_target.get(t) and by_target[t].probes.get(probe)
                ]  # fmt: skip
                if not peers:
                    continue
                if bare is None or probe not in bare.probes:
                    why = "not attributed (no bare run of this probe)"
                elif bare.probes[probe]:
                    why = "tlsgate"
                else:
                    why = "OpenSSL 4.0.3 (fails on the bare server too)"
                lines.append(
                    f"- {key} {script} `{probe}`: passes on {', '.join(peers)}; {why}"
                )
    return lines


def expected_failures(script: Script, outcome: Outcome) -> list[str]:
    """tlsgate's failures that the script's list does not explain."""
    return [p for p in outcome.failed if not script.explains(p)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true",
                        help="CI subset: tlsgate, RSA, a few scripts; fails on any"
                             " failure not listed as expected")  # fmt: skip
    parser.add_argument("--targets", default="tlsgate,bare,nginx,haproxy")
    parser.add_argument("--keys", default="rsa,ecdsa")
    parser.add_argument("--scripts", default="", help="comma-separated script names")
    parser.add_argument("--no-sslyze", action="store_true")
    parser.add_argument("--markdown", type=Path, help="write the tables here too")
    parser.add_argument("--json", type=Path, help="write every probe's result here")
    parser.add_argument("--logs", type=Path, help="keep each script's output here")
    args = parser.parse_args(argv)

    targets = ["tlsgate"] if args.fast else args.targets.split(",")
    keys = ["rsa"] if args.fast else args.keys.split(",")
    wanted = set(args.scripts.split(",")) if args.scripts else set()
    if args.fast and not wanted:
        wanted = set(FAST)
    scripts = [s for s in SCRIPTS if not wanted or s.name in wanted]
    tlsfuzzer = find_tlsfuzzer()
    python = os.environ.get("TLSFUZZER_PYTHON", sys.executable)
    if os.sep in python:  # the scripts run from tlsfuzzer's folder
        python = os.path.abspath(python)
    use_fuzzer = require("tlsfuzzer (set TLSFUZZER_DIR)", tlsfuzzer)
    if use_fuzzer:
        importable = subprocess.run(
            [python, "-c", "import tlslite, ecdsa"], capture_output=True
        )
        use_fuzzer = require(
            f"tlslite-ng and ecdsa for {python} (set TLSFUZZER_PYTHON)",
            importable.returncode == 0,
        )
    sslyze = os.environ.get("SSLYZE") or shutil.which("sslyze")
    use_sslyze = (
        not args.fast and not args.no_sslyze and require("sslyze (set SSLYZE)", sslyze)
    )
    for peer, binary in PEER_BINARIES.items():
        if peer in targets and not require(
            f"{peer} (Debian package)", shutil.which(binary)
        ):
            targets.remove(peer)

    sslyze_rows: dict[str, dict[str, str]] = {}
    results: Results = {}
    unexplained: list[str] = []
    started = time.monotonic()
    with backend() as backend_port, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for key in keys:
            files = write_certificates(workdir, key)  # one certificate for all
            for target in targets:
                with serving(target, workdir, backend_port, files) as port:
                    if use_sslyze:
                        assert sslyze is not None
                        ca = files[0].with_name(f"{key}-ca.pem")
                        cell = run_sslyze(sslyze, port, ca)
                        sslyze_rows.setdefault(key, {})[target] = cell
                        print(f"{key} {target} sslyze: {cell}", flush=True)
                    for script in scripts if use_fuzzer else ():
                        if key not in script.keys:
                            continue
                        assert tlsfuzzer is not None
                        log = None
                        if args.logs:
                            args.logs.mkdir(parents=True, exist_ok=True)
                            log = args.logs / f"{key}-{target}-{script.name}.log"
                        outcome = run_tlsfuzzer(
                            tlsfuzzer, python, script, key, port, log
                        )
                        results.setdefault(key, {}).setdefault(script.name, {})[
                            target
                        ] = outcome
                        print(f"{key} {target} {script.name}: {outcome.cell()}",
                              flush=True)  # fmt: skip
                        if target == "tlsgate":
                            if outcome.error:
                                unexplained.append(f"{script.name}: {outcome.error}")
                            for probe in expected_failures(script, outcome):
                                unexplained.append(f"{script.name}: {probe}")
    report = render(sslyze_rows, results, targets)
    if not args.fast:
        blame = attribute(results)
        report += "\n\nProbes failing on tlsgate that nginx or HAProxy pass:\n\n"
        report += "\n".join(blame) if blame else "none"
    print(report)
    elapsed = time.monotonic() - started
    if args.markdown:
        args.markdown.write_text(report + "\n")
    if args.json:
        args.json.write_text(json.dumps({
            key: {script: {t: {"error": o.error, "probes": o.probes}
                           for t, o in by_target.items()}
                  for script, by_target in scripts_.items()}
            for key, scripts_ in results.items()
        }, indent=1, sort_keys=True))  # fmt: skip
    if args.fast:
        for line in unexplained:
            print(f"unexpected failure on tlsgate: {line}")
        print(f"{elapsed:.0f} s; {len(unexplained)} unexpected failure(s)")
        return 1 if unexplained else 0
    print(f"{elapsed:.0f} s")
    return 0


def render(
    sslyze_rows: dict[str, dict[str, str]], results: Results, targets: list[str]
) -> str:
    def table(rows: list[tuple[str, str, list[str]]]) -> list[str]:
        out = ["| check | key | " + " | ".join(targets) + " |",
               "|" + "---|" * (len(targets) + 2)]  # fmt: skip
        out += [f"| {n} | {k} | " + " | ".join(cells) + " |" for n, k, cells in rows]
        return out

    rows = [
        ("sslyze", key, [cells.get(t, "") for t in targets])
        for key, cells in sslyze_rows.items()
    ]
    for key, scripts in results.items():
        for script, by_target in scripts.items():
            rows.append((script, key, [
                by_target[t].cell() if t in by_target else "" for t in targets
            ]))  # fmt: skip
    return "\n".join(table(rows))


if __name__ == "__main__":
    sys.exit(main())
