"""The Helm chart deploy/helm/rerankd: it lints, renders the committed deploy/k8s/ manifests
exactly (they are generated from it), and renders valid Kubernetes for other values too.

No helm binary is published on PyPI or npm for Linux; Helm's own Go engine comes as a library
in the ``helm-python-sdk`` wheel (``import helm_python``), which these tests use. Without it
they skip, saying so, and the committed manifests are still validated by test_manifests.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

try:
    import helm_python as helm
except (ImportError, OSError) as err:  # OSError: its native library would not load
    pytest.skip(
        f"Helm is not available ({err}; pip install helm-python-sdk): the chart is not "
        "rendered, deploy/k8s/ is still validated by test_manifests.py",
        allow_module_level=True,
    )

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "helm" / "rerankd"


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_render()


def rendered(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files: dict[str, str] = chart.render(values=values, name="rr", namespace="ns")
    return [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]


def test_the_chart_lints_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m["error"] for m in report["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("values_file", render.examples(), ids=lambda path: path.stem)
def test_the_committed_manifests_are_what_the_chart_renders(values_file: Path) -> None:
    committed = render.manifest_path(values_file).read_text()
    assert committed == render.render(values_file), "stale: run python deploy/render.py"


SECURED = {
    "gpu": False,
    "image": {"tag": "0.1.0-cpu"},
    "model": {"id": "/models/ettin", "offline": True, "existingClaim": "models"},
    "auth": {"existingSecret": "rerankd-tokens"},
    "tls": {"existingSecret": "rerankd-tls", "mutual": True, "serverName": "rerankd.ns.svc"},
    "server": {"gracePeriodSeconds": 60, "preStopSleepSeconds": 10},
    "pool": {"autoscaling": {"enabled": False}, "replicas": 3},
}


APP = {"name": "app", "image": "registry.example.com/app:1", "ports": [{"containerPort": 8080}]}
SIDECAR = {"mode": "sidecar", "sidecar": {"containers": [APP], "bridge": {"enabled": True}}}


@pytest.mark.parametrize("values", [{}, SECURED, {**SECURED, **SIDECAR}], ids=str)
def test_renders_are_valid_kubernetes(values: dict[str, Any]) -> None:
    docs = rendered(values)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_tls_tokens_and_a_model_volume_are_wired_through() -> None:
    docs = rendered(SECURED)
    assert "HorizontalPodAutoscaler" not in [doc["kind"] for doc in docs]
    [deployment] = [doc for doc in docs if doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["terminationGracePeriodSeconds"] == 10 + 60 + 10
    assert "--grace-period=60" in container["args"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RERANKD_MODEL"] == "/models/ettin" and env["HF_HUB_OFFLINE"] == "1"
    assert env["RERANKD_AUTH_TOKEN_FILE"] == "/etc/rerankd/auth/tokens"
    assert env["RERANKD_TLS_CLIENT_CA"] == "/etc/rerankd/tls/ca.crt"
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["models"] == "/models" and mounts["tls"] == "/etc/rerankd/tls"
    # The kubelet's gRPC probes are plaintext: with TLS the image's health check runs instead.
    liveness = container["livenessProbe"]["exec"]["command"]
    assert liveness[:3] == [
        "python",
        "/opt/rerankd/healthcheck.py",
        "--service=rerankd.v1.Liveness",
    ]
    assert "--tls-cert=/etc/rerankd/tls/tls.crt" in liveness
    assert "--tls-server-name=rerankd.ns.svc" in liveness
    assert "grpc" not in container["readinessProbe"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mode": "sidecar"}, "mode sidecar needs sidecar.containers"),
        ({"mode": "daemonset"}, 'mode must be pool or sidecar, not "daemonset"'),
        ({"model": {"offline": "yes"}}, "model.offline must be true, false or null"),
    ],
)
def test_unusable_values_fail_with_a_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        rendered(values)


def _rerankd(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod template's metadata and its rerankd container, rendered with ``values``."""
    [workload] = [doc for doc in rendered(values) if doc["kind"] in {"Deployment", "StatefulSet"}]
    template = workload["spec"]["template"]
    pod = template["spec"]
    [container] = [
        c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == "rerankd"
    ]
    return template["metadata"], container


@pytest.mark.parametrize("shape", [{}, SIDECAR], ids=["pool", "sidecar"])
def test_the_scrape_annotation_follows_the_metrics_port(shape: dict[str, Any]) -> None:
    metadata, container = _rerankd({**shape, "server": {"metricsPort": 9191}})
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == 9191
    annotations = metadata["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9191"


def test_scrape_annotations_can_be_overridden_or_dropped() -> None:
    metadata, _ = _rerankd({"podAnnotations": {"prometheus.io/port": "8080"}})
    assert metadata["annotations"]["prometheus.io/port"] == "8080"
    unscraped = {"prometheus.io/scrape": None, "prometheus.io/path": None}
    metadata, _ = _rerankd({"podAnnotations": unscraped})
    assert "annotations" not in metadata


@pytest.mark.parametrize(
    ("offline", "expected"),
    [(None, None), (True, "1"), (False, "0")],
    ids=["unset", "true", "false"],
)
def test_hf_hub_offline_is_set_only_when_chosen(offline: bool | None, expected: str | None) -> None:
    # Unset, the image's entrypoint decides (HF_HUB_OFFLINE=1 when it serves a baked model).
    values = {} if offline is None else {"model": {"offline": offline}}
    _, container = _rerankd(values)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env.get("HF_HUB_OFFLINE") == expected


def _bridge(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bridge container and its pod spec, rendered with ``values``."""
    [workload] = [doc for doc in rendered(values) if doc["kind"] == "Deployment"]
    pod = workload["spec"]["template"]["spec"]
    [bridge] = [c for c in pod["containers"] if c["name"] == "bridge"]
    return bridge, pod


def test_the_bridge_reaches_a_secured_sidecar_with_its_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rerankd.connection import Connection
    from rerankd_bridge.proxy import settings_from_args

    bridge, pod = _bridge({**SECURED, **SIDECAR})
    env = {e["name"]: e["value"] for e in bridge["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert bridge["args"][0] == "bridge"
    # What the bridge's own command line makes of the chart's arguments and variables.
    settings = settings_from_args(bridge["args"][1:])
    assert settings.reranker == Connection(
        target="localhost:50051",
        token_file="/etc/rerankd/auth/tokens",
        tls_ca="/etc/rerankd/tls/ca.crt",
        tls_cert="/etc/rerankd/tls/tls.crt",
        tls_key="/etc/rerankd/tls/tls.key",
        tls_server_name="rerankd.ns.svc",
    )
    mounts = {m["name"]: m["mountPath"] for m in bridge["volumeMounts"]}
    assert mounts["auth"] == "/etc/rerankd/auth" and mounts["tls"] == "/etc/rerankd/tls"
    assert {"auth", "tls"} <= {volume["name"] for volume in pod["volumes"]}


def test_the_bridge_of_an_open_sidecar_gets_no_credentials() -> None:
    bridge, _ = _bridge(SIDECAR)
    assert "env" not in bridge
    assert [m["name"] for m in bridge["volumeMounts"]] == ["tmp"]
