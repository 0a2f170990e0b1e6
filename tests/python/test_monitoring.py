"""Monitoring that ships with the chart: the Grafana dashboard ConfigMap, the PrometheusRule (checked
and unit-tested with Prometheus' own `promtool`), the PodMonitor of the jobs' pods, and the jobs'
NetworkPolicy settings the chart passes to the operator.

That every metric the dashboard and the alerts query is one the code exports is checked on the
Rust side, against the metric registries themselves (tests/tests/monitoring.rs).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import jsonschema
import pytest
import yaml

from conftest import CHART, RELEASE_NAMESPACE, ROOT, _operator_cli, load_all_strict

ENABLED = {
    "monitoring": {
        "grafanaDashboard": {"enabled": True},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    }
}
RULES_TEST = ROOT / "tests" / "prometheus" / "rules.test.yaml"
DASHBOARD = CHART / "files" / "dashboards" / "streamjob.json"

LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
# monitoring.coreos.com/v1 PodMonitor and PrometheusRule are not built-in kinds: the fields this
# chart sets, typed as the Prometheus Operator's API defines them (unknown fields are rejected).
POD_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
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
                    "properties": {"matchLabels": LABELS},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^(([0-9]+)(ms|s|m|h))+$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {"type": "array", "items": {"type": "string"}},
                                        "targetLabel": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["alert", "expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string"},
                                        "labels": LABELS,
                                        "annotations": LABELS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/setup.sh --test installs Debian's prometheus package"
    return path


def test_monitoring_is_opt_in(render, mode_values):
    rendered = render(mode_values)
    for kind in ("PodMonitor", "PrometheusRule"):
        assert not rendered.of_kind(kind), f"{kind} must be opt-in"
    assert not [c for c in rendered.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]


def test_rendered_monitoring_objects_are_valid(render, mode_values):
    rendered = render({**mode_values, **ENABLED})
    jsonschema.validate(rendered.one("PodMonitor"), POD_MONITOR_SCHEMA)
    rule = rendered.one("PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["metadata"]["labels"]["release"] == "prometheus"


def test_the_dashboard_ships_as_a_sidecar_configmap(render):
    rendered = render(ENABLED)
    [cm] = [c for c in rendered.of_kind("ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert cm["metadata"]["namespace"] == RELEASE_NAMESPACE
    dashboard = json.loads(cm["data"]["streamjob.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    elsewhere = render({"monitoring": {"grafanaDashboard": {"enabled": True, "namespace": "grafana"}}})
    [cm] = [c for c in elsewhere.of_kind("ConfigMap") if "grafana_dashboard" in c["metadata"].get("labels", {})]
    assert cm["metadata"]["namespace"] == "grafana"


def test_the_dashboard_has_the_panels_a_platform_team_needs():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    text = json.dumps(panels)
    for needle in [
        "streamjob_events_written_total",  # throughput
        "streamjob_jobmanager_partition_lag",  # lag per partition
        "streamjob_jobmanager_last_checkpoint_timestamp_seconds",  # checkpoint age
        "streamjob_jobmanager_last_savepoint_timestamp_seconds",  # savepoint age
        "streamjob_events_dead_lettered_total",  # DLQ rate
        "streamjob_partition_retrying",  # Redis/Kafka retry states
        "streamjob_redis_errors_total",
        "streamjob_kafka_errors_total",
        "streamjob_partition_rewinds_total",  # rewinds
        "streamjob_jobmanager_watermark_ms",  # event-time watermark delay
        "streamjob_series_events_total",  # series: on time, late, skewed
        "streamjob_operator_reconcile_failures_total",  # operator reconcile errors
    ]:
        assert needle in text, f"no panel queries {needle}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]


def _rules_dir(rendered, tmp_path):
    rules = rendered.one("PrometheusRule")["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / "rules.test.yaml")
    return tmp_path


def test_promtool_accepts_the_rendered_rules(render, tmp_path):
    d = _rules_dir(render(ENABLED), tmp_path)
    check = subprocess.run([_promtool(), "check", "rules", str(d / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "6 rules found" in check.stdout


def test_promtool_unit_tests_of_the_alerts_pass(render, tmp_path):
    d = _rules_dir(render(ENABLED), tmp_path)
    result = subprocess.run(
        [_promtool(), "test", "rules", "rules.test.yaml"], cwd=d, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_fail_when_an_alert_is_wrong(render, tmp_path):
    """The unit tests can fail: a rule that forgets suspended jobs pages for every suspension."""
    d = _rules_dir(render(ENABLED), tmp_path)
    rules = yaml.safe_load((d / "rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == "StreamJobNotReady":
                rule["expr"] = "streamjob_operator_job_ready == 0"
    (d / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run(
        [_promtool(), "test", "rules", "rules.test.yaml"], cwd=d, capture_output=True, text=True
    )
    assert result.returncode != 0 and "resting" in (result.stdout + result.stderr)


def test_thresholds_come_from_values(render):
    values = {"monitoring": {"prometheusRule": {"enabled": True, "lagGrowingFor": "30m", "deadLetterRate": 5, "notReadyFor": "15m", "severity": "critical"}}}
    rules = {r["alert"]: r for g in render(values).one("PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert rules["StreamJobLagGrowing"]["for"] == "30m"
    assert rules["StreamJobNotReady"]["for"] == "15m"
    assert "> 5" in rules["StreamJobDeadLetterRate"]["expr"]
    assert {r["labels"]["severity"] for r in rules.values()} == {"critical"}
    assert set(rules) == {
        "StreamJobLagGrowing",
        "StreamJobNoCheckpoint",
        "StreamJobDeadLetterRate",
        "StreamJobNotReady",
        "StreamJobCrashLooping",
        "StreamJobReconcileErrors",
    }


def test_the_pod_monitor_selects_the_pods_the_operator_creates(render, mode, mode_values):
    pm = render({**mode_values, **ENABLED}).one("PodMonitor")
    children = load_all_strict(_operator_cli("render", "-f", str(ROOT / "operator" / "samples" / "minimal.yaml")))
    deployments = [c for c in children if c["kind"] == "Deployment"]
    assert len(deployments) == 2
    ports = set()
    for d in deployments:
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), d["metadata"]["name"]
        ports |= {p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} == ports == {"rest", "metrics"}
    for e in pm["spec"]["podMetricsEndpoints"]:
        assert e["honorLabels"] is True, "the jobmanager's own `job` label must win"
        targets = {r["targetLabel"] for r in e["relabelings"]}
        assert "streamjob" in targets, "the alerts group by the `streamjob` label"
    if mode == "namespaced":
        assert pm["spec"]["namespaceSelector"] == {"matchNames": mode_values["watchNamespaces"]}
    else:
        assert pm["spec"]["namespaceSelector"] == {"any": True}


def test_the_operator_gets_the_metrics_namespace_selector(render):
    def args(values):
        d = render(values).one("Deployment")
        return d["spec"]["template"]["spec"]["containers"][0]["args"]

    default = args({})
    i = default.index("--metrics-namespace-selector")
    assert default[i + 1] == "kubernetes.io/metadata.name=monitoring"
    custom = args({"jobs": {"metricsNamespaceSelector": "team=obs,env=prod"}})
    assert custom[custom.index("--metrics-namespace-selector") + 1] == "team=obs,env=prod"
    assert "--metrics-namespace-selector" not in args({"jobs": {"metricsNamespaceSelector": ""}})


def test_a_malformed_metrics_namespace_selector_is_refused(chart):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError):
        chart.render({"jobs": {"metricsNamespaceSelector": "monitoring"}}, name="x", namespace=RELEASE_NAMESPACE)
