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
    assert kinds == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PersistentVolumeClaim",
    }


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
    assert {p["containerPort"] for p in container["ports"]} <= {8080, 8081}
    for probe, route in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        # An HTTP probe, or (a predictor routing only gRPC) the same route asked from inside.
        check = container[probe]
        assert (
            check["httpGet"]["path"] == route
            if "httpGet" in check
            else f"8080{route}'" in check["exec"]["command"][-1]
        )
    return names


def test_kserve_inference_services():
    documents = list(_documents("kserve/*.yaml"))
    assert {name for name, _ in documents} == {
        "inferenceservice-cpu.yaml",
        "inferenceservice-gpu.yaml",
        "inferenceservice-cpu-grpc.yaml",
        "inferenceservice-gpu-grpc.yaml",
    }
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
        # One routed port: HTTP on 8080, or cleartext HTTP/2 (gRPC) named h2c on GRPC_PORT.
        [port] = container["ports"]
        grpc = name.endswith("grpc.yaml")
        assert (port.get("name"), port["containerPort"]) == (("h2c", 8081) if grpc else (None, 8080))
        gpu = container["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpu == "1") == ("-gpu" in name)


def test_deployment_container():
    [(_, deployment)] = [d for d in _documents("kubernetes/deployment.yaml")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    _check_container(container)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/mnt/models" in mounts


def _check_hardened_pod(pod: dict, container: dict) -> None:
    """Read-only root, writable caches and /tmp only as size-limited emptyDirs, the runtime's
    seccomp profile, no service account token, no privilege."""
    assert pod["automountServiceAccountToken"] is False
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    own = container["securityContext"]
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert set(writable) == {"/home/embed/.cache", "/tmp"}
    for name in writable.values():
        assert volumes[name]["emptyDir"]["sizeLimit"]


def test_every_pod_is_hardened_the_same_way():
    [(_, deployment)] = [d for d in _documents("kubernetes/deployment.yaml")]
    pod = deployment["spec"]["template"]["spec"]
    _check_hardened_pod(pod, pod["containers"][0])
    for _, service in _documents("kserve/*.yaml"):
        predictor = service["spec"]["predictor"]
        _check_hardened_pod(predictor, predictor["containers"][0])
        # KServe's predictor is a pod spec: the fields validate as one.
        pod_fields = {k: v for k, v in predictor.items() if k not in _KSERVE_ONLY_FIELDS}
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_fields},
            K8S_VERSION,
            strict=True,
        )


_KSERVE_ONLY_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "containerConcurrency",
    "timeout",
}


def test_network_policy_keeps_egress_off_internal_addresses():
    [(_, policy)] = [d for d in _documents("kubernetes/networkpolicy.yaml")]
    [(_, deployment)] = [d for d in _documents("kubernetes/deployment.yaml")]
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    blocks = [
        peer["ipBlock"] for rule in policy["spec"]["egress"] for peer in rule["to"] if "ipBlock" in peer
    ]
    excluded = {cidr for block in blocks for cidr in block.get("except", [])}
    for internal in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
    ):
        assert internal in excluded, internal
    web_ports = {
        p["port"]
        for rule in policy["spec"]["egress"]
        if any("ipBlock" in t for t in rule["to"])
        for p in rule["ports"]
    }
    assert web_ports == {80, 443}
