"""The Helm chart: lint, render, validate against Kubernetes schemas, and reject bad values.

Runs the real helm binary (python3 e2e/tools/install_helm.py) and kubernetes-validate's
offline OpenAPI schemas. ClusterKopfPeering, KopfPeering and ServiceMonitor are not in those
schemas and are skipped explicitly (their shape is checked below instead).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_chart import (
    CHART,
    CI_VALUES,
    DEFAULT_NAMESPACE,
    NON_BUILTIN_KINDS,
    HelmError,
    documents,
    find,
    run_helm,
    template,
)

from rpcjob import contract

VALUE_SETS = [pytest.param((), id="default")] + [
    pytest.param((path,), id=path.stem) for path in CI_VALUES
]


def test_ci_values_cover_the_required_modes() -> None:
    assert {p.stem for p in CI_VALUES} >= {
        "namespaced-values",
        "etcd-tls-auth-values",
        "external-etcd-values",
        "metrics-values",
    }


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict_passes(values: tuple[Path, ...]) -> None:
    args = [a for path in values for a in ("-f", str(path))]
    out = run_helm("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.35.0"])
@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_manifests_validate_strictly(values: tuple[Path, ...], kube_version: str) -> None:
    docs = documents(values, kube_version=kube_version)
    assert docs, "helm template rendered nothing"
    checked = 0
    for doc in docs:
        if doc["kind"] in NON_BUILTIN_KINDS:
            continue  # not in the Kubernetes OpenAPI schemas (see module docstring)
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({kube_version}): {exc.message}")
        checked += 1
    assert checked >= 8


def _schema_error(set_values: dict[str, str]) -> str:
    with pytest.raises(HelmError) as info:
        template(set_values=set_values)
    return info.value.stderr


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"operator.replicas": "-1"}, "operator.replicas: Must be greater than or equal to 0"),
        ({"operator.replica": "1"}, "operator: Additional property replica is not allowed"),
        ({"operatr.replicas": "1"}, "Additional property operatr is not allowed"),
        ({"etcd.bundled.persistance.enabled": "true"},
         "etcd.bundled: Additional property persistance is not allowed"),
        ({"operator.replicas": "two"}, "operator.replicas: Invalid type. Expected: integer"),
        ({"metrics.enabled": "maybe"}, "metrics.enabled: Invalid type. Expected: boolean"),
        ({"rbac.scope": "cluster-wide"}, "rbac.scope: rbac.scope must be one of the following"),
        ({"etcd.bundled.replicas": "2"},
         "etcd.bundled.replicas: etcd.bundled.replicas must be one of"),
        ({"etcd.endpoints[0]": "etcd.example.com"}, "etcd.endpoints.0: Does not match pattern"),
        ({"operator.image.pullPolicy": "Sometimes"},
         "operator.image.pullPolicy: operator.image.pullPolicy must be one of"),
        ({"operator.resources.limits.memory": "lots"},
         "operator.resources.limits.memory: Does not match pattern"),
    ],
)  # fmt: skip
def test_bad_values_fail_with_the_schema_message(set_values: dict[str, str], message: str) -> None:
    assert message in _schema_error(set_values)


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"etcd.tls.enabled": "true"},
         "etcd.tls.secretName is required when etcd.tls.enabled is true"),
        ({"etcd.auth.enabled": "true"},
         "etcd.auth.secretName is required when etcd.auth.enabled is true"),
        ({"metrics.enabled": "false", "metrics.serviceMonitor.enabled": "true"},
         "metrics.serviceMonitor.enabled needs metrics.enabled"),
    ],
)  # fmt: skip
def test_inconsistent_values_fail_with_a_fix(set_values: dict[str, str], message: str) -> None:
    assert message in _schema_error(set_values)


def test_every_default_value_is_described_in_the_schema() -> None:
    """values.schema.json covers every key of values.yaml (with additionalProperties false)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        assert node.get("description") or path == "", f"{path}: no description in the schema"
        if isinstance(value, dict) and node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: unknown keys not rejected"
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key}: missing from the schema"
                walk(sub, node["properties"][key], f"{path}.{key}".lstrip("."))

    walk(values, schema, "")


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {"deployment": deployment, "container": container}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_operator_runs_kopf_with_peering_and_liveness() -> None:
    op = _operator(documents())
    c = op["container"]
    assert c["command"] == ["rpcjob-operator"]
    assert f"--peering={contract.DEFAULT_PEERING_NAME}" in c["args"]
    assert "--standalone" not in c["args"]
    assert "--all-namespaces" in c["args"]
    # A short peering lifetime and the pod name as kopf's identity: a restarted operator
    # container replaces its own record; a standby takes over seconds after a peer dies.
    assert "--peering-lifetime=10" in c["args"]
    assert _env(c)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    liveness_url = f"--liveness=http://0.0.0.0:{contract.OPERATOR_HEALTH_PORT}{contract.OPERATOR_LIVENESS_PATH}"
    assert liveness_url in c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {
        "health": contract.OPERATOR_HEALTH_PORT,
        "metrics": contract.OPERATOR_METRICS_PORT,
    }
    probe = c["livenessProbe"]["httpGet"]
    assert probe == {"path": contract.OPERATOR_LIVENESS_PATH, "port": "health"}
    assert op["deployment"]["spec"]["strategy"] == {"type": "Recreate"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The peering object kopf patches keep-alives into exists.
    (peering,) = find(documents(), "ClusterKopfPeering")
    assert peering["metadata"]["name"] == contract.DEFAULT_PEERING_NAME


def test_operator_env_names_come_from_the_contract() -> None:
    env = _env(_operator(documents())["container"])
    assert env[contract.ENV_DEFAULT_ETCD_ENDPOINTS] == (
        f"http://rpcjob-etcd.{DEFAULT_NAMESPACE}.svc:2379"
    )
    assert env[contract.ENV_SIDECAR_IMAGE] == "ghcr.io/rpcjob/rpcjob-sidecar:0.1.0"
    assert env[contract.ENV_SIDECAR_IMAGE_PULL_POLICY] == "IfNotPresent"
    assert env[contract.ENV_JOB_SERVICE_ACCOUNT] == "rpcjob-job"
    assert env[contract.ENV_DEFAULT_ETCD_TLS_SECRET] == ""
    assert env[contract.ENV_DEFAULT_ETCD_AUTH_SECRET] == ""
    assert env[contract.ENV_OPERATOR_NAMESPACE] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    rpcjob_names = {n for n in env if n.startswith("RPCJOB_")}
    contract_names = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
    assert rpcjob_names <= contract_names, rpcjob_names - contract_names
    # Unset by default: the job NetworkPolicy admits no metrics scraper.
    assert "RPCJOB_METRICS_NAMESPACE_SELECTOR" not in env


def test_metrics_scrapers_reach_the_operator_as_json_labels() -> None:
    from rpcjob_operator.render.defaults import (
        ENV_METRICS_NAMESPACE_SELECTOR,
        ENV_METRICS_POD_SELECTOR,
        OperatorDefaults,
    )

    env = _env(_operator(documents([CHART / "ci" / "metrics-values.yaml"]))["container"])
    defaults = OperatorDefaults.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert defaults.metrics_namespace_selector == {"kubernetes.io/metadata.name": "monitoring"}
    assert defaults.metrics_pod_selector == {"app.kubernetes.io/name": "prometheus"}
    assert json.loads(env[ENV_METRICS_POD_SELECTOR]) == {"app.kubernetes.io/name": "prometheus"}
    only_ns = _env(
        _operator(
            documents(set_values={"jobs.sidecar.metricsScrapers.namespaceSelector.team": "obs"})
        )["container"]
    )
    assert json.loads(only_ns[ENV_METRICS_NAMESPACE_SELECTOR]) == {"team": "obs"}
    assert json.loads(only_ns[ENV_METRICS_POD_SELECTOR]) == {}


def test_operator_defaults_parse_the_chart_env() -> None:
    """The operator's own parser reads what the chart sets (names and formats agree)."""
    from rpcjob_operator.render.defaults import OperatorDefaults

    docs = documents([CHART / "ci" / "etcd-tls-auth-values.yaml"])
    env = _env(_operator(docs)["container"])
    defaults = OperatorDefaults.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    assert defaults.etcd_endpoints == ("https://rpcjob-etcd.rpcjob-system.svc:2379",)
    assert defaults.etcd_tls_secret == "rpcjob-etcd-tls"
    assert defaults.etcd_auth_secret == "rpcjob-etcd-auth"
    assert defaults.sidecar_image == "ghcr.io/rpcjob/rpcjob-sidecar:0.1.0"
    assert defaults.job_service_account == "rpcjob-job"


def test_namespace_mode_watches_only_its_namespaces() -> None:
    docs = documents([CHART / "ci" / "namespaced-values.yaml"])
    args = _operator(docs)["container"]["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=ml-team",
        "--namespace=ml-batch",
    ]
    peerings = find(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml-batch", "ml-team"]
    assert not find(docs, "ClusterKopfPeering")


def test_namespace_mode_defaults_to_the_release_namespace() -> None:
    docs = documents(set_values={"rbac.scope": "namespace"}, namespace="team-a")
    args = _operator(docs)["container"]["args"]
    assert "--namespace=team-a" in args


def _restricted(pod_spec: dict[str, Any]) -> None:
    psc = pod_spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532, c["name"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_pod_is_restricted(values: tuple[Path, ...]) -> None:
    docs = documents(values)
    workloads = find(docs, "Deployment") + find(docs, "StatefulSet") + find(docs, "Job")
    assert workloads
    for workload in workloads:
        _restricted(workload["spec"]["template"]["spec"])


def test_bundled_etcd_defaults() -> None:
    docs = documents()
    (sts,) = find(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "1Gi"
    }
    (headless,) = find(docs, "Service", "rpcjob-etcd-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--initial-cluster=rpcjob-etcd-0=http://rpcjob-etcd-0.rpcjob-etcd-headless." \
        "rpcjob-system.svc:2380" in args  # fmt: skip
    assert not any(a.startswith("--cert-file") for a in args)
    assert not find(docs, "Job"), "no auth bootstrap without etcd.auth.enabled"
    assert not find(docs, "PodDisruptionBudget"), "a single member gets no PDB"


def test_bundled_etcd_with_tls_and_auth() -> None:
    docs = documents([CHART / "ci" / "etcd-tls-auth-values.yaml"])
    (sts,) = find(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "standard"
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in ("--cert-file=", "--key-file=", "--trusted-ca-file=", "--peer-cert-file="):
        assert any(a.startswith(flag) for a in args), flag
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    initial = next(a for a in args if a.startswith("--initial-cluster="))
    assert initial.count("https://") == 3
    volumes = sts["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "tls",
        "secret": {"secretName": "rpcjob-etcd-tls", "defaultMode": 0o440},
    } in volumes
    (pdb,) = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]
    (job,) = find(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    pod = job["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"][:3] == ["user", "add", "root"]
    assert pod["containers"][0]["args"] == ["auth", "enable"]
    env = _env(_operator(docs)["container"])
    assert env[contract.ENV_DEFAULT_ETCD_ENDPOINTS] == "https://rpcjob-etcd.rpcjob-system.svc:2379"
    assert env[contract.ENV_DEFAULT_ETCD_TLS_SECRET] == "rpcjob-etcd-tls"
    assert env[contract.ENV_DEFAULT_ETCD_AUTH_SECRET] == "rpcjob-etcd-auth"
    assert env[contract.ENV_ETCD_CA] == "/etc/rpcjob/etcd-tls/ca.crt"
    # The operator reads the password by secretKeyRef: it needs no RBAC access to Secrets.
    assert env[contract.ENV_ETCD_PASSWORD] == {
        "secretKeyRef": {"name": "rpcjob-etcd-auth", "key": contract.ETCD_AUTH_PASSWORD_KEY}
    }


def test_external_etcd_disables_the_bundled_one() -> None:
    docs = documents([CHART / "ci" / "external-etcd-values.yaml"])
    assert not find(docs, "StatefulSet")
    assert not any("etcd" in s["metadata"]["name"] for s in find(docs, "Service"))
    env = _env(_operator(docs)["container"])
    assert env[contract.ENV_DEFAULT_ETCD_ENDPOINTS] == ",".join(
        f"https://etcd-{i}.etcd.infra.svc:2379" for i in range(3)
    )


def test_no_default_etcd_when_bundled_is_off_and_no_endpoints() -> None:
    docs = documents(set_values={"etcd.bundled.enabled": "false"})
    assert not find(docs, "StatefulSet")
    assert _env(_operator(docs)["container"])[contract.ENV_DEFAULT_ETCD_ENDPOINTS] == ""


def test_service_monitor_only_when_enabled() -> None:
    assert not find(documents(), "ServiceMonitor")
    docs = documents([CHART / "ci" / "metrics-values.yaml"])
    (sm,) = find(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    (svc,) = find(docs, "Service", "rpcjob-operator-metrics")
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert svc["spec"]["ports"][0]["port"] == contract.OPERATOR_METRICS_PORT
    (sts,) = find(docs, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in sts["spec"]["template"]["spec"]["volumes"]


def test_notes_render_for_each_mode(tmp_path: Path) -> None:
    """NOTES.txt renders (helm template skips it: render its define in a copy of the chart)."""
    chart = tmp_path / "rpcjob"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "notes-copy.yaml").write_text(
        'notes: {{ include "rpcjob.notes" . | toJson }}\n'
    )

    def notes(*args: str) -> str:
        rendered = run_helm(
            "template", "rpcjob", str(chart), "-s", "templates/notes-copy.yaml", *args
        )
        return str(yaml.safe_load(rendered)["notes"])

    namespaced = notes("-n", "ops", "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert "watches RpcJobs in: ml-team, ml-batch" in namespaced
    assert "http://rpcjob-etcd.ops.svc:2379 (bundled StatefulSet rpcjob-etcd)" in namespaced
    external = notes("-f", str(CHART / "ci" / "external-etcd-values.yaml"))
    assert "kubectl apply --server-side -f crds/" in external
    assert 'Secret "etcd-client-tls"' in external
    assert "every RpcJob must set spec.etcd.endpoints" in notes(
        "--set", "etcd.bundled.enabled=false"
    )
