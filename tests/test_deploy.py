"""Containers and manifests, checked as far as this machine allows: hadolint, yamllint,
the Kubernetes schemas, and KServe's required fields."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else shutil.which(name) or name


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_passes_hadolint_and_follows_the_rules(dockerfile):
    result = subprocess.run([_tool("hadolint"), dockerfile], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / dockerfile).read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2  # built in stages
    assert "\nUSER 10001\n" in text  # numeric, non-root
    assert "HEALTHCHECK" in text and "/v2/health/ready" in text
    assert "MODEL_CACHE_DIR=/home/embed/.cache" in text  # caches outside the image layers
    cpu_index = "download.pytorch.org/whl/cpu" in text
    assert cpu_index == (dockerfile == "Dockerfile.cpu")


def test_yamllint():
    result = subprocess.run(
        [_tool("yamllint"), "-c", ".yamllint.yaml", "deploy"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _documents(pattern: str):
    for path in sorted((ROOT / "deploy").glob(pattern)):
        for document in yaml.safe_load_all(path.read_text()):
            yield path.name, document


def test_kubernetes_manifests_validate_against_the_schemas():
    kinds = set()
    for _, document in _documents("kubernetes/*.yaml"):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        kinds.add(document["kind"])
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler"}


def _check_container(container: dict):
    """The container runs our server: known settings, port 8080, probes on the V2 routes."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [container]},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    names = {e["name"] for e in container.get("env", [])}
    assert names - {"STORAGE_URI"} <= {n.upper() for n in Settings.model_fields}, names
    assert container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    return names


def test_kserve_inference_services():
    documents = list(_documents("kserve/*.yaml"))
    assert {name for name, _ in documents} == {"inferenceservice-cpu.yaml", "inferenceservice-gpu.yaml"}
    for name, document in documents:
        assert (
            document["apiVersion"] == "serving.kserve.io/v1beta1" and document["kind"] == "InferenceService"
        )
        assert document["metadata"]["name"]
        predictor = document["spec"]["predictor"]
        assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] > 0
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
        [container] = predictor["containers"]
        assert container["name"] == "kserve-container"  # KServe's name for the predictor container
        names = _check_container(container)
        assert {"STORAGE_URI", "MODEL_ID", "MODEL_NAME"} <= names  # storageUri lands in /mnt/models
        gpu = container["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpu == "1") == name.endswith("gpu.yaml")


def test_deployment_container():
    [(_, deployment)] = [d for d in _documents("kubernetes/deployment.yaml")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    _check_container(container)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/mnt/models" in mounts
