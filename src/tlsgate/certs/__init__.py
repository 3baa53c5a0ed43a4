"""
Certificates and the TLS contexts built from them.

Owns reading PEM files, validating a chain and key before they are served,
the TLS policy of a server context, and the reloading context factory that
looks at the files on disk for every new connection.
"""

from tlsgate.certs._clientauth import ClientAuth
from tlsgate.certs._groups import DEFAULT_GROUPS, check_groups, negotiated_group
from tlsgate.certs._material import CertifiedKey, certificate_names, parse_certified_key
from tlsgate.certs._ocsp import OcspStaple, OcspStatus, check_response
from tlsgate.certs._policy import (
    TLSPolicy,
    build_server_context,
    check_cipher_string,
    session_reused,
)
from tlsgate.certs._reloading import CertificateState, ReloadingContextFactory
from tlsgate.certs._stamps import RACY_WINDOW_NS

__all__ = [
    "DEFAULT_GROUPS",
    "RACY_WINDOW_NS",
    "CertificateState",
    "CertifiedKey",
    "ClientAuth",
    "OcspStaple",
    "OcspStatus",
    "ReloadingContextFactory",
    "TLSPolicy",
    "build_server_context",
    "certificate_names",
    "check_cipher_string",
    "check_groups",
    "check_response",
    "negotiated_group",
    "parse_certified_key",
    "session_reused",
]
