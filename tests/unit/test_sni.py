"""SNI directories: matching, the choice among several, and what makes a rescan."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from tests.helpers import Pair, make_pair, utcnow, write, write_atomically
from tlsgate.certs import ReloadingContextFactory
from tlsgate.sni import SniDirectory


def fingerprint(ctx: SSL.Context | None) -> str | None:
    if ctx is None:
        return None
    import hashlib

    cert = SSL.Connection(ctx, None).get_certificate(as_cryptography=True)
    assert cert is not None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def put(directory: Path, name: str, pair: Pair, combined: bool = True) -> None:
    if combined:
        write_atomically(directory / f"{name}.pem", pair.chain + pair.key)
    else:
        write_atomically(directory / f"{name}.key", pair.key)
        write_atomically(directory / f"{name}.crt", pair.chain)


def sni(directory: Path) -> SniDirectory:
    return SniDirectory(str(directory), lambda c, k: ReloadingContextFactory(c, k))


def test_exact_wildcard_and_unknown_names(tmp_path: Path, ca: trustme.CA) -> None:
    a, wild = make_pair(ca, "a.example"), make_pair(ca, "*.apps.example")
    put(tmp_path, "a", a)
    put(tmp_path, "wild", wild, combined=False)
    d = sni(tmp_path)
    assert fingerprint(d.context_for("a.example")) == a.fingerprint
    assert fingerprint(d.context_for("A.Example.")) == a.fingerprint
    assert fingerprint(d.context_for("x.apps.example")) == wild.fingerprint
    assert d.context_for("apps.example") is None  # a wildcard is one label
    assert d.context_for("y.x.apps.example") is None
    assert d.context_for("unknown.example") is None


def test_unknown_names_never_cause_a_rescan(tmp_path: Path, ca: trustme.CA) -> None:
    """A client cannot make the gateway read the directory by asking for names."""
    put(tmp_path, "a", make_pair(ca, "a.example"))
    d = sni(tmp_path)
    for i in range(100):
        d.context_for(f"nope{i}.example")
    assert d.rescans == 1


def test_several_matches_prefer_valid_then_latest_expiry(
    tmp_path: Path, ca: trustme.CA
) -> None:
    now = utcnow()
    day = datetime.timedelta(days=1)
    short = make_pair(ca, "a.example", not_before=now - day, not_after=now + 10 * day)
    long = make_pair(ca, "a.example", not_before=now - day, not_after=now + 80 * day)
    put(tmp_path, "short", short)
    put(tmp_path, "long", long)
    d = sni(tmp_path)
    assert fingerprint(d.context_for("a.example")) == long.fingerprint
    expired = make_pair(ca, "b.example", not_before=now - 9 * day, not_after=now - day)
    valid = make_pair(ca, "b.example", not_before=now - day, not_after=now + day)
    future = make_pair(ca, "b.example", not_before=now + day, not_after=now + 300 * day)
    for name, pair in (("b1", expired), ("b2", valid), ("b3", future)):
        put(tmp_path, name, pair)
    assert fingerprint(d.context_for("b.example")) == valid.fingerprint


def test_added_replaced_and_removed_certificates(
    tmp_path: Path, ca: trustme.CA
) -> None:
    put(tmp_path, "a", make_pair(ca, "a.example"))
    d = sni(tmp_path)
    b = make_pair(ca, "b.example")
    put(tmp_path, "b", b)  # added
    assert fingerprint(d.context_for("b.example")) == b.fingerprint
    b2 = make_pair(ca, "b.example", "c.example")
    write(tmp_path / "b.pem", b2.chain + b2.key)  # rewritten in place: no rescan
    rescans = d.rescans
    assert fingerprint(d.context_for("b.example")) == b2.fingerprint
    assert d.rescans == rescans
    assert fingerprint(d.context_for("c.example")) == b2.fingerprint  # its new name
    os.unlink(tmp_path / "b.pem")  # removed
    assert d.context_for("b.example") is None


def test_broken_files_are_skipped_and_not_reparsed(
    tmp_path: Path, ca: trustme.CA
) -> None:
    a = make_pair(ca, "a.example")
    put(tmp_path, "a", a)
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")
    made: list[str] = []

    def make(c: str, k: str | None) -> ReloadingContextFactory:
        made.append(c)
        return ReloadingContextFactory(c, k)

    d = SniDirectory(str(tmp_path), make)
    assert "junk.pem" in d.errors
    put(tmp_path, "other", make_pair(ca, "o.example"))  # a rescan
    d.context_for("o.example")
    assert made.count(str(tmp_path / "junk.pem")) == 1
    assert fingerprint(d.context_for("a.example")) == a.fingerprint
