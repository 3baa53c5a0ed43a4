"""
deploy/kubernetes validates offline against the Kubernetes schemas
(C{kubernetes-validate --strict}), and its parts fit together: the ini parses,
drain_delay, probes and the grace period agree, ports and mounts match.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.integration._tools import require
from tests.integration.conftest import REPO
from tlsgate.config import parse_config

K8S = REPO / "deploy" / "kubernetes"


def validator() -> str:
    found = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if found:
        return found
    (tool,) = require("kubernetes-validate", package="(pip) kubernetes-validate")
    return tool


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((K8S / name).read_text())
    assert isinstance(doc, dict)
    return doc


def kustomization() -> dict[str, Any]:
    return load("kustomization.yaml")


def test_kustomization_lists_every_manifest() -> None:
    k = kustomization()
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files
    (generator,) = k["configMapGenerator"]
    assert all((K8S / f).is_file() for f in generator["files"])


def test_manifests_pass_strict_schema_validation(tmp_path: Path) -> None:
    tool = validator()
    builtin = [
        str(K8S / r)
        for r in kustomization()["resources"]
        if not load(r)["apiVersion"].startswith("cert-manager.io/")
    ]
    result = subprocess.run(
        [tool, "--strict", *builtin], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(builtin)
    # The check has teeth: an unknown field fails it.
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [tool, "--strict", str(tmp_path / "broken.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "readinessProbes" in result.stdout


def test_the_parts_fit_together() -> None:
    (generator,) = kustomization()["configMapGenerator"]
    ini = parse_config((K8S / "gateway.ini").read_text(), file="gateway.ini")
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (web,) = ini.listeners
    assert web.listen.startswith(f"tcp:{ports['https']}:")
    assert ini.admin is not None and ini.admin.startswith(f"tcp:{ports['admin']}:")

    # Out of the Service (one failed readiness check) well before listeners
    # close, and the kubelet waits for the whole drain before SIGKILL.
    ready = container["readinessProbe"]
    assert ready["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert ready["periodSeconds"] * ready["failureThreshold"] * 2 <= ini.drain_delay
    grace = pod["terminationGracePeriodSeconds"]
    (web_limits,) = [lc.limits for lc in ini.listeners]
    longest = ini.drain_delay + ini.drain_timeout + 2 * web_limits.close_grace
    assert grace >= longest + 5
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    # Config and certificate mounts: directories (renewals show), read-only.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == generator["name"]
    assert mounts["config"]["mountPath"] + "/gateway.ini" in container["args"]
    tls_dir = mounts["tls"]["mountPath"]
    assert web.cert == f"{tls_dir}/tls.crt" and web.key == f"{tls_dir}/tls.key"
    assert not any("subPath" in m for m in mounts.values())
    certificate = load("certificate.yaml")
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]

    # Restrictive security context; the admin port stays private.
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    service = load("service.yaml")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["https"]
    policy = load("networkpolicy.yaml")["spec"]
    admin_rules = [
        r for r in policy["ingress"] if r["ports"][0]["port"] == ports["admin"]
    ]
    assert admin_rules and all(r.get("from") for r in admin_rules)
