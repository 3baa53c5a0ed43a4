"""
The public API, pinned: a name added to or dropped from an C{__all__} fails
here first, so that it is a decision and not an accident.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import tlsgate

PINNED = {
    "tlsgate": [
        "CertificateError", "CloseReason", "ConfigError", "ConfigErrors",
        "ConnectionTracker", "GatewayConfig", "Limits", "ListenError", "ListenerConfig",
        "ReloadingContextFactory", "ReloadingTLSServerEndpoint", "TLSPolicy",
        "TlsgateError", "__version__", "build_service", "load_config", "parse_config",
    ],
    "tlsgate.endpoint": [
        "KEYS", "EndpointError", "ReloadingTLSServerEndpoint",
        "endpoint_from_description", "parse_description", "wrap_endpoint",
    ],
    "tlsgate.testing": [
        "CertificateAuthority", "CertificateFiles", "CertificatePair", "TLSConnection",
        "TestClock", "connect_tls",
    ],
    "tlsgate.tracker": [
        "QUIET_INTERVAL", "CloseReason", "ConnectionInfo", "ConnectionTracker", "Limits",
        "ListenerCounts", "SharedCounts", "TrackedProtocol",
    ],
}  # fmt: skip

#: Public subpackages: each says what it exports.
PUBLIC = ("certs", "config", "endpoint", "testing", "tracker", "sni", "relay", "auth",
          "proxy", "upstream")  # fmt: skip


@pytest.mark.parametrize("module", sorted(PINNED))
def test_all_is_pinned(module: str) -> None:
    assert sorted(importlib.import_module(module).__all__) == sorted(PINNED[module])


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_resolves(name: str) -> None:
    module = importlib.import_module(f"tlsgate.{name}")
    assert module.__doc__, f"tlsgate.{name} says what it owns"
    for export in module.__all__:
        assert getattr(module, export) is not None, export


def test_top_level_names_are_the_subpackages_objects() -> None:
    """tlsgate.X is tlsgate.sub.X: one object, two spellings, no copies."""
    from tlsgate import certs, endpoint, service, tracker

    assert tlsgate.ReloadingContextFactory is certs.ReloadingContextFactory
    assert tlsgate.ReloadingTLSServerEndpoint is endpoint.ReloadingTLSServerEndpoint
    assert tlsgate.ConnectionTracker is tracker.ConnectionTracker
    assert tlsgate.build_service is service.build_service


def test_the_docstring_names_the_public_parts() -> None:
    doc = tlsgate.__doc__ or ""
    for part in ("tlsgate:", "ReloadingTLSServerEndpoint", "ReloadingContextFactory",
                 "ConnectionTracker", "build_service", "tlsgate.testing"):  # fmt: skip
        assert part in doc, part


def test_the_package_is_marked_typed() -> None:
    """PEP 561: without py.typed, mypy treats every tlsgate import as Any."""
    assert (Path(tlsgate.__file__).parent / "py.typed").is_file()
