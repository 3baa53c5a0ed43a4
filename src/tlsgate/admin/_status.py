"""The JSON documents of C{/status} and C{POST /reload}: pure functions of state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlsgate._version import __version__

if TYPE_CHECKING:
    from tlsgate._gateway import GatewayService, Listener


def _iso(dt: Any) -> str:
    return str(dt.strftime("%Y-%m-%dT%H:%M:%SZ"))


def certificate_status(listener: Listener) -> dict[str, Any]:
    contexts = listener.contexts
    state = contexts.state
    m = state.material
    return {
        "path": contexts.cert_path,
        "key_path": contexts.key_path or contexts.cert_path,
        "names": list(m.names),
        "fingerprint_sha256": m.fingerprint_sha256,
        "not_before": _iso(m.not_before),
        "not_after": _iso(m.not_after),
        "generation": state.generation,
        "loaded_at": state.loaded_at.isoformat(),
        "last_error": state.last_error,
        "reloads": {"ok": contexts.reloads_ok, "failed": contexts.reloads_failed},
    }


def _sni_status(listener: Listener) -> list[dict[str, Any]]:
    sni = listener.sni
    if sni is None:
        return []
    out = []
    for entry in sni.entries.values():
        state = entry.factory.state
        m = state.material
        out.append({
            "path": entry.cert, "key_path": entry.key or entry.cert, "sni": True,
            "names": list(m.names), "fingerprint_sha256": m.fingerprint_sha256,
            "not_before": _iso(m.not_before), "not_after": _iso(m.not_after),
            "generation": state.generation, "loaded_at": state.loaded_at.isoformat(),
            "last_error": state.last_error,
        })  # fmt: skip
    for path, error in sni.errors.items():
        out.append({"path": path, "sni": True, "last_error": error})
    return out


def listener_status(listener: Listener) -> dict[str, Any]:
    tracker = listener.tracker
    tls = listener.config.tls
    return {
        "listen": listener.config.listen,
        "listening": listener.service.listening,
        "tls": {
            "min_version": tls.min_version,
            "groups": list(tls.groups),
            "alpn": list(tls.alpn),
            "handshakes_by_group": dict(sorted(tracker.handshakes_by_group.items())),
        },
        "connections": {
            "active": len(tracker.connections),
            "by_generation": {
                str(g): n for g, n in sorted(tracker.by_generation().items())
            },
            "by_group": dict(sorted(tracker.by_group().items())),
            "accepted": tracker.accepted,
            "closed": {r.value: n for r, n in sorted(tracker.closed.items())},
        },
        "certificates": [certificate_status(listener), *_sni_status(listener)],
        "backends": [
            {
                "backend": b.description,
                "connect_failures": listener.pool.connect_failures[b.description],
            }
            for b in listener.pool.backends
        ],
    }


def gateway_status(gateway: GatewayService) -> dict[str, Any]:
    return {
        "version": __version__,
        "draining": gateway.draining,
        "listeners": {
            name: listener_status(listener)
            for name, listener in sorted(gateway.listeners.items())
        },
    }


def reload_now(gateway: GatewayService) -> tuple[bool, dict[str, Any]]:
    """
    Look at every listener's files now, as a new connection would.

    @return: whether every listener serves its newest files, and per listener
        what changed or what failed.
    """
    out: dict[str, Any] = {}
    ok = True
    for name, listener in sorted(gateway.listeners.items()):
        contexts = listener.contexts
        before = contexts.generation
        contexts.getContext()
        state = contexts.state
        out[name] = {
            "changed": state.generation != before,
            "generation": state.generation,
            "fingerprint_sha256": state.material.fingerprint_sha256,
            "last_error": state.last_error,
        }
        ok = ok and state.last_error is None
    return ok, {"ok": ok, "listeners": out}
