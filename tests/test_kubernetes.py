"""examples/kubernetes/: the manifests are valid against Kubernetes' own schemas (strict: no field
the API does not know) for the version the README names, and keep the rules the fleet keeps:
readiness on /ready, liveness on /health, the runtime as each instance's sidecar, a disruption
budget, the database as an external service and its URL from a Secret, never written here."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import REPO_ROOT

FOLDER = REPO_ROOT / "examples" / "kubernetes"
VERSION = "1.34.0"  # native sidecars (1.33) and the preStop sleep action (1.34) are stable here


def documents() -> list[dict[str, Any]]:
    return [d for f in sorted(FOLDER.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def test_the_readme_names_the_version_validated_against() -> None:
    assert f"Kubernetes {VERSION.rsplit('.', 1)[0]}" in (FOLDER / "README.md").read_text()


@pytest.mark.parametrize("path", sorted(FOLDER.glob("*.yaml")), ids=lambda p: p.name)
def test_each_manifest_is_valid_against_the_schemas(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, VERSION, strict=True)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda pod: pod["containers"][0]["readinessProbe"]["httpGet"].update(pathh="/ready"),
        lambda pod: pod["containers"][0].update(replicas=3),
        lambda pod: pod["containers"][0]["ports"][0].update(containerPort="eight thousand"),
        lambda pod: pod["initContainers"][0].update(restartPolicy=["Always"]),
    ],
    ids=["misspelt field", "field in the wrong place", "wrong type", "wrong shape"],
)
def test_a_broken_manifest_fails_the_validation(break_it: Any) -> None:
    broken = copy.deepcopy(of_kind("Deployment")[0])
    break_it(broken["spec"]["template"]["spec"])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_pods_keep_the_fleets_rules() -> None:
    (deployment,) = of_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (web,) = pod["containers"]
    (runtime,) = pod["initContainers"]
    assert web["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert web["livenessProbe"]["httpGet"]["path"] == "/health"
    assert runtime["restartPolicy"] == "Always", "the runtime is the pod's own sidecar"
    assert "--cli-url=127.0.0.1:4321" in web["command"], "the instance uses its pod's runtime"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e for e in web["env"]}
    assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]
    assert all("value" not in e for e in [*web["env"], *runtime["env"]] if "TOKEN" in e["name"])
    assert not of_kind("Secret"), "secrets are created by hand, never kept in the repository"
    assert of_kind("PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    (database,) = [s for s in of_kind("Service") if s["spec"]["type"] == "ExternalName"]
    assert database["metadata"]["name"] == "postgres"
