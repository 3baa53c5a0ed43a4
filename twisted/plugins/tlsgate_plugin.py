"""twistd plugin: C{twistd -n tlsgate --config gateway.ini}."""

from twisted.application.service import ServiceMaker

tlsgate = ServiceMaker(
    "tlsgate",
    "tlsgate.tap",
    "A TLS gateway whose certificates reload on the next connection.",
    "tlsgate",
)
