"""
The C{tlsgate:} endpoint: its description parses as the ini file's listener
keys do, bad descriptions are refused by key, and the endpoint it builds
wires reloading, generation tags, rotation closes and accept pausing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from tlsgate.config import parse_config
from tlsgate.config._parser import LISTENER_KEYS
from tlsgate.endpoint import (
    KEYS,
    EndpointError,
    ReloadingTLSServerEndpoint,
    endpoint_from_description,
    parse_description,
)
from tlsgate.testing import CertificateAuthority, CertificateFiles, connect_tls
from tlsgate.tracker import CloseReason

#: Listener keys that concern the backend side, which an endpoint has not.
BACKEND_SIDE = {"listen", "backend", "proxy_protocol", "backend_tls", "backend_ca",
                "backend_server_name", "backend_cert", "backend_key",
                "backend_connect_timeout"}  # fmt: skip


def test_the_endpoint_has_every_tls_and_limit_key_of_the_ini_file() -> None:
    """Names agree both ways: a listener key added to the ini needs one line in KEYS."""
    endpoint_only = {"port", "interface", "backlog"}
    assert set(KEYS) - endpoint_only == set(LISTENER_KEYS) - BACKEND_SIDE


#: A value for every key, written as the ini file writes it.
INI_VALUES = {
    "sni_dir": "certs", "sni_strict": "on", "client_ca": "clients.pem",
    "client_auth": "request", "allow": "dns:*.corp cn:ops", "ocsp_response": "ocsp.der",
    "alpn": "h2 http/1.1", "min_version": "1.3", "ciphers": "ECDHE+AESGCM",
    "groups": "X25519 P-384",
    "session_resumption": "off", "session_timeout": "90s", "handshake_timeout": "3s",
    "idle_timeout": "2m", "max_lifetime": "1h", "lifetime_jitter": "20%",
    "close_grace": "250ms", "rotation_grace": "10m", "max_connections": "7",
    "max_connections_per_client": "3",
}  # fmt: skip


def _escape(value: str) -> str:
    return value.replace(":", "\\:")


def test_every_key_parses_as_the_ini_file_parses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same names, values and defaults: the endpoint's config equals the ini's."""
    monkeypatch.chdir(tmp_path)
    assert set(INI_VALUES) == set(KEYS) - {
        "port",
        "interface",
        "backlog",
        "cert",
        "key",
    }
    ini = "[listener:x]\nlisten = tcp:8443\nbackend = tcp:127.0.0.1:1\n"
    ini += "cert = fullchain.pem\nkey = privkey.pem\n"
    ini += "".join(f"{k} = {v}\n" for k, v in INI_VALUES.items())
    (want,) = parse_config(ini, file=str(tmp_path / "g.ini")).listeners
    description = {"port": "8443", "cert": "fullchain.pem", "key": "privkey.pem"}
    for k, v in INI_VALUES.items():
        description[k] = v.replace(" ", ",") if k in ("alpn", "groups") else v
    tcp, got = parse_description((), description)
    assert tcp == {"port": 8443}
    for field in ("cert", "key", "tls", "limits", "client_ca", "client_auth",
                  "allow", "ocsp_response", "sni_dir", "sni_strict"):  # fmt: skip
        assert getattr(got, field) == getattr(want, field), field


def test_defaults_are_the_ini_defaults(tmp_path: Path) -> None:
    """Nothing but port and cert: every other value is the ini file's default."""
    ini = "[listener:x]\nlisten = tcp:1\nbackend = tcp:127.0.0.1:1\ncert = /c.pem\n"
    (want,) = parse_config(ini, file=str(tmp_path / "g.ini")).listeners
    _tcp, got = parse_description((), {"port": "1", "cert": "/c.pem"})
    assert (got.tls, got.limits, got.client_auth, got.sni_strict, got.key) == (
        want.tls, want.limits, want.client_auth, want.sni_strict, want.key,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ({"port": "1", "cert": "/c", "idel_timeout": "3"},
         "key 'idel_timeout': unknown key (did you mean 'idle_timeout'?)"),
        ({"port": "1", "cert": "/c", "idle_timeout": "soon"},
         "key 'idle_timeout': 'soon' is not a duration"),
        ({"port": "70000", "cert": "/c"}, "key 'port': '70000' is not a port number"),
        ({"cert": "/c"}, "key 'port': required key is missing"),
        ({"port": "1"}, "key 'cert': required key is missing"),
        ({"port": "1", "cert": "/c", "min_version": "1.1"}, "key 'min_version'"),
        ({"port": "1", "cert": "/c", "client_auth": "require"},
         "key 'client_auth': needs client_ca"),
        ({"port": "1", "cert": "/c", "client_ca": "/ca", "client_auth": "none",
          "allow": "cn:a"},
         "key 'allow': has no effect with client_auth = none"),  # as the ini says
        ({"port": "1", "cert": "/c", "lifetime_jitter": "150%"}, "key 'lifetime_jitter'"),
    ],
)  # fmt: skip
def test_a_bad_description_is_refused_by_key(
    description: dict[str, str], message: str
) -> None:
    with pytest.raises(EndpointError) as e:
        parse_description((), description)
    assert str(e.value).startswith("tlsgate: endpoint ")
    assert message in str(e.value)


def test_positional_values_are_refused() -> None:
    with pytest.raises(EndpointError, match="key=value"):
        parse_description(("8443",), {"cert": "/c"})


def test_a_missing_certificate_names_the_key_and_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(EndpointError) as e:
        endpoint_from_description(MemoryReactorClock(), port="0", cert=str(missing))
    assert "key 'cert'" in str(e.value) and str(missing) in str(e.value)


def test_serverfromstring_finds_the_plugin(tmp_path: Path) -> None:
    """The plugin in twisted/plugins/ answers for the tlsgate: prefix."""
    files = CertificateFiles(tmp_path, CertificateAuthority().issue())
    endpoint = serverFromString(
        MemoryReactorClock(),
        f"tlsgate:port=8443:interface=127.0.0.1:cert={files.cert}:key={files.key}"
        ":idle_timeout=30s:alpn=h2,http/1.1",
    )
    assert isinstance(endpoint, ReloadingTLSServerEndpoint)
    assert endpoint.limits.idle_timeout == 30
    assert endpoint.contexts.policy.alpn == ("h2", "http/1.1")


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.write(b"ping")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


def test_the_endpoint_wires_reloading_generations_rotation_and_pausing(
    tmp_path: Path,
) -> None:
    """
    One description gives what the gateway's listeners have: a renewed
    certificate served on the next connection, connections tagged with their
    generation, older ones closed within rotation_grace, and the port handed
    to the tracker for max_connections.
    """
    ca = CertificateAuthority()
    first, second = ca.issue(), ca.issue()
    files = CertificateFiles(tmp_path, first)
    reactor = clock = MemoryReactorClock()
    endpoint = endpoint_from_description(
        reactor, port="8443", cert=str(files.cert), key=str(files.key),
        rotation_grace="10s", idle_timeout="0",
    )  # fmt: skip
    listening: list[object] = []
    endpoint.listen(Factory.forProtocol(Echo)).addCallback(listening.append)
    (port_number, factory, _backlog, interface) = reactor.tcpServers[0]
    assert (port_number, interface) == (8443, "")
    (tracker,) = endpoint.trackers
    (port,) = listening
    assert tracker.port is not None  # what max_connections pauses
    assert port.getHost() == tracker.port.getHost()  # type: ignore[attr-defined]

    old = Client()
    conn = connect_tls(factory, old, trust=ca.cert_pem, clock=clock)
    assert old.received == b"ping"
    assert conn.client.getPeerCertificate().to_cryptography().fingerprint is not None

    files.write(second)
    new = Client()
    connect_tls(factory, new, trust=ca.cert_pem, clock=clock)
    assert new.received == b"ping"
    assert tracker.by_generation() == {1: 1, 2: 1}

    for _ in range(30):
        clock.advance(0.5)
        conn.flush()
    assert old.lost and not new.lost
    assert tracker.closed[CloseReason.ROTATION] == 1

    port.stopListening()  # type: ignore[attr-defined]
    assert tracker.port is None  # a closed socket is never resumed


def test_wrap_endpoint_gives_any_endpoint_sni_and_mutual_tls(tmp_path: Path) -> None:
    """
    The embedder's path for SNI and mTLS: wrap_endpoint with sni_dir and
    client_ca. A client asking for a name in sni_dir gets that certificate;
    the application reads the verified client certificate.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from tlsgate.endpoint import wrap_endpoint

    ca = CertificateAuthority()
    main, other = ca.issue("localhost"), ca.issue("other.example")
    files = CertificateFiles(tmp_path / "main", main)
    CertificateFiles(tmp_path / "sni", other, how="data_swap")  # tls.crt + tls.key
    (tmp_path / "clients.pem").write_bytes(ca.cert_pem)
    reactor = MemoryReactorClock()
    endpoint = wrap_endpoint(
        TCP4ServerEndpoint(reactor, 0), clock=reactor, cert=str(files.cert),
        key=str(files.key), sni_dir=str(tmp_path / "sni"),
        client_ca=str(tmp_path / "clients.pem"), idle_timeout="2m",
    )  # fmt: skip
    assert endpoint.limits.idle_timeout == 120
    seen: list[object] = []

    class Peer(Protocol):
        def dataReceived(self, data: bytes) -> None:
            seen.append(self.transport.getPeerCertificate())  # type: ignore[union-attr]
            self.transport.write(data)  # type: ignore[union-attr]

    endpoint.listen(Factory.forProtocol(Peer))
    factory = reactor.tcpServers[0][1]
    client = Client()
    conn = connect_tls(
        factory, client, trust=ca.cert_pem, hostname="other.example", clock=reactor,
        client_certificate=ca.issue("ops", client=True),
    )  # fmt: skip
    assert client.received == b"ping"
    served = conn.client.getPeerCertificate().to_cryptography()
    assert "other.example" in served.subject.rfc4514_string()
    (peer,) = seen
    assert "CN=ops" in peer.to_cryptography().subject.rfc4514_string()  # type: ignore[attr-defined]


def test_wrap_endpoint_refuses_the_tcp_keys(tmp_path: Path) -> None:
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from tlsgate.endpoint import wrap_endpoint

    reactor = MemoryReactorClock()
    with pytest.raises(
        EndpointError, match="key 'port': the endpoint to wrap is given"
    ):
        wrap_endpoint(
            TCP4ServerEndpoint(reactor, 0), clock=reactor, cert="/c", port="1"
        )


def test_a_certificate_near_expiry_is_warned_about_while_listening(
    tmp_path: Path,
) -> None:
    """As the gateway does: the endpoint warns days before its certificate expires."""
    import datetime

    from twisted.logger import capturedLogs

    ca = CertificateAuthority()
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)
    files = CertificateFiles(tmp_path, ca.issue("localhost", not_after=soon))
    reactor = MemoryReactorClock()
    endpoint = endpoint_from_description(
        reactor, port="0", cert=str(files.cert), key=str(files.key)
    )
    with capturedLogs() as events:
        ports: list[object] = []
        endpoint.listen(Factory.forProtocol(Echo)).addCallback(ports.append)
    assert [e["event"] for e in events if e.get("event") == "certificate_expiring"] == [
        "certificate_expiring"
    ]
    ports[0].stopListening()  # type: ignore[attr-defined]
    assert not reactor.getDelayedCalls()  # the hourly check stopped with the port
