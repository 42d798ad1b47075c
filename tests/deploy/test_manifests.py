"""Every Kubernetes manifest in deploy/k8s/ against the Kubernetes schemas (strict), and the
properties the schemas cannot see: probes on the right health services, drain timing, security
context, GPU requests, and the pool's Service, PodDisruptionBudget and autoscaler pointing at
the pods they are for."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The newest schema kubernetes-validate ships (1.37 here); native sidecars need 1.29+.
KUBERNETES_VERSION = kubernetes_validate.latest_version()
MANIFESTS = sorted(path for path in K8S.glob("*.yaml") if not path.name.endswith(".values.yaml"))
WORKLOADS = ("Deployment", "StatefulSet")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(path: Path, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents(path) if doc["kind"] == kind]


def rerankd_container(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    [container] = [
        c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == "rerankd"
    ]
    return container


def test_the_manifests_cover_pool_and_sidecar_shapes() -> None:
    assert [path.stem for path in MANIFESTS] == [
        "pool-cpu",
        "pool-gpu",
        "sidecar-app",
        "sidecar-opensearch",
    ]
    major, minor = (int(part) for part in KUBERNETES_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 33), KUBERNETES_VERSION


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.stem)
def test_every_document_is_valid_kubernetes(path: Path) -> None:
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validation_is_strict_enough_to_fail() -> None:
    """A misspelt field must fail, or the test above proves nothing."""
    workload = copy.deepcopy(by_kind(K8S / "pool-gpu.yaml", "Deployment")[0])
    rerankd_container(workload)["readinessProbe"]["grpc"]["sevrice"] = "typo"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, KUBERNETES_VERSION, strict=True)


def _flag(container: dict[str, Any], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith(f"{name}=")]
    return str(value)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.stem)
def test_drain_timing_is_consistent(path: Path) -> None:
    """The kubelet waits terminationGracePeriodSeconds from the start of preStop, then
    SIGKILLs: it must cover the preStop sleep plus rerankd's --grace-period, with slack."""
    for workload in (doc for doc in documents(path) if doc["kind"] in WORKLOADS):
        container = rerankd_container(workload)
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop, grace = float(command[1]), float(_flag(container, "--grace-period"))
        termination = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert termination > pre_stop + grace, (termination, pre_stop, grace)
        assert termination >= pre_stop + grace + 5  # the process needs a moment to exit
        readiness = container["readinessProbe"]
        # Readiness must notice the drain well within the preStop sleep plus grace period.
        assert readiness["periodSeconds"] * readiness["failureThreshold"] < pre_stop + grace


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.stem)
def test_probes_use_the_health_services(path: Path) -> None:
    for workload in (doc for doc in documents(path) if doc["kind"] in WORKLOADS):
        container = rerankd_container(workload)
        port = int(next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc"))
        expected = {
            "startupProbe": "rerankd.v1.RerankService",  # covers the model load
            "readinessProbe": "rerankd.v1.RerankService",  # flips on drain
            "livenessProbe": "rerankd.v1.Liveness",  # does not: a draining pod is alive
        }
        for probe, service in expected.items():
            assert container[probe]["grpc"] == {"port": port, "service": service}, probe
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # slow loads


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.stem)
def test_pods_run_locked_down(path: Path) -> None:
    for workload in (doc for doc in documents(path) if doc["kind"] in WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        container = rerankd_container(workload)
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path_ in ("/cache", "/tmp"):  # the only writable places, on emptyDirs
            assert "emptyDir" in volumes[mounts[path_]], path_
        env = {e["name"]: e.get("value") for e in container["env"]}
        gpu = "nvidia.com/gpu" in container["resources"].get("limits", {})
        assert env["RERANKD_DEVICE"] == ("cuda" if gpu else "cpu")
        assert container["image"].endswith("-cuda" if gpu else "-cpu")


def test_the_gpu_variants_request_a_gpu() -> None:
    for name in ("pool-gpu", "sidecar-app"):
        [workload] = by_kind(K8S / f"{name}.yaml", "Deployment")
        resources = rerankd_container(workload)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1, name


@pytest.mark.parametrize("name", ["pool-gpu", "pool-cpu"])
def test_the_pool_has_a_headless_service_a_pdb_and_an_hpa_on_queue_depth(name: str) -> None:
    path = K8S / f"{name}.yaml"
    [deployment] = by_kind(path, "Deployment")
    [service] = by_kind(path, "Service")
    [pdb] = by_kind(path, "PodDisruptionBudget")
    [hpa] = by_kind(path, "HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"  # DNS lists the pods: dns:/// balancing
    for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": 50051,
        "metrics": 9090,
    }
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "rerankd_queue_pairs"
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert hpa["spec"]["minReplicas"] >= 2  # with maxUnavailable 1, a drain keeps one serving
    assert pdb["spec"]["maxUnavailable"] == 1


def test_the_sidecars_start_before_and_stop_after_the_app() -> None:
    for name in ("sidecar-app", "sidecar-opensearch"):
        [workload] = [d for d in documents(K8S / f"{name}.yaml") if d["kind"] in WORKLOADS]
        pod = workload["spec"]["template"]["spec"]
        [sidecar] = pod["initContainers"]
        assert (sidecar["name"], sidecar["restartPolicy"]) == ("rerankd", "Always")
        assert "rerankd" not in [c["name"] for c in pod["containers"]]


def test_the_opensearch_sidecar_runs_the_bridge_against_localhost() -> None:
    [workload] = by_kind(K8S / "sidecar-opensearch.yaml", "StatefulSet")
    containers = {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"opensearch", "bridge"}
    assert containers["bridge"]["args"] == [
        "bridge",
        "--engine=http://localhost:9200",
        "--reranker=localhost:50051",
        "--listen=0.0.0.0:9201",
    ]
    [service] = by_kind(K8S / "sidecar-opensearch.yaml", "Service")
    assert {p["port"] for p in service["spec"]["ports"]} == {9200, 9201}
