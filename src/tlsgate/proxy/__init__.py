"""
The PROXY protocol (HAProxy's, v1 and v2): telling backends who the client
was, and, in v2, what TLS it spoke. Pure encoding; the relay sends it.
"""

from tlsgate.proxy._header import (
    ConnectionFacts,
    decode_tlvs,
    encode,
    encode_v1,
    encode_v2,
)

__all__ = ["ConnectionFacts", "decode_tlvs", "encode", "encode_v1", "encode_v2"]
