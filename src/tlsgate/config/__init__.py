"""
Configuration: the ini format of the interface page, parsed into frozen values.

C{load_config}/C{parse_config} turn a file into a L{GatewayConfig}; embedders
may build L{GatewayConfig} and L{ListenerConfig} directly.
"""

from tlsgate.config._model import GatewayConfig, ListenerConfig
from tlsgate.config._parser import load_config, parse_config
from tlsgate.config._values import parse_bool, parse_duration, parse_percent

__all__ = [
    "GatewayConfig",
    "ListenerConfig",
    "load_config",
    "parse_bool",
    "parse_config",
    "parse_duration",
    "parse_percent",
]
