"""The Helm chart charts/streamjob-operator, rendered and linted by Helm's own library.

What must hold, in both install modes (cluster-wide and namespaced, ci/namespaced-values.yaml):
the chart lints clean; every rendered object is a valid Kubernetes object (kubernetes-validate,
offline, strict); the operator's RBAC is exactly what the operator's code lists
(`streamjob-operator rbac`), no more and no less; the Deployment is hardened and wired to the
operator's real CLI; the CRD is the generated one, installed and upgraded by the chart; every
value is documented with its default.
"""

from __future__ import annotations

import copy
import re

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_values_doc import UndocumentedValue, parse, readme_block, table
from conftest import (
    CHART,
    CRD_CHART_COPY,
    CRD_SOURCE,
    NAMESPACED_VALUES,
    RELEASE,
    RELEASE_NAMESPACE,
    ROOT,
)


def _min_kube_version() -> tuple[int, int]:
    kube = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)\.\d+(-0)?", kube)
    assert m, f"Chart.yaml kubeVersion {kube!r} is not of the form >=X.Y.Z-0"
    return int(m[1]), int(m[2])


# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas we have.
KUBE_VERSIONS = ["%d.%d.0" % _min_kube_version(), kubernetes_validate.utils.latest_version()]

# CEL libraries in CRD validation rules, and the first Kubernetes minor whose API server accepts
# them in a new CRD (a library introduced in 1.N is usable in new expressions from 1.N+1 on).
CEL_LIBRARY_MIN_KUBE = {r"\bquantity\(|\bisQuantity\(": (1, 29)}

# Leader election is the one permission the operator needs in its own namespace only.
LEADER_ELECTION_RESOURCES = {("coordination.k8s.io", "leases")}

# monitoring.coreos.com/v1 ServiceMonitor is not a built-in kind: the fields this chart sets, typed
# as the Prometheus Operator's API defines them (unknown fields are rejected).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "honorLabels": {"type": "boolean"},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)(ms|s|m|h))+)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)(ms|s|m|h))+)$"},
                        },
                    },
                },
            },
        },
    },
}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --- lint and schema validity ---------------------------------------------------------------


def test_chart_lints_clean_in_strict_mode(mode_values):
    report = helm_python.lint(CHART, mode_values, strict=True, namespace=RELEASE_NAMESPACE)
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], f"helm lint warnings/errors: {problems}"


def _validate_k8s(obj: dict) -> None:
    if obj["kind"] == "ServiceMonitor":
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: "
                f"{e.message} at {'/'.join(map(str, e.absolute_path))}"
            ) from e
        except kubernetes_validate.SchemaNotFoundError as e:
            raise AssertionError(e.message) from e


ALL_FEATURES = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "replicaCount": 2,
    "image": {"digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "regcred"}],
    "podAnnotations": {"example.com/a": "b"},
    "podLabels": {"team": "streaming"},
    "priorityClassName": "system-cluster-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "streamjob-operator"}},
        }
    ],
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "extraArgs": ["--log-format", "text"],
    "serviceAccount": {"annotations": {"example.com/role": "x"}},
    "podDisruptionBudget": {"enabled": True},
}


@pytest.mark.parametrize("variant", ["defaults", "all-features"])
def test_every_rendered_object_is_a_valid_kubernetes_object(render, mode_values, variant):
    values = copy.deepcopy(mode_values)
    if variant == "all-features":
        values.update(ALL_FEATURES)
    rendered = render(values)
    assert rendered.objects, "the chart rendered nothing"
    for obj in rendered.objects:
        _validate_k8s(obj)
    if variant == "all-features":
        assert rendered.of_kind("ServiceMonitor"), "serviceMonitor.enabled rendered no ServiceMonitor"
        pdb = rendered.one("PodDisruptionBudget")
        pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_names_and_namespaces_are_valid_for_any_release_name(render, mode_values):
    # A long release name, and one that already contains the chart name.
    for name in ["a-very-long-release-name-for-streamjob-in-production-eu1", "streamjob-operator"]:
        rendered = render(mode_values, name=name)
        for obj in rendered.objects:
            meta = obj["metadata"]
            if obj["kind"] != "CustomResourceDefinition":
                assert len(meta["name"]) <= 63 and DNS1123_LABEL.match(meta["name"]), meta["name"]
            if obj["kind"] in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}:
                assert "namespace" not in meta, f"{obj['kind']} is cluster-scoped"
            else:
                assert meta.get("namespace"), f"{obj['kind']}/{meta['name']} has no namespace"
            for k, v in meta.get("labels", {}).items():
                assert len(str(v)) <= 63, f"label {k}={v} is longer than 63 characters"
    assert render(mode_values, name="streamjob-operator").one("Deployment")["metadata"]["name"] == (
        "streamjob-operator"
    )


def test_values_schema_rejects_typos_and_bad_values(chart):
    for bad in [
        {"watchNamespace": ["team-a"]},  # typo of watchNamespaces
        {"logging": {"format": "xml"}},
        {"watchNamespaces": ["Team_A"]},  # not a namespace name
        {"image": {"pullPolicy": "Sometimes"}},
    ]:
        with pytest.raises(helm_python.HelmValuesError):
            chart.render(bad, name=RELEASE, namespace=RELEASE_NAMESPACE)


def test_inconsistent_values_fail_with_a_clear_message(chart):
    cases = [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "leaderElection"),
        ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}, "metrics.service"),
        ({"watchNamespaces": ["team-a", "team-a"]}, "twice"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name"),
    ]
    for values, needle in cases:
        with pytest.raises(helm_python.HelmRenderError, match=re.escape(needle)):
            chart.render(values, name=RELEASE, namespace=RELEASE_NAMESPACE)


# --- the operator Deployment ----------------------------------------------------------------


def _container(rendered) -> dict:
    containers = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_deployment_is_hardened(render, mode_values):
    rendered = render(mode_values)
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = _container(rendered)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc.get("privileged") is not True
    res = _container(rendered)["resources"]
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]


def test_deployment_probes_and_ports_line_up(render, mode_values):
    rendered = render(mode_values)
    c = _container(rendered)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "http" in ports
    assert f"0.0.0.0:{ports['http']}" in c["args"], "--http-bind must match the container port"
    # The metrics Service reaches that port and selects exactly the operator pods.
    svc = rendered.one("Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert rendered.one("Deployment")["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_deployment_passes_leader_election_identity_by_downward_api(render, mode_values):
    c = _container(render(mode_values))
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "--leader-election" in c["args"]
    off = _container(render({**mode_values, "leaderElection": {"enabled": False}}))
    assert "--no-leader-election" in off["args"]
    assert render({**mode_values, "leaderElection": {"enabled": False}}).one("Deployment")["spec"][
        "strategy"
    ]["type"] == "Recreate", "without leader election two operators must never overlap"


def test_deployment_env_is_read_by_the_operator(render, mode_values):
    """Every variable the chart sets is one the operator's code reads (a renamed variable would
    silently stop leader election or logging from being configured)."""
    source = "\n".join(p.read_text() for p in (ROOT / "operator" / "src").rglob("*.rs"))
    for var in _container(render(mode_values))["env"]:
        name = var["name"]
        if name == "RUST_LOG":
            assert "from_default_env" in source or '"RUST_LOG"' in source, "the operator ignores RUST_LOG"
        else:
            assert f'"{name}"' in source, f"the chart sets {name}, which the operator never reads"


def test_deployment_watches_exactly_the_configured_namespaces(render, mode, mode_values):
    args = _container(render(mode_values))["args"]
    watched = [args[i + 1] for i, a in enumerate(args) if a == "--watch-namespace"]
    assert watched == list(mode_values.get("watchNamespaces", []))


def test_deployment_args_are_flags_the_operator_accepts(render, namespaced_values, operator_run_help):
    """The chart is wired to the operator's real CLI: every flag it passes exists in `run --help`."""
    for values in [{}, namespaced_values, {"leaderElection": {"enabled": False}}]:
        args = _container(render(values))["args"]
        assert args[0] == "run"
        for flag in (a for a in args if a.startswith("--")):
            assert re.search(rf"(^|\s){re.escape(flag)}(\s|=|,|$)", operator_run_help, re.M), (
                f"the chart passes {flag}, which `streamjob-operator run --help` does not list:\n"
                f"{operator_run_help}"
            )


def test_serviceaccount_is_the_one_the_pods_run_as(render, mode_values):
    rendered = render(mode_values)
    sa = rendered.one("ServiceAccount")
    assert sa["metadata"]["namespace"] == RELEASE_NAMESPACE
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


# --- RBAC against the operator's code -------------------------------------------------------


Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


def _triples(rules: list[dict]) -> set[Triple]:
    out: set[Triple] = set()
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in an operator rule: {rule}"
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    out.add((g, r, v))
    return out


def _grants_to_operator(rendered) -> dict[str, set[Triple]]:
    """What the operator's ServiceAccount may do, per scope: "cluster" or a namespace."""
    sa = rendered.one("ServiceAccount")["metadata"]
    roles: dict[tuple, dict] = {}
    for r in rendered.of_kind("ClusterRole"):
        roles[("ClusterRole", r["metadata"]["name"])] = r
    for r in rendered.of_kind("Role"):
        roles[("Role", r["metadata"]["namespace"], r["metadata"]["name"])] = r
    grants: dict[str, set[Triple]] = {}
    for b in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding"):
        if not any(
            s["kind"] == "ServiceAccount"
            and s["name"] == sa["name"]
            and s["namespace"] == sa["namespace"]
            for s in b["subjects"]
        ):
            continue
        ref = b["roleRef"]
        scope = "cluster" if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
        key = (
            ("ClusterRole", ref["name"])
            if ref["kind"] == "ClusterRole"
            else ("Role", b["metadata"]["namespace"], ref["name"])
        )
        assert key in roles, f"{b['kind']}/{b['metadata']['name']} refers to a missing {key}"
        grants.setdefault(scope, set()).update(_triples(roles[key]["rules"]))
    return grants


def _split(required: set[Triple]) -> tuple[set[Triple], set[Triple]]:
    leader = {t for t in required if (t[0], t[1]) in LEADER_ELECTION_RESOURCES}
    return required - leader, leader


def test_operator_rules_are_grantable(operator_rules):
    # Sanity of the operator's own output: known shape, no wildcards.
    for rule in operator_rules:
        assert set(rule) >= {"apiGroups", "resources", "verbs"}, rule
    assert _triples(operator_rules)


def test_chart_grants_every_permission_the_operator_uses(render, mode, mode_values, operator_rules):
    rendered = render(mode_values)
    grants = _grants_to_operator(rendered)
    workload, leader = _split(_triples(operator_rules))
    scopes = ["cluster"] if mode == "cluster" else list(mode_values["watchNamespaces"])
    for scope in scopes:
        missing = workload - grants.get(scope, set())
        assert not missing, f"{mode} mode: the operator needs {sorted(missing)} in {scope!r}"
    missing = leader - grants.get(RELEASE_NAMESPACE, set())
    assert not missing, f"leader election needs {sorted(missing)} in {RELEASE_NAMESPACE!r}"


def test_chart_grants_nothing_the_operator_does_not_use(render, mode, mode_values, operator_rules):
    rendered = render(mode_values)
    grants = _grants_to_operator(rendered)
    workload, leader = _split(_triples(operator_rules))
    if mode == "namespaced":
        assert "cluster" not in grants, "namespaced mode must grant nothing cluster-wide"
        assert set(grants) <= set(mode_values["watchNamespaces"]) | {RELEASE_NAMESPACE}
    watched = set(mode_values.get("watchNamespaces", []))
    for scope, granted in grants.items():
        extra = granted - (workload | leader)
        assert not extra, f"the chart grants {sorted(extra)} ({scope}) that the operator never uses"
        if scope != RELEASE_NAMESPACE:
            assert not granted & leader, f"leases are granted in {scope!r}, not only {RELEASE_NAMESPACE!r}"
        if scope != "cluster" and scope not in watched:
            assert not granted & workload, f"StreamJob rights granted in unwatched namespace {scope!r}"


def test_namespaced_mode_has_a_role_and_binding_per_watched_namespace(render, namespaced_values):
    rendered = render(namespaced_values)
    sa = rendered.one("ServiceAccount")["metadata"]
    for ns in namespaced_values["watchNamespaces"]:
        roles = [r for r in rendered.of_kind("Role") if r["metadata"]["namespace"] == ns]
        bindings = [b for b in rendered.of_kind("RoleBinding") if b["metadata"]["namespace"] == ns]
        assert len(roles) == 1 and len(bindings) == 1, ns
        assert bindings[0]["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
    assert not rendered.of_kind("ClusterRoleBinding")


def test_aggregated_user_roles_are_bound_to_no_one(render, mode_values):
    rendered = render(mode_values)
    aggregated = [
        r["metadata"]["name"]
        for r in rendered.of_kind("ClusterRole")
        if any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in r["metadata"]["labels"])
    ]
    assert len(aggregated) == 2
    bound = {b["roleRef"]["name"] for b in rendered.of_kind("ClusterRoleBinding") + rendered.of_kind("RoleBinding")}
    assert not bound & set(aggregated)
    off = render({**mode_values, "rbac": {"aggregateToDefaultRoles": False}})
    assert not {r["metadata"]["name"] for r in off.of_kind("ClusterRole")} & set(aggregated)


# --- the CRD ----------------------------------------------------------------------------------


def _require_crd_source() -> bytes:
    assert CRD_SOURCE.is_file(), (
        f"{CRD_SOURCE.relative_to(ROOT)} is missing: it is generated by the operator "
        "(`cargo run -p streamjob-operator -- crd > crds/streamjob.yaml`)"
    )
    return CRD_SOURCE.read_bytes()


def test_chart_crd_is_a_byte_identical_copy_of_the_generated_crd():
    source = _require_crd_source()
    assert CRD_CHART_COPY.is_file(), "the chart has no copy of the CRD: run scripts/sync-chart-crd.sh"
    assert CRD_CHART_COPY.read_bytes() == source, (
        f"{CRD_CHART_COPY.relative_to(ROOT)} differs from {CRD_SOURCE.relative_to(ROOT)}: "
        "run scripts/sync-chart-crd.sh"
    )


def test_rendered_crd_is_the_generated_crd_plus_release_metadata(render, mode_values):
    source = yaml.safe_load(_require_crd_source())
    crd = render(mode_values).one("CustomResourceDefinition")
    meta = crd["metadata"]
    assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # Apart from the release's labels/annotations, the object is exactly the generated one
    # (catches e.g. numbers mangled by the template's YAML round trip).
    stripped = copy.deepcopy(crd)
    for key in ("labels", "annotations"):
        added = stripped["metadata"].pop(key, {})
        original = source["metadata"].get(key)
        if original:
            assert original.items() <= added.items(), key
            stripped["metadata"][key] = original
    assert stripped == source


def test_supported_kubernetes_versions_accept_the_crds_validation_rules():
    crd = yaml.safe_load(_require_crd_source())
    rules = [r["rule"] for r in _all_validations(crd)]
    assert rules, "the CRD has no CEL validation rules (expected some)"
    need = max(
        [v for pattern, v in CEL_LIBRARY_MIN_KUBE.items() if any(re.search(pattern, r) for r in rules)],
        default=(1, 25),
    )
    assert _min_kube_version() >= need, (
        f"the CRD's CEL rules need Kubernetes >= {need}, Chart.yaml allows {_min_kube_version()}"
    )


def _all_validations(node) -> list[dict]:
    found: list[dict] = []
    if isinstance(node, dict):
        found += node.get("x-kubernetes-validations", [])
        for v in node.values():
            found += _all_validations(v)
    elif isinstance(node, list):
        for v in node:
            found += _all_validations(v)
    return found


def test_crd_options(render):
    assert not render({"crds": {"install": False}}).of_kind("CustomResourceDefinition")
    crd = render({"crds": {"keep": False}}).one("CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})


def test_crd_is_not_in_helms_install_only_crds_dir(chart):
    # Helm's crds/ directory is install-only, and a CRD there as well as in the template would
    # make the first install fail with "already exists".
    assert chart.crds == []


def test_sync_script_copies_and_checks(tmp_path):
    import shutil
    import subprocess

    _require_crd_source()
    # Run a copy of the repository's layout so the real chart is untouched.
    for rel in ["scripts/sync-chart-crd.sh", "crds/streamjob.yaml"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    script = tmp_path / "scripts" / "sync-chart-crd.sh"
    check = subprocess.run([script, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "sync-chart-crd.sh" in check.stderr
    subprocess.run([script], check=True, capture_output=True)
    copied = tmp_path / "charts/streamjob-operator/files/crds/streamjob.yaml"
    assert copied.read_bytes() == CRD_SOURCE.read_bytes()
    assert subprocess.run([script, "--check"], capture_output=True).returncode == 0


# --- ServiceMonitor, helm test, NOTES ---------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_service(render, mode_values):
    rendered = render({**mode_values, "metrics": {"serviceMonitor": {"enabled": True}}})
    sm = rendered.one("ServiceMonitor")
    svc = rendered.one("Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [svc["metadata"]["namespace"]]
    assert not render(mode_values).of_kind("ServiceMonitor"), "ServiceMonitor must be opt-in"


def test_helm_test_hook_checks_the_operator_through_its_service(render, mode_values):
    rendered = render(mode_values)
    hooks = [o for o in rendered.objects if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(hooks) == 1 and hooks[0]["kind"] == "Pod"
    pod = hooks[0]
    svc = rendered.one("Service")
    script = "\n".join(pod["spec"]["containers"][0]["command"])
    url = f"http://{svc['metadata']['name']}.{RELEASE_NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}"
    assert f'base="{url}"' in script
    assert "$base/healthz" in script and "$base/metrics" in script
    # The test pod must not become a backend of the Service it tests.
    assert not svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_notes_tell_the_next_commands(render, mode, mode_values):
    rendered = render(mode_values)
    notes = rendered.notes
    deploy = rendered.one("Deployment")["metadata"]["name"]
    assert f"kubectl -n {RELEASE_NAMESPACE} rollout status deployment/{deploy}" in notes
    assert "operator/samples/minimal.yaml" in notes
    if mode == "cluster":
        assert "kubectl apply -f operator/samples/minimal.yaml" in notes
        assert "kubectl get sj -A" in notes
    else:
        ns = mode_values["watchNamespaces"][0]
        assert ", ".join(mode_values["watchNamespaces"]) in notes
        assert f"kubectl -n {ns} get sj" in notes and f"kubectl -n {ns} scale sj/" in notes
    assert f"helm test {RELEASE} -n {RELEASE_NAMESPACE}" in notes
    assert "kubectl apply --server-side -f crds/streamjob.yaml" in render({"crds": {"install": False}}).notes


def test_files_the_notes_point_to_exist():
    for rel in ["operator/samples/minimal.yaml", "crds/streamjob.yaml"]:
        assert (ROOT / rel).is_file(), f"NOTES.txt points users to {rel}, which does not exist"


# --- values documentation -------------------------------------------------------------------


def test_every_value_is_documented_with_its_default():
    values_text = (CHART / "values.yaml").read_text()
    documented = parse(values_text)
    paths = {v.path for v in documented}
    # Every top-level key is covered (itself or through its children).
    for key in yaml.safe_load(values_text):
        assert key in paths or any(p.startswith(key + ".") for p in paths), key
    readme = (CHART / "README.md").read_text()
    assert readme_block(readme) == table(values_text), (
        "charts/streamjob-operator/README.md's values table is stale: run "
        "`.local/venv/bin/python tests/python/chart_values_doc.py --write`"
    )


def test_an_undocumented_value_is_reported():
    with pytest.raises(UndocumentedValue, match="image.tag"):
        parse("image:\n  # -- Repository.\n  repository: x\n  tag: ''\n")


def test_the_namespaced_values_file_is_a_valid_values_file(chart):
    chart.validate_schema(yaml.safe_load(NAMESPACED_VALUES.read_text()))
