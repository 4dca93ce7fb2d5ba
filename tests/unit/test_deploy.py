"""The deployment files, checked without a container engine or a cluster.

(tests/containers builds the images and runs docker-compose.yml with a real
engine; this file checks what needs none, in seconds.)

- docker-compose.yml against the compose-spec JSON schema (the copy the npm
  package dclint ships, pinned in tools/package.json), with the pinned Python
  jsonschema;
- every kustomize rendering of deploy/k8s (kustomize from tools/go) against the
  Kubernetes JSON schemas of the PyPI package kubernetes-validate, by
  kubeconform (tools/go), strictly, for the oldest and the newest Kubernetes
  version the manifests support;
- the Dockerfiles and .dockerignore, and the Python image's lock file.

`make validate-deploy` runs this file. tests/integration/test_deploy.py runs
the images' commands as processes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.paths import REPO_ROOT, TOOLS_BIN

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = REPO_ROOT / "tools" / "node_modules" / "dclint" / "schemas" / "compose.schema.json"
DOCKERFILES = {
    "python": REPO_ROOT / "deploy" / "docker" / "python.Dockerfile",
    "go": REPO_ROOT / "deploy" / "docker" / "go.Dockerfile",
    "node": REPO_ROOT / "deploy" / "docker" / "node.Dockerfile",
}
K8S = REPO_ROOT / "deploy" / "k8s"
RENDERINGS = ("base", "overlays/dev")
# gRPC probes are GA since 1.27; 1.30 is the oldest release still maintained by
# a major provider, 1.37 the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KUSTOMIZE = TOOLS_BIN / "kustomize"
KUBECONFORM = TOOLS_BIN / "kubeconform"
MESH_PORT = 50051
RAVI_SERVICES = ("node-a", "node-b", "node-go", "node-js", "server", "restate-worker")
MESH_NODES = ("node-a", "node-b", "node-go", "node-js")
AGENT_POOLS = ("orchestrator", "writer", "reviewer", "formatter")


# --- helpers, shared with tests/integration/test_deploy.py ------------------------------


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as compose reads it (YAML merge keys resolved)."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


_DEFAULTED = re.compile(r"\$\{(?P<name>[A-Z_]+):-(?P<default>[^}]+)\}")


def compose_variables() -> dict[str, str]:
    """The compose file's variables that have a default (its images), by name."""
    found: dict[str, str] = {}
    for match in _DEFAULTED.finditer(COMPOSE_FILE.read_text()):
        default = found.setdefault(match["name"], match["default"])
        assert default == match["default"], f"{match['name']} has two defaults"
    return found


def resolve(value: str) -> str:
    """A compose string with `${NAME:-default}` replaced by its default."""
    return _DEFAULTED.sub(lambda match: match["default"], value)


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, by stage; exec-form arguments parsed."""

    stages: list[list[tuple[str, str]]] = field(default_factory=list)

    @property
    def final(self) -> list[tuple[str, str]]:
        return self.stages[-1]

    def last(self, instruction: str) -> str | None:
        values = [value for name, value in self.final if name == instruction]
        return values[-1] if values else None

    def exec_form(self, instruction: str) -> list[str]:
        """ENTRYPOINT or CMD of the final stage, which must be in exec (JSON) form."""
        value = self.last(instruction)
        assert value is not None, f"no {instruction}"
        parsed = json.loads(value)
        assert isinstance(parsed, list), f"{instruction} must be in exec form: {value}"
        return [str(part) for part in parsed]


def build_arguments(path: Path) -> dict[str, str]:
    """The ARGs a Dockerfile declares before its first FROM (its base images), with defaults."""
    arguments = {}
    for line in path.read_text().splitlines():
        if line.startswith("FROM"):
            break
        if line.startswith("ARG "):
            name, _, default = line.removeprefix("ARG ").partition("=")
            arguments[name] = default
    return arguments


def parse_dockerfile(path: Path) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    dockerfile = Dockerfile()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        name = name.upper()
        if name == "FROM":
            dockerfile.stages.append([])
        if dockerfile.stages:
            dockerfile.stages[-1].append((name, value.strip()))
    return dockerfile


def render(root: str) -> str:
    """`kustomize build deploy/k8s/ROOT`."""
    result = subprocess.run(
        [str(KUSTOMIZE), "build", str(K8S / root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def resources(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


# --- compose ------------------------------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # dclint's copy declares draft-07 without the trailing '#' that jsonschema
    # keys it by: name the draft, rather than let jsonschema guess.
    assert schema["$schema"].rstrip("#") == "https://json-schema.org/draft-07/schema"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def schema_errors(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_validator().iter_errors(document)
    ]


def test_the_compose_file_matches_the_compose_spec() -> None:
    assert schema_errors(load_compose()) == []


def test_the_compose_schema_check_rejects_a_broken_file() -> None:
    broken = load_compose()
    broken["services"]["node-a"]["depends_on"]["node-b"]["condition"] = "service_ready"
    broken["services"]["node-b"]["comand"] = ["node"]
    errors = schema_errors(broken)
    assert any(e.startswith("services/node-a/depends_on: ") for e in errors), errors
    assert any(e.startswith("services/node-b: 'comand'") for e in errors), errors


def flags(command: list[str]) -> dict[str, list[str]]:
    """--flag=value arguments by flag (compose commands use that form only)."""
    found: dict[str, list[str]] = {}
    for argument in command:
        name, _, value = argument.partition("=")
        found.setdefault(name, []).append(value)
    return found


def test_compose_wires_the_mesh_by_service_name() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(RAVI_SERVICES) | {"restate", "jaeger"} == set(services)
    for name in RAVI_SERVICES:
        service = services[name]
        assert set(service.get("depends_on", {})) <= set(services)
        assert service["read_only"] is True
        assert service["healthcheck"]["test"][0] == "CMD"
        command = flags(service["command"])
        if name == "restate-worker":
            assert service["command"][:2] == ["restate", "worker"]
            assert command["--advertise"] == ["http://restate-worker:9080"]
            assert command["--ingress"] == ["http://restate:8080"]
            assert command["--admin"] == ["http://restate:9070"]
            assert service["depends_on"]["restate"]["condition"] == "service_healthy"
            continue
        # The mesh's services: its token, and traces to Jaeger.
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert service["environment"]["RAVI_TOKEN"].startswith("${RAVI_TOKEN:?")
        for peer in command.get("--peer", []):
            _, _, address = peer.partition("=")
            host, _, port = address.rpartition(":")
            assert host in services, f"{name}: --peer {peer} names no service"
            assert int(port) == MESH_PORT
            assert services[name]["depends_on"][host]["condition"] == "service_healthy"
        if name == "server":
            assert command["--host"] == ["0.0.0.0"]
            assert service["ports"] == ["8000:8000"]
            continue
        assert command["--listen"] == [f"0.0.0.0:{MESH_PORT}"]
        assert command["--advertise"] == [f"{name}:{MESH_PORT}"]
        assert command["--node-id"] == [name]
        assert "--health-without-auth" in command


def test_every_long_running_service_has_a_health_check() -> None:
    services = load_compose()["services"]
    for name, service in services.items():
        check = service["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert check["start_interval"] == "1s", name


def test_compose_names_the_upstream_images_through_variables() -> None:
    """Defaults are the upstream images, so `docker compose up` needs no variable set."""
    services = load_compose()["services"]
    variables = compose_variables()
    assert services["restate"]["image"] == "${RESTATE_IMAGE:-docker.io/restatedev/restate:1.7.12}"
    # The restate-server the tests run (tools/package.json) is the image's version.
    tools = json.loads((REPO_ROOT / "tools" / "package.json").read_text())
    restate = tools["devDependencies"]["@restatedev/restate-server"]
    assert variables["RESTATE_IMAGE"] == f"docker.io/restatedev/restate:{restate}"
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", variables["JAEGER_IMAGE"])
    assert services["jaeger"]["image"] == "${JAEGER_IMAGE:-" + variables["JAEGER_IMAGE"] + "}"
    for name in RAVI_SERVICES:
        build = services[name]["build"]
        dockerfile = build_arguments(REPO_ROOT / build["dockerfile"])
        # Each base image ARG is passed, under its own name, defaulting to the Dockerfile's.
        assert build["args"] == {
            arg: f"${{{arg}:-{default}}}" for arg, default in dockerfile.items()
        }
    assert set(variables) == {
        "PYTHON_IMAGE",
        "GO_IMAGE",
        "NODE_IMAGE",
        "GO_RUNTIME_IMAGE",
        "NODE_RUNTIME_IMAGE",
        "RESTATE_IMAGE",
        "JAEGER_IMAGE",
    }


def test_compose_uses_the_demo_mesh_arguments() -> None:
    """The same agents per node as `ravi demo --mesh` (ravi._demo.run.run_mesh)."""
    services = load_compose()["services"]
    assert flags(services["node-b"]["command"])["--setup"] == ["ravi._demo.nodes:writer"]
    node_a = flags(services["node-a"]["command"])
    assert node_a["--setup"] == ["ravi._demo.nodes:node_a", "ravi.server:demo_setup"]
    assert node_a["--setup-arg"] == ["docs=/app/docs"]
    assert flags(services["node-go"]["command"])["--format-with"] == ["formatter"]


# --- images -------------------------------------------------------------------------------


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfiles_are_multi_stage_and_run_as_non_root(image: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[image])
    assert len(dockerfile.stages) >= 2
    user = dockerfile.last("USER")
    assert user is not None
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user} must be numeric, non-root"
    assert dockerfile.exec_form("ENTRYPOINT")
    assert dockerfile.exec_form("CMD")[0] == "node"
    assert f"0.0.0.0:{MESH_PORT}" in dockerfile.exec_form("CMD")


def test_compose_builds_each_ravi_service_from_its_dockerfile() -> None:
    services = load_compose()["services"]
    built = {name: services[name]["build"]["dockerfile"] for name in RAVI_SERVICES}
    assert built == {
        "node-a": "deploy/docker/python.Dockerfile",
        "node-b": "deploy/docker/python.Dockerfile",
        "server": "deploy/docker/python.Dockerfile",
        "restate-worker": "deploy/docker/python.Dockerfile",
        "node-go": "deploy/docker/go.Dockerfile",
        "node-js": "deploy/docker/node.Dockerfile",
    }
    assert all(services[name]["build"]["context"] == "." for name in RAVI_SERVICES)


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context.

    Docker's rules: patterns match the path or one of its parent folders, the
    last matching pattern decides, and `!` lets a path back in.
    """
    allowed = True
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            allowed = negated
    return allowed


def copy_sources(dockerfile: Dockerfile) -> Iterator[str]:
    """The build-context paths the Dockerfile COPYs (not those from other stages)."""
    for stage in dockerfile.stages:
        for name, value in stage:
            if name != "COPY" or value.startswith("--from"):
                continue
            *sources, _ = shlex.split(value)
            yield from sources


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_copy_source_exists_and_is_in_the_build_context(image: str) -> None:
    sources = list(copy_sources(parse_dockerfile(DOCKERFILES[image])))
    assert sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert dockerignore_allows(source), f".dockerignore keeps {source} out"
    for private in (".venv/bin/python", "node_modules/x", "interop/node/dist/src/cli.js"):
        assert not dockerignore_allows(private)
    assert not dockerignore_allows("python/src/ravi/__pycache__/x.pyc")


def locked(path: Path) -> dict[str, str]:
    """name -> version of a pip-compile lock file."""
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", path.read_text(), flags=re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


def test_the_python_image_lock_matches_the_tools_lock_and_is_complete() -> None:
    image = locked(REPO_ROOT / "deploy" / "docker" / "requirements.txt")
    tools = locked(REPO_ROOT / "tools" / "requirements.txt")
    drift = {name: (v, tools.get(name)) for name, v in image.items() if tools.get(name) != v}
    assert drift == {}, f"run `make lock-images` after `make lock`: {drift}"
    # Every dependency of ravi[server,telemetry,restate,postgres] and of hatchling is locked:
    # walked through the metadata of this virtualenv, which has the same pins.
    wanted = ["hatchling", *_requirements("ravi", {"server", "telemetry", "restate", "postgres"})]
    seen: set[str] = set()
    while wanted:
        name = canonicalize_name(wanted.pop())
        if name in seen or name == "ravi":
            continue
        seen.add(name)
        wanted.extend(_requirements(name, set()))
    assert seen - set(image) == set(), "missing from deploy/docker/requirements.txt"


def test_the_demo_lock_matches_the_tools_lock_and_is_complete() -> None:
    """`make demo` installs tools/requirements-demo.txt alone on a machine without a venv."""
    demo = locked(REPO_ROOT / "tools" / "requirements-demo.txt")
    tools = locked(REPO_ROOT / "tools" / "requirements.txt")
    drift = {name: (v, tools.get(name)) for name, v in demo.items() if tools.get(name) != v}
    assert drift == {}, f"run `make lock-demo` after `make lock`: {drift}"
    wanted = ["hatchling", *_requirements("ravi", {"telemetry"})]
    seen: set[str] = set()
    while wanted:
        name = canonicalize_name(wanted.pop())
        if name in seen or name == "ravi":
            continue
        seen.add(name)
        wanted.extend(_requirements(name, set()))
    assert seen - set(demo) == set(), "missing from tools/requirements-demo.txt"


def _requirements(distribution: str, extras: set[str]) -> list[str]:
    names = []
    for line in importlib.metadata.requires(distribution) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""}):
            names.append(requirement.name)
    return names


# --- kubernetes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> str:
    """kubernetes-validate's schemas, laid out as kubeconform loads local files.

    Its schemas `$ref` a shared `_definitions.json` by the `$id` URL its own
    resolver registers; kubeconform resolves references against the file, so
    each copy drops the `$id` and refers to `_definitions.json` beside it.
    """
    root = tmp_path_factory.mktemp("kubernetes-json-schema")
    shipped = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    for version in KUBERNETES_VERSIONS:
        name = f"v{version}-local-strict"
        (root / name).mkdir()
        for schema in shipped.joinpath(name).iterdir():
            text = schema.read_text().replace('"/api/_definitions.json#', '"_definitions.json#')
            document = json.loads(text)
            if isinstance(document, dict):
                document.pop("$id", None)
            (root / name / schema.name).write_text(json.dumps(document))
    folder = "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}"
    return f"{root}/{folder}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"


def kubeconform(rendered: str, version: str, schemas: str) -> list[dict[str, str]]:
    result = subprocess.run(
        [
            *(str(KUBECONFORM), "-strict", "-output", "json", "-verbose"),
            *("-kubernetes-version", version, "-schema-location", schemas, "-"),
        ],
        input=rendered,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report: list[dict[str, str]] = json.loads(result.stdout)["resources"]
    return report


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_manifests_match_the_kubernetes_schemas(version: str, schemas: str) -> None:
    # Every rendering in one run: kubeconform compiles each kind's schema once.
    rendered = "\n---\n".join(render(root) for root in RENDERINGS)
    report = kubeconform(rendered, version, schemas)
    assert len(report) == len(resources(rendered)) > 0
    failed = [r for r in report if r["status"] != "statusValid"]
    assert failed == []


def test_the_kubernetes_schema_check_rejects_a_broken_manifest(schemas: str) -> None:
    deployment = next(r for r in resources(render("base")) if r["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"]["port"] = "grpc"  # gRPC probes take a number
    container["comand"] = ["ravi"]
    (result,) = kubeconform(yaml.safe_dump(deployment), KUBERNETES_VERSIONS[-1], schemas)
    assert result["status"] == "statusInvalid"
    assert "comand" in result["msg"]
    assert "/readinessProbe/grpc/port" in result["msg"]


def test_each_agent_pool_is_a_deployment_behind_a_headless_service() -> None:
    rendered = resources(render("base"))
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for resource in rendered:
        by_kind.setdefault(resource["kind"], {})[resource["metadata"]["name"]] = resource
    assert set(by_kind["Deployment"]) == {*AGENT_POOLS, "server"}
    for pool in AGENT_POOLS:
        deployment, service = by_kind["Deployment"][pool], by_kind["Service"][pool]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["livenessProbe"]["grpc"] == {"port": MESH_PORT}
        assert container["readinessProbe"]["grpc"] == {
            "port": MESH_PORT,
            "service": "ravi.mesh.v1.AgentService",
        }
        args = flags(container["args"])
        assert args["--listen"] == [f"0.0.0.0:{MESH_PORT}"]
        assert args["--advertise"] == [f"$(POD_IP):{MESH_PORT}"]
        assert args["--node-id"] == ["$(POD_NAME)"]
        env = {e["name"] for e in container["env"]}
        assert {"POD_NAME", "POD_IP", "RAVI_TOKEN"} <= env
        assert container["envFrom"][0]["configMapRef"]["name"].startswith("ravi-config")
    orchestrator = by_kind["Deployment"]["orchestrator"]["spec"]["template"]["spec"]
    assert flags(orchestrator["containers"][0]["args"])["--peer"] == [
        f"{pool}=dns:{pool}:{MESH_PORT}" for pool in ("writer", "reviewer", "formatter")
    ]
    assert "Namespace" not in by_kind
    assert "jaeger" not in by_kind["Deployment"]
    assert "StatefulSet" not in by_kind


def test_the_dev_overlay_adds_jaeger_restate_and_the_secrets() -> None:
    rendered = resources(render("overlays/dev"))
    names = {(r["kind"], r["metadata"]["name"].rsplit("-", 1)[0]) for r in rendered}
    assert {("Deployment", "jaeger"), ("StatefulSet", "restate"), ("Namespace", "ravi")} <= names
    assert {("Secret", "ravi-mesh-token"), ("Secret", "ravi-server-token")} <= names
    assert {r["metadata"].get("namespace", "ravi-dev") for r in rendered} == {"ravi-dev"}
    (config,) = [r for r in rendered if r["metadata"]["name"].startswith("ravi-config")]
    assert config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
    secrets = {r["metadata"]["name"] for r in rendered if r["kind"] == "Secret"}
    for deployment in (r for r in rendered if r["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                reference = env.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    assert reference["name"] in secrets


def test_compose_and_kubernetes_share_the_jaeger_configuration() -> None:
    (volume,) = load_compose()["services"]["jaeger"]["volumes"]
    source, target, _ = volume.split(":")
    assert (REPO_ROOT / source).resolve() == K8S / "components" / "jaeger" / "jaeger.yaml"
    assert target == "/etc/jaeger/config.yaml"
