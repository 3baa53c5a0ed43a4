"""
SNI: more certificates, chosen by the name the client asks for.

Owns the C{sni_dir} directory of certificates (rescanned only when it
changes), name matching with one-label wildcards, the choice among several
certificates for one name, and the servername callback that switches a
connection's context (or refuses unknown names with C{sni_strict}).
"""

from tlsgate.sni._callback import install_servername_callback
from tlsgate.sni._directory import SniDirectory, certificate_files

__all__ = ["SniDirectory", "certificate_files", "install_servername_callback"]
