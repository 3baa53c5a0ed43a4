"""
TLS protocol policy and the construction of one server C{SSL.Context}.

The defaults are what a gateway facing the public internet should offer
without any configuration: TLS 1.2 at least, forward-secret AEAD suites,
no compression, no renegotiation, the server's cipher order (ChaCha20 first
for clients that put it first), and the X25519MLKEM768 post-quantum hybrid
ahead of X25519, P-256 and P-384. This is Mozilla's "intermediate"
configuration; C{min_version = 1.3} gives its "modern" one.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _openssl_lib

from tlsgate.certs._alpn import install_alpn
from tlsgate.certs._groups import DEFAULT_GROUPS, check_groups, set_groups
from tlsgate.certs._material import CertifiedKey

#: pyOpenSSL's binding of SSL_session_reused, looked up once (it runs per handshake).
_session_reused = getattr(_openssl_lib, "SSL_session_reused", None)

DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

#: The TLS 1.3 suites in the server's order, Mozilla's recommended one:
#: AES-128-GCM first, as browsers and Go ask for it. OpenSSL's own default
#: puts AES-256-GCM with SHA-384 first; its key schedule and transcript hash
#: cost a full handshake about 10% more CPU (measured with OpenSSL 4.0.3; see
#: docs/benchmarks.md), for no security the X25519 or P-256 key exchange can
#: carry. A client that lists ChaCha20 first still gets it.
TLS13_ORDER = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)

_set_ciphersuites = getattr(_openssl_lib, "SSL_CTX_set_ciphersuites", None)

#: OpenSSL's SSL_OP_PRIORITIZE_CHACHA (bit 21 since 1.1.1), which pyOpenSSL's
#: binding does not export: with the server's cipher order, a client that
#: lists ChaCha20 first (no AES hardware) gets ChaCha20.
OP_PRIORITIZE_CHACHA = getattr(_openssl_lib, "SSL_OP_PRIORITIZE_CHACHA", 1 << 21)

#: A client that closes without close_notify (most do) is not an error: with
#: this option OpenSSL keeps its TLS 1.2 session resumable instead of
#: dropping it from the cache as after a fatal error.
OP_IGNORE_UNEXPECTED_EOF = getattr(_openssl_lib, "SSL_OP_IGNORE_UNEXPECTED_EOF", 0)

_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


@dataclass(frozen=True)
class TLSPolicy:
    """
    The protocol settings of a listener, shared by every context it builds.

    @ivar min_version: C{"1.2"} or C{"1.3"}.
    @ivar ciphers: an OpenSSL cipher string for TLS 1.2 (1.3 suites are all AEAD).
    @ivar session_resumption: offer session tickets and a session cache.
    @ivar session_timeout: seconds a session may be resumed.
    @ivar alpn: protocols offered by ALPN, in the server's order of preference;
        a client offering none of them gets the C{no_application_protocol} alert.
    @ivar groups: key exchange groups, in the server's order of preference;
        each is checked against the OpenSSL that serves.
    """

    min_version: str = "1.2"
    ciphers: str = DEFAULT_CIPHERS
    session_resumption: bool = True
    session_timeout: float = 300.0
    alpn: tuple[str, ...] = ()
    groups: tuple[str, ...] = DEFAULT_GROUPS

    def __post_init__(self) -> None:
        if self.min_version not in _VERSIONS:
            raise ValueError(
                f"min_version must be 1.2 or 1.3, not {self.min_version!r}"
            )
        object.__setattr__(self, "groups", check_groups(self.groups))


def check_cipher_string(ciphers: str) -> str | None:
    """Why OpenSSL refuses C{ciphers}, or C{None} when it accepts them."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        ctx.set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        return f"OpenSSL accepts no cipher in {ciphers!r}"
    return None


VerifyCallback = Callable[[SSL.Connection, crypto.X509, int, int, int], bool]


def tls13_order(allowed: list[str]) -> list[str]:
    """
    The TLS 1.3 suites of C{allowed} (what OpenSSL offers here, in its
    order) with those of L{TLS13_ORDER} first, in that order: a suite the
    system's OpenSSL configuration (C{Ciphersuites}, a crypto policy) leaves
    out stays out.
    """
    first = [s for s in TLS13_ORDER if s in allowed]
    return first + [s for s in allowed if s not in first]


@cache
def _tls13_suites_text() -> bytes | None:
    """
    L{tls13_order} of the TLS 1.3 suites a new context gets from this
    OpenSSL and its configuration (read once per process), as OpenSSL's
    text; C{None} when that is their order already. Asked of a throwaway
    context: a context that has made a connection can no longer be changed.
    """
    probe = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD), None)
    allowed = [n for n in probe.get_cipher_list() if n.startswith("TLS_")]
    order = tls13_order(allowed)
    if not order or order == allowed:
        return None
    return ":".join(order).encode("ascii")


def _order_tls13_suites(ctx: SSL.Context) -> None:
    """Put C{ctx}'s TLS 1.3 suites in L{tls13_order}."""
    text = _tls13_suites_text()
    if text is None:
        return
    setter = getattr(ctx, "set_tls13_ciphersuites", None)  # pyOpenSSL >= 25.3
    if setter is not None:
        setter(text)
    elif _set_ciphersuites is not None:  # an older pyOpenSSL: its binding
        _set_ciphersuites(ctx._context, text)


def build_server_context(
    material: CertifiedKey,
    policy: TLSPolicy,
    *,
    client_cas: Sequence[x509.Certificate] = (),
    require_client_cert: bool = True,
    verify: VerifyCallback | None = None,
    ocsp: Callable[[CertifiedKey], bytes] | None = None,
    session_id: bytes | None = None,
) -> SSL.Context:
    """
    Make a fresh server context serving C{material} under C{policy}.

    A new context per certificate (or client CA) generation also means a new
    session cache and new ticket keys, so no session resumes across a change:
    a session made before a CA bundle changed can never skip verification
    under the new one.

    @param client_cas: trust for client certificates; empty: none asked for.
    @param require_client_cert: with C{client_cas}, refuse clients without one.
    @param verify: called for each certificate of a client's chain, as
        OpenSSL's verify callback; returns whether to go on.
    @param ocsp: gives the DER OCSP response to staple, or C{b""} for none.
    @param session_id: the session ID context (default: random); worker
        processes derive the same one for the same files and generation, so
        that a session made on one worker resumes on another.
    """
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_VERSIONS[policy.min_version])
    options = (
        SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_SINGLE_ECDH_USE
        | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
        | OP_PRIORITIZE_CHACHA
        | OP_IGNORE_UNEXPECTED_EOF
    )
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(policy.ciphers.encode("ascii"))
    _order_tls13_suites(ctx)
    set_groups(ctx, policy.groups)

    ctx.use_certificate(material.leaf)
    for extra in material.chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(material.key)
    ctx.check_privatekey()

    if client_cas:
        store = ctx.get_cert_store()
        assert store is not None
        for ca in client_cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
            ctx.add_client_ca(ca)
        mode = SSL.VERIFY_PEER
        if require_client_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, verify or (lambda conn, cert, errno, depth, ok: bool(ok)))
    if policy.alpn:
        install_alpn(ctx, policy.alpn)
    if ocsp is not None:
        ctx.set_ocsp_server_callback(lambda conn, data: ocsp(material))

    # A session ID context is required for client certificates and harmless
    # otherwise; it is unique per context, binding sessions to this generation.
    ctx.set_session_id(session_id or secrets.token_hex(8).encode("ascii"))
    if policy.session_resumption:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        # 0 means "no limit": OpenSSL's largest timeout; fractions round up.
        timeout = policy.session_timeout
        ctx.set_timeout(math.ceil(timeout) if timeout else 0x7FFFFFFF)
    else:
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # With no cache, TLS 1.3 "stateful" tickets name sessions nobody
        # keeps, so every handshake is a full one.
        options |= SSL.OP_NO_TICKET
    ctx.set_options(options)
    return ctx


def session_reused(transport: object) -> bool:
    """
    Whether the TLS connection under C{transport} resumed a session.

    pyOpenSSL has no public call for it; its binding of C{SSL_session_reused}
    is used, and C{False} is the answer where either is missing.
    """
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None or _session_reused is None:
        return False
    connection = get_handle()
    ssl = getattr(connection, "_ssl", None)
    return ssl is not None and bool(_session_reused(ssl))
