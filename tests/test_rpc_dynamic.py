"""torch dynamic RPC (``init_rpc(world_size=None)``) over ``init_method="etcd3://…"``: a group
of 4 forms, a 5th joins late, one leaves gracefully, and every live member exchanges RPCs with
every other — on plain etcd and on etcd with TLS (client certificates) + auth."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from etcd_tls import TLSMaterial
from rpc_procs import Group

from rpcjob.contract import ENV_ETCD_PASSWORD
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd

pytestmark = pytest.mark.slow

FIRST = ["w0", "w1", "w2", "w3"]


def _scenario(g: Group) -> None:
    for rank, name in enumerate(FIRST):
        g.start(name, rank)
    g.expect(FIRST, "joined")
    g.start("w4", 4)  # joins the live group late
    g.expect(["w4"], "joined")
    everyone = [*FIRST, "w4"]
    g.send(everyone, "infos")
    infos = g.expect(everyone, "infos")
    assert all(v == everyone for v in infos.values()), infos

    _all_call_all(g, everyone)

    g.send(["w1"], "leave")  # graceful leave
    g.expect(["w1"], "left")
    survivors = [n for n in everyone if n != "w1"]
    g.send(survivors, "infos")
    infos = g.expect(survivors, "infos")
    assert all(v == survivors for v in infos.values()), infos
    _all_call_all(g, survivors)

    g.send(survivors, "leave")
    g.expect(survivors, "left")


def _all_call_all(g: Group, names: list[str]) -> None:
    for n in names:
        g.send([n], "call", [p for p in names if p != n])
    answers = g.expect(names, "called")
    for n in names:
        assert answers[n] == {p: f"{p}<-{n}" for p in names if p != n}


@pytest.fixture
def group_plain(etcd_session: EmbeddedEtcd) -> Iterator[Group]:
    url = f"etcd3://{etcd_session.endpoint}/rpcjob-test/{uuid.uuid4().hex}/store/?timeout=60"
    g = Group(url)
    yield g
    g.close()


def test_dynamic_group_join_late_leave_and_rpcs(group_plain: Group) -> None:
    _scenario(group_plain)


def test_dynamic_group_over_tls_and_auth(
    etcd_tls_auth: EmbeddedEtcd, etcd_tls_material: TLSMaterial
) -> None:
    m = etcd_tls_material
    user, password = etcd_tls_auth.auth or ("", "")
    q = f"timeout=60&ca={quote(m.ca)}&cert={quote(m.client_cert)}&key={quote(m.client_key)}"
    url = f"etcd3://{etcd_tls_auth.endpoint}/tls-job/store/?{q}&user={user}"
    g = Group(url, env={ENV_ETCD_PASSWORD: password})
    try:
        _scenario(g)
    finally:
        g.close()
