"""
Test tools for programs that serve with tlsgate, without sockets or sleeps.

  - L{CertificateAuthority} issues certificates in memory;
  - L{CertificateFiles} writes them to a directory and renews them the way
    certbot, C{cp} and Kubernetes do, so that tests see what production sees;
  - L{TestClock} is the one clock the reloading factory (C{wallclock=}),
    the tracker and the C{tlsgate:} endpoint accept;
  - L{connect_tls} runs a TLS client against a server factory in memory.

tlsgate's own tests use these.
"""

from tlsgate.testing._certs import (
    CertificateAuthority,
    CertificateFiles,
    CertificatePair,
)
from tlsgate.testing._clock import TestClock
from tlsgate.testing._memory import TLSConnection, connect_tls

__all__ = [
    "CertificateAuthority",
    "CertificateFiles",
    "CertificatePair",
    "TLSConnection",
    "TestClock",
    "connect_tls",
]
