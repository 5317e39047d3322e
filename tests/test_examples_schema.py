"""Every RpcJob under examples/ passes the CRD (schema + CEL) and the operator's own checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rpcjob import contract
from rpcjob_operator import crdschema
from rpcjob_operator.spec import parse_job

ROOT = Path(__file__).resolve().parent.parent


def _rpcjobs() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((ROOT / "examples").glob("**/*.yaml")) + sorted(
        (ROOT / "examples").glob("**/*.yml")
    ):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == contract.KIND:
                found.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return found


EXAMPLES = _rpcjobs()


def test_examples_exist() -> None:
    names = {name.split("#")[0] for name, _ in EXAMPLES}
    assert "examples/parameter_server/rpcjob.yaml" in names
    assert "examples/actor_learner/rpcjob.yaml" in names


@pytest.mark.parametrize(("name", "doc"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_validates(name: str, doc: dict[str, Any]) -> None:
    crd = crdschema.load_crd(ROOT / "crds" / "rpcjob.dev_rpcjobs.yaml")
    assert doc["apiVersion"] == contract.API_VERSION, name
    assert crdschema.validate(crd, doc) == [], name
    parse_job(doc)  # raises InvalidSpec with the field and the fix
