"""The README's "Quick start on Kubernetes" and "Container images" sections, checked against
what they describe: every command names a file, chart value, object, field, port and image that
really exists, so the quick start cannot silently rot when the chart, the samples, the CRD or the
Dockerfile change."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from conftest import CHART, CRD_SOURCE, ROOT
from test_dockerfile import TARGETS, parse_dockerfile

README = ROOT / "README.md"
SAMPLE = ROOT / "operator" / "samples" / "minimal.yaml"


def _section(title: str) -> str:
    text = README.read_text()
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    return m[1]


def _commands(section: str) -> list[list[str]]:
    """Shell commands of the section's ```sh blocks (continuations joined, comments dropped)."""
    out: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"\s+&&\s+", line):
                out.append(shlex.split(part.rstrip("&").strip()))
    return out


@pytest.fixture(scope="module")
def quick_start() -> list[list[str]]:
    cmds = _commands(_section("Quick start on Kubernetes"))
    assert cmds, "the quick start has no commands"
    return cmds


@pytest.fixture(scope="module")
def sample() -> dict:
    assert SAMPLE.is_file(), f"the quick start applies {SAMPLE.relative_to(ROOT)}, which is missing"
    return yaml.safe_load(SAMPLE.read_text())


def _find(cmds, *prefix: str) -> list[list[str]]:
    return [c for c in cmds if c[: len(prefix)] == list(prefix)]


def _opt(cmd: list[str], *names: str) -> str | None:
    for i, a in enumerate(cmd):
        if a in names and i + 1 < len(cmd):
            return cmd[i + 1]
    return None


def test_helm_commands_match_the_chart(quick_start, render):
    install = _find(quick_start, "helm", "install")
    assert len(install) == 1
    release, chart_path = install[0][2], install[0][3]
    assert (ROOT / chart_path) == CHART
    namespace = _opt(install[0], "--namespace", "-n")
    assert namespace
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for i, a in enumerate(install[0]):
        if a == "--set":
            key = install[0][i + 1].split("=", 1)[0]
            node = values
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"--set {key}: no such chart value"
                node = node[part]
    deployment = render({}, name=release, namespace=namespace).one("Deployment")["metadata"]["name"]
    rollout = _find(quick_start, "kubectl", "-n", namespace, "rollout", "status")
    assert rollout and rollout[0][-1] == f"deployment/{deployment}"
    assert _find(quick_start, "helm", "test", release, "-n", namespace)
    assert _find(quick_start, "helm", "uninstall", release, "-n", namespace)


def test_kubectl_commands_name_the_sample_job(quick_start, sample):
    name = sample["metadata"]["name"]
    # The commands carry no -n: the sample must live in the default namespace.
    assert sample["metadata"].get("namespace", "default") == "default"
    applied = [c[-1] for c in _find(quick_start, "kubectl", "apply", "-f")]
    assert "operator/samples/minimal.yaml" in applied
    for path in applied:
        assert (ROOT / path).is_file(), path
    assert _find(quick_start, "kubectl", "get", "sj")
    assert _find(quick_start, "kubectl", "scale", f"sj/{name}")
    for verb in ("describe", "delete", "patch"):
        cmds = _find(quick_start, "kubectl", verb, "sj")
        assert cmds and all(c[3] == name for c in cmds), f"kubectl {verb} sj must name {name!r}"


def test_jobmanager_api_commands_match_the_job_and_the_worker_image(quick_start, sample):
    name = sample["metadata"]["name"]
    forward = _find(quick_start, "kubectl", "port-forward")
    assert forward and forward[0][2] == f"svc/{name}-jobmanager"
    planner = (ROOT / "operator" / "src" / "planner" / "mod.rs").read_text()
    assert 'format!("{job}-jobmanager")' in planner, (
        "the operator no longer names the jobmanager Service <job>-jobmanager: update the README"
    )
    local, remote = map(int, forward[0][3].split(":"))
    assert remote in TARGETS["worker"][2], "the jobmanager REST port is one the worker image serves"
    urls = [a for c in quick_start if c[0] == "curl" for a in c if a.startswith("localhost:")]
    assert urls and all(u.startswith(f"localhost:{local}/jobs/{name}") for u in urls), urls


def test_patched_fields_exist_in_the_crd(quick_start):
    crd = next(d for d in yaml.safe_load_all(CRD_SOURCE.read_text()) if d)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    patches = _find(quick_start, "kubectl", "patch", "sj")
    assert patches
    for cmd in patches:
        body = yaml.safe_load(_opt(cmd, "-p"))
        for field in body["spec"]:
            assert field in spec, f"kubectl patch sets spec.{field}, which the CRD does not have"
    deleted = [c[-1] for c in _find(quick_start, "kubectl", "delete", "crd")]
    assert deleted == [crd["metadata"]["name"]]


def test_container_images_section_matches_the_dockerfile():
    section = _section("Container images")
    global_args, stages = parse_dockerfile((ROOT / "Dockerfile").read_text())
    names = {s.name for s in stages}
    builds = [c for c in _commands(section) if c[:2] == ["docker", "build"]]
    assert {_opt(c, "--target") for c in builds} == set(TARGETS) <= names
    for arg in ("RUST_IMAGE", "RUNTIME_IMAGE"):
        assert f"`{global_args[arg]}`" in section, f"the README must name {arg}={global_args[arg]}"
    for c in builds:
        for i, a in enumerate(c):
            if a == "--build-arg":
                key = c[i + 1].split("=", 1)[0]
                declared = {
                    ins.args.split("=", 1)[0]
                    for s in stages
                    for ins in s.instructions
                    if ins.keyword == "ARG"
                } | set(global_args)
                assert key in declared, f"--build-arg {key} is not an ARG of the Dockerfile"
