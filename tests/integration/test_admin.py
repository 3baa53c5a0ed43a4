"""
The admin endpoint of a running gateway, over real HTTP: metrics that move,
/status, /readyz through a drain, POST /reload, and the bearer token.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.helpers import write_atomically
from tests.integration.conftest import Site, free_port


def get(
    port: int, path: str, token: str | None = None, method: str = "GET"
) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


@pytest.fixture
def admin_port() -> int:
    return free_port()


def test_metrics_move_with_handshakes_and_rotations(
    site: Site, admin_port: int
) -> None:
    site.start(admin=f"tcp:{admin_port}:interface=127.0.0.1")
    code, before = get(admin_port, "/metrics")
    assert code == 200
    assert (
        metric(
            before,
            "tlsgate_handshakes_total",
            listener="web",
            result="ok",
            resumed="no",
        )
        == 0
    )
    site.served()
    site.served()
    _, after = get(admin_port, "/metrics")
    assert (
        metric(
            after, "tlsgate_handshakes_total", listener="web", result="ok", resumed="no"
        )
        == 2
    )
    # +2 on top of the start-up probe's plain TCP connect
    assert metric(after, "tlsgate_connections_total", listener="web") == (
        metric(before, "tlsgate_connections_total", listener="web") + 2
    )
    assert metric(after, "tlsgate_bytes_total", listener="web", direction="in") == 8
    assert metric(after, "tlsgate_certificate_generation", listener="web") == 1
    assert metric(after, "tlsgate_certificate_not_after_seconds", listener="web",
                  fingerprint=site.first.fingerprint) > 0  # fmt: skip
    new = site.new_pair()
    write_atomically(site.key, new.key)
    write_atomically(site.cert, new.chain)
    assert site.served() == new.fingerprint
    _, rotated = get(admin_port, "/metrics")
    assert metric(rotated, "tlsgate_certificate_generation", listener="web") == 2
    assert (
        metric(
            rotated, "tlsgate_certificate_reloads_total", listener="web", result="ok"
        )
        == 1
    )
    for name in ("tlsgate_connections_active", "tlsgate_connections_closed_total",
                 "tlsgate_backend_connect_failures_total"):  # fmt: skip
        assert name in rotated


def test_status_reports_certificates_and_connections(
    site: Site, admin_port: int
) -> None:
    site.start(admin=f"tcp:{admin_port}:interface=127.0.0.1")
    site.served()
    # The client's FIN is a half-close: the connection ends once the echo
    # backend has seen it and closed too, a round trip later.
    deadline = time.monotonic() + 10
    while True:
        code, body = get(admin_port, "/status")
        assert code == 200
        web: dict[str, Any] = json.loads(body)["listeners"]["web"]
        if web["connections"]["active"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (cert,) = web["certificates"]
    assert cert["fingerprint_sha256"] == site.first.fingerprint
    assert cert["names"] == ["localhost", "127.0.0.1"]
    assert cert["generation"] == 1 and cert["last_error"] is None
    assert cert["not_after"].endswith("Z") and cert["loaded_at"]
    assert web["connections"]["active"] == 0
    assert web["connections"]["closed"]["client"] == 2  # start-up probe + served()


def test_post_reload_reports_a_broken_file(site: Site, admin_port: int) -> None:
    site.start(admin=f"tcp:{admin_port}:interface=127.0.0.1")
    write_atomically(site.cert, b"garbage")
    code, body = get(admin_port, "/reload", method="POST")
    assert code == 422
    result = json.loads(body)
    assert (
        result["ok"] is False
        and "no readable PEM" in result["listeners"]["web"]["last_error"]
    )
    assert get(admin_port, "/reload")[0] == 405  # GET is not a reload


def test_readyz_turns_503_on_drain(site: Site, admin_port: int) -> None:
    site.start(admin=f"tcp:{admin_port}:interface=127.0.0.1")
    assert get(admin_port, "/readyz") == (200, "ready\n")
    assert get(admin_port, "/drain", method="POST")[0] == 202
    assert get(admin_port, "/readyz")[0] == 503
    assert get(admin_port, "/healthz")[0] == 200


def test_token_is_required_and_re_read_when_changed(
    site: Site, admin_port: int
) -> None:
    token = site.tmp / "admin.token"
    token.write_text("s3cret\n")
    site.start(
        admin=f"tcp:{admin_port}:interface=127.0.0.1", admin_token_file=str(token)
    )
    assert get(admin_port, "/healthz")[0] == 401
    assert get(admin_port, "/metrics", token="wrong")[0] == 401
    assert get(admin_port, "/healthz", token="s3cret")[0] == 200
    write_atomically(token, b"rotated")
    assert get(admin_port, "/healthz", token="s3cret")[0] == 401
    assert get(admin_port, "/status", token="rotated")[0] == 200


def test_json_logs_one_object_per_line(site: Site) -> None:
    """log_format = json: every line parses, and tlsgate's events carry stable names."""
    gateway = site.start(log_format="json")
    new = site.new_pair()
    write_atomically(site.key, new.key)
    write_atomically(site.cert, new.chain)
    assert site.served() == new.fingerprint
    gateway.stop()
    records = [json.loads(line) for line in gateway.log.splitlines() if line.strip()]
    assert records and all(
        {"time", "level", "event", "message"} <= set(r) for r in records
    )
    (reloaded,) = [r for r in records if r["event"] == "certificate_reloaded"]
    assert reloaded["listener"] == "web" and reloaded["generation"] == 2
    assert reloaded["fingerprint"] == new.fingerprint


def test_metrics_speak_openmetrics_when_asked(site: Site, admin_port: int) -> None:
    """As prometheus_client's own resource: the Accept header picks the format."""
    site.start(admin=f"tcp:{admin_port}:interface=127.0.0.1")
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin_port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        kind = response.headers["Content-Type"]
        body = response.read().decode()
    assert kind.startswith("application/openmetrics-text"), kind
    assert body.rstrip().endswith("# EOF")
    assert "tlsgate_connections_active" in body
    with urllib.request.urlopen(
        f"http://127.0.0.1:{admin_port}/metrics", timeout=10
    ) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
