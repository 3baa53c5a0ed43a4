"""PROXY headers, checked against Twisted's own HAProxy parser."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from tlsgate.proxy import ConnectionFacts, decode_tlvs, encode, encode_v1, encode_v2
from tlsgate.proxy._header import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
)


def ip(text: str) -> str:
    """Twisted spells IPv6 in full; compare normalized."""
    return str(ipaddress.ip_address(text))


V4 = ConnectionFacts(("192.0.2.7", 51234), ("198.51.100.1", 443))
V6 = ConnectionFacts(("2001:db8::7", 51234), ("2001:db8::1", 443))


@pytest.mark.parametrize("facts", [V4, V6], ids=["ipv4", "ipv6"])
def test_v1_parses_with_twisted(facts: ConnectionFacts) -> None:
    info = V1Parser.parse(encode_v1(facts))
    assert (info.source.host, info.source.port) == facts.source
    assert (info.destination.host, info.destination.port) == facts.destination


@pytest.mark.parametrize("facts", [V4, V6], ids=["ipv4", "ipv6"])
def test_v2_parses_with_twisted(facts: ConnectionFacts) -> None:
    header = encode_v2(facts)
    info, rest = V2Parser().feed(header + b"GET / HTTP/1.1\r\n")
    assert info is not None
    assert (ip(info.source.host), info.source.port) == facts.source
    assert (ip(info.destination.host), info.destination.port) == facts.destination
    assert rest == b"GET / HTTP/1.1\r\n"


def test_unknown_addresses() -> None:
    facts = ConnectionFacts(None, None)
    assert encode_v1(facts) == b"PROXY UNKNOWN\r\n"
    info = V2Parser.parse(encode_v2(facts))
    assert info.source is None and info.destination is None


def test_v2_carries_the_tls_facts_as_tlvs() -> None:
    facts = ConnectionFacts(
        ("192.0.2.7", 1), ("198.51.100.1", 443), tls_version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256", sni="app.example", alpn=b"h2",
        client_cn="billing", client_cert_verified=True,
    )  # fmt: skip
    header = encode_v2(facts)
    V2Parser.parse(header)  # still a valid header for Twisted
    tlvs = decode_tlvs(header[16 + 12 :])
    assert tlvs[PP2_TYPE_ALPN] == b"h2"
    assert tlvs[PP2_TYPE_AUTHORITY] == b"app.example"
    client, verify = struct.unpack("!BI", tlvs[PP2_TYPE_SSL][:5])
    assert client == PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN and verify == 0
    sub = decode_tlvs(tlvs[PP2_TYPE_SSL][5:])
    assert sub[PP2_SUBTYPE_SSL_VERSION] == b"TLSv1.3"
    assert sub[PP2_SUBTYPE_SSL_CIPHER] == b"TLS_AES_128_GCM_SHA256"
    assert sub[PP2_SUBTYPE_SSL_CN] == b"billing"


def test_encode_dispatches_on_version() -> None:
    assert encode("v1", V4).startswith(b"PROXY TCP4 ")
    assert encode("v2", V4).startswith(b"\r\n\r\n\x00\r\nQUIT\n")
    with pytest.raises(ValueError):
        encode("v3", V4)
