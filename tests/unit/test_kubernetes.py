"""deploy/: the Kubernetes manifests (a gateway in front of a pool of vLLM replicas) and the
one-machine compose file of the same pool fit together and load as the gateway's own settings.
Parsed and cross-checked, never applied (no cluster and no container runtime here): names,
labels, ports and probe paths agree between the workloads, the Services and the config files,
and the config files go through the gateway's own loaders (settings, routing, upstream pool)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from adapters.upstream.config import UpstreamConfig
from gateway.routing import CapabilityRouter
from gateway.settings import Settings, load_settings
from tests.unit.test_packaging import values

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUSTOMIZATION: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
DOCUMENTS: list[dict[str, Any]] = [
    doc
    for name in KUSTOMIZATION["resources"]
    for doc in yaml.safe_load_all((K8S / name).read_text())
    if doc is not None
]
WORKLOADS = [d for d in DOCUMENTS if d["kind"] in ("Deployment", "StatefulSet")]
SERVICES = [d for d in DOCUMENTS if d["kind"] == "Service"]
(GENERATOR,) = KUSTOMIZATION["configMapGenerator"]
CONFIG_FILES = {PurePosixPath(f).name: K8S / f for f in GENERATOR["files"]}
ROUTING: dict[str, Any] = tomllib.loads(CONFIG_FILES["routing.toml"].read_text())
(POOL_NAME,) = ROUTING["backends"]
POOL: dict[str, Any] = ROUTING["backends"][POOL_NAME]["upstream"]
POOL_KEYS = {
    "model",
    "replicas",
    "replicas_dns",
    "dns_refresh_s",
    "balance",
    "load_factor",
    "probe_interval_s",
    "probe_path",
    "eject_after",
    "image_uuids",
    "cache_salt",
}
"""The pool's keys in [backends.<name>.upstream] (adapters.upstream.config.UpstreamConfig)."""


def workload(name: str) -> dict[str, Any]:
    (found,) = [w for w in WORKLOADS if w["metadata"]["name"] == name]
    return found


def container(name: str) -> dict[str, Any]:
    (only,) = workload(name)["spec"]["template"]["spec"]["containers"]
    return only


def service(name: str) -> dict[str, Any]:
    (found,) = [s for s in SERVICES if s["metadata"]["name"] == name]
    return found


def port_number(spec: dict[str, Any], port: int | str) -> int:
    """A container port by number or by name, which must be declared."""
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    if isinstance(port, str):
        assert port in ports, f"{spec['name']}: no port named {port!r}"
        return ports[port]
    assert port in ports.values(), f"{spec['name']}: port {port} is not declared"
    return port


def env(spec: dict[str, Any]) -> dict[str, str]:
    """The container's literal environment (values from Secrets left out)."""
    return {e["name"]: e["value"] for e in spec.get("env", []) if "value" in e}


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments (and bare ``--name``) of a command line."""
    out = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            out[name] = value
    return out


def test_every_document_is_named_and_the_kustomization_lists_every_file() -> None:
    assert {d["kind"] for d in DOCUMENTS} == {"Deployment", "StatefulSet", "Service"}
    for doc in DOCUMENTS:
        assert doc["apiVersion"], doc
        assert doc["kind"], doc
        assert doc["metadata"]["name"], doc
        assert "namespace" not in doc["metadata"], "the namespace is the one applied to"
    names = [(d["kind"], d["metadata"]["name"]) for d in DOCUMENTS]
    assert len(set(names)) == len(names)
    listed = {*KUSTOMIZATION["resources"], *GENERATOR["files"], "kustomization.yaml"}
    present = {p.relative_to(K8S).as_posix() for p in K8S.rglob("*") if p.is_file()}
    assert present - {"README.md"} == listed
    assert KUSTOMIZATION["kind"] == "Kustomization"


@pytest.mark.parametrize(
    "doc", DOCUMENTS, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in DOCUMENTS]
)
def test_every_document_matches_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    # Optional (not a test dependency): the API's own OpenAPI schemas, strict, so a misspelt
    # field (readinesProbe) or a wrong type fails here rather than at `kubectl apply`.
    validator = pytest.importorskip("kubernetes_validate")
    validator.validate(doc, validator.latest_version(), strict=True)


def test_every_workload_has_resources_probes_and_matching_labels() -> None:
    assert {w["metadata"]["name"] for w in WORKLOADS} == {"vlm-gateway", "vllm"}
    for doc in WORKLOADS:
        spec = doc["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        for box in spec["template"]["spec"]["containers"]:
            requests = box["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests), box["name"]
            assert "memory" in box["resources"]["limits"], box["name"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                check = box[probe]["httpGet"]
                port_number(box, check["port"])


def test_the_gateway_probes_ready_and_health() -> None:
    box = container("vlm-gateway")
    assert box["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert box["livenessProbe"]["httpGet"]["path"] == "/health"
    assert box["startupProbe"]["httpGet"]["path"] == "/health"
    annotations = workload("vlm-gateway")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == gateway_settings().metrics.path
    assert int(annotations["prometheus.io/port"]) == port_number(box, "http")


def test_vllm_serves_the_model_on_a_gpu_and_probes_its_health() -> None:
    box = container("vllm")
    assert box["command"] == ["vllm", "serve"]
    assert box["args"][0] == "Qwen/Qwen3-VL-2B-Instruct"
    args = flags(box["args"])
    assert args["--served-model-name"] == POOL["model"]
    assert int(args["--port"]) == port_number(box, "http")
    assert args["--host"] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert box[probe]["httpGet"]["path"] == "/health"
    # Extended resources: a limit, and a request (if any) equal to it.
    resources = box["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1
    # Where vLLM's image keeps the Hugging Face cache: a volume, per replica.
    mounts = {m["mountPath"]: m["name"] for m in box["volumeMounts"]}
    templates = {t["metadata"]["name"] for t in workload("vllm")["spec"]["volumeClaimTemplates"]}
    assert mounts["/root/.cache/huggingface"] in templates
    assert "/dev/shm" in mounts


def test_services_select_their_pods_and_target_declared_ports() -> None:
    assert {s["metadata"]["name"] for s in SERVICES} == {"vlm-gateway", "vllm"}
    for svc in SERVICES:
        selector = svc["spec"]["selector"]
        chosen = [
            w
            for w in WORKLOADS
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert [w["metadata"]["name"] for w in chosen] == [svc["metadata"]["name"]]
        box = container(svc["metadata"]["name"])
        for port in svc["spec"]["ports"]:
            assert port_number(box, port.get("targetPort", port["port"])) == port["port"]


def test_the_gateway_waits_for_the_pool_name_to_resolve() -> None:
    (init,) = workload("vlm-gateway")["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == container("vlm-gateway")["image"]
    script = init["command"][-1]
    compile(script, "wait-for-vllm", "exec")
    url = httpx.URL(POOL["replicas_dns"])
    assert f'getaddrinfo("{url.host}", {url.port})' in script
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"cpu", "memory"} <= set(init["resources"]["requests"])


def test_the_vllm_service_is_headless_and_governs_the_statefulset() -> None:
    assert service("vllm")["spec"]["clusterIP"] == "None"
    assert workload("vllm")["spec"]["serviceName"] == "vllm"
    assert "clusterIP" not in service("vlm-gateway")["spec"]


def test_the_pool_resolves_the_headless_service_with_image_uuids() -> None:
    assert set(POOL) - {"max_connections", "timeout_s"} <= POOL_KEYS
    assert POOL["image_uuids"] is True
    assert POOL["cache_salt"] is True  # replicas see every key through this gateway
    assert POOL["probe_path"] == container("vllm")["readinessProbe"]["httpGet"]["path"]
    assert "replicas" not in POOL
    url = httpx.URL(POOL["replicas_dns"])
    assert url.host == service("vllm")["metadata"]["name"]
    assert url.port == service("vllm")["spec"]["ports"][0]["port"]
    assert url.path == "/v1"
    # The adapter's own checks: known keys, valid values, a pool.
    config = UpstreamConfig(**POOL)
    assert config.pooled
    assert config.balance == "affinity"


def test_the_routing_file_loads_as_a_router_whose_only_backend_is_the_pool() -> None:
    settings = gateway_settings()
    local = dataclasses.replace(settings.router, routing_file=str(CONFIG_FILES["routing.toml"]))
    router = CapabilityRouter.from_config(local)
    assert list(router.backends) == [POOL_NAME]
    backend = router.backends[POOL_NAME]
    assert backend.upstream is not None
    assert POOL["model"] in backend.names


def test_the_routing_file_is_the_bundled_one_but_for_its_backends() -> None:
    bundled = tomllib.loads((ROOT / "config" / "routing.toml").read_text())
    bundled.pop("backends")
    deployed = {k: v for k, v in ROUTING.items() if k != "backends"}
    assert deployed == bundled, (
        "deploy/kubernetes/config/routing.toml repeats config/routing.toml outside [backends]: "
        "copy the change there too"
    )


def gateway_settings() -> Settings:
    """gateway.toml with the container's environment, as the gateway loads them at start."""
    environ = {k: v for k, v in env(container("vlm-gateway")).items() if k != "VLM_GATEWAY_CONFIG"}
    return load_settings(CONFIG_FILES["gateway.toml"], environ=environ)


def test_the_gateway_loads_its_settings_from_the_config_map() -> None:
    box = container("vlm-gateway")
    settings = gateway_settings()
    mounts = {m["mountPath"]: m for m in box["volumeMounts"]}
    volumes = {v["name"]: v for v in workload("vlm-gateway")["spec"]["template"]["spec"]["volumes"]}
    config_path = PurePosixPath(env(box)["VLM_GATEWAY_CONFIG"])
    config_mount = mounts[str(config_path.parent)]
    assert volumes[config_mount["name"]]["configMap"]["name"] == GENERATOR["name"]
    assert config_path.name in CONFIG_FILES
    assert PurePosixPath(settings.router.routing_file) == config_path.parent / "routing.toml"
    assert settings.server.port == port_number(box, "http")
    assert settings.server.host == "0.0.0.0"


def test_the_gateway_runs_unprivileged_on_a_read_only_root() -> None:
    pod = workload("vlm-gateway")["spec"]["template"]["spec"]
    box = container("vlm-gateway")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)  # a named USER is unverifiable
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert box["securityContext"]["allowPrivilegeEscalation"] is False
    assert box["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Every place the gateway writes is a writable volume: the files store, the caches under
    # HOME, temporary files.
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        PurePosixPath(m["mountPath"])
        for m in box["volumeMounts"]
        if not m.get("readOnly")
        and ("emptyDir" in volumes[m["name"]] or "persistentVolumeClaim" in volumes[m["name"]])
    }
    home = PurePosixPath(env(box)["HOME"])
    wanted = [
        PurePosixPath(gateway_settings().files.data_dir),
        home / ".cache",
        PurePosixPath("/tmp"),
    ]
    for path in wanted:
        assert any(path == w or w in path.parents for w in writable), f"{path} is read-only"
    # The image's user and its prepared cache directory (Dockerfile) live under that HOME.
    assert any(str(home / ".cache") in v for v in values("RUN"))
    assert values("USER") == ["gateway"]


def test_the_gateway_image_is_the_one_the_kustomization_sets() -> None:
    (image,) = KUSTOMIZATION["images"]
    assert container("vlm-gateway")["image"] == image["name"]


# -- deploy/compose.pool.yaml -----------------------------------------------------------------

COMPOSE: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.pool.yaml").read_text())
COMPOSE_SERVICES: dict[str, Any] = COMPOSE["services"]
REPLICAS = sorted(name for name in COMPOSE_SERVICES if name.startswith("vllm"))


def compose_mounts(name: str) -> dict[str, Path]:
    """Container path -> repository file of a service's bind mounts (short syntax)."""
    out = {}
    for volume in COMPOSE_SERVICES[name].get("volumes", []):
        source, target, *_mode = volume.split(":")
        if source.startswith("."):
            out[target] = (DEPLOY / source).resolve()
    return out


def test_compose_builds_the_gateway_from_the_repository() -> None:
    gateway = COMPOSE_SERVICES["gateway"]
    context = (DEPLOY / gateway["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / "Dockerfile").is_file()
    assert "127.0.0.1:8000:8000" in gateway["ports"]
    assert "/ready" in " ".join(gateway["healthcheck"]["test"])
    # It exits at start while no replica serves the model: it waits for one to be healthy.
    waits = {name: dep["condition"] for name, dep in gateway["depends_on"].items()}
    assert "service_healthy" in [waits[name] for name in REPLICAS]


def test_compose_mounts_the_kubernetes_config_files() -> None:
    gateway = COMPOSE_SERVICES["gateway"]
    mounts = compose_mounts("gateway")
    for path in mounts.values():
        assert path.is_file(), path
        assert ROOT in path.parents, path
    config = gateway["environment"]["VLM_GATEWAY_CONFIG"]
    assert mounts[config] == CONFIG_FILES["gateway.toml"]
    assert mounts[gateway_settings().router.routing_file] == CONFIG_FILES["routing.toml"]


@pytest.mark.parametrize("name", REPLICAS)
def test_compose_replicas_answer_to_the_pool_name(name: str) -> None:
    replica = COMPOSE_SERVICES[name]
    url = httpx.URL(POOL["replicas_dns"])
    assert url.host in replica["networks"]["default"]["aliases"]
    assert replica["entrypoint"] == ["vllm", "serve"]
    args = flags(replica["command"])
    assert int(args["--port"]) == url.port
    assert args["--served-model-name"] == POOL["model"]
    assert "/health" in " ".join(replica["healthcheck"]["test"])
    # The same engine settings as the Kubernetes replicas (GPU memory share aside).
    k8s = container("vllm")
    assert replica["image"] == k8s["image"]
    assert replica["command"][0] == k8s["args"][0]
    same = {k: v for k, v in args.items() if k != "--gpu-memory-utilization"}
    assert same == {k: v for k, v in flags(k8s["args"]).items() if k != "--gpu-memory-utilization"}


def test_compose_gives_each_replica_its_own_gpu_by_default() -> None:
    assert len(REPLICAS) == 2
    devices = []
    for name in REPLICAS:
        (reservation,) = COMPOSE_SERVICES[name]["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["capabilities"] == ["gpu"]
        (device,) = reservation["device_ids"]
        # "${VLLM_GPU_2:-1}" -> its default
        devices.append(device.rsplit(":-", 1)[-1].rstrip("}"))
    assert sorted(devices) == ["0", "1"]


def test_compose_named_volumes_are_declared() -> None:
    named = set(COMPOSE.get("volumes") or {})
    for name in REPLICAS:
        for volume in COMPOSE_SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            assert source.startswith(".") or source in named, (name, source)
