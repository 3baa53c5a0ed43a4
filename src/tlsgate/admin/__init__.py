"""
Operating the gateway: the admin HTTP API and its Prometheus metrics.

Owns C{/healthz}, C{/readyz}, C{/metrics}, C{/status}, C{POST /reload} and
C{POST /drain}, the bearer-token guard, and a metrics collector that reads
live state at scrape time.
"""

from tlsgate.admin._metrics import GatewayCollector, make_registry
from tlsgate.admin._resources import AdminRoot, TokenFile, token_file, use_token_file
from tlsgate.admin._status import gateway_status, reload_now
from tlsgate.admin._view import IGatewayView, LocalView

__all__ = [
    "AdminRoot",
    "GatewayCollector",
    "IGatewayView",
    "LocalView",
    "TokenFile",
    "gateway_status",
    "make_registry",
    "reload_now",
    "token_file",
    "use_token_file",
]
