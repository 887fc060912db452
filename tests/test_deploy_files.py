"""The deployment files (``deploy/``) promise what an operator relies on, and the code keeps it.

Docker is not available where the suite runs, so nothing here starts a container: the compose
file and every Kubernetes manifest are parsed with PyYAML and checked against the real code.
Each pod's (or service's) environment is assembled the way it would be at run time (the image's
``ENV``, then the service's own variables and Secret values) and read with the project's own
``load_settings``; the TOML each one mounts is found through its volumes and loaded with the
same functions ``serve`` calls at start; probe paths are looked up in the real app.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from lamplighter.api import health
from lamplighter.app import create_app
from lamplighter.engines.upstream import UpstreamConfig, upstreams_from_config
from lamplighter.settings import ENV_PREFIX, Settings, load_settings, read_config
from lamplighter.traffic.admission import headroom_from_config
from lamplighter.traffic.degrade import rules_from_config
from lamplighter.traffic.plans import plans_from_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
TRY_IT = KUBERNETES / "try-it"
# Manifests meant to be applied on their own, outside any kustomization.
STANDALONE = {"secret.example.yaml", "migrate-job.yaml"}
SETTING_VARIABLES = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
Doc = dict[str, Any]


# -- reading the files -------------------------------------------------------------------------

_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Compose's ``${NAME:-default}``, with nothing set: every variable takes its default."""
    if isinstance(value, str):
        return _COMPOSE_VARIABLE.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    return value


def _documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(folder: Path) -> Doc:
    document = yaml.safe_load((folder / "kustomization.yaml").read_text())
    assert isinstance(document, dict)
    return document


def _resources(folder: Path) -> list[Doc]:
    """Every object a kustomization folder builds (resources only; patches are checked apart)."""
    objects: list[Doc] = []
    for entry in _kustomization(folder)["resources"]:
        target = (folder / entry).resolve()
        objects += _resources(target) if target.is_dir() else _documents(target)
    return objects


def _one(objects: list[Doc], kind: str, name: str) -> Doc:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def _image_env() -> dict[str, str]:
    """The runtime stage's ``ENV`` (the last stage is the image)."""
    lines = _dockerfile()
    last_from = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    env: dict[str, str] = {}
    for line in lines[last_from:]:
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def _flags(args: list[Any]) -> dict[str, str]:
    """``--name value`` and ``--name=value`` command-line arguments."""
    words = [str(arg) for arg in args]
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        name, equals, value = word.partition("=")
        if not equals:
            following = words[i + 1] if i + 1 < len(words) else ""
            value = "" if following.startswith("--") else following
        found[name] = value
    return found


COMPOSE: Doc = _interpolate(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))
SERVICES: dict[str, Doc] = COMPOSE["services"]
BASE = _resources(KUBERNETES)
TRIED = _resources(TRY_IT)
GATEWAY = _one(BASE, "Deployment", "lamplighter")
GATEWAY_POD = GATEWAY["spec"]["template"]["spec"]
GATEWAY_CONTAINER = GATEWAY_POD["containers"][0]


# -- a gateway as it would run -------------------------------------------------------------------


@dataclass(frozen=True)
class Gateway:
    """What one gateway replica would start with: its settings and its backends."""

    where: str
    env: dict[str, str]
    settings: Settings
    backends: list[UpstreamConfig]


def _start(where: str, env: dict[str, str], config_text: str, tmp: Path) -> Gateway:
    """Load settings and config the way ``serve`` does, with the mounted file at a temporary
    path. Every table ``serve`` reads at start must load."""
    path = tmp / f"{where}.toml"
    path.write_text(config_text)
    env = {**env, "LAMPLIGHTER_CONFIG": str(path)}
    settings = load_settings(env=env)
    config = read_config(settings.config)
    plans_from_config(config.get("plans", {}))
    rules_from_config(config.get("traffic", {}).get("degrade", []))
    headroom_from_config(config.get("traffic", {}).get("headroom", {}))
    backends = upstreams_from_config(config.get("backends", []), env=env)
    return Gateway(where, env, settings, backends)


def _compose_gateway(tmp: Path) -> Gateway:
    service = SERVICES["gateway"]
    env = {**_image_env(), **{k: str(v) for k, v in service["environment"].items()}}
    # "HOST:CONTAINER[:MODE]", HOST relative to the compose file.
    mounts = {inside: host for host, inside, *_ in (v.split(":") for v in service["volumes"])}
    config = mounts.get(env["LAMPLIGHTER_CONFIG"])
    assert config is not None, "LAMPLIGHTER_CONFIG is not a file the gateway service mounts"
    return _start("compose", env, (DEPLOY / config).read_text(), tmp)


def _secret_values(objects: list[Doc], name: str) -> dict[str, str]:
    secret = _one(objects, "Secret", name)
    return {key: str(value) for key, value in secret.get("stringData", {}).items()}


def _container_env(container: Doc, secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = secrets[ref["name"]]
        if ref["key"] in secret:
            env[item["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional"), f"{item['name']}: secret has no key {ref['key']}"
    return env


def _mounted_file(pod: Doc, container: Doc, objects: list[Doc], path: str) -> str:
    """The text a container sees at ``path``, through its volume mounts of ConfigMaps."""
    for mount in container.get("volumeMounts", []):
        root = PurePosixPath(mount["mountPath"])
        if root not in PurePosixPath(path).parents:
            continue
        inside = PurePosixPath(path).relative_to(root)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        config_map = _one(objects, "ConfigMap", volume["configMap"]["name"])
        return str(config_map["data"][str(inside)])
    raise AssertionError(f"{path} is not on any volume mounted from a ConfigMap")


def _kubernetes_gateway(tmp: Path, secrets_from: list[Doc], where: str) -> Gateway:
    secrets = {"lamplighter": _secret_values(secrets_from, "lamplighter")}
    env = {**_image_env(), **_container_env(GATEWAY_CONTAINER, secrets)}
    text = _mounted_file(GATEWAY_POD, GATEWAY_CONTAINER, BASE, env["LAMPLIGHTER_CONFIG"])
    return _start(where, env, text, tmp)


def _gateways(tmp: Path) -> Iterator[Gateway]:
    yield _compose_gateway(tmp)
    yield _kubernetes_gateway(tmp, _documents(KUBERNETES / "secret.example.yaml"), "kubernetes")
    yield _kubernetes_gateway(tmp, TRIED, "try-it")


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> list[Gateway]:
    return list(_gateways(tmp_path_factory.mktemp("deploy")))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(load_settings(env={}, data_dir=tmp_path_factory.mktemp("data")))


def _path_of(endpoint: Any) -> str:
    """The path the health router serves ``endpoint`` on."""
    routes = [route for route in health.router.routes if isinstance(route, APIRoute)]
    return next(route.path for route in routes if route.endpoint is endpoint)


# -- the tests -----------------------------------------------------------------------------------


def test_every_lamplighter_variable_set_anywhere_is_a_setting() -> None:
    """A misspelt variable is silently ignored by the server, so none may be."""
    named: dict[str, set[str]] = {}

    def note(where: str, names: Any) -> None:
        for name in names:
            if str(name).startswith(ENV_PREFIX):
                named.setdefault(str(name), set()).add(where)

    note("Dockerfile", _image_env())
    for name, service in SERVICES.items():
        note(f"compose {name}", service.get("environment", {}))
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for doc in _documents(path):
            note(path.name, doc.get("stringData", {}))
            pod = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                note(path.name, [item["name"] for item in container.get("env", [])])
    for path in (DEPLOY / "env.example", ROOT / "docs" / "deployment.md"):
        note(path.name, re.findall(r"\bLAMPLIGHTER_\w+", path.read_text()))
    assert {"LAMPLIGHTER_DATABASE_URL", "LAMPLIGHTER_REDIS_URL", "LAMPLIGHTER_REPLICAS"} <= set(
        named
    )
    unknown = {
        name: sorted(where) for name, where in named.items() if name not in SETTING_VARIABLES
    }
    assert not unknown, f"not settings (see lamplighter/settings.py): {unknown}"


def test_each_gateway_loads_its_config_and_serves_only_the_gpu_servers(
    gateways: list[Gateway],
) -> None:
    for gateway in gateways:
        settings = gateway.settings
        assert settings.embedded_engine is False, gateway.where
        assert settings.host == "0.0.0.0", f"{gateway.where}: probes and peers could not reach it"
        assert settings.database_url.startswith("postgresql://"), gateway.where
        assert settings.redis_url.startswith("redis://"), gateway.where
        assert gateway.backends, f"{gateway.where}: no [[backends]]: never ready"
        for backend in gateway.backends:
            assert backend.send_priority, f"{gateway.where} {backend.name}: priority = true"
            assert backend.api_key, f"{gateway.where} {backend.name}: no key for vLLM"
            assert backend.resolved_health_url.endswith("/health"), backend.name


def test_each_gateway_has_a_public_address_for_the_links_it_prints(
    gateways: list[Gateway],
) -> None:
    """Without LAMPLIGHTER_PUBLIC_URL, invite and password links (and the first-admin notice)
    would point at the container's own http://127.0.0.1:8080, which nobody outside reaches."""
    for gateway in gateways:
        assert gateway.settings.public_url, f"{gateway.where}: set LAMPLIGHTER_PUBLIC_URL"
        assert gateway.settings.base_url == gateway.settings.public_url.rstrip("/")
    migrate = SERVICES["migrate"]["environment"]  # where the CLI runs in Compose
    assert (
        migrate["LAMPLIGHTER_PUBLIC_URL"]
        == SERVICES["gateway"]["environment"]["LAMPLIGHTER_PUBLIC_URL"]
    )


def test_probes_are_the_apps_health_and_readiness_routes(app: FastAPI) -> None:
    liveness, readiness = _path_of(health.healthz), _path_of(health.readyz)
    assert {liveness, readiness} <= set(app.openapi()["paths"])
    assert TestClient(app).get(liveness).json() == {"status": "ok"}

    assert GATEWAY_CONTAINER["readinessProbe"]["httpGet"]["path"] == readiness
    assert GATEWAY_CONTAINER["livenessProbe"]["httpGet"]["path"] == liveness
    assert GATEWAY_CONTAINER["startupProbe"]["httpGet"]["path"] in {liveness, readiness}
    (check,) = [line for line in _dockerfile() if line.startswith("HEALTHCHECK ")]
    assert re.findall(r"'(/[^']*)'", check) == [readiness]


def test_the_image_runs_lamplighter_serve_as_a_non_root_user() -> None:
    lines = _dockerfile()
    assert "ARG PYTHON_IMAGE=python:3.13-slim" in lines
    stages = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert stages[-1] == "${PYTHON_IMAGE}", "the image runs on the python:3.13-slim base"
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric, non-root user (runAsNonRoot checks it)"
    entrypoint = [line for line in lines if line.startswith(("ENTRYPOINT ", "CMD "))]
    assert entrypoint == ['ENTRYPOINT ["lamplighter"]', 'CMD ["serve"]']
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "lamplighter" in pyproject["project"]["scripts"]
    assert GATEWAY_POD["securityContext"]["runAsUser"] == int(uid)
    assert GATEWAY_CONTAINER["args"] == ["serve"]


def test_a_stopping_gateway_drains_before_it_is_killed(gateways: list[Gateway]) -> None:
    """Kubernetes kills the pod after terminationGracePeriodSeconds, which must cover the
    preStop sleep (endpoints drop the pod first) and the server's own drain."""
    kubernetes = next(g for g in gateways if g.where == "kubernetes")
    pre_stop = GATEWAY_CONTAINER["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep"
    sleep = int(command[1])
    assert sleep >= 5
    grace = GATEWAY_POD["terminationGracePeriodSeconds"]
    assert grace > sleep + kubernetes.settings.shutdown_timeout

    compose = next(g for g in gateways if g.where == "compose")
    stop = re.fullmatch(r"(\d+)s", SERVICES["gateway"]["stop_grace_period"])
    assert stop is not None
    assert int(stop.group(1)) > compose.settings.shutdown_timeout


def test_rollouts_never_go_below_the_wanted_replicas(gateways: list[Gateway]) -> None:
    kubernetes = next(g for g in gateways if g.where == "kubernetes")
    spec = GATEWAY["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["replicas"] == kubernetes.settings.replicas == 3
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()

    budget = _one(BASE, "PodDisruptionBudget", "lamplighter")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] < spec["replicas"]

    autoscaler = _one(BASE, "HorizontalPodAutoscaler", "lamplighter")["spec"]
    assert autoscaler["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "lamplighter",
    }
    assert autoscaler["minReplicas"] == spec["replicas"] < autoscaler["maxReplicas"]
    assert [m["resource"]["name"] for m in autoscaler["metrics"]] == ["cpu"]
    assert "cpu" in GATEWAY_CONTAINER["resources"]["requests"], "the HPA needs a CPU request"

    service = _one(BASE, "Service", "lamplighter")["spec"]
    assert service["selector"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in GATEWAY_CONTAINER["ports"]}
    assert ports[service["ports"][0]["targetPort"]] == kubernetes.settings.port


def _vllm_checks(where: str, backends: list[UpstreamConfig], servers: dict[str, Doc]) -> None:
    """Each backend names a vLLM server (host -> its container) that serves its model, on its
    port, with its context window, enough sequences and priority scheduling."""
    assert {urlsplit(b.url).hostname for b in backends} == set(servers), where
    for backend in backends:
        container = servers[str(urlsplit(backend.url).hostname)]
        flags = _flags(container["args"])
        port = urlsplit(backend.url).port
        assert port == int(flags.get("--port", 8000)), f"{where} {backend.name}: port"
        assert flags["--served-model-name"] in backend.models, f"{where} {backend.name}: model"
        assert backend.n_ctx == int(flags["--max-model-len"]), f"{where} {backend.name}: n_ctx"
        assert backend.capacity <= int(flags["--max-num-seqs"]), f"{where} {backend.name}"
        assert flags["--scheduling-policy"] == "priority", f"{where} {backend.name}"
        assert backend.send_priority, f"{where} {backend.name}: priority = true"


def test_compose_backends_are_its_vllm_with_a_gpu(gateways: list[Gateway]) -> None:
    compose = next(g for g in gateways if g.where == "compose")
    vllm = SERVICES["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    _vllm_checks("compose", compose.backends, {"vllm": {"args": vllm["command"]}})
    assert vllm["environment"]["VLLM_API_KEY"] == compose.env["VLLM_API_KEY"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_kubernetes_backends_are_the_vllm_pods(gateways: list[Gateway]) -> None:
    kubernetes = next(g for g in gateways if g.where == "kubernetes")
    stateful = _one(BASE, "StatefulSet", "vllm")
    service = _one(BASE, "Service", stateful["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "pods get DNS names only behind a headless one"
    (container,) = stateful["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("vllm/vllm-openai:")
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    pods = {
        f"{stateful['metadata']['name']}-{n}.{service['metadata']['name']}": container
        for n in range(stateful["spec"]["replicas"])
    }
    _vllm_checks("kubernetes", kubernetes.backends, pods)
    # Both sides read the key from the same Secret entry.
    refs = [
        {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
        for c in (container, GATEWAY_CONTAINER)
    ]
    assert refs[0]["VLLM_API_KEY"] == refs[1]["VLLM_API_KEY"]

    # The try-it patch swaps vLLM for sim-backend, with the same contract and no GPU.
    (patch,) = _documents(TRY_IT / "sim-backend.yaml")
    (simulated,) = patch["spec"]["template"]["spec"]["containers"]
    assert simulated["command"] == ["lamplighter", "sim-backend"]
    flags = _flags(simulated["args"])
    simulated = {**simulated, "args": [*simulated["args"], "--served-model-name", flags["--model"]]}
    _vllm_checks("try-it", kubernetes.backends, dict.fromkeys(pods, simulated))
    assert simulated["resources"]["limits"]["nvidia.com/gpu"] is None


def test_compose_migrates_once_before_any_gateway_starts(gateways: list[Gateway]) -> None:
    migrate, gateway = SERVICES["migrate"], SERVICES["gateway"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["image"] == gateway["image"]
    assert migrate["environment"] == gateway["environment"]
    assert gateway["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert SERVICES["postgres"]["image"].startswith("postgres:16")
    assert SERVICES["redis"]["image"].startswith("redis:7")

    compose = next(g for g in gateways if g.where == "compose")
    assert int(gateway["deploy"]["replicas"]) == compose.settings.replicas > 1
    assert "ports" not in gateway, "gateways are reached through the load balancer only"

    job = _documents(KUBERNETES / "migrate-job.yaml")[0]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["db", "upgrade"]
    assert container["image"] == GATEWAY_CONTAINER["image"]
    (database,) = [e for e in container["env"] if e["name"] == "LAMPLIGHTER_DATABASE_URL"]
    assert database in GATEWAY_CONTAINER["env"], "the Job migrates the gateways' database"


def test_gateways_reach_postgres_and_redis_by_their_service_names(
    gateways: list[Gateway],
) -> None:
    """Compose and try-it run their own PostgreSQL and Redis: the URLs must name them."""
    services = {
        "compose": set(SERVICES),
        "try-it": {o["metadata"]["name"] for o in TRIED if o["kind"] == "Service"},
    }
    for gateway in gateways:
        if gateway.where not in services:
            continue  # external PostgreSQL and Redis
        for url in (gateway.settings.database_url, gateway.settings.redis_url):
            assert urlsplit(url).hostname in services[gateway.where], f"{gateway.where}: {url}"
    postgres = _one(TRIED, "StatefulSet", "postgres")["spec"]["template"]["spec"]
    (container,) = postgres["containers"]
    secret = _secret_values(TRIED, "lamplighter")
    password = next(e for e in container["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert (
        urlsplit(secret["LAMPLIGHTER_DATABASE_URL"]).password
        == secret[password["valueFrom"]["secretKeyRef"]["key"]]
    )
    compose = SERVICES["postgres"]["environment"]
    url = urlsplit(SERVICES["gateway"]["environment"]["LAMPLIGHTER_DATABASE_URL"])
    assert (url.username, url.password, url.path) == (
        compose["POSTGRES_USER"],
        compose["POSTGRES_PASSWORD"],
        "/" + compose["POSTGRES_DB"],
    )


def test_the_load_balancer_streams_and_reaches_every_gateway(gateways: list[Gateway]) -> None:
    compose = next(g for g in gateways if g.where == "compose")
    conf = (DEPLOY / "nginx.conf").read_text()
    config = re.sub(r"#.*", "", conf)
    directives = dict(
        re.findall(
            r"^\s*(proxy_buffering|proxy_read_timeout|client_max_body_size)\s+(\S+);", config, re.M
        )
    )
    assert directives["proxy_buffering"] == "off"
    read_timeout = re.fullmatch(r"(\d+)s", directives["proxy_read_timeout"])
    assert read_timeout is not None
    assert int(read_timeout.group(1)) >= max(b.timeout_s for b in compose.backends)
    body = re.fullmatch(r"(\d+)m", directives["client_max_body_size"])
    assert body is not None
    assert int(body.group(1)) * 1024 * 1024 > compose.settings.max_body_bytes

    (server,) = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", config, re.M)
    assert server == ("gateway", str(compose.settings.port))
    assert "proxy_pass http://lamplighter;" in config
    assert re.search(r"^\s*upstream\s+lamplighter\s*\{", config, re.M)
    # With FORWARDED_ALLOW_IPS="*" uvicorn believes the leftmost X-Forwarded-For address, so the
    # proxy must overwrite the header rather than append to what the client sent.
    assert compose.env["FORWARDED_ALLOW_IPS"] == "*"
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", config)
    lb = SERVICES["lb"]
    assert lb["depends_on"] == ["gateway"]
    assert lb["ports"] and lb["ports"][0].endswith(":8080")
    assert re.search(r"^\s*listen\s+8080;", config, re.M)


def test_every_manifest_is_applied_by_a_kustomization_or_documented_as_standalone() -> None:
    used: set[Path] = set()
    for folder in (KUBERNETES, TRY_IT):
        kustomization = _kustomization(folder)
        patches = [patch["path"] for patch in kustomization.get("patches", [])]
        for entry in kustomization["resources"] + patches:
            used.add((folder / entry).resolve())
    for path in KUBERNETES.rglob("*.yaml"):
        if path.name == "kustomization.yaml" or path.name in STANDALONE:
            continue
        assert path.resolve() in used, f"{path.relative_to(ROOT)} is in no kustomization"
    for path in used:
        assert path.exists(), f"a kustomization lists {path}, which does not exist"
    kinds = {(o["kind"], o["metadata"]["name"]) for o in TRIED}
    assert {("Secret", "lamplighter"), ("Service", "postgres"), ("Service", "redis")} <= kinds
