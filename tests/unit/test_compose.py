"""compose.yaml: the gateway, Prometheus and Grafana fit together. The files are parsed and
cross-checked, never run (the development machines have no container runtime)."""

from __future__ import annotations

import json
import shlex
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from gateway.observability import MetricsConfig
from tests.unit.test_packaging import values

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def mounts(service: str) -> list[tuple[str, str]]:
    """(source, container path) of every volume of a service (short syntax)."""
    out = []
    for volume in SERVICES[service].get("volumes", []):
        assert isinstance(volume, str), f"{service}: use the short volume syntax"
        source, target, *_mode = volume.split(":")
        out.append((source, target))
    return out


def host_files(service: str, directory: str) -> list[Path]:
    """The repository files a service sees in (or below) one of its container directories."""
    inside = PurePosixPath(directory)
    files: list[Path] = []
    for source, target in mounts(service):
        if not source.startswith("."):
            continue  # a named volume
        host, mounted = ROOT / source, PurePosixPath(target)
        if mounted == inside or inside in mounted.parents:
            files.extend([host] if host.is_file() else sorted(host.rglob("*")))
        elif mounted in inside.parents:
            below = host / inside.relative_to(mounted)
            files.extend(sorted(below.rglob("*")) if below.is_dir() else [])
    return [f for f in files if f.is_file()]


def host_file(service: str, path: str) -> Path:
    """The repository file a service sees at one container path."""
    wanted = PurePosixPath(path)
    for source, target in mounts(service):
        mounted = PurePosixPath(target)
        if source.startswith(".") and (mounted == wanted or mounted in wanted.parents):
            found = ROOT / source / wanted.relative_to(mounted)
            assert found.is_file(), f"{service}: {path} is {found}, not a file"
            return found
    raise AssertionError(f"{service} has nothing mounted at {path}")


def container_ports(service: str) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1]) for p in SERVICES[service].get("ports", [])}


def test_the_three_services_exist() -> None:
    assert {"gateway", "prometheus", "grafana"} <= set(SERVICES)
    assert SERVICES["gateway"]["build"]["context"] == "."
    assert (ROOT / "Dockerfile").is_file()
    assert container_ports("gateway") == {8000}
    assert container_ports("prometheus") == {9090}
    assert container_ports("grafana") == {3000}


def test_the_gateway_is_healthy_when_ready() -> None:
    check = SERVICES["gateway"]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert "http://127.0.0.1:8000/ready" in " ".join(check["test"])


def test_every_mounted_host_path_exists_in_the_repo() -> None:
    named = set(COMPOSE.get("volumes") or {})
    for service in SERVICES:
        for source, target in mounts(service):
            assert target.startswith("/"), (service, target)
            if source.startswith("."):
                path = (ROOT / source).resolve()
                assert path.exists(), f"{service} mounts missing {source}"
                assert ROOT in path.parents, f"{service} mounts {source}, outside the repo"
            else:
                assert source in named, f"{service}: volume {source!r} is not declared"


def test_prometheus_scrapes_the_gateway_service() -> None:
    config = yaml.safe_load(host_file("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == MetricsConfig().path
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["gateway:8000"]
    assert "gateway" in SERVICES
    assert 8000 in container_ports("gateway")


def test_the_compose_scrape_config_is_the_default_one_aimed_at_the_service() -> None:
    def without_targets(path: Path) -> dict[str, Any]:
        config: dict[str, Any] = yaml.safe_load(path.read_text())
        for job in config["scrape_configs"]:
            for group in job["static_configs"]:
                group.pop("targets")
        return config

    prometheus = ROOT / "config" / "prometheus"
    assert without_targets(prometheus / "compose.yml") == without_targets(
        prometheus / "prometheus.yml"
    )


def provisioned_datasources() -> list[dict[str, Any]]:
    files = host_files("grafana", "/etc/grafana/provisioning/datasources")
    assert files, "no datasource provisioning mounted"
    sources = []
    for path in files:
        config = yaml.safe_load(path.read_text())
        assert config["apiVersion"] == 1, path
        sources.extend(config["datasources"])
    return sources


def test_grafana_datasource_is_the_prometheus_service() -> None:
    (source,) = provisioned_datasources()
    assert source["type"] == "prometheus"
    assert source["uid"]
    assert source["isDefault"] is True
    assert source["url"] == f"http://prometheus:{next(iter(container_ports('prometheus')))}"


def test_grafana_dashboard_provider_points_at_the_dashboard() -> None:
    files = host_files("grafana", "/etc/grafana/provisioning/dashboards")
    assert files, "no dashboard provisioning mounted"
    dashboards: list[Path] = []
    for path in files:
        config = yaml.safe_load(path.read_text())
        assert config["apiVersion"] == 1, path
        for provider in config["providers"]:
            assert provider["type"] == "file"
            found = host_files("grafana", provider["options"]["path"])
            dashboards.extend(f for f in found if f.suffix == ".json")
    assert dashboards == [ROOT / "config" / "grafana" / "vlm-gateway.json"]
    json.loads(dashboards[0].read_text())


def _references(node: Any) -> list[dict[str, Any]]:
    """Every ``datasource`` object anywhere in a dashboard."""
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    if not isinstance(node, dict):
        return []
    found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
    return found + [ref for value in node.values() for ref in _references(value)]


def test_dashboard_datasources_resolve_to_the_provisioned_one() -> None:
    (source,) = provisioned_datasources()
    dashboard = json.loads((ROOT / "config" / "grafana" / "vlm-gateway.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    references = _references(dashboard)
    assert references
    for ref in references:
        assert ref["type"] == source["type"], ref
        uid = ref["uid"]
        if uid == source["uid"]:
            continue
        # "${NAME}": a datasource variable of the provisioned type. With no current value it
        # starts on the default datasource of that type, which the provisioned one is.
        name = uid.removeprefix("${").removesuffix("}")
        assert uid == "${" + name + "}", ref
        variable = variables[name]
        assert variable["type"] == "datasource"
        assert variable["query"] == source["type"]
        assert variable.get("current", {}).get("value") in (None, source["uid"])


def test_the_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ".venv" in ignored  # gigabytes of torch sent to the builder on every build otherwise
    for value in values("COPY"):
        *sources, _destination = shlex.split(value)
        for source in sources:
            parts = PurePosixPath(source).parts
            hit = [
                p for p in ignored if any(fnmatch(part, p.removeprefix("**/")) for part in parts)
            ]
            assert not hit, f".dockerignore {hit} drops {source}, which the Dockerfile copies"
