"""Deployment files: the Dockerfile, Kubernetes manifests, Collector and Prometheus configs.

Docker and a cluster are not needed: the files are parsed and checked against each other
and against costproc's defaults, and the Docker build's install step is replayed on a copy
of the build context.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproc.config.load import parse_config
from costproc.config.model import (
    Config,
    GrpcReceiverConfig,
    HealthConfig,
    HttpReceiverConfig,
    PrometheusConfig,
    RollupConfig,
)
from costproc.export import parse_endpoint

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COLLECTOR = DEPLOY / "collector"
DOCKERFILE = ROOT / "Dockerfile"
BUNDLED = ROOT / "config" / "costproc.yaml"

# What each costproc port is for, by the container port names the manifests use.
DEFAULT_PORTS = {
    "otlp-grpc": parse_endpoint(GrpcReceiverConfig().endpoint)[1],
    "otlp-http": parse_endpoint(HttpReceiverConfig().endpoint)[1],
    "metrics": parse_endpoint(PrometheusConfig().endpoint)[1],
    "health": parse_endpoint(HealthConfig().endpoint)[1],
}
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
MANIFESTS = ("sidecar.yaml", "gateway.yaml")
COLLECTOR_CONFIGS = {"loadbalancing.yaml": "traceID", "loadbalancing-by-job.yaml": "attributes"}


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
    return docs


def objects(manifest: str, kind: str | None = None) -> list[dict[str, Any]]:
    found = documents(KUBERNETES / manifest)
    return [o for o in found if kind is None or o["kind"] == kind]


def the(manifest: str, kind: str) -> dict[str, Any]:
    found = objects(manifest, kind)
    assert len(found) == 1, f"{manifest}: expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(manifest: str) -> dict[str, Any]:
    spec: dict[str, Any] = the(manifest, "Deployment")["spec"]["template"]["spec"]
    return spec


def costproc_container(manifest: str) -> dict[str, Any]:
    spec = pod_spec(manifest)
    found = [
        c
        for c in spec.get("containers", []) + spec.get("initContainers", [])
        if "costproc" in c["image"]
    ]
    assert len(found) == 1, f"{manifest}: expected one costproc container"
    return found[0]


def mounted_config(manifest: str) -> tuple[str, Config]:
    """The text of the config file costproc's --config names, from its ConfigMap, parsed."""
    container = costproc_container(manifest)
    args = container["args"]
    path = Path(args[args.index("--config") + 1])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in pod_spec(manifest)["volumes"] if v["name"] == mount["name"])
    config_map = next(
        o
        for o in objects(manifest, "ConfigMap")
        if o["metadata"]["name"] == volume["configMap"]["name"]
    )
    text: str = config_map["data"][path.name]
    return text, parse_config(text)


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def instruction(name: str) -> list[str]:
    return [args for inst, args in dockerfile() if inst == name]


def pip_install(command: str) -> tuple[list[str], list[str]]:
    """(options, targets) of the `pip install` in a shell command line."""
    for part in re.split(r"&&|;", command):
        words = shlex.split(part)
        if words[:2] == ["pip", "install"]:
            options = [w for w in words[2:] if w.startswith("-")]
            return options, [w for w in words[2:] if not w.startswith("-")]
    pytest.fail(f"no `pip install` in {command!r}")


# ---------------------------------------------------------------- YAML and Kubernetes


def test_deploy_holds_the_expected_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {
        "kubernetes/sidecar.yaml",
        "kubernetes/gateway.yaml",
        "collector/loadbalancing.yaml",
        "collector/loadbalancing-by-job.yaml",
        "prometheus/prometheus.yml",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])
def test_yaml_parses(path: Path) -> None:
    assert documents(path)


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_kubernetes_objects_are_named(manifest: str) -> None:
    for obj in objects(manifest):
        assert obj.get("apiVersion"), obj
        assert obj.get("kind"), obj
        assert obj.get("metadata", {}).get("name"), obj
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace"), f"{obj['kind']} has no namespace"


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_costproc_container_ports_and_probes(manifest: str) -> None:
    container = costproc_container(manifest)
    ports = container_ports(container)
    assert {"metrics", "health"} <= ports.keys()
    for name, number in ports.items():
        assert DEFAULT_PORTS.get(name) == number, f"port {name}: {number}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert ports.get(port, port) == DEFAULT_PORTS["health"], probe


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_costproc_config_in_configmap_is_valid_and_matches_ports(manifest: str) -> None:
    _, config = mounted_config(manifest)
    assert config.pricing.tables
    listening = {
        "otlp-grpc": config.grpc.endpoint if config.grpc else None,
        "otlp-http": config.http.endpoint if config.http else None,
        "metrics": config.prometheus.endpoint,
        "health": config.health.endpoint,
    }
    for name, endpoint in listening.items():
        if endpoint is not None:
            assert parse_endpoint(endpoint)[1] == DEFAULT_PORTS[name], name
    # Probes and scrapes come from outside the pod: those two must not be on loopback.
    assert parse_endpoint(config.prometheus.endpoint)[0] == "0.0.0.0"
    assert parse_endpoint(config.health.endpoint)[0] == "0.0.0.0"


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_costproc_runs_as_non_root_with_resources(manifest: str) -> None:
    container = costproc_container(manifest)
    context = {**pod_spec(manifest).get("securityContext", {}), **container["securityContext"]}
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001  # the Dockerfile's user
    assert context["readOnlyRootFilesystem"] is True
    resources = container["resources"]
    assert mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1.0, "Gi": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_sidecar_points_the_app_at_localhost() -> None:
    text, config = mounted_config("sidecar.yaml")
    assert config.rollup.local_roots is True
    assert yaml.safe_load(text)["rollup"]["local_roots"] is True
    apps = [c for c in pod_spec("sidecar.yaml")["containers"] if "costproc" not in c["image"]]
    assert apps
    for app in apps:
        env = {e["name"]: e.get("value") for e in app["env"]}
        assert (
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://localhost:{DEFAULT_PORTS['otlp-grpc']}"
        )
        assert env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc") == "grpc"
    assert config.grpc is not None and parse_endpoint(config.grpc.endpoint)[1] == 4317
    # A native sidecar: it starts before the app and stops after it.
    assert costproc_container("sidecar.yaml") in pod_spec("sidecar.yaml")["initContainers"]
    assert costproc_container("sidecar.yaml")["restartPolicy"] == "Always"
    pod_monitor = the("sidecar.yaml", "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    annotations = the("sidecar.yaml", "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(DEFAULT_PORTS["metrics"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_gateway_services_and_service_monitor() -> None:
    deployment = the("gateway.yaml", "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = objects("gateway.yaml", "Service")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1, "one headless Service for the loadbalancing exporter"
    assert selects(headless[0]["spec"]["selector"], pod_labels)
    assert [p["port"] for p in headless[0]["spec"]["ports"]] == [DEFAULT_PORTS["otlp-grpc"]]
    monitor = the("gateway.yaml", "ServiceMonitor")
    monitored = [
        s
        for s in services
        if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    # Exactly one: a second match would scrape every pod twice and double every counter.
    assert len(monitored) == 1
    assert selects(monitored[0]["spec"]["selector"], pod_labels)
    port_names = {p["name"]: p["port"] for p in monitored[0]["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert port_names[endpoint["port"]] == DEFAULT_PORTS["metrics"]


def headless_dns() -> tuple[str, int]:
    service = next(
        s for s in objects("gateway.yaml", "Service") if s["spec"].get("clusterIP") == "None"
    )
    meta = service["metadata"]
    name = f"{meta['name']}.{meta['namespace']}.svc.cluster.local"
    return name, service["spec"]["ports"][0]["port"]


# ---------------------------------------------------------------- Collector


@pytest.mark.parametrize("name", COLLECTOR_CONFIGS)
def test_collector_pipelines_reference_defined_components(name: str) -> None:
    (config,) = documents(COLLECTOR / name)
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in config.get("extensions", {}), extension
    assert service["pipelines"]
    for pipeline, parts in service["pipelines"].items():
        assert parts["receivers"] and parts["exporters"], pipeline
        for section in ("receivers", "processors", "exporters"):
            for component in parts.get(section, []):
                assert component in (config.get(section) or {}), f"{pipeline}: {component}"


@pytest.mark.parametrize(("name", "routing_key"), COLLECTOR_CONFIGS.items())
def test_collector_fans_out_to_costproc_replicas(name: str, routing_key: str) -> None:
    (config,) = documents(COLLECTOR / name)
    exporter = config["exporters"]["loadbalancing"]
    assert exporter["routing_key"] == routing_key
    if routing_key == "attributes":
        assert exporter["routing_attributes"] == list(RollupConfig().job_id_attributes)
    else:
        assert "routing_attributes" not in exporter
    assert exporter["protocol"]["otlp"]["tls"]["insecure"] is True
    assert "endpoint" not in exporter["protocol"]["otlp"]  # the resolver supplies it
    hostname, port = headless_dns()
    assert exporter["resolver"]["dns"]["hostname"] == hostname
    assert int(exporter["resolver"]["dns"]["port"]) == port


# ---------------------------------------------------------------- Prometheus


def test_prometheus_config_scrapes_costproc_and_loads_its_rules(tmp_path: Path) -> None:
    path = DEPLOY / "prometheus" / "prometheus.yml"
    (config,) = documents(path)
    assert "costproc-rules.yaml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The generated rules watch up{job=~"costproc.*"}.
    assert all(name.startswith("costproc") for name in jobs)
    (dns,) = jobs["costproc"]["dns_sd_configs"]
    assert dns["names"] == [headless_dns()[0]]
    assert dns["port"] == DEFAULT_PORTS["metrics"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found on PATH: install Prometheus (Debian: apt-get install prometheus)"
        )
    # Some distribution builds of Prometheus leave Kubernetes discovery out; check the rest.
    checkable = {
        **config,
        "scrape_configs": [j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j],
    }
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(checkable), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_image_user_ports_health_and_entrypoint() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("0", "root")
    exposed = {int(p) for args in instruction("EXPOSE") for p in args.split()}
    assert exposed == set(DEFAULT_PORTS.values())
    (health,) = instruction("HEALTHCHECK")
    assert "urllib.request" in health and f":{DEFAULT_PORTS['health']}/" in health
    assert json.loads(instruction("ENTRYPOINT")[0]) == ["costproc"]
    assert json.loads(instruction("CMD")[0]) == ["serve"]


def test_dockerfile_installs_as_the_readme_does() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines() if "pip install" in line and "venv" in line)
    readme_options, readme_targets = pip_install(command)
    installs = [args for args in instruction("RUN") if "pip install" in args]
    assert len(installs) == 1, installs
    options, targets = pip_install(installs[0])
    # The same package and extras; the image drops the virtualenv, the editable mode (no
    # one edits the source in an image) and pip's cache (it would only grow the image).
    assert targets == readme_targets
    assert set(options) - {"--no-cache-dir"} == set(readme_options) - {"-e", "--editable"}
    assert "--no-cache-dir" in options


def docker_context(into: Path) -> Iterator[Path]:
    """Copy what the Dockerfile's COPY instructions bring in; yield each copied path."""
    for args in instruction("COPY"):
        *sources, _ = args.split()
        for source in sources:
            src = ROOT / source
            dst = into / source
            if src.is_dir():
                # Docker keeps symbolic links inside copied directories as links.
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst)
            yield dst


def test_installed_package_carries_the_default_config(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    copied = list(docker_context(context))
    assert copied
    # The build step of `pip install .` that lays out the package, run on the copy: the
    # bundled config must end up inside the package as a file, not a dangling link.
    lib = tmp_path / "lib"
    build_py = ["-q", "build_py", "--build-lib", str(lib)]
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", *build_py],
        cwd=context,
        capture_output=True,
        check=True,
        timeout=120,
    )
    installed = lib / "costproc" / "defaults" / "costproc.yaml"
    assert installed.is_file() and not installed.is_symlink()
    assert installed.read_bytes() == BUNDLED.read_bytes()
    # What `costproc serve` without --config does, with only the built package importable.
    probe = (
        "import costproc, costproc.config as c; c.load_config(); "
        "print(costproc.__file__, c.default_config_path())"
    )
    env = {**os.environ, "PYTHONPATH": str(lib)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    package, config = result.stdout.split()
    assert Path(package).is_relative_to(lib) and Path(config) == installed
