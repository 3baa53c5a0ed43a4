"""
The reloading context factory, against every way certificate files change.

Files are real (in a temporary directory) because stamps are the mechanism
under test; time and, for the racy cases, C{stat} are injected.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import LogLevel, capturedLogs
from zope.interface.verify import verifyObject

from tests.helpers import Pair, make_pair, utcnow, write, write_atomically
from tlsgate.certs import RACY_WINDOW_NS, ReloadingContextFactory, TLSPolicy, _reloading
from tlsgate.errors import CertificateError


def served(factory: ReloadingContextFactory) -> str:
    """SHA-256 fingerprint of the certificate a new connection would get."""
    conn = SSL.Connection(factory.getContext(), None)
    cert = conn.get_certificate()
    assert cert is not None
    return hashlib.sha256(cert.to_cryptography().public_bytes(Encoding.DER)).hexdigest()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path, Pair]:
    pair = make_pair(ca)
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    write(cert, pair.chain)
    write(key, pair.key)
    return cert, key, pair


class Clock:
    """A wall clock in ns, moved by hand; starts far past the files' mtimes."""

    def __init__(self) -> None:
        self.now = utcnow().timestamp() * 1e9 + 10 * RACY_WINDOW_NS

    def __call__(self) -> int:
        return int(self.now)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Records every certificate parse the factory does."""
    seen: list[bytes] = []
    real = _reloading.parse_certified_key

    def counting(cert: bytes, key: bytes | None, **kw: Any) -> Any:
        seen.append(cert)
        return real(cert, key, **kw)

    monkeypatch.setattr(_reloading, "parse_certified_key", counting)
    return seen


def make_factory(
    cert: Path, key: Path, clock: Clock, **kw: Any
) -> ReloadingContextFactory:
    return ReloadingContextFactory(str(cert), str(key), wallclock=clock, **kw)


def test_provides_both_twisted_interfaces(files: Any, clock: Clock) -> None:
    """It is usable with listenSSL (getContext) and TLSMemoryBIOFactory."""
    cert, key, _ = files
    factory = make_factory(cert, key, clock)
    verifyObject(IOpenSSLContextFactory, factory)
    verifyObject(IOpenSSLServerConnectionCreator, factory)


def test_unchanged_files_reuse_the_context_without_reading(
    files: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stamps unchanged, the cached context is handed out and nothing is read."""
    cert, key, pair = files
    factory = make_factory(cert, key, clock)
    first = factory.getContext()

    def no_reads(path: str) -> Any:
        raise AssertionError(f"read {path} on the fast path")

    monkeypatch.setattr(_reloading, "read_file", no_reads)
    for _ in range(100):
        assert factory.getContext() is first
    assert factory.generation == 1
    assert served(factory) == pair.fingerprint


def test_atomic_rename_is_seen_on_the_next_connection(
    files: Any, clock: Clock, ca: trustme.CA
) -> None:
    """certbot-style: new files renamed over the old ones."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    new = make_pair(ca)
    write_atomically(key, new.key)
    write_atomically(cert, new.chain)
    assert served(factory) == new.fingerprint != old.fingerprint
    assert factory.generation == 2
    assert factory.reloads_ok == 1


def test_in_place_rewrite_is_seen(files: Any, clock: Clock, ca: trustme.CA) -> None:
    """cp over the same inodes (size or times change)."""
    cert, key, _ = files
    factory = make_factory(cert, key, clock)
    new = make_pair(ca, "localhost", "other.example")
    write(cert, new.chain)
    write(key, new.key)
    assert served(factory) == new.fingerprint
    assert factory.generation == 2


def test_cert_then_key_update_heals_when_the_key_lands(
    files: Any, clock: Clock, ca: trustme.CA, parses: list[bytes]
) -> None:
    """A pair caught mid-update keeps the old one, then swaps once both are new."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    new = make_pair(ca)
    write_atomically(cert, new.chain)
    with capturedLogs() as events:
        for _ in range(5):
            assert served(factory) == old.fingerprint
    assert factory.state.last_error is not None
    assert "does not match" in factory.state.last_error
    assert factory.reloads_failed == 1
    assert len([e for e in events if e["log_level"] == LogLevel.error]) == 1
    write_atomically(key, new.key)
    assert served(factory) == new.fingerprint
    assert factory.state.last_error is None
    assert factory.generation == 2


def test_key_then_cert_update_heals_too(
    files: Any, clock: Clock, ca: trustme.CA
) -> None:
    """The other order of a two-file update."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    new = make_pair(ca)
    write_atomically(key, new.key)
    assert served(factory) == old.fingerprint
    write_atomically(cert, new.chain)
    assert served(factory) == new.fingerprint


def test_broken_files_are_parsed_once_per_stamp(
    files: Any, clock: Clock, parses: list[bytes]
) -> None:
    """Garbage is logged and counted once, and not parsed again until it changes."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    parses.clear()
    write_atomically(cert, b"-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    with capturedLogs() as events:
        for _ in range(50):
            assert served(factory) == old.fingerprint
    assert len(parses) == 1
    assert factory.reloads_failed == 1
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 1
    assert str(cert) in errors[0]["error"]
    write_atomically(cert, b"still garbage, but different garbage")
    served(factory)
    assert len(parses) == 2
    assert factory.reloads_failed == 2


@pytest.mark.parametrize(
    "content",
    [b"", b"   \n", b"-----BEGIN CERTIFICATE-----\nMIIB", b"\x00\xff" * 100],
    ids=["empty", "blank", "half-written", "binary"],
)
def test_unusable_certificate_keeps_the_last_good_one(
    files: Any, clock: Clock, content: bytes
) -> None:
    """Empty, half-written and binary files never replace a good certificate."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    write_atomically(cert, content)
    assert served(factory) == old.fingerprint
    assert factory.generation == 1
    assert factory.state.last_error


def test_half_written_chain_keeps_the_last_good_one(
    files: Any, clock: Clock, ca: trustme.CA
) -> None:
    """A chain cut inside its second certificate is refused, not half-served."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    new = make_pair(ca)
    write(key, new.key)
    write(cert, new.chain[: len(new.chain) - 200])
    assert served(factory) == old.fingerprint
    write(cert, new.chain)
    assert served(factory) == new.fingerprint


def test_delete_then_restore(files: Any, clock: Clock, ca: trustme.CA) -> None:
    """Jetty's fatal sequence: the files vanish, then come back."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    saved = cert.read_bytes()
    cert.unlink()
    assert served(factory) == old.fingerprint
    assert "not found" in (factory.state.last_error or "")
    write(cert, saved)
    assert served(factory) == old.fingerprint
    assert factory.state.last_error is None
    assert factory.generation == 1  # same content: nothing to swap
    key.unlink()
    cert.unlink()
    served(factory)
    new = make_pair(ca)
    write(cert, new.chain)
    write(key, new.key)
    assert served(factory) == new.fingerprint
    assert factory.generation == 2


def test_kubernetes_data_symlink_swap(
    tmp_path: Path, clock: Clock, ca: trustme.CA
) -> None:
    """A Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..2026_...; ..data is swapped."""
    old, new = make_pair(ca), make_pair(ca)
    for name, pair in (("..2026_11_21_01", old), ("..2026_11_21_02", new)):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "tls.crt", pair.chain, 0o644)
        write(tmp_path / name / "tls.key", pair.key)
    os.symlink("..2026_11_21_01", tmp_path / "..data")
    os.symlink("..data/tls.crt", tmp_path / "tls.crt")
    os.symlink("..data/tls.key", tmp_path / "tls.key")
    factory = make_factory(tmp_path / "tls.crt", tmp_path / "tls.key", clock)
    assert served(factory) == old.fingerprint
    os.symlink("..2026_11_21_02", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert served(factory) == new.fingerprint


def test_combined_file_with_key(tmp_path: Path, clock: Clock, ca: trustme.CA) -> None:
    """One PEM holding chain and key, as hitch and HAProxy take it."""
    old, new = make_pair(ca), make_pair(ca)
    path = tmp_path / "combined.pem"
    write(path, old.chain + old.key)
    factory = ReloadingContextFactory(str(path), wallclock=clock)
    assert served(factory) == old.fingerprint
    write_atomically(path, new.key + new.chain)
    assert served(factory) == new.fingerprint


def test_expired_replacement_is_refused(
    files: Any, clock: Clock, ca: trustme.CA
) -> None:
    """A valid certificate is never swapped for an expired one."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    now = utcnow()
    expired = make_pair(
        ca,
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    write_atomically(key, expired.key)
    write_atomically(cert, expired.chain)
    assert served(factory) == old.fingerprint
    assert "expired" in (factory.state.last_error or "")


def test_not_yet_valid_replacement_is_refused(
    files: Any, clock: Clock, ca: trustme.CA
) -> None:
    """A certificate whose notBefore is still ahead is not served early."""
    cert, key, old = files
    factory = make_factory(cert, key, clock)
    now = utcnow()
    future = make_pair(
        ca,
        not_before=now + datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=90),
    )
    write_atomically(key, future.key)
    write_atomically(cert, future.chain)
    assert served(factory) == old.fingerprint
    assert "not valid before" in (factory.state.last_error or "")


def test_start_up_with_an_expired_certificate_warns_and_serves(
    tmp_path: Path, clock: Clock, ca: trustme.CA
) -> None:
    """Expired at start: serve it with a critical log line, so renewal can fix it live."""
    now = utcnow()
    expired = make_pair(
        ca,
        not_before=now - datetime.timedelta(days=9),
        not_after=now - datetime.timedelta(days=2),
    )
    write(tmp_path / "c.pem", expired.chain)
    write(tmp_path / "k.pem", expired.key)
    with capturedLogs() as events:
        factory = make_factory(tmp_path / "c.pem", tmp_path / "k.pem", clock)
    assert served(factory) == expired.fingerprint
    assert [e for e in events if e["log_level"] == LogLevel.critical]
    fresh = make_pair(ca)
    write_atomically(tmp_path / "k.pem", fresh.key)
    write_atomically(tmp_path / "c.pem", fresh.chain)
    assert served(factory) == fresh.fingerprint


@pytest.mark.parametrize("broken", ["missing", "mismatch", "garbage"])
def test_start_up_refuses_unusable_files(
    tmp_path: Path, clock: Clock, ca: trustme.CA, broken: str
) -> None:
    """With nothing good to fall back to, start-up fails naming the file."""
    a, b = make_pair(ca), make_pair(ca)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    write(cert, a.chain)
    write(key, {"missing": a.key, "mismatch": b.key, "garbage": b"junk"}[broken])
    if broken == "missing":
        cert.unlink()
    with pytest.raises(CertificateError) as raised:
        make_factory(cert, key, clock)
    assert str(cert if broken != "garbage" else key) in str(raised.value)


def test_racy_same_size_rewrite_is_caught_by_content(
    files: Any, clock: Clock, ca: trustme.CA
) -> None:
    """
    Two writes of the same size in one timestamp tick leave identical stamps:
    while the stamp is too fresh to trust, content hashes are compared.
    """
    cert, key, old = files
    pinned: dict[str, os.stat_result] = {}

    def pinned_stat(path: str) -> os.stat_result:
        return pinned.get(path) or os.stat(path)

    # The files were "just written": their mtime is the clock's now.
    for p in (cert, key):
        s = os.stat(p)
        fields = list(s)
        fields[8] = int(clock.now // 1e9)  # st_mtime (seconds), for completeness
        pinned[str(p)] = os.stat_result(
            fields, {"st_mtime_ns": int(clock.now)} | {"st_ctime_ns": int(clock.now)}
        )
    factory = make_factory(cert, key, clock, stat=pinned_stat)
    new = make_pair(ca)
    while len(new.chain) != len(old.chain) or len(new.key) != len(old.key):
        new = make_pair(ca)
    write(cert, new.chain)  # same inode, same size, and (pinned) same times
    write(key, new.key)
    clock.now += RACY_WINDOW_NS / 10
    assert served(factory) == new.fingerprint


def test_racy_stamps_become_trusted_once_old_enough(
    files: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the racy window, one last content check, then stamps alone suffice."""
    cert, key, _ = files
    clock.now = os.stat(cert).st_mtime_ns + 1000  # read right after the write
    factory = make_factory(cert, key, clock)
    reads: list[str] = []
    real = _reloading.read_file
    monkeypatch.setattr(_reloading, "read_file", lambda p: reads.append(p) or real(p))
    factory.getContext()
    assert reads  # still racy: verified by content
    clock.now += RACY_WINDOW_NS * 2
    factory.getContext()
    reads.clear()
    for _ in range(10):
        factory.getContext()
    assert reads == []


def test_touch_without_change_keeps_the_generation(files: Any, clock: Clock) -> None:
    """A new mtime with the same bytes is not a new certificate."""
    cert, key, _ = files
    factory = make_factory(cert, key, clock)
    os.utime(cert, ns=(1, 2))
    factory.getContext()
    assert factory.generation == 1


def test_listeners_hear_each_swap(files: Any, clock: Clock, ca: trustme.CA) -> None:
    """Change listeners get the new state (used for rotation and metrics)."""
    cert, key, _ = files
    factory = make_factory(cert, key, clock)
    heard: list[int] = []
    factory.listeners.append(lambda state: heard.append(state.generation))
    new = make_pair(ca)
    write_atomically(key, new.key)
    write_atomically(cert, new.chain)
    factory.getContext()
    factory.getContext()
    assert heard == [2]


def test_group_readable_key_is_warned_about(
    tmp_path: Path, clock: Clock, ca: trustme.CA
) -> None:
    """Like Hysteria's start-up check: a key readable by others gets a warning."""
    pair = make_pair(ca)
    write(tmp_path / "c.pem", pair.chain, 0o644)
    write(tmp_path / "k.pem", pair.key, 0o644)
    with capturedLogs() as events:
        make_factory(tmp_path / "c.pem", tmp_path / "k.pem", clock)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warnings and "readable by group or others" in warnings[0]["log_format"]


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Run a handshake through memory BIOs; raise the first real TLS error."""
    done = {client: False, server: False}
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            if not done[a]:
                try:
                    a.do_handshake()
                    done[a] = True
                except SSL.WantReadError:
                    pass
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(65536))
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_policy_min_version_13_refuses_tls12(files: Any, clock: Clock) -> None:
    """The policy reaches every generated context: a 1.2-only client is refused."""
    cert, key, _ = files
    factory = make_factory(cert, key, clock, policy=TLSPolicy(min_version="1.3"))
    for max_version, ok in ((SSL.TLS1_3_VERSION, True), (SSL.TLS1_2_VERSION, False)):
        client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client_ctx.set_max_proto_version(max_version)
        server = SSL.Connection(factory.getContext(), None)
        server.set_accept_state()
        client = SSL.Connection(client_ctx, None)
        client.set_connect_state()
        if ok:
            handshake(client, server)
            assert server.get_protocol_version_name() == "TLSv1.3"
        else:
            with pytest.raises(SSL.Error, match="unsupported protocol"):
                handshake(client, server)


def test_a_failing_change_listener_does_not_break_the_swap(
    files: Any, clock: Clock, ca: trustme.CA
) -> None:
    """A listener's exception is logged; later listeners still hear; the swap holds."""
    cert, key, _ = files
    factory = make_factory(cert, key, clock)
    heard: list[int] = []

    def broken(state: Any) -> None:
        raise RuntimeError("listener bug")

    factory.listeners += [broken, lambda s: heard.append(s.generation)]
    new = make_pair(ca)
    write_atomically(key, new.key)
    write_atomically(cert, new.chain)
    with capturedLogs() as events:
        assert served(factory) == new.fingerprint
    assert heard == [2]
    assert any(e.get("log_failure") for e in events)


def test_future_mtime_is_not_racy(
    files: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file dated in the future (clock skew) is not re-read on every connection."""
    cert, key, _ = files
    future = int(clock.now + 3600e9)
    os.utime(cert, ns=(future, future))
    os.utime(key, ns=(future, future))
    factory = make_factory(cert, key, clock)
    monkeypatch.setattr(_reloading, "read_file", lambda p: pytest.fail("re-read"))
    factory.getContext()


def test_racy_files_that_become_unreadable_are_not_a_failed_reload(
    files: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unchanged stamps that cannot be re-verified are trusted, not counted as errors."""
    cert, key, _ = files
    clock.now = os.stat(cert).st_mtime_ns + 1000
    factory = make_factory(cert, key, clock)
    from tlsgate.certs._stamps import FileRead

    monkeypatch.setattr(
        _reloading, "read_file", lambda p: FileRead(p, None, "Permission denied")
    )
    factory.getContext()
    assert factory.reloads_failed == 0 and factory.state.last_error is None


def test_session_timeout_zero_means_no_limit(files: Any, clock: Clock) -> None:
    cert, key, _ = files
    factory = make_factory(cert, key, clock, policy=TLSPolicy(session_timeout=0))
    assert factory.getContext().get_timeout() == 0x7FFFFFFF
    factory = make_factory(cert, key, clock, policy=TLSPolicy(session_timeout=0.25))
    assert factory.getContext().get_timeout() == 1


_CLIENT_CTX = SSL.Context(SSL.TLS_CLIENT_METHOD)
_CLIENT_CTX.set_max_proto_version(SSL.TLS1_2_VERSION)


def resumed_after(
    server_ctx: SSL.Context, session: SSL.Session | None
) -> tuple[bool, SSL.Session]:
    """One TLS 1.2 handshake in memory against C{server_ctx}, offering C{session}."""
    from tlsgate.certs import session_reused

    client_ctx = _CLIENT_CTX
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    if session is not None:
        client.set_session(session)
    handshake(client, server)
    # End both sides cleanly (each sends its close_notify, as the gateway and
    # most clients do; the bytes need not travel): OpenSSL takes the session
    # of an SSL freed without having sent one for a bad one (as after an
    # error) and makes it unresumable, and when the free happens depends on
    # the garbage collector.
    server.shutdown()
    client.shutdown()

    class T:
        def getHandle(self) -> SSL.Connection:
            return client

    return session_reused(T()), client.get_session()


def test_resumption_is_bound_to_the_certificate_and_ca_generation(
    tmp_path: Path, clock: Clock, ca: trustme.CA
) -> None:
    """No session made before a certificate or client-CA change resumes after it."""
    from tlsgate.certs import ClientAuth

    pair = make_pair(ca)
    write(tmp_path / "c.pem", pair.chain)
    write(tmp_path / "k.pem", pair.key)
    (tmp_path / "clients.pem").write_bytes(trustme.CA().cert_pem.bytes())
    factory = ReloadingContextFactory(
        str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), wallclock=clock,
        client_auth=ClientAuth(str(tmp_path / "clients.pem"), require=False),
    )  # fmt: skip
    reused, session = resumed_after(factory.getContext(), None)
    reused, session = resumed_after(factory.getContext(), session)
    assert reused  # same generation: resumes
    write_atomically(tmp_path / "clients.pem", trustme.CA().cert_pem.bytes())
    reused, session = resumed_after(factory.getContext(), session)
    assert factory.generation == 2 and not reused  # new trust: a full handshake
    new = make_pair(ca)
    write_atomically(tmp_path / "k.pem", new.key)
    write_atomically(tmp_path / "c.pem", new.chain)
    reused, _ = resumed_after(factory.getContext(), session)
    assert factory.generation == 3 and not reused


def test_garbage_read_between_a_stat_and_a_rename_is_logged_once(
    files: Any, clock: Clock
) -> None:
    """
    A look at the files stats them, then reads them. When a rename lands in
    between (an atomic replacement, while the files are recent enough to be
    read on every look), the refused content is first seen under the old
    stamps, and again under its own on the next look: the same refusal is
    still logged and counted once. (A CI run logged it twice.)
    """
    cert, key, old = files
    clock.now = os.stat(cert).st_mtime_ns + 1  # recent files: every look reads
    stale: dict[str, os.stat_result] = {}

    def stat(path: str) -> os.stat_result:
        return stale.pop(path, None) or os.stat(path)

    factory = make_factory(cert, key, clock, stat=stat)
    stale[str(cert)] = os.stat(cert)  # the next look's stat, taken before...
    write_atomically(cert, b"this is not a certificate\n")  # ...this rename
    with capturedLogs() as events:
        for _ in range(5):
            assert served(factory) == old.fingerprint
    errors = [e for e in events if e["log_level"] == LogLevel.error]
    assert len(errors) == 1, errors
    assert factory.reloads_failed == 1
    assert factory.state.last_error is not None
    # Other garbage is another refusal, logged and counted again.
    write_atomically(cert, b"different garbage\n")
    with capturedLogs() as events:
        assert served(factory) == old.fingerprint
    assert len([e for e in events if e["log_level"] == LogLevel.error]) == 1
    assert factory.reloads_failed == 2
