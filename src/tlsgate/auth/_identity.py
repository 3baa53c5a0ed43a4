"""
Client identities and the C{allow} rules over them, as pure functions.

A verified client certificate yields an L{Identity}: its CN, DNS SANs and
URI SANs (SPIFFE IDs live there). C{allow} is a list of rules, any of which
lets the client in: C{cn:NAME}, C{dns:NAME} (C{*.corp.example} matches
exactly one label, as service-identity matches server names), and
C{uri:URI} (C{*} as the last path segment matches exactly one segment, so
C{spiffe://example.org/billing/*} admits C{spiffe://example.org/billing/api}).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

_KINDS = ("cn", "dns", "uri")


@dataclass(frozen=True)
class Identity:
    """Who a verified client certificate names."""

    cn: str | None
    dns: tuple[str, ...]
    uris: tuple[str, ...]

    def describe(self) -> str:
        parts = [f"cn:{self.cn}"] if self.cn else []
        parts += [f"dns:{d}" for d in self.dns] + [f"uri:{u}" for u in self.uris]
        return " ".join(parts) or "(no names)"


def identity_of(cert: x509.Certificate) -> Identity:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns, uris = (), ()
    return Identity(cn=str(cns[0].value) if cns else None, dns=dns, uris=uris)


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: str

    def matches(self, identity: Identity) -> bool:
        if self.kind == "cn":
            return identity.cn == self.pattern
        if self.kind == "dns":
            return any(_dns_matches(self.pattern, name) for name in identity.dns)
        return any(_uri_matches(self.pattern, uri) for uri in identity.uris)

    def __str__(self) -> str:
        return f"{self.kind}:{self.pattern}"


def _dns_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == name
    head, _, rest = name.partition(".")
    return bool(head) and head != "*" and rest == pattern[2:]


def _uri_matches(pattern: str, uri: str) -> bool:
    if not pattern.endswith("/*"):
        return pattern == uri
    prefix = pattern[:-1]
    last = uri[len(prefix) :]
    return uri.startswith(prefix) and bool(last) and "/" not in last


@dataclass(frozen=True)
class AllowRules:
    """The C{allow} list: any matching rule admits the client."""

    rules: tuple[Rule, ...]

    def allows(self, identity: Identity) -> bool:
        return any(rule.matches(identity) for rule in self.rules)

    def __str__(self) -> str:
        return " ".join(str(r) for r in self.rules)


def parse_allow(text: str) -> AllowRules:
    """Rules from C{dns:*.corp.example uri:spiffe://example.org/billing/* cn:ops}."""
    rules = []
    for token in text.split():
        kind, colon, pattern = token.partition(":")
        if not colon or kind.lower() not in _KINDS or not pattern:
            raise ValueError(
                f"{token!r} is not a rule; use cn:NAME, dns:NAME (*.domain allowed)"
                " or uri:URI (/* as the last segment allowed)"
            )
        kind = kind.lower()
        if (
            kind == "dns"
            and "*" in pattern
            and not (pattern.startswith("*.") and "*" not in pattern[2:])
        ):
            raise ValueError(
                f"{token!r}: a DNS wildcard may only be a whole first label"
            )
        if kind == "uri" and "*" in pattern[:-1]:
            raise ValueError(f"{token!r}: '*' may only be the whole last path segment")
        rules.append(Rule(kind, pattern))
    if not rules:
        raise ValueError("no rule given")
    return AllowRules(tuple(rules))
