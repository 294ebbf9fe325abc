"""Prometheus config and alerts, the Grafana provisioning and dashboard, the HAProxy config."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.files import (
    METRICS,
    ROOT,
    promql_metric_names,
    system_tool,
    unknown_metrics,
)

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gemmserve.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> list[str]:
    """Every query of the dashboard (panel targets and template variables) as Prometheus gets
    it: Grafana's variables filled in."""
    board = _dashboard()
    queries = [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    # $__rate_interval is a duration; the other variables sit inside regex matchers.
    return [re.sub(r"\$\w+", ".*", q.replace("$__rate_interval", "1m")) for q in queries]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus-rules.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess:
    promtool = system_tool("promtool")
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True)


def test_promtool_accepts_the_prometheus_config_and_its_rules() -> None:
    done = _promtool("check", "config", DEPLOY / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


def test_prometheus_scrapes_every_compose_server_on_the_metrics_path() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "gemmserve")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    names = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert names == {"gemmserve", "gemmserve-gpu1"}
    assert all(sd["port"] == 8000 for sd in job["dns_sd_configs"])


def test_dashboard_queries_read_only_the_service_metrics_and_all_of_them() -> None:
    used = set()
    for query in dashboard_queries():
        names = promql_metric_names(query)
        assert names, f"no metric found in {query!r}"
        assert not unknown_metrics(names), query
        used |= names
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert bases >= set(METRICS), f"not on the dashboard: {set(METRICS) - bases}"


def test_service_registers_every_metric_the_dashboard_reads() -> None:
    # The CPU rehearsal (test_image_smoke) sees the others on /metrics; the GPU gauges are only
    # registered on a GPU, so here their names must at least be in the service's code.
    names = set()
    for path in (ROOT / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
    for name, kind in METRICS.items():
        # prometheus_client appends _total to counters itself
        registered = name.removesuffix("_total") if kind == "counter" else name
        assert registered in names or name in names, f"service/ never registers {name}"


def test_alerts_read_only_the_service_metrics() -> None:
    for expr in alert_expressions():
        assert not unknown_metrics(promql_metric_names(expr), frozenset({"up"})), expr


def test_dashboard_queries_are_valid_promql_for_promtool(tmp_path: Path) -> None:
    # promtool parses recording rules, so each query becomes one (promql_metric_names has
    # already parsed them with promql-parser; this is Prometheus's own parser where installed).
    queries = [q for q in dashboard_queries() if "label_values" not in q]
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    board = _dashboard()
    variable = next(v for v in board["templating"]["list"] if v["type"] == "datasource")
    assert variable["current"]["value"] == source["uid"]
    for panel in board["panels"]:
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_grafana_loads_the_dashboard_from_the_mounted_folder() -> None:
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "gemmserve.yml").read_text())
    (provider,) = providers["providers"]
    grafana = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_haproxy_accepts_its_config() -> None:
    haproxy = system_tool("haproxy")
    done = subprocess.run(
        [haproxy, "-c", "-f", DEPLOY / "haproxy.cfg"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Outside Compose the replicas' names do not resolve; any other warning is a mistake.
    warnings = [w for w in done.stderr.splitlines() if "WARNING" in w]
    assert all("could not resolve address" in w for w in warnings), warnings


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_monitoring_images_are_pinned(name: str) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"][name]["image"]
    assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), image
