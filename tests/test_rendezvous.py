"""The ``etcd3://`` init_method: URL parsing (table-driven, every bad input with its message),
registration with torch in both import orders without importing torch, and the store torch
gets staying alive after torch dropped its Python reference."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from rpcjob.contract import ENV_ETCD_CA, ENV_ETCD_PASSWORD, ENV_ETCD_USER
from rpcjob.rendezvous import Etcd3URLError, parse_url
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, free_port


@pytest.fixture
def pem(tmp_path: Path) -> str:
    p = tmp_path / "ca file.pem"  # a space: must be percent-encoded in the URL
    p.write_text("-----BEGIN CERTIFICATE-----\n")
    return str(p)


Q = "rank=0&world_size=-1"  # what torch appends (dynamic RPC: world size -1)

GOOD = [
    # url, env, (endpoints, prefix, timeout, rank, world_size, user)
    (f"etcd3://127.0.0.1:2379/job?{Q}", {}, (("127.0.0.1:2379",), "/job/", None, 0, -1, None)),
    (
        "etcd3://a:1,b:2/rpcjob/ns/j/uid/store/?timeout=2.5&rank=3&world_size=-1",
        {},
        (("a:1", "b:2"), "/rpcjob/ns/j/uid/store/", 2.5, 3, -1, None),
    ),
    (
        "etcd3://h:1/p?user=alice&rank=2&world_size=4",
        {ENV_ETCD_PASSWORD: "s3cret"},
        (("h:1",), "/p/", None, 2, 4, "alice"),
    ),
    (
        f"etcd3://h:1/p?{Q}",
        {ENV_ETCD_USER: "bob", ENV_ETCD_PASSWORD: "pw-bob"},
        (("h:1",), "/p/", None, 0, -1, "bob"),
    ),
    (f"etcd3://h:1/p%20q?timeout=0&{Q}", {}, (("h:1",), "/p q/", 0.0, 0, -1, None)),
]


@pytest.mark.parametrize(("url", "env", "want"), GOOD)
def test_parse_good_urls(url: str, env: dict[str, str], want: tuple[object, ...]) -> None:
    t = parse_url(url, env)
    assert (t.endpoints, t.prefix, t.timeout, t.rank, t.world_size, t.user) == want
    if ENV_ETCD_PASSWORD in env:
        assert t.password == env[ENV_ETCD_PASSWORD]
        assert env[ENV_ETCD_PASSWORD] not in repr(t)


def test_tls_files_from_url_and_env(pem: str) -> None:
    from urllib.parse import quote

    t = parse_url(f"etcd3://h:1/p?ca={quote(pem)}&cert={quote(pem)}&key={quote(pem)}&{Q}", {})
    assert (t.ca, t.cert, t.key) == (pem, pem, pem)
    assert parse_url(f"etcd3://h:1/p?{Q}", {ENV_ETCD_CA: pem}).ca == pem


# etcd3-only checks (the ones torch's tcp:// handler also has are in test_same_contract_as_tcp).
BAD = [
    ("etcd3://h:1/p?password=hunter2", "password= is not allowed in the URL"),
    ("etcd3://root:hunter2@h:1/p", "credentials in the URL are not allowed"),
    ("etcd3://h:1/p?tiemout=3", "unknown query key 'tiemout'"),
    ("etcd3://h:1/p?timeout=3&timeout=4", "query key 'timeout' is given twice"),
    ("etcd3://h:1", "the key prefix is missing"),
    ("etcd3://h:1/", "the key prefix is missing"),
    ("etcd3://a:1,b/p", "endpoint 'b' is not HOST:PORT"),
    ("etcd3://a:1,b:99999/p", "endpoint 'b:99999' is not HOST:PORT"),
    ("etcd3://h:1/p?timeout=soon", "timeout='soon' is not a number of seconds"),
    ("etcd3://h:1/p?timeout=-1", "must be >= 0 seconds"),
    ("etcd3://h:1/p?ca=/no/such.pem", "ca='/no/such.pem': no such file"),
    ("etcd3://h:1/p?user=alice", f"{ENV_ETCD_PASSWORD} is empty"),
    ("tcp://h:1/p", "scheme 'tcp' is not 'etcd3'"),
]


@pytest.mark.parametrize(("url", "message"), BAD)
def test_parse_bad_urls_say_what_and_how(url: str, message: str) -> None:
    with pytest.raises(Etcd3URLError) as info:
        parse_url(url + ("&" if "?" in url else "?") + Q, {})  # the URL alone is at fault
    text = str(info.value)
    assert message in text
    assert text.startswith("etcd3:// init_method: ") and "expected e.g. etcd3://" in text
    assert "hunter2" not in text


# A user's call: the init_method (SCHEME and PORT filled in; nothing listens on PORT, every case
# fails before a store would connect) and dist.rendezvous's keyword arguments, or None for
# rpc.init_rpc("w", rpc_backend_options=TensorPipeRpcBackendOptions(init_method=URL)).
CONTRACT: dict[str, tuple[str, dict[str, int] | None]] = {
    "init_rpc without rank": ("SCHEME://127.0.0.1:PORT/p", None),
    "no rank, no world size": ("SCHEME://127.0.0.1:PORT/p", {}),
    "rank, no world size": ("SCHEME://127.0.0.1:PORT/p", {"rank": 0}),
    "rank not an integer": ("SCHEME://127.0.0.1:PORT/p?rank=x&world_size=2", {}),
    "world size not an integer": ("SCHEME://127.0.0.1:PORT/p?rank=0&world_size=two", {}),
    "rank in the URL and as argument": (
        "SCHEME://127.0.0.1:PORT/p?rank=0",
        {"rank": 1, "world_size": 2},
    ),
    "no port": ("SCHEME://127.0.0.1/p", {"rank": 0, "world_size": 1}),
    "port out of range": ("SCHEME://127.0.0.1:99999/p", {"rank": 0, "world_size": 1}),
    "no host": ("SCHEME://:PORT/p", {"rank": 0, "world_size": 1}),
}


def _call(url: str, kwargs: dict[str, int] | None) -> object:
    import torch.distributed as dist
    import torch.distributed.rpc as rpc

    if kwargs is None:
        opts = rpc.TensorPipeRpcBackendOptions(init_method=url)
        return rpc.init_rpc("w", rpc_backend_options=opts)
    return next(dist.rendezvous(url, **kwargs))


@pytest.mark.parametrize("case", list(CONTRACT))
def test_same_contract_as_tcp(case: str) -> None:
    """Each call fails through ``tcp://`` and ``etcd3://`` with the same exception type and the
    same message but for the scheme name (torch's tcp:// handler is the reference)."""
    import rpcjob  # noqa: F401  (registers etcd3://)

    template, kwargs = CONTRACT[case]
    port = str(free_port())
    got: dict[str, tuple[type[BaseException], str]] = {}
    for scheme in ("tcp", "etcd3"):
        with pytest.raises(BaseException) as info:
            _call(template.replace("SCHEME", scheme).replace("PORT", port), kwargs)
        got[scheme] = (type(info.value), str(info.value).replace(f"{scheme}://", "SCHEME://"))
    assert got["etcd3"] == got["tcp"]
    if case == "init_rpc without rank":
        prefix = "Error initializing torch.distributed using SCHEME:// rendezvous: "
        assert got["tcp"] == (ValueError, prefix + "rank parameter missing")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=240
    )


def test_import_rpcjob_does_not_import_torch() -> None:
    r = _run("import rpcjob, sys; assert 'torch' not in sys.modules, 'torch imported'")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "imports",
    [
        "import rpcjob; import torch",
        "import torch; import rpcjob",
        "import rpcjob; import torch.distributed.rpc",
    ],
)
@pytest.mark.slow  # a child that imports torch
def test_etcd3_registered_in_either_import_order(imports: str) -> None:
    r = _run(f"""
        {imports}
        import sys
        mod = sys.modules["torch.distributed.rendezvous"]
        assert "etcd3" in mod._rendezvous_handlers, list(mod._rendezvous_handlers)
        import rpcjob._torch_hook as h
        h.install_rendezvous_hook()  # idempotent
        assert not any(type(f).__name__ == "_Finder" for f in sys.meta_path)
        import inspect
        assert inspect.getsource(mod)  # the wrapped loader still serves the source
    """)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # a child that imports torch
def test_store_from_init_method_outlives_torchs_reference(etcd_session: EmbeddedEtcd) -> None:
    # torch keeps only the C++ half of a Python store: without our registry the first call
    # through a PrefixStore after the Python reference is gone dies with an INTERNAL ASSERT.
    url = f"etcd3://{etcd_session.endpoint}/rdzv/{uuid.uuid4().hex}/?timeout=10"
    r = _run(f"""
        import gc
        import rpcjob
        import torch.distributed as dist
        store, rank, world = next(dist.rendezvous({url!r}, rank=2, world_size=3))
        assert (rank, world) == (2, 3), (rank, world)
        p = dist.PrefixStore("rpc_prefix_0", store)
        del store
        gc.collect()
        p.set("k", "v")
        assert p.get("k") == b"v"
        assert p.compare_set("t", "", "x") == b"x"
        assert p.delete_key("k") is True
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
