"""
Client authentication: identities from verified client certificates and the
C{allow} rules (cn, dns, uri/SPIFFE) that admit them.
"""

from tlsgate.auth._identity import AllowRules, Identity, Rule, identity_of, parse_allow

__all__ = ["AllowRules", "Identity", "Rule", "identity_of", "parse_allow"]
