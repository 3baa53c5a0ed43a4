"""
tlsgate: TLS for Twisted servers whose certificates and long-lived
connections never take the service down.

Public API (everything else, including C{tlsgate.cli}, C{tlsgate.tap},
C{tlsgate.demo}, C{tlsgate.logs} and modules whose names start with C{_},
is the command line's and the twistd plugin's, and may change):

  - the C{tlsgate:} endpoint string, for any server that takes one
    (C{twist web --listen tlsgate:port=8443:cert=fullchain.pem}), and
    L{ReloadingTLSServerEndpoint}, the same in code (L{tlsgate.endpoint});
  - L{ReloadingContextFactory} and L{TLSPolicy}: a server context factory that
    follows its certificate files on disk (L{tlsgate.certs});
  - L{ConnectionTracker}, L{Limits} and L{CloseReason}: handshake, idle and
    lifetime limits, caps and drains around any protocol factory
    (L{tlsgate.tracker});
  - L{build_service}, L{GatewayConfig}, L{ListenerConfig}, L{load_config}:
    the whole gateway as an C{IService} (L{tlsgate.service},
    L{tlsgate.config});
  - the errors tlsgate raises (L{tlsgate.errors});
  - L{tlsgate.testing}: certificates, renewals, a clock and in-memory TLS
    connections for your own tests.

The subpackages L{tlsgate.sni}, L{tlsgate.relay}, L{tlsgate.auth},
L{tlsgate.proxy} and L{tlsgate.upstream} are public too, each with its own
C{__all__}. The package is typed (PEP 561).
"""

from tlsgate._version import __version__
from tlsgate.certs import ReloadingContextFactory, TLSPolicy
from tlsgate.config import GatewayConfig, ListenerConfig, load_config, parse_config
from tlsgate.endpoint import ReloadingTLSServerEndpoint
from tlsgate.errors import (
    CertificateError,
    ConfigError,
    ConfigErrors,
    ListenError,
    TlsgateError,
)
from tlsgate.service import build_service
from tlsgate.tracker import CloseReason, ConnectionTracker, Limits

__all__ = [
    "CertificateError",
    "CloseReason",
    "ConfigError",
    "ConfigErrors",
    "ConnectionTracker",
    "GatewayConfig",
    "Limits",
    "ListenError",
    "ListenerConfig",
    "ReloadingContextFactory",
    "ReloadingTLSServerEndpoint",
    "TLSPolicy",
    "TlsgateError",
    "__version__",
    "build_service",
    "load_config",
    "parse_config",
]
