"""docker-compose.yml and its overrides, rendered by Compose v2 itself (`docker compose config`)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.files import ROOT
from tests.deploy.project import (
    BASE,
    CPU,
    GPUS,
    MODELS,
    SERVERS,
    VOLUME_DIR,
    compose_config,
    healthcheck_argv,
    image_env,
    render,
    seconds,
)

CASES = {
    "gpu": (BASE, ()),
    "gpu+monitoring": (BASE, ("monitoring",)),
    "gpu+tools": (BASE, ("tools",)),
    "cpu": (CPU, ()),
    "cpu+monitoring+tools": (CPU, ("monitoring", "tools")),
    "two-gpus+monitoring": (GPUS, ("monitoring",)),
    "gpu+models": (MODELS, ()),
}


@pytest.mark.parametrize("case", CASES)
def test_every_container_is_hardened_and_published_on_loopback_only(case: str) -> None:
    services = compose_config(*CASES[case])["services"]
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert any(t.startswith("/tmp") for t in service.get("tmpfs", [])), name
        assert not service.get("privileged"), name
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", (name, port)


def test_profiles_select_the_expected_services() -> None:
    def names(files, profiles=()):
        return set(compose_config(files, profiles)["services"])

    assert names(BASE) == {"gemmserve"}
    assert names(BASE, ("monitoring",)) == {"gemmserve", "prometheus", "grafana"}
    assert names(BASE, ("tools",)) == {"gemmserve", "autotune"}
    assert names(CPU) == {"gemmserve"}
    assert names(GPUS) == {"gemmserve", "gemmserve-gpu1", "lb"}


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_service_reserves_one_nvidia_gpu_and_insists_on_cuda() -> None:
    service = compose_config(BASE)["services"]["gemmserve"]
    assert _gpu_devices(service) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service["environment"]["GEMMSERVE_DEVICE"] == "cuda"
    assert service["build"]["args"]["VARIANT"] == "gpu"
    assert [(p["target"], p["published"]) for p in service["ports"]] == [(8000, "8000")]


def test_cpu_override_drops_the_gpu_and_builds_the_cpu_image() -> None:
    services = compose_config(CPU, ("tools",))["services"]
    for name in ("gemmserve", "autotune"):
        assert _gpu_devices(services[name]) == [], name
        assert services[name]["build"]["args"]["VARIANT"] == "cpu"
        assert services[name]["environment"]["GEMMSERVE_DEVICE"] == "cpu"
    command = services["autotune"]["command"]
    assert command[command.index("--device") + 1] == "cpu"


def test_two_gpu_override_pins_one_gpu_per_replica_behind_the_balancer() -> None:
    services = compose_config(GPUS)["services"]
    caches = set()
    for index, name in enumerate(SERVERS):
        pinned = {"driver": "nvidia", "device_ids": [str(index)], "capabilities": ["gpu"]}
        assert _gpu_devices(services[name]) == [pinned]
        assert not services[name].get("ports"), f"{name} must be reached through the balancer"
        caches.add(services[name]["environment"]["GEMMSERVE_AUTOTUNE_CACHE"])
    assert len(caches) == len(SERVERS), "each GPU keeps its own autotune cache file"
    assert [(p["host_ip"], p["published"]) for p in services["lb"]["ports"]] == [
        ("127.0.0.1", "8000")
    ]
    haproxy = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert re.findall(r"^\s*server \S+ (\S+):8000", haproxy, re.MULTILINE) == list(SERVERS)


@pytest.mark.parametrize("case", ["gpu", "cpu", "two-gpus+monitoring"])
def test_servers_keep_the_autotune_cache_on_a_named_volume(case: str) -> None:
    config = compose_config(*CASES[case])
    for name, service in config["services"].items():
        if name not in SERVERS:
            continue
        mounts = {v["target"]: v for v in service["volumes"]}
        assert mounts[VOLUME_DIR]["type"] == "volume"
        assert mounts[VOLUME_DIR]["source"] in config["volumes"]
        assert service["environment"]["GEMMSERVE_AUTOTUNE_CACHE"].startswith(VOLUME_DIR + "/")


@pytest.mark.parametrize("files", [BASE, CPU, GPUS], ids=["gpu", "cpu", "two-gpus"])
def test_each_server_has_a_tuner_that_fills_its_cache(files: tuple[str, ...]) -> None:
    services = compose_config(files, ("tools",))["services"]
    tuners = [s for name, s in services.items() if name.startswith("autotune")]
    servers = [s for name, s in services.items() if name in SERVERS]
    assert len(tuners) == len(servers)
    for server in servers:
        env = server["environment"]
        (tuner,) = [t for t in tuners if _gpu_devices(t) == _gpu_devices(server)]
        command = tuner["command"]
        assert command[:3] == ["python", "-m", "engine.autotune"]
        assert command[3] == env.get("GEMMSERVE_MODEL", image_env("gpu")["GEMMSERVE_MODEL"])
        assert command[command.index("--cache") + 1] == env["GEMMSERVE_AUTOTUNE_CACHE"]
        assert command[command.index("--device") + 1] == env["GEMMSERVE_DEVICE"]
        assert tuner["volumes"] == server["volumes"]
        sizes = command[command.index("--batch-sizes") + 1]
        assert sizes == ",".join(map(str, _settings_default("batch_sizes")))


def _settings_default(name: str):
    config = pytest.importorskip("service.config")
    return config.Settings.model_fields[name].default


@pytest.mark.parametrize("case", ["gpu", "cpu", "two-gpus+monitoring"])
def test_stop_grace_period_outlasts_the_drain(case: str) -> None:
    for name, service in compose_config(*CASES[case])["services"].items():
        if name not in SERVERS:
            continue
        drain_s = service["environment"].get("GEMMSERVE_GRACEFUL_SHUTDOWN_S")
        drain_s = float(drain_s) if drain_s else _settings_default("graceful_shutdown_s")
        # The deadline of the last admitted request also bounds the drain.
        timeout_s = _settings_default("timeout_ms") / 1000
        assert seconds(service["stop_grace_period"]) >= max(drain_s, timeout_s) + 5, name


def test_every_server_setting_is_a_real_service_setting() -> None:
    fields = pytest.importorskip("service.config").Settings.model_fields
    for case in CASES.values():
        for name, service in compose_config(*case)["services"].items():
            for key in service.get("environment", {}):
                if key.startswith("GEMMSERVE_"):
                    assert key.removeprefix("GEMMSERVE_").lower() in fields, (name, key)


def test_compose_healthcheck_is_the_image_healthcheck() -> None:
    service = compose_config(BASE)["services"]["gemmserve"]
    assert service["healthcheck"]["test"] == ["CMD", *healthcheck_argv()]


def test_passthrough_settings_reach_the_container_only_when_set() -> None:
    env = render(BASE, GEMMSERVE_MAX_DELAY_MS="4")["services"]["gemmserve"]["environment"]
    assert env["GEMMSERVE_MAX_DELAY_MS"] == "4"
    unset = compose_config(BASE)["services"]["gemmserve"]["environment"]
    assert unset["GEMMSERVE_MAX_DELAY_MS"] is None


def test_models_override_serves_the_repository_volume_read_only() -> None:
    service = render(MODELS, GEMMSERVE_MODELS_DIR="/srv/models")["services"]["gemmserve"]
    env = service["environment"]
    assert env["GEMMSERVE_MODEL_REPOSITORY"] == "/models" and env["GEMMSERVE_MODEL"] == ""
    assert env["GEMMSERVE_AUTOTUNE_CACHE"].startswith(VOLUME_DIR + "/")
    mounts = {v["target"]: v for v in service["volumes"]}
    assert mounts["/models"]["source"] == "/srv/models" and mounts["/models"]["read_only"]
    assert mounts[VOLUME_DIR]["type"] == "volume"  # the cache volume is kept
    settings = pytest.importorskip("service.config").Settings(
        model="", model_repository=ROOT / "models", autotune_cache=None
    )  # the repository the override mounts by default is one the service accepts
    assert [entry.name for entry in settings.entries()] == ["digits"]
