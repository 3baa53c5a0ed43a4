"""
The C{tlsgate} command: C{tlsgate check PATH} and C{tlsgate --version}.

C{check} validates a config and every file it names without listening, so it
fits in a deploy pipeline or a certbot deploy hook before the files go live.
Exit codes: 0 all is well, 1 something is wrong, 2 usage error.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from twisted.python import usage

from tlsgate._version import __version__
from tlsgate.certs import CertifiedKey, TLSPolicy, check_response
from tlsgate.certs._clientauth import parse_ca_bundle
from tlsgate.certs._load import load_certified_key
from tlsgate.certs._stamps import read_file
from tlsgate.config import ListenerConfig, load_config
from tlsgate.errors import CertificateError, ConfigErrors
from tlsgate.sni import certificate_files

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class _Options(usage.Options):
    def opt_version(self) -> None:
        """Print tlsgate's version and exit."""
        print(f"tlsgate {__version__}")
        raise SystemExit(EXIT_OK)

    opt_V = opt_version


class CheckOptions(_Options):
    synopsis = "PATH"
    longdesc = (
        "Validate the ini file and every certificate and key it names, without"
        " listening. One line per certificate; one line per problem."
    )

    def parseArgs(self, path: str) -> None:  # type: ignore[override]
        self["path"] = path


class Options(_Options):
    synopsis = "tlsgate [--version]"
    longdesc = (
        "Validate tlsgate configs. The gateway itself runs as 'twistd -n tlsgate'."
    )
    subCommands = [["check", None, CheckOptions, "Validate a config and its files."]]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is needed, e.g. 'tlsgate check PATH'")


def describe(material: CertifiedKey, now: datetime.datetime) -> str:
    """One line for one certificate: names, fingerprint, not-after, days left."""
    days = (material.not_after - now).total_seconds() / 86400
    return (
        f"names={','.join(material.names) or '-'}"
        f" sha256={material.fingerprint_sha256}"
        f" not_after={material.not_after.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        f" days_left={int(days) if days >= 0 else int(days) - 1}"
    )


def describe_tls(policy: TLSPolicy) -> str:
    """One line for a listener's protocol settings, as the operator wrote them."""
    alpn = " ".join(policy.alpn) or "none"
    return (
        f"tls min_version={policy.min_version} groups={' '.join(policy.groups)}"
        f" alpn={alpn} ciphers={policy.ciphers}"
    )


def check(path: str, out: TextIO, now: datetime.datetime | None = None) -> int:
    """Validate C{path}; print certificates to C{out}; return the exit code."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        config = load_config(path)
    except ConfigErrors as e:
        for error in e.errors:
            print(f"error: {error}", file=out)
        return EXIT_PROBLEMS
    problems = 0
    for listener in config.listeners:
        where = f"{path}: [listener:{listener.name}]"
        try:
            material = load_certified_key(listener.cert, listener.key)
        except CertificateError as e:
            key = "key" if listener.key and e.paths == (listener.key,) else "cert"
            message = str(e) if len(e.paths) > 1 else f"{e.paths[0]}: {e.message}"
            print(f"error: {where} {key}: {message}", file=out)
            problems += 1
            continue
        print(f"{listener.name}: {listener.cert}: {describe(material, now)}", file=out)
        print(f"{listener.name}: {describe_tls(listener.tls)}", file=out)
        problem = material.validity_problem(now)
        if problem is not None:
            print(f"error: {where} cert: {listener.cert}: {problem}", file=out)
            problems += 1
        problems += _check_sni_dir(listener, where, out, now)
        problems += _check_client_ca(listener, where, out, now)
        problems += _check_ocsp(listener, material, where, out, now)
        key_path = listener.key or listener.cert
        if os.stat(key_path).st_mode & 0o077:
            print(
                f"warning: {where} key: {key_path} is readable by group or others",
                file=out,
            )
    return EXIT_PROBLEMS if problems else EXIT_OK


def _check_sni_dir(
    listener: ListenerConfig, where: str, out: TextIO, now: datetime.datetime
) -> int:
    if listener.sni_dir is None:
        return 0
    if not os.path.isdir(listener.sni_dir):
        print(f"error: {where} sni_dir: {listener.sni_dir}: not a directory", file=out)
        return 1
    problems = 0
    for cert, key in certificate_files(listener.sni_dir).values():
        try:
            material = load_certified_key(cert, key)
        except CertificateError as e:
            print(f"error: {where} sni_dir: {e}", file=out)
            problems += 1
            continue
        print(f"{listener.name}: sni_dir {cert}: {describe(material, now)}", file=out)
        problem = material.validity_problem(now)
        if problem is not None:
            print(f"error: {where} sni_dir: {cert}: {problem}", file=out)
            problems += 1
    return problems


def _check_client_ca(
    listener: ListenerConfig, where: str, out: TextIO, now: datetime.datetime
) -> int:
    if listener.client_ca is None:
        return 0
    read = read_file(listener.client_ca)
    try:
        if read.content is None:
            raise CertificateError(
                read.error or "unreadable", paths=[listener.client_ca]
            )
        cas = parse_ca_bundle(read.content, listener.client_ca)
    except CertificateError as e:
        print(f"error: {where} client_ca: {e}", file=out)
        return 1
    earliest = min(c.not_valid_after_utc for c in cas)
    days = int((earliest - now).total_seconds() // 86400)
    print(
        f"{listener.name}: client_ca {listener.client_ca}: {len(cas)} certificates,"
        f" earliest not_after={earliest.strftime('%Y-%m-%dT%H:%M:%SZ')} days_left={days}",
        file=out,
    )
    if earliest <= now:
        print(
            f"error: {where} client_ca: a CA in {listener.client_ca} has expired",
            file=out,
        )
        return 1
    return 0


def _check_ocsp(
    listener: ListenerConfig,
    material: CertifiedKey,
    where: str,
    out: TextIO,
    now: datetime.datetime,
) -> int:
    if listener.ocsp_response is None:
        return 0
    read = read_file(listener.ocsp_response)
    if read.content is None:
        print(
            f"error: {where} ocsp_response: {listener.ocsp_response}: {read.error}",
            file=out,
        )
        return 1
    status = check_response(read.content, material, now)
    next_update = (
        status.next_update.strftime("%Y-%m-%dT%H:%M:%SZ") if status.next_update else "-"
    )
    print(
        f"{listener.name}: ocsp_response {listener.ocsp_response}: status={status.detail}"
        f" next_update={next_update}",
        file=out,
    )
    if not status.usable:
        print(
            f"error: {where} ocsp_response: {listener.ocsp_response}: will not be"
            f" stapled: {status.detail}",
            file=out,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = Options()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        print(f"tlsgate: {e}\n\n{options}", file=sys.stderr)
        return EXIT_USAGE
    assert options.subCommand == "check"
    return check(options.subOptions["path"], sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
