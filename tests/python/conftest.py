"""Shared fixtures of the packaging tests: the Helm chart rendered with Helm's own Go library
(helm-python-sdk), the operator's real CLI (`cargo run -p streamjob-operator -- …`), paths."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "streamjob-operator"
CRD_SOURCE = ROOT / "crds" / "streamjob.yaml"
CRD_CHART_COPY = CHART / "files" / "crds" / "streamjob.yaml"
NAMESPACED_VALUES = CHART / "ci" / "namespaced-values.yaml"

RELEASE = "streamjob"
RELEASE_NAMESPACE = "streamjob-system"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate mapping keys (PyYAML keeps the last one silently,
    and so would some Kubernetes clients: a duplicated label or env var is a real defect)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def load_all_strict(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]


@dataclass
class Rendered:
    """One `helm template`: the objects per template file, and NOTES.txt."""

    by_template: dict[str, list[dict]]
    notes: str
    values: dict = field(default_factory=dict)

    @property
    def objects(self) -> list[dict]:
        return [o for objs in self.by_template.values() for o in objs]

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
        return found[0]


@pytest.fixture(scope="session")
def chart():
    import helm_python

    loaded = helm_python.Chart.load(CHART)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def render(chart):
    """render(values, name=RELEASE, namespace=RELEASE_NAMESPACE) -> Rendered (memoised)."""
    cache: dict[str, Rendered] = {}

    def _render(values: dict | None = None, *, name: str = RELEASE, namespace: str = RELEASE_NAMESPACE):
        key = json.dumps([values, name, namespace], sort_keys=True)
        if key not in cache:
            out = chart.render(values or {}, name=name, namespace=namespace)
            by_template: dict[str, list[dict]] = {}
            notes = ""
            for path, text in sorted(out.items()):
                if path.endswith("NOTES.txt"):
                    notes = text
                    continue
                try:
                    by_template[path] = load_all_strict(text)
                except yaml.YAMLError as e:
                    raise AssertionError(f"{path} does not render to valid YAML: {e}\n{text}") from e
            cache[key] = Rendered(by_template, notes, values or {})
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def namespaced_values() -> dict:
    values = yaml.safe_load(NAMESPACED_VALUES.read_text())
    assert values["watchNamespaces"], "the namespaced values file must list namespaces"
    return values


# The two ways the chart is installed: everything the tests check holds for both.
MODES = ["cluster", "namespaced"]


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def mode_values(mode, namespaced_values) -> dict:
    return {} if mode == "cluster" else namespaced_values


def _operator_cli(*args: str) -> str:
    """Runs the operator binary: `STREAMJOB_OPERATOR_BIN` when set (scripts/test.sh sets it to the
    binary its workspace build made: `cargo run -p` would compile a second variant, see
    tests/src/lib.rs), else this workspace's, built by cargo if needed."""
    binary = os.environ.get("STREAMJOB_OPERATOR_BIN")
    if binary:
        cmd = [binary, *args]
    else:
        cmd = ["cargo", "run", "-q", "--locked", "-p", "streamjob-operator", "--", *args]
    env = dict(os.environ, CARGO_TERM_COLOR="never")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise AssertionError(
            f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


@pytest.fixture(scope="session")
def operator_cli():
    """The operator's CLI: `operator_cli("render", "-f", path)` returns what it printed."""
    return _operator_cli


@pytest.fixture(scope="session")
def operator_rules() -> list[dict]:
    """The PolicyRules the operator's code needs (`streamjob-operator rbac`)."""
    rules = json.loads(_operator_cli("rbac"))
    assert isinstance(rules, list) and rules, "`streamjob-operator rbac` printed no rules"
    return rules


@pytest.fixture(scope="session")
def operator_run_help() -> str:
    return _operator_cli("run", "--help")
