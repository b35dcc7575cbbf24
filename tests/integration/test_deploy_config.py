"""Offline checks of the deployment files, run in CI with no Docker engine, no cluster and no network.

- docker-compose.yml: interpolated the way Compose does it, then validated against the Compose
  Specification's JSON schema (the copy that the `check-jsonschema` dev dependency vendors; Docker Compose
  v2 validates against the same schema), then checks of our own that the schema cannot express.
- infra/k8s: every manifest listed in kustomization.yaml, validated strictly (unknown fields rejected)
  against the Kubernetes API schemas shipped by the `kubernetes-validate` dev dependency; KEDA's
  ScaledObject (a CRD, in no such package) against KEDA_SCALEDOBJECT_SCHEMA below.
- The environment a worker gets from each loads into `schema.contracts.settings.Settings` and points at the real
  services, with secrets replaced by placeholders.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.transport.celery_app import prefetch_multiplier, task_concurrency

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S_DIR = REPO / "infra" / "k8s"
REDIS_CONF = REPO / "infra" / "redis" / "redis.conf"

# The `${VAR:?…}` variables compose must refuse to start without, and placeholders for them.
COMPOSE_SECRETS = {
    "POSTGRES_PASSWORD": "placeholder-postgres-password",
    "MINIO_ROOT_PASSWORD": "placeholder-minio-password",
    "VLMBATCH_BROWSER_TOKEN": "placeholder-browser-token",
}
# Oldest Kubernetes minor still in common support, and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")
SECRET_NAME = "vlmbatch-secrets"
# Seconds a stopping worker needs besides VLMBATCH_SHUTDOWN_GRACE_SECONDS: Celery's warm shutdown, handing
# leases back, the maintenance thread (joined for up to 10 s), engine teardown.
HAND_BACK_MARGIN_S = 30

# KEDA's ScaledObject CRD ships in no Python or npm package as a JSON schema we could use offline, so this
# is a strict schema written for the fields these manifests use. Field names and types follow the CRD of
# KEDA 2.16 (cross-checked against the models cloudcoil-models-keda 2.16.1 generates from it); unlike the
# CRD, unknown fields are rejected, and the redis trigger's metadata keys are those KEDA's redis scaler
# documents. HPA behaviour and object metadata reuse the Kubernetes schemas.
_K8S_DEFS = "https://kubernetes.io/api/_definitions.json#/$defs/"
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_REDIS_TRIGGER_KEYS = [
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
]
KEDA_SCALEDOBJECT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"$ref": _K8S_DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": {"type": "integer"}, "replicas": {"type": "integer"}},
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "$ref": _K8S_DEFS + "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"
                                },
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "authenticationRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                            # The CRD types trigger metadata as a map of strings: `listLength: 16` is refused.
                            "metadata": _STRINGS,
                        },
                        "if": {"properties": {"type": {"const": "redis"}}},
                        "then": {
                            "properties": {
                                "metadata": {
                                    "required": ["listName", "listLength"],
                                    "propertyNames": {"enum": _REDIS_TRIGGER_KEYS},
                                    "properties": {
                                        "listLength": {"pattern": "^[1-9][0-9]*$"},
                                        "activationListLength": {"pattern": "^[0-9]+$"},
                                        "databaseIndex": {"pattern": "^[0-9]+$"},
                                    },
                                }
                            }
                        },
                    },
                },
            },
        },
    },
}


# --- docker compose ---------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)
# Go's time.ParseDuration syntax, which Compose uses for every duration field.
_GO_DURATION = re.compile(r"(?:(?P<value>[0-9]+(?:\.[0-9]+)?)(?P<unit>ns|us|µs|ms|s|m|h))")
_GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class MissingRequiredVariable(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match["escaped"]:
        return "$"
    if match["named"]:
        return env.get(match["named"], "")
    braced = _BRACED.fullmatch(match["braced"])
    assert braced, f"unsupported interpolation ${{{match['braced']}}}"
    name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
    assert "$" not in arg, f"nested interpolation in ${{{match['braced']}}} is not handled by this check"
    value = env.get(name)
    if op is None:
        return value or ""
    # With a colon, an empty value counts as unset (`${VAR:-default}`); without one, only an unset one does.
    missing = value is None or (op.startswith(":") and value == "")
    if op.endswith("-"):
        return arg if missing else str(value)
    if op.endswith("?"):
        if missing:
            raise MissingRequiredVariable(name, arg)
        return str(value)
    return "" if missing else arg  # `${VAR:+alternative}`


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """The file as Compose sees it once variables are substituted into its values (keys are left alone)."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, str):
        return _VARIABLE.sub(lambda match: _substitute(match, env), node)
    return node


def go_duration_seconds(text: str) -> float:
    assert re.fullmatch(f"(?:{_GO_DURATION.pattern})+", text), f"{text!r} is not a Go duration"
    return sum(float(m["value"]) * _GO_UNITS_S[m["unit"]] for m in _GO_DURATION.finditer(text))


@pytest.fixture(scope="module")
def compose_raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose(compose_raw: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml interpolated with placeholder secrets and every other variable at its default."""
    result = interpolate(compose_raw, COMPOSE_SECRETS)
    assert isinstance(result, dict)
    return result


def compose_spec_validator() -> jsonschema.protocols.Validator:
    schemas = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(schemas.joinpath("compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def schema_errors(validator: jsonschema.protocols.Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda error: list(map(str, error.path)))
    ]


def workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("command") == ["worker"]}


def test_compose_file_matches_the_compose_specification(compose_raw: dict[str, Any], compose: dict[str, Any]) -> None:
    validator = compose_spec_validator()
    assert schema_errors(validator, compose_raw) == []
    assert schema_errors(validator, compose) == []


def test_compose_spec_check_rejects_a_misspelt_key(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["stop_grace_periode"] = broken["services"]["worker"].pop("stop_grace_period")
    assert schema_errors(compose_spec_validator(), broken) != []


@pytest.mark.parametrize("variable", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_each_secret(compose_raw: dict[str, Any], variable: str) -> None:
    env = {name: value for name, value in COMPOSE_SECRETS.items() if name != variable}
    with pytest.raises(MissingRequiredVariable) as refused:
        interpolate(compose_raw, env)
    assert refused.value.name == variable
    assert f"set {variable}" in str(refused.value)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def test_compose_requires_exactly_the_secrets_and_never_defaults_them(compose_raw: dict[str, Any]) -> None:
    uses = [
        _BRACED.fullmatch(m["braced"]) for text in strings(compose_raw) for m in _VARIABLE.finditer(text) if m["braced"]
    ]
    required = {use["name"] for use in uses if use and use["op"] in (":?", "?")}
    assert required == set(COMPOSE_SECRETS)
    # Every use of a secret is `${VAR:?…}`: a default in one place would start the stack with a known password.
    assert {use["op"] for use in uses if use and use["name"] in COMPOSE_SECRETS} == {":?"}


def test_compose_durations_parse_as_go_durations(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for field in ("interval", "timeout", "start_period", "start_interval"):
            if field in service.get("healthcheck", {}):
                go_duration_seconds(service["healthcheck"][field])
        if "stop_grace_period" in service:
            go_duration_seconds(service["stop_grace_period"])


def test_compose_dependencies_wait_for_healthchecks_and_one_shot_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must state a condition for each service"
        for target, rule in depends_on.items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
            else:
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
                assert services[target].get("restart") == "no", f"{target} must be a one-shot service"


def test_compose_long_running_services_have_healthchecks_and_restart(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no" or "tools" in service.get("profiles", []):
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, name


def test_compose_publishes_ports_on_localhost_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r}"


def test_compose_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name} mounts undeclared volume {source}"


def test_compose_workers_reserve_nvidia_gpus_and_split_them(compose: dict[str, Any]) -> None:
    found = workers(compose)
    assert {"worker", "worker-2"} <= set(found)
    gpus_seen: set[str] = set()
    for name, service in found.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        env = service["environment"]
        gpus = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert len(gpus) == int(env["VLMBATCH_TENSOR_PARALLEL_SIZE"]), f"{name}: TP size != its GPUs"
        assert gpus_seen.isdisjoint(gpus), f"{name} shares GPUs {gpus} with another worker"
        gpus_seen.update(gpus)
    # Only the first worker starts by default; further ones are opt-in profiles.
    assert "profiles" not in found["worker"]
    assert all(service.get("profiles") for name, service in found.items() if name != "worker")


def test_compose_workers_stop_gracefully_and_come_back(compose: dict[str, Any]) -> None:
    for name, service in workers(compose).items():
        grace = float(service["environment"]["VLMBATCH_SHUTDOWN_GRACE_SECONDS"])
        assert go_duration_seconds(service["stop_grace_period"]) >= grace + HAND_BACK_MARGIN_S, name
        # Exits 3 (engine died) and 4 (consumer stalled) must bring the worker back.
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}, name
        assert "/models" in [volume.split(":")[1] for volume in service["volumes"]], name
        assert service["shm_size"], name
        assert service["environment"]["VLMBATCH_METRICS_PORT"] == "9400"
        assert "9400" in service["healthcheck"]["test"][-1]


def test_compose_redis_keeps_messages(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    conf_mount = next(v for v in redis["volumes"] if v.startswith("./infra/redis/redis.conf:"))
    assert conf_mount.split(":")[1] in redis["command"]
    directives = dict(
        line.split(None, 1) for line in REDIS_CONF.read_text().splitlines() if line.strip() and line[0] != "#"
    )
    assert directives["appendonly"] == "yes"
    assert directives["maxmemory-policy"] == "noeviction"
    assert "redis-data:/data" in redis["volumes"]


def test_compose_one_shot_services_do_their_job(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "mc mb --ignore-existing" in services["minio-bucket"]["command"][0]


def test_compose_browser_serves_on_localhost_with_a_token(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = compose["services"]["browser"]
    assert browser["command"] == ["serve", "--host", "0.0.0.0", "--port", "8800"]
    assert browser["ports"] == ["127.0.0.1:8800:8800"]
    env = {key: str(value) for key, value in browser["environment"].items()}
    settings = settings_from(env, monkeypatch)
    assert settings.browser_token is not None
    assert settings.browser_token.get_secret_value() == COMPOSE_SECRETS["VLMBATCH_BROWSER_TOKEN"]
    assert settings.resolved_database_url().startswith("postgresql+psycopg://")


# --- Kubernetes -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    document = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def manifests(kustomization: dict[str, Any]) -> list[dict[str, Any]]:
    """What `kubectl kustomize infra/k8s` renders: the kustomization only lists resources (checked below)."""
    documents = []
    for resource in kustomization["resources"]:
        documents += [doc for doc in yaml.safe_load_all((K8S_DIR / resource).read_text()) if doc]
    return documents


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in manifests if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def secret_keys_documented(kustomization_text: str) -> dict[str, str]:
    """The `--from-literal=KEY=VALUE` example in kustomization.yaml's comment: keys and example values."""
    command = " ".join(
        line.lstrip("# ").rstrip("\\ ") for line in kustomization_text.splitlines() if "--from-literal" in line
    )
    pairs = [word.split("=", 2)[1:] for word in shlex.split(command) if word.startswith("--from-literal=")]
    return {key: value for key, value in pairs}


def container_environment(workload: dict[str, Any], manifests: list[dict[str, Any]]) -> dict[str, str]:
    """The environment of the workload's container, with each secret replaced by its documented example."""
    examples = secret_keys_documented((K8S_DIR / "kustomization.yaml").read_text())
    spec = container(workload)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(find(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in spec.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = examples[ref["key"]]
    return env


def kubernetes_definitions_registry(version: str) -> Registry:
    package = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((package / f"v{version}.0-local-strict" / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


def test_kustomization_renders_every_manifest_and_nothing_else(kustomization: dict[str, Any]) -> None:
    # Only `resources`: kustomize then renders the files as they are, which is what `manifests` loads.
    assert set(kustomization) == {"apiVersion", "kind", "resources"}
    on_disk = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(manifests: list[dict[str, Any]], version: str) -> None:
    checked = 0
    for document in manifests:
        if document["apiVersion"].startswith("keda.sh/"):
            continue
        name = f"{document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} (Kubernetes {version}): {'.'.join(map(str, error.path))}: {error.message}")
        checked += 1
    assert checked == len(manifests) - 1


def test_kubernetes_check_rejects_a_misspelt_field(manifests: list[dict[str, Any]]) -> None:
    broken = json.loads(json.dumps(find(manifests, "Deployment", "vlmbatch-worker")))
    spec = broken["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_scaledobject_matches_the_keda_schema(manifests: list[dict[str, Any]], version: str) -> None:
    validator = jsonschema.Draft202012Validator(
        KEDA_SCALEDOBJECT_SCHEMA, registry=kubernetes_definitions_registry(version)
    )
    scaled_object = find(manifests, "ScaledObject", "vlmbatch-worker")
    assert schema_errors(validator, scaled_object) == []
    broken = json.loads(json.dumps(scaled_object))
    broken["spec"]["triggers"][0]["metadata"]["listLength"] = 16  # an integer: KEDA's CRD refuses it
    broken["spec"]["cooldownPerod"] = 300
    assert len(schema_errors(validator, broken)) == 2


def test_manifests_name_no_namespace_and_commit_no_secret(manifests: list[dict[str, Any]]) -> None:
    assert all("namespace" not in document["metadata"] for document in manifests)
    assert "Secret" not in {document["kind"] for document in manifests}


def test_secret_keys_used_are_the_documented_ones(manifests: list[dict[str, Any]]) -> None:
    documented = secret_keys_documented((K8S_DIR / "kustomization.yaml").read_text())
    used = set()
    for document in manifests:
        if document["kind"] not in {"Deployment", "Job"}:
            continue
        for variable in container(document).get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == SECRET_NAME
                used.add(ref["key"])
    assert used == set(documented)


def test_workloads_refer_to_objects_that_exist(manifests: list[dict[str, Any]]) -> None:
    for document in manifests:
        if document["kind"] not in {"Deployment", "Job"}:
            continue
        pod = document["spec"]["template"]
        for source in container(document).get("envFrom", []):
            find(manifests, "ConfigMap", source["configMapRef"]["name"])
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                find(manifests, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        if document["kind"] == "Deployment":
            assert document["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_worker_gets_its_gpus_shm_model_cache_and_probes(manifests: list[dict[str, Any]]) -> None:
    deployment = find(manifests, "Deployment", "vlmbatch-worker")
    pod = deployment["spec"]["template"]["spec"]
    worker = container(deployment)
    env = container_environment(deployment, manifests)
    tp_size = int(env["VLMBATCH_TENSOR_PARALLEL_SIZE"])
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == tp_size
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == tp_size
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in worker["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert "persistentVolumeClaim" in volumes[mounts[env["HF_HOME"]]]
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert ports["metrics"] == int(env["VLMBATCH_METRICS_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert worker[probe]["httpGet"]["port"] == "metrics", probe
    assert pod["restartPolicy"] == "Always"
    grace = float(env["VLMBATCH_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] >= grace + HAND_BACK_MARGIN_S
    assert worker["args"] == ["worker"]


def test_scaledobject_scales_workers_on_their_queue(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = find(manifests, "Deployment", "vlmbatch-worker")
    spec = find(manifests, "ScaledObject", "vlmbatch-worker")["spec"]
    env = container_environment(deployment, manifests)
    settings = settings_from(env, monkeypatch)
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vlmbatch-worker"}
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert metadata["listName"] == settings.queue
    # Target per worker = the messages one worker holds (task threads x prefetch).
    assert int(metadata["listLength"]) == task_concurrency(settings) * prefetch_multiplier(settings)
    # KEDA reads these from the worker container's environment.
    assert metadata["addressFromEnv"] in env
    assert metadata["passwordFromEnv"] in env
    assert metadata["databaseIndex"] == env["VLMBATCH_BROKER_URL"].rsplit("/", 1)[1]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0


def test_disruption_budget_and_service_select_their_pods(manifests: list[dict[str, Any]]) -> None:
    worker_labels = find(manifests, "Deployment", "vlmbatch-worker")["spec"]["template"]["metadata"]["labels"]
    budget = find(manifests, "PodDisruptionBudget", "vlmbatch-worker")["spec"]
    assert budget["selector"]["matchLabels"].items() <= worker_labels.items()
    assert budget["maxUnavailable"] == 1
    browser = find(manifests, "Deployment", "vlmbatch-browser")
    service = find(manifests, "Service", "vlmbatch-browser")["spec"]
    assert service["selector"].items() <= browser["spec"]["template"]["metadata"]["labels"].items()
    port_names = {port["name"] for port in container(browser)["ports"]}
    assert {port["targetPort"] for port in service["ports"]} <= port_names
    assert container(browser)["args"] == ["serve", "--host", "0.0.0.0", "--port", "8800"]


def test_browser_gets_its_token_and_the_database(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    browser = find(manifests, "Deployment", "vlmbatch-browser")
    settings = settings_from(container_environment(browser, manifests), monkeypatch)
    assert settings.browser_token is not None
    assert settings.resolved_database_url().startswith("postgresql+psycopg://")


def test_migration_job_upgrades_the_database(manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    job = find(manifests, "Job", "vlmbatch-migrate")
    assert container(job)["args"] == ["db", "upgrade"]
    assert job["spec"]["backoffLimit"] >= 3  # the retries are the wait-for-database
    settings = settings_from(container_environment(job, manifests), monkeypatch)
    assert settings.resolved_database_url().startswith("postgresql+psycopg://")


# --- the settings a worker needs ---------------------------------------------------------------------------------


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def assert_worker_settings(settings: Settings, env: Mapping[str, str]) -> None:
    assert not settings.uses_embedded_files()
    assert settings.resolved_database_url().startswith("postgresql+psycopg://")
    assert settings.resolved_broker_url().startswith("redis://")
    assert settings.s3_endpoint_url and settings.s3_endpoint_url.startswith(("http://", "https://"))
    assert settings.model == "Skywork/Skywork-R1V3-38B"
    assert settings.tensor_parallel_size == int(env["VLMBATCH_TENSOR_PARALLEL_SIZE"])
    assert settings.auto_migrate is False
    assert settings.trust_remote_code is True
    assert settings.shutdown_grace_seconds == float(env["VLMBATCH_SHUTDOWN_GRACE_SECONDS"])
    assert settings.metrics_port == int(env["VLMBATCH_METRICS_PORT"])  # what the probes and healthcheck hit
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name], name


def compose_environments(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, str]]]:
    for name, service in workers(compose).items():
        yield name, {key: str(value) for key, value in service["environment"].items()}


def test_compose_worker_environment_loads_into_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for _name, env in compose_environments(compose):
        assert_worker_settings(settings_from(env, monkeypatch), env)


def test_kubernetes_worker_environment_loads_into_settings(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = container_environment(find(manifests, "Deployment", "vlmbatch-worker"), manifests)
    assert_worker_settings(settings_from(env, monkeypatch), env)
