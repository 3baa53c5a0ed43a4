"""The C{tlsgate:} server endpoint string, for C{serverFromString} and C{--listen}."""

from typing import Any

from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _TlsgateServerParser:
    """Imports tlsgate only when a C{tlsgate:} string is parsed, not at plugin scans."""

    prefix = "tlsgate"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from tlsgate.endpoint import endpoint_from_description

        return endpoint_from_description(reactor, *args, **kwargs)


tlsgateServerParser = _TlsgateServerParser()
