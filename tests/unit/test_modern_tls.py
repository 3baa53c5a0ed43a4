"""
The modern TLS policy, handshake by handshake over memory BIOs: key exchange
groups (post-quantum hybrid first), sessions that survive a client's abrupt
close, the fatal ALPN alert, and ChaCha20 for clients that prefer it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from OpenSSL import SSL
from OpenSSL._util import lib
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim

from tests.helpers import make_pair, write
from tlsgate.certs import (
    DEFAULT_GROUPS,
    ReloadingContextFactory,
    TLSPolicy,
    _policy,
    build_server_context,
    parse_certified_key,
    session_reused,
)
from tlsgate.certs._alpn import choose
from tlsgate.certs._groups import negotiated_group
from tlsgate.certs._policy import tls13_order
from tlsgate.config import parse_config
from tlsgate.errors import ConfigErrors
from tlsgate.tracker import CloseReason, ConnectionTracker, Limits


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, **policy: object) -> SSL.Context:
    pair = make_pair(ca)
    material = parse_certified_key(pair.chain, pair.key, cert_path="c", key_path="k")
    return build_server_context(material, TLSPolicy(**policy))  # type: ignore[arg-type]


def client_context(
    *,
    groups: bytes | None = None,
    max_version: int | None = None,
    alpn: list[bytes] | None = None,
) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if groups is not None:
        assert lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1
    if max_version is not None:
        ctx.set_max_proto_version(max_version)
    if alpn is not None:
        ctx.set_alpn_protos(alpn)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
    return ctx


class Handle:
    """What a TLS transport's getHandle gives: the SSL.Connection."""

    def __init__(self, connection: SSL.Connection) -> None:
        self.connection = connection

    def getHandle(self) -> SSL.Connection:
        return self.connection


def shuttle(a: SSL.Connection, b: SSL.Connection) -> int:
    """Move pending bytes from a to b; how many moved."""
    moved = 0
    while True:
        try:
            data = a.bio_read(65536)
        except SSL.WantReadError:
            return moved
        b.bio_write(data)
        moved += len(data)


def handshake(
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    session: SSL.Session | None = None,
) -> tuple[SSL.Connection, SSL.Connection]:
    """A full (or resumed) handshake between fresh connections, no sockets."""
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    if session is not None:
        client.set_session(session)
    done = {"s": False, "c": False}
    for _ in range(20):
        for key, conn in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    conn.do_handshake()
                    done[key] = True
                except SSL.WantReadError:
                    pass
        moved = shuttle(client, server) + shuttle(server, client)
        if all(done.values()) and not moved:
            break
    assert all(done.values()), "handshake did not finish"
    # TLS 1.3 sends its tickets after the handshake: let the client read them.
    with contextlib.suppress(SSL.WantReadError):
        client.recv(1)
    return server, client


# -- key exchange groups ------------------------------------------------------


def test_the_default_groups_put_the_post_quantum_hybrid_first() -> None:
    assert TLSPolicy().groups == DEFAULT_GROUPS
    assert DEFAULT_GROUPS == ("X25519MLKEM768", "X25519", "P-256", "P-384")


@pytest.mark.parametrize(
    ("client_groups", "negotiated"),
    [
        (b"X25519MLKEM768", "X25519MLKEM768"),
        (b"P-384", "P-384"),
        (b"X25519:P-256", "X25519"),
        # OpenSSL takes a key share the client sent when its group is in the
        # list, rather than cost a round trip (HelloRetryRequest) for a
        # group further up.
        (b"P-384:X25519MLKEM768", "P-384"),
    ],
)
def test_default_groups_serve_each_kind_of_client(
    ca: trustme.CA, client_groups: bytes, negotiated: str
) -> None:
    server, _ = handshake(server_context(ca), client_context(groups=client_groups))
    assert negotiated_group(Handle(server)) == negotiated


def test_configured_groups_reach_the_context(ca: trustme.CA) -> None:
    """groups = P-384 alone: a P-384 client connects, an X25519-only one cannot."""
    ctx = server_context(ca, groups=("P-384",))
    server, _ = handshake(ctx, client_context(groups=b"P-384"))
    assert negotiated_group(Handle(server)) == "P-384"
    with pytest.raises(SSL.Error):
        handshake(ctx, client_context(groups=b"X25519"))


def test_an_unknown_group_is_refused_with_a_near_match() -> None:
    with pytest.raises(ValueError, match=r"'P-385'.*did you mean 'P-384'"):
        TLSPolicy(groups=("X25519", "P-385"))
    with pytest.raises(ValueError, match="not a key exchange group name"):
        TLSPolicy(groups=("?X25519",))  # OpenSSL list syntax, not a name
    with pytest.raises(ValueError, match="listed twice"):
        TLSPolicy(groups=("X25519", "x25519"))


def test_groups_key_errors_name_file_section_key_and_group(tmp_path: Path) -> None:
    ini = (
        "[listener:web]\nlisten = tcp:8443\nbackend = tcp:127.0.0.1:8080\n"
        "cert = c.pem\ngroups = X25519MLKEM768 X25519MLKEM786 P-256\n"
    )
    with pytest.raises(ConfigErrors) as e:
        parse_config(ini, file="/etc/tlsgate/gw.ini")
    (error,) = e.value.errors
    text = str(error)
    assert "/etc/tlsgate/gw.ini" in text and "[listener:web]" in text
    assert "groups" in text and "'X25519MLKEM786'" in text
    assert "did you mean 'X25519MLKEM768'" in text


def test_groups_key_takes_spaces_or_commas(tmp_path: Path) -> None:
    ini = (
        "[listener:web]\nlisten = tcp:8443\nbackend = tcp:127.0.0.1:8080\n"
        "cert = c.pem\ngroups = P-384, X25519\n"
    )
    (listener,) = parse_config(ini, file="gw.ini").listeners
    assert listener.tls.groups == ("P-384", "X25519")


# -- sessions after an abrupt close ---------------------------------------------


def resumes_after_abrupt_close(ctx: SSL.Context) -> bool:
    """A TLS 1.2 session whose client left without close_notify: resumable?"""
    client_ctx = client_context(max_version=SSL.TLS1_2_VERSION)
    client_ctx.set_options(SSL.OP_NO_TICKET)  # by session ID, from the cache
    server, client = handshake(ctx, client_ctx)
    session = client.get_session()
    assert session is not None
    server.bio_shutdown()  # the TCP connection ends: no close_notify came
    with pytest.raises(SSL.Error):  # ZeroReturnError or the fatal EOF error
        server.recv(1)
    server2, _ = handshake(ctx, client_ctx, session)
    return session_reused(Handle(server2))


def test_a_session_survives_the_clients_abrupt_close(ca: trustme.CA) -> None:
    assert resumes_after_abrupt_close(server_context(ca))


def test_without_ignoring_unexpected_eof_the_session_is_lost(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: what OpenSSL does without the option (so the test above can fail)."""
    monkeypatch.setattr(_policy, "OP_IGNORE_UNEXPECTED_EOF", 0)
    assert not resumes_after_abrupt_close(server_context(ca))


# -- ALPN --------------------------------------------------------------------


def test_alpn_without_overlap_is_the_no_application_protocol_alert(
    ca: trustme.CA,
) -> None:
    ctx = server_context(ca, alpn=("http/1.1",))
    with pytest.raises(SSL.Error) as client_side:
        handshake(ctx, client_context(alpn=[b"foo"]))
    assert "no application protocol" in str(client_side.value)


@pytest.mark.parametrize(
    ("server", "client", "chosen"),
    [
        (("http/1.1",), [b"h2", b"http/1.1"], b"http/1.1"),
        (("h2", "http/1.1"), [b"http/1.1", b"h2"], b"h2"),  # the server's order
        (("h2",), None, None),  # no ALPN from the client: no protocol, no alert
    ],
)
def test_alpn_selects_in_the_servers_order(
    ca: trustme.CA,
    server: tuple[str, ...],
    client: list[bytes] | None,
    chosen: bytes | None,
) -> None:
    _, conn = handshake(server_context(ca, alpn=server), client_context(alpn=client))
    assert conn.get_alpn_proto_negotiated() == (chosen or b"")


def test_choose_parses_the_wire_list_and_refuses_malformed_ones() -> None:
    wire = b"\x02h2\x08http/1.1"
    assert choose((b"http/1.1",), wire) == 4
    assert choose((b"h3", b"h2"), wire) == 1
    assert choose((b"foo",), wire) is None
    assert choose((b"h2",), b"\x05h2") is None  # length past the end
    assert choose((b"h2",), b"\x00\x02h2") is None  # empty name


# -- ChaCha20 priority ----------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "first", "expected"),
    [
        (SSL.TLS1_2_VERSION, "chacha", "CHACHA20"),
        (SSL.TLS1_2_VERSION, "aes", "AES256-GCM"),
        (SSL.TLS1_3_VERSION, "chacha", "TLS_CHACHA20_POLY1305_SHA256"),
        (SSL.TLS1_3_VERSION, "aes", "TLS_AES_256_GCM_SHA384"),
    ],
)
def test_chacha20_for_clients_that_put_it_first(
    ca: trustme.CA, version: int, first: str, expected: str
) -> None:
    """The server's order, unless the client prefers ChaCha20."""
    client_ctx = client_context(max_version=version)
    if version == SSL.TLS1_2_VERSION:
        chacha, aes = "ECDHE+CHACHA20", "ECDHE+AESGCM"
        order = [chacha, aes] if first == "chacha" else [aes, chacha]
        client_ctx.set_cipher_list(":".join(order).encode())
    else:
        chacha, aes = "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"
        order = [chacha, aes] if first == "chacha" else [aes, chacha]
        client_ctx.set_tls13_ciphersuites(":".join(order).encode())
    server, _ = handshake(server_context(ca), client_ctx)
    assert expected in (server.get_cipher_name() or "")


@pytest.mark.parametrize(
    "offered",
    [
        # Go's and the browsers' order, then OpenSSL's default (curl, Python).
        "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
        "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
    ],
)
def test_tls13_clients_offering_aes_128_gcm_get_it(
    ca: trustme.CA, offered: str
) -> None:
    """Mozilla's server order: AES-128-GCM, whose SHA-256 key schedule costs less."""
    if not hasattr(SSL.Context, "set_tls13_ciphersuites"):
        pytest.skip("this pyOpenSSL cannot order TLS 1.3 suites: OpenSSL's order")
    client_ctx = client_context(max_version=SSL.TLS1_3_VERSION)
    client_ctx.set_tls13_ciphersuites(offered.encode())
    server, _ = handshake(server_context(ca), client_ctx)
    assert server.get_cipher_name() == "TLS_AES_128_GCM_SHA256"


def test_the_tls13_order_keeps_out_what_the_system_left_out() -> None:
    openssl_default = [
        "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
    ]  # fmt: skip
    assert tls13_order(openssl_default) == [
        "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
    ]  # fmt: skip
    # A crypto policy without AES-128, and one with a suite of its own.
    assert tls13_order(["TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"]) == [
        "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
    ]  # fmt: skip
    assert tls13_order(["TLS_AES_128_CCM_SHA256", "TLS_AES_128_GCM_SHA256"]) == [
        "TLS_AES_128_GCM_SHA256", "TLS_AES_128_CCM_SHA256",
    ]  # fmt: skip
    assert tls13_order([]) == []  # no TLS 1.3 here: nothing set


def test_a_system_policy_on_tls13_suites_is_kept(tmp_path: Path) -> None:
    """
    OpenSSL's configuration (C{OPENSSL_CONF}: C{Ciphersuites}, as a crypto
    policy sets it) decides which suites exist; tlsgate only orders them.
    Run in a fresh interpreter, since OpenSSL reads its configuration once.
    """
    conf = tmp_path / "openssl.cnf"
    conf.write_text(
        "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
        "[sys]\nCiphersuites = TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384\n"
    )
    script = (
        "from OpenSSL import SSL\n"
        "from tlsgate.certs._policy import _order_tls13_suites\n"
        "ctx = SSL.Context(SSL.TLS_SERVER_METHOD)\n"
        "_order_tls13_suites(ctx)\n"
        "print(':'.join(n for n in SSL.Connection(ctx, None).get_cipher_list()"
        " if n.startswith('TLS_')))\n"
    )
    src = Path(_policy.__file__).resolve().parents[2]  # this tree's tlsgate
    env = dict(os.environ, OPENSSL_CONF=str(conf), PYTHONPATH=str(src))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    assert out == "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def tickets_after_finished() -> int:
    """
    One full TLS 1.3 handshake in memory against a server context built by
    tlsgate with resumption off: the bytes the server sends after the
    client's Finished (its session tickets). Run by the test below in a fresh
    interpreter, since OpenSSL reads its configuration once per process.
    """
    server_ctx = server_context(trustme.CA(), session_resumption=False)
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    for _ in range(5):
        with contextlib.suppress(SSL.WantReadError):
            client.do_handshake()
        shuttle(client, server)
        try:
            server.do_handshake()
        except SSL.WantReadError:
            shuttle(server, client)
            continue
        assert server.get_protocol_version_name() == "TLSv1.3"
        return shuttle(server, client)
    raise AssertionError("the handshake did not finish")


@pytest.mark.parametrize("no_tickets_conf", [False, True])
def test_tls13_tickets_without_resumption_follow_openssl_conf(
    tmp_path: Path, no_tickets_conf: bool
) -> None:
    """
    With C{session_resumption = off} OpenSSL still sends TLS 1.3 clients its
    tickets (pyOpenSSL binds no C{SSL_CTX_set_num_tickets}); an OpenSSL
    config with C{NumTickets = 0} stops them, as docs/tls.md tells operators.
    (The server side only: that the setting leaves clients alone is
    OpenSSL's, C{NumTickets} being a server-only command.)
    """
    src = Path(_policy.__file__).resolve().parents[2]  # this tree's tlsgate
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(src.parent)]))
    env.pop("OPENSSL_CONF", None)
    if no_tickets_conf:
        conf = tmp_path / "openssl.cnf"
        conf.write_text(
            "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\n"
            "system_default = sys\n[sys]\nNumTickets = 0\n"
        )
        env["OPENSSL_CONF"] = str(conf)
    script = (
        "from tests.unit.test_modern_tls import tickets_after_finished\n"
        "print(tickets_after_finished())\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        timeout=60, cwd=src.parent,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = run.stdout.strip()
    if no_tickets_conf:
        assert int(out) == 0
    else:
        assert int(out) > 0  # the tickets, which cannot resume anything


# -- through the tracker -----------------------------------------------------------


def tracked_handshake_then_abrupt_close(
    tmp_path: Path, ca: trustme.CA
) -> ConnectionTracker:
    """One TLS connection through tracker and TLS layer; the client then just leaves."""
    pair = make_pair(ca)
    write(tmp_path / "c.pem", pair.chain)
    write(tmp_path / "k.pem", pair.key)
    contexts = ReloadingContextFactory(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    clock = Clock()
    tracker = ConnectionTracker(
        Factory.forProtocol(Protocol), Limits(handshake_timeout=10), clock
    )
    server_factory = TLSMemoryBIOFactory(contexts, False, tracker, clock=clock)
    client_factory = TLSMemoryBIOFactory(
        optionsForClientTLS(
            "localhost", trustRoot=Certificate.loadPEM(ca.cert_pem.bytes())
        ),
        True,
        ClientFactory.forProtocol(Protocol),
        clock=clock,
    )
    client, _, pump = iosim.connectedServerAndClient(
        lambda: server_factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 5)),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    (conn,) = tracker.connections
    assert conn.handshake_done
    (info,) = tracker.snapshot()
    assert info.group == "X25519MLKEM768"  # Twisted's client offers it first
    assert tracker.by_group() == {"X25519MLKEM768": 1}
    client.transport.abortConnection()  # TCP goes, no close_notify
    pump.flush()
    assert not tracker.connections
    return tracker


def test_tracker_records_the_group_and_an_abrupt_close_is_a_client_close(
    tmp_path: Path, ca: trustme.CA
) -> None:
    tracker = tracked_handshake_then_abrupt_close(tmp_path, ca)
    assert tracker.handshakes_by_group == {"X25519MLKEM768": 1}
    assert tracker.closed == {CloseReason.CLIENT: 1}
    assert tracker.handshakes_failed == 0


def test_close_reason_does_not_depend_on_the_eof_error(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without SSL_OP_IGNORE_UNEXPECTED_EOF the same close is counted the same."""
    monkeypatch.setattr(_policy, "OP_IGNORE_UNEXPECTED_EOF", 0)
    tracker = tracked_handshake_then_abrupt_close(tmp_path, ca)
    assert tracker.closed == {CloseReason.CLIENT: 1}
    assert tracker.handshakes_failed == 0
