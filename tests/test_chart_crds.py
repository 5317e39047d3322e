"""The chart's CRDs: identical to the repository's crds/, and the upgrade path the chart chose.

Choice (charts/rpcjob/README.md, "CRD upgrades"): the RpcJob CRD is a template read from
files/crds/ and annotated ``helm.sh/resource-policy: keep`` — `helm upgrade` upgrades it, `helm
uninstall` keeps it. Only kopf's peering CRDs (which never change) sit in Helm's crds/.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

# tests/ may or may not be a package (pytest's rootdir import either way).
try:
    from .helm_chart import CHART, REPO, documents, find
except ImportError:
    from helm_chart import CHART, REPO, documents, find  # type: ignore[no-redef]

from rpcjob import contract

SOURCE = REPO / "crds"
COPY = CHART / "files" / "crds"


def test_chart_crd_files_are_byte_identical_to_crds() -> None:
    source = {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}
    copy = {p.name: p.read_bytes() for p in COPY.glob("*.yaml")}
    assert source, "crds/ holds no CRD"
    assert copy.keys() == source.keys(), "run charts/rpcjob/sync-crds.sh"
    for name, data in source.items():
        assert copy[name] == data, (
            f"files/crds/{name} differs from crds/: run charts/rpcjob/sync-crds.sh"
        )


def test_sync_script_restores_a_stale_copy(tmp_path: Path) -> None:
    """The sync script the failure message names really repairs the copy (run on a scratch tree)."""
    root = tmp_path / "repo"
    (root / "crds").mkdir(parents=True)
    for p in SOURCE.glob("*.yaml"):
        (root / "crds" / p.name).write_bytes(p.read_bytes())
    chart = root / "charts" / "rpcjob"
    (chart / "files" / "crds").mkdir(parents=True)
    (chart / "files" / "crds" / "stale.yaml").write_text("stale\n")
    script = chart / "sync-crds.sh"
    script.write_bytes((CHART / "sync-crds.sh").read_bytes())
    subprocess.run(["bash", str(script)], check=True, capture_output=True)
    synced = {p.name: p.read_bytes() for p in (chart / "files" / "crds").glob("*.yaml")}
    assert synced == {p.name: p.read_bytes() for p in SOURCE.glob("*.yaml")}


def test_rendered_crd_is_the_source_plus_keep_policy() -> None:
    (crd,) = find(documents(), "CustomResourceDefinition")
    (source,) = [yaml.safe_load(p.read_text()) for p in SOURCE.glob("*.yaml")]
    assert crd["metadata"]["name"] == contract.CRD_NAME
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert crd["spec"] == source["spec"], "the template must not alter the CRD's spec"
    for key, value in source["metadata"].get("labels", {}).items():
        assert crd["metadata"]["labels"][key] == value


def test_crds_install_false_leaves_the_crd_to_the_user() -> None:
    assert not find(documents(set_values={"crds.install": "false"}), "CustomResourceDefinition")


def test_kopf_peering_crds_match_the_peering_objects() -> None:
    crds = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()))
    served = {(c["spec"]["group"], c["spec"]["names"]["kind"], c["spec"]["scope"]) for c in crds}
    assert served == {
        ("kopf.dev", "ClusterKopfPeering", "Cluster"),
        ("kopf.dev", "KopfPeering", "Namespaced"),
    }


def test_readme_documents_the_upgrade_path() -> None:
    readme = (CHART / "README.md").read_text()
    assert "helm.sh/resource-policy: keep" in readme
    command = "kubectl apply --server-side -f crds/"
    assert command in readme
    # The documented directory is the one holding the CRD (relative to the repository root).
    assert (REPO / "crds" / "rpcjob.dev_rpcjobs.yaml").is_file()
