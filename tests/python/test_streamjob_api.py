"""The StreamJob API offline: the generated CRD is a valid CustomResourceDefinition, the samples
validate against its openAPIV3Schema (types, enums, ranges), bad objects are refused by the schema,
and the children the operator renders for the samples are valid Kubernetes objects."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "streamjob.yaml"
SAMPLES = sorted((ROOT / "operator" / "samples").glob("*.yaml"))
K8S_VERSION = "1.33.0"


def crd() -> dict:
    return yaml.safe_load(CRD.read_text())


def schema() -> dict:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def to_json_schema(node):
    """OpenAPI v3 structural schema -> JSON Schema: drop Kubernetes extensions, map
    `x-kubernetes-int-or-string` and `nullable`."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    return out


def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(to_json_schema(schema()))


def test_the_crd_is_a_valid_custom_resource_definition():
    kubernetes_validate.validate(crd(), K8S_VERSION, strict=True)


def test_there_are_a_minimal_and_a_full_sample():
    assert {p.name for p in SAMPLES} >= {"minimal.yaml", "full.yaml"}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_every_sample_validates_against_the_crd_schema(sample):
    document = yaml.safe_load(sample.read_text())
    errors = sorted(validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "path, value, fragment",
    [
        (["spec", "replicas"], -1, "minimum"),
        (["spec", "replicas"], "3", "not of type"),
        (["spec", "upgradeMode"], "blue-green", "is not one of"),
        (["spec", "state"], "paused", "is not one of"),
        (["spec", "kafka", "startingOffsets"], "middle", "is not one of"),
        (["spec", "batch", "maxEvents"], 0, "minimum"),
        (["spec", "savepoint", "onDelete", "pvc"], "archive", "is not one of"),
    ],
)
def test_the_schema_refuses_bad_types_enums_and_ranges(path, value, fragment):
    document = yaml.safe_load((ROOT / "operator" / "samples" / "full.yaml").read_text())
    bad = copy.deepcopy(document)
    cursor = bad
    for key in path[:-1]:
        cursor = cursor[key]
    cursor[path[-1]] = value
    messages = [e.message for e in validator().iter_errors(bad)]
    assert any(fragment in m for m in messages), messages


def test_a_negative_replica_count_gets_one_message():
    document = yaml.safe_load((ROOT / "operator" / "samples" / "minimal.yaml").read_text())
    document["spec"]["replicas"] = -1
    messages = [e.message for e in validator().iter_errors(document)]
    assert len(messages) == 1 and "minimum" in messages[0], messages


def test_required_fields_are_required():
    document = yaml.safe_load((ROOT / "operator" / "samples" / "minimal.yaml").read_text())
    del document["spec"]["kafka"]
    messages = [e.message for e in validator().iter_errors(document)]
    assert any("'kafka' is a required property" in m for m in messages), messages


def test_every_rule_has_a_message_naming_a_field():
    rules = []

    def walk(node):
        if isinstance(node, dict):
            rules.extend(node.get("x-kubernetes-validations", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema()["properties"]["spec"])
    assert len(rules) >= 20
    for rule in rules:
        message = rule.get("message", "")
        assert message.startswith("spec.") or message.startswith("secret ref"), rule


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_rendered_children_are_valid_kubernetes_objects(sample, operator_cli):
    rendered = operator_cli("render", "-f", str(sample))
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    assert [d["kind"] for d in documents] == [
        "ConfigMap",
        "PersistentVolumeClaim",
        "Service",
        "Deployment",
        "Deployment",
        # one per component, on by default (spec.networkPolicy.enabled)
        "NetworkPolicy",
        "NetworkPolicy",
    ]
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_the_readme_production_connection_examples_validate_against_the_crd():
    """README "Production connections": each ```yaml spec fragment, put into the minimal sample,
    is a valid StreamJob (so the documented fields exist and have the documented shapes)."""
    import re

    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Production connections\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README has a 'Production connections' section"
    fragments = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section[1], re.S)]
    assert {next(iter(f["spec"])) for f in fragments} == {"redis", "kafka"}
    base = yaml.safe_load((ROOT / "operator" / "samples" / "minimal.yaml").read_text())
    for fragment in fragments:
        document = copy.deepcopy(base)
        document["spec"].update(fragment["spec"])
        errors = sorted(validator().iter_errors(document), key=lambda e: list(e.path))
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_sentinel_tls_sample_renders_tls_files_for_the_sentinel_client(operator_cli):
    """operator/samples/sentinel-tls.yaml: job.yaml keeps rediss:// with the sentinels and points
    sink.redis.tls at the mounted CA; the taskmanagers mount the CA Secret as a file and get both
    passwords (primary and sentinels) from Secrets, never in the ConfigMap."""
    sample = ROOT / "operator" / "samples" / "sentinel-tls.yaml"
    rendered = operator_cli("render", "-f", str(sample))
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    redis = yaml.safe_load(config_map["data"]["job.yaml"])["sink"]["redis"]
    assert redis["url"].startswith("rediss://")
    assert redis["tls"] == {"caFile": "/etc/streamjob-redis-tls/ca.crt"}
    assert redis["sentinel"]["masterName"] == "trace" and len(redis["sentinel"]["nodes"]) == 3
    assert "password" not in redis and "password" not in redis["sentinel"]
    taskmanager = next(
        d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-taskmanager")
    )
    pod = taskmanager["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
    assert secret_env["STREAMJOB_REDIS_PASSWORD"] == {"name": "redis-credentials", "key": "password", "optional": False}
    assert secret_env["STREAMJOB_REDIS_SENTINEL_PASSWORD"] == {"name": "redis-credentials", "key": "sentinel-password", "optional": False}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["redis-tls"]["mountPath"] == "/etc/streamjob-redis-tls" and mounts["redis-tls"]["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == "redis-tls")
    [source] = volume["projected"]["sources"]
    assert source["secret"]["name"] == "redis-tls"
    assert source["secret"]["items"] == [{"key": "ca.crt", "mode": 288, "path": "ca.crt"}]
