"""
The alert rules in deploy/prometheus pass promtool (syntax and a unit test
per alert), match docs/operations.md, and a real Prometheus scraping a gateway
on loopback sees C{tlsgate_connections_total} move.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import trustme
import yaml

from tests.integration._tools import require
from tests.integration.conftest import REPO, Site, free_port, wait_for_port

RULES = REPO / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    (tool,) = require("promtool", package="prometheus")
    return subprocess.run(
        [tool, *args], cwd=RULES, capture_output=True, text=True, timeout=120
    )


def test_rules_check() -> None:
    result = promtool("check", "rules", "tlsgate-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    result = promtool("test", "rules", "tlsgate-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((RULES / "tlsgate-rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((RULES / "tlsgate-rules.test.yml").read_text())
    firing = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if not case["exp_alerts"]
    }
    assert firing == alerts and quiet == alerts


def test_operations_page_shows_the_same_rules() -> None:
    page = (REPO / "docs" / "operations.md").read_text()
    block = re.search(r"## What to alert on\n.*?```yaml\n(.*?)```", page, re.S)
    assert block is not None
    shown = yaml.safe_load(block.group(1))
    shipped = yaml.safe_load((RULES / "tlsgate-rules.yml").read_text())

    def exprs(doc: dict) -> dict[str, str]:  # type: ignore[type-arg]
        return {
            r["alert"]: " ".join(r["expr"].split())
            for g in doc["groups"]
            for r in g["rules"]
        }

    assert exprs(shown) == exprs(shipped)


def query(port: int, promql: str) -> list[dict]:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode(
        {"query": promql}
    )
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def test_prometheus_scrapes_a_gateway(tmp_path: Path, echo_backend: int) -> None:
    (prometheus,) = require("prometheus", package="prometheus")
    site = Site(tmp_path, trustme.CA(), echo_backend)
    admin = free_port()
    gateway = site.start(admin=f"tcp:{admin}:interface=127.0.0.1")
    try:
        wait_for_port(admin)
        web = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 500ms\n  evaluation_interval: 500ms\n"
            f"rule_files:\n  - {RULES / 'tlsgate-rules.yml'}\n"
            "scrape_configs:\n  - job_name: tlsgate\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n"
        )
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [prometheus, f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{web}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_port(web, server, timeout=60)
            # The port opens before the TSDB is loaded; until then the API says 503.
            deadline = time.monotonic() + 60
            while not ready(web):
                assert server.poll() is None and time.monotonic() < deadline, (
                    "not ready"
                )
                time.sleep(0.25)

            def total() -> float | None:
                found = query(web, 'sum(tlsgate_connections_total{job="tlsgate"})')
                return float(found[0]["value"][1]) if found else None

            deadline = time.monotonic() + 60
            while (before := total()) is None:
                assert time.monotonic() < deadline, "no sample scraped"
                time.sleep(0.25)
            for _ in range(5):
                assert site.served() == site.first.fingerprint
            while (after := total()) is not None and after < before + 5:
                assert time.monotonic() < deadline, (before, after)
                time.sleep(0.25)
            assert query(web, 'up{job="tlsgate"}')[0]["value"][1] == "1"
            with urllib.request.urlopen(
                f"http://127.0.0.1:{web}/api/v1/rules", timeout=5
            ) as r:
                groups = json.load(r)["data"]["groups"]
            rules = [rule for g in groups for rule in g["rules"]]
            assert len(rules) == 5 and all(r["health"] != "err" for r in rules), rules
        finally:
            server.terminate()
            server.wait(30)
            log.close()
    finally:
        assert gateway.stop() == 0
