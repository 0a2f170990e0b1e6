"""Installs or uninstalls the operator's chart on a cluster through Helm's Go SDK (helm-python-sdk),
the way `helm install` / `helm upgrade` / `helm uninstall` would. Used by tests/src/controlplane/helm.rs.

    helm_release.py install KUBECONFIG CHART_DIR RELEASE NAMESPACE VALUES_JSON
    helm_release.py upgrade KUBECONFIG CHART_DIR RELEASE NAMESPACE VALUES_JSON
    helm_release.py uninstall KUBECONFIG RELEASE NAMESPACE
"""

import json
import sys

import helm_python


def main(argv: list[str]) -> int:
    action = argv[1]
    if action == "install":
        kubeconfig, chart, release, namespace, values = argv[2:7]
        with helm_python.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
            summary = cfg.install(
                chart,
                release,
                json.loads(values),
                namespace=namespace,
                create_namespace=True,
                timeout=120,
            )
        print(json.dumps({"name": summary.get("name"), "version": summary.get("version")}))
        return 0
    if action == "upgrade":
        kubeconfig, chart, release, namespace, values = argv[2:7]
        with helm_python.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
            summary = cfg.upgrade(chart, release, json.loads(values), namespace=namespace, timeout=120)
        print(json.dumps({"name": summary.get("name"), "version": summary.get("version")}))
        return 0
    if action == "uninstall":
        kubeconfig, release, namespace = argv[2:5]
        with helm_python.Config(kubeconfig_path=kubeconfig, namespace=namespace) as cfg:
            cfg.uninstall(release)
        return 0
    print(f"unknown action {action!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
