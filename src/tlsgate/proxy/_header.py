"""
PROXY protocol headers (HAProxy's spec, versions 1 and 2) as pure functions
of the connection's facts: no I/O, tested against Twisted's own parser.

Version 2 also carries the TLS facts as TLVs: ALPN, the authority (SNI), and
the SSL TLV with the TLS version, cipher and the verified client
certificate's CN.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04


@dataclass(frozen=True)
class ConnectionFacts:
    """
    What the backend is told about a client connection.

    Addresses are C{(host, port)}; C{None} (e.g. a UNIX socket) makes the
    header say UNKNOWN / UNSPEC, as the spec asks.
    """

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    tls_version: str | None = None
    cipher: str | None = None
    sni: str | None = None
    alpn: bytes | None = None
    client_cn: str | None = None
    client_cert_verified: bool = False


def _family(facts: ConnectionFacts) -> int | None:
    """4 or 6 when both addresses are IP addresses of one family, else None."""
    if facts.source is None or facts.destination is None:
        return None
    try:
        src = ipaddress.ip_address(facts.source[0])
        dst = ipaddress.ip_address(facts.destination[0])
    except ValueError:
        return None
    if src.version != dst.version:
        return None
    return src.version


def encode_v1(facts: ConnectionFacts) -> bytes:
    """C{PROXY TCP4 src dst sport dport\\r\\n}, or C{PROXY UNKNOWN\\r\\n}."""
    family = _family(facts)
    if family is None:
        return b"PROXY UNKNOWN\r\n"
    assert facts.source is not None and facts.destination is not None
    (sh, sp), (dh, dp) = facts.source, facts.destination
    return f"PROXY TCP{family} {sh} {dh} {sp} {dp}\r\n".encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def encode_v2(facts: ConnectionFacts) -> bytes:
    """The binary header, with ALPN, AUTHORITY and SSL TLVs when known."""
    family = _family(facts)
    if family is None:
        family_byte, addresses = 0x00, b""  # UNSPEC: the receiver uses its own view
    else:
        assert facts.source is not None and facts.destination is not None
        src = ipaddress.ip_address(facts.source[0]).packed
        dst = ipaddress.ip_address(facts.destination[0]).packed
        family_byte = 0x11 if family == 4 else 0x21  # TCP over IPv4 / IPv6
        addresses = (
            src + dst + struct.pack("!HH", facts.source[1], facts.destination[1])
        )
    tlvs = b""
    if facts.alpn:
        tlvs += _tlv(PP2_TYPE_ALPN, facts.alpn)
    if facts.sni:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, facts.sni.encode("idna"))
    if facts.tls_version is not None:
        client = PP2_CLIENT_SSL
        if facts.client_cn is not None:
            client |= PP2_CLIENT_CERT_CONN
        sub = _tlv(PP2_SUBTYPE_SSL_VERSION, facts.tls_version.encode("ascii"))
        if facts.cipher:
            sub += _tlv(PP2_SUBTYPE_SSL_CIPHER, facts.cipher.encode("ascii"))
        if facts.client_cn is not None:
            sub += _tlv(PP2_SUBTYPE_SSL_CN, facts.client_cn.encode("utf-8"))
        verify = 0 if facts.client_cert_verified or facts.client_cn is None else 1
        tlvs += _tlv(PP2_TYPE_SSL, struct.pack("!BI", client, verify) + sub)
    body = addresses + tlvs
    return (
        V2_SIGNATURE + bytes([0x21, family_byte]) + struct.pack("!H", len(body)) + body
    )


def decode_tlvs(data: bytes) -> dict[int, bytes]:
    """The TLVs of a v2 header's tail (for tests and for backends in Python)."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 3 <= len(data):
        kind, length = struct.unpack("!BH", data[i : i + 3])
        out[kind] = data[i + 3 : i + 3 + length]
        i += 3 + length
    return out


def encode(version: str, facts: ConnectionFacts) -> bytes:
    """The header for C{proxy_protocol = v1 | v2}."""
    if version == "v1":
        return encode_v1(facts)
    if version == "v2":
        return encode_v2(facts)
    raise ValueError(f"unknown PROXY protocol version {version!r}")
