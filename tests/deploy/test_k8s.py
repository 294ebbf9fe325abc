"""deploy/k8s: schema-valid manifests that fit together and match the image and the service."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy.files import (
    ROOT,
    promql_metric_names,
    unknown_metrics,
)
from tests.deploy.project import STAGE, last

K8S = ROOT / "deploy" / "k8s"
NOT_RESOURCES = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
# The oldest Kubernetes the manifests promise to work on, and the newest schema at hand.
OLDEST = "1.28.0"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_RESOURCES)


def _resources() -> dict[str, dict]:
    """Every resource by kind (one of each kind here)."""
    by_kind = {}
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in by_kind, f"second {doc['kind']} in {path.name}"
            by_kind[doc["kind"]] = doc
    return by_kind


def _container() -> dict:
    (container,) = _resources()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    latest = kubernetes_validate.latest_version()
    for doc in yaml.safe_load_all(path.read_text()):
        for version in (OLDEST, latest):
            kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_manifest_and_rewrites_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    image = _container()["image"]
    assert [i["name"] for i in kustomization["images"]] == [image.split(":")[0]]
    assert kustomization["namespace"] == _resources()["Namespace"]["metadata"]["name"]


def test_pod_takes_one_gpu_with_resource_limits() -> None:
    resources = _container()["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["limits"]) & set(resources["requests"])


def test_probes_preStop_and_grace_period_give_a_clean_drain() -> None:
    container = _container()
    pod = _resources()["Deployment"]["spec"]["template"]["spec"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain_s = float(_resources()["ConfigMap"]["data"]["GEMMSERVE_GRACEFUL_SHUTDOWN_S"])
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + drain_s + 5


def test_pod_is_locked_down_as_the_image_user() -> None:
    pod = _resources()["Deployment"]["spec"]["template"]["spec"]
    security = _container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = last(STAGE["runtime"], "USER")
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]
    mounts = {m["mountPath"] for m in _container()["volumeMounts"]}
    cache = _resources()["ConfigMap"]["data"]["GEMMSERVE_AUTOTUNE_CACHE"]
    assert "/tmp" in mounts and str(Path(cache).parent) in mounts


def test_service_pdb_and_hpa_point_at_the_deployment() -> None:
    res = _resources()
    labels = res["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selected = res["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selected.items() <= labels.items()
    assert res["Service"]["spec"]["selector"].items() <= labels.items()
    assert res["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = _container()["ports"]
    assert port["containerPort"] == 8000 and res["Service"]["spec"]["ports"][0]["targetPort"] in (
        port["name"],
        8000,
    )
    target = res["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", res["Deployment"]["metadata"]["name"])


def test_hpa_metrics_are_served_by_the_adapter_from_service_metrics() -> None:
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    served = {}
    for rule in values["rules"]["custom"]:
        names = promql_metric_names(rule["seriesQuery"])
        assert len(names) == 1 and not unknown_metrics(names), rule["seriesQuery"]
        served[rule["name"]["as"]] = rule
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        # The query the adapter sends, its template filled in as the adapter does, must parse.
        (series,) = names
        query = rule["metricsQuery"].replace("<<.Series>>", series)
        query = query.replace("<<.LabelMatchers>>", 'namespace="gemmserve",pod=~"gemmserve-.*"')
        assert promql_metric_names(query.replace("<<.GroupBy>>", "pod")) == names
    hpa = _resources()["HorizontalPodAutoscaler"]["spec"]
    used = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
    assert used and used <= set(served)


def test_configmap_holds_valid_service_settings() -> None:
    config = pytest.importorskip("service.config")
    data = _resources()["ConfigMap"]["data"]
    assert all(key.startswith("GEMMSERVE_") for key in data)
    kwargs = {key.removeprefix("GEMMSERVE_").lower(): value for key, value in data.items()}
    assert set(kwargs) <= set(config.Settings.model_fields)
    settings = config.Settings(model=ROOT / "models" / "digits", **kwargs)  # raises if refused
    assert settings.device == "cuda"
