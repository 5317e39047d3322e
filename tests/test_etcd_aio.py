"""rpcjob.etcd.AsyncClient against a real etcd (asyncio.run per test; no pytest plugin)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from etcd_waits import frozen

from rpcjob.etcd import (
    AsyncClient,
    Compare,
    EtcdAuthError,
    EtcdCompacted,
    EtcdTimeout,
    EtcdUnavailable,
    Op,
    RangeResult,
    WatchEvent,
)
from rpcjob_operator.localexec.etcd_server import EmbeddedEtcd, free_port


def test_kv_txn_lease_status(etcd_endpoint: str) -> None:
    p = f"/aio/{uuid.uuid4().hex}/"

    async def main() -> None:
        async with AsyncClient(etcd_endpoint) as c:
            r = await c.put(p + "a", "1")
            kv = await c.get(p + "a")
            assert kv is not None and kv.value == b"1" and kv.mod_revision == r.revision
            assert await c.get(p + "missing") is None
            await c.put(p + "b", b"2")
            assert [k.key for k in await c.get_prefix(p)] == [
                (p + "a").encode(),
                (p + "b").encode(),
            ]
            assert (await c.range(p, prefix=True, count_only=True)).count == 2
            inner = Op.txn([Compare.version(p + "c", "=", 0)], [Op.put(p + "c", "new")])
            t = await c.txn([Compare.value(p + "a", "=", "x")], [], [inner, Op.get(p + "a")])
            assert not t.succeeded and t.responses[0].succeeded  # type: ignore[union-attr]
            got = t.responses[1]
            assert isinstance(got, RangeResult) and got.kvs[0].value == b"1"
            d = await c.delete(p, prefix=True, prev_kv=True)
            assert d.deleted == 3 and len(d.prev) == 3
            lease = await c.lease_grant(30)
            assert await c.lease_keepalive_once(lease.id) == 30
            assert 0 < await c.lease_ttl(lease.id) <= 30
            await c.lease_revoke(lease.id)
            await c.lease_revoke(lease.id)  # unknown: no error
            assert await c.lease_ttl(lease.id) == -1
            assert await c.lease_keepalive_once(lease.id) == 0
            assert (await c.status())["version"].startswith("3.")

    asyncio.run(main())


def test_watch_iterator_history_cancel_and_compaction(etcd_endpoint: str) -> None:
    p = f"/aio/{uuid.uuid4().hex}/"

    async def main() -> None:
        async with AsyncClient(etcd_endpoint) as c:
            first = (await c.put(p + "k", "1")).revision
            await c.put(p + "k", "2")
            w = c.watch(p, prefix=True, start_revision=first, prev_kv=True)
            seen: list[WatchEvent] = []
            async with asyncio.timeout(10):
                async for batch in w:
                    seen += batch
                    if len(seen) == 2:
                        break
            assert [e.kv.value for e in seen] == [b"1", b"2"]
            assert seen[1].prev_kv is not None and seen[1].prev_kv.value == b"1"
            await w.cancel()
            async with asyncio.timeout(10):
                assert [b async for b in w] == []  # ends after cancel
            now = (await c.put(p + "k", "3")).revision
            await c._conn.call(
                "kv", "Compact", _compaction(now), idempotent=True, op="compact"
            )  # fmt: skip
            old = c.watch(p + "k", start_revision=first)
            with pytest.raises(EtcdCompacted, match=f"revision {first} has been compacted"):
                async with asyncio.timeout(10):
                    async for _ in old:
                        pass

    asyncio.run(main())


def _compaction(revision: int) -> object:
    from rpcjob.etcd._aconn import pb

    return pb.CompactionRequest(revision=revision, physical=True)


def test_watch_resumes_after_restart_and_keepalive_reports_revoke(etcd: EmbeddedEtcd) -> None:
    async def main() -> None:
        async with AsyncClient(etcd.endpoint, timeout=10) as c:
            start = (await c.status())["revision"] + 1  # no race with the watch's creation
            w = c.watch("/r/", prefix=True, start_revision=start)
            await c.put("/r/1", "1")
            values: list[bytes] = []
            it = aiter(w)
            async with asyncio.timeout(20):
                values += [e.kv.value for e in await anext(it)]
                await asyncio.to_thread(etcd.restart)
                await c.put("/r/2", "2")
                await c.put("/r/3", "3")
                while len(values) < 3:
                    values += [e.kv.value for e in await anext(it)]
            assert values == [b"1", b"2", b"3"]
            lost: list[BaseException | None] = []
            lease = await c.lease_grant(3)
            ka = c.keepalive(lease, on_lost=lost.append)
            await c.lease_revoke(lease.id)
            async with asyncio.timeout(10):
                await ka.lost.wait()
            assert lost == [None]

    asyncio.run(main())


def test_failover_errors_and_one_client_on_two_loops(etcd_session: EmbeddedEtcd) -> None:
    dead = f"127.0.0.1:{free_port()}"
    c = AsyncClient([dead, etcd_session.endpoint], timeout=5)

    async def use() -> bytes:
        await c.put("/aio/loops", "v")
        kv = await c.get("/aio/loops")
        assert kv is not None
        return kv.value

    assert asyncio.run(use()) == b"v"
    assert asyncio.run(use()) == b"v"  # a second loop gets its own channel
    asyncio.run(c.close())

    async def unreachable() -> None:
        async with AsyncClient(dead, timeout=0.5) as d:
            with pytest.raises(EtcdUnavailable, match=f"etcd at {dead} unreachable"):
                await d.get("k")

    asyncio.run(unreachable())


def test_errors_auth_and_frozen_txn(etcd: EmbeddedEtcd) -> None:
    etcd.enable_auth("root-pw")

    async def main() -> None:
        async with AsyncClient(etcd.endpoint, user="root", password="nope") as c:
            with pytest.raises(EtcdAuthError, match="authentication failed for user 'root'"):
                await c.get("k")
        async with AsyncClient(etcd.endpoint, **etcd.client_kwargs()) as c:
            await c.put("n", "0")
            with frozen(etcd.pid):
                with pytest.raises(EtcdTimeout, match=f"get on etcd at {etcd.endpoint} timed"):
                    await c.get("n", timeout=0.5)  # etcd is frozen for sure now
                with pytest.raises(EtcdTimeout, match="outcome is unknown"):
                    await c.txn([], [Op.put("n", "1")], timeout=0.5)
            kv = await c.get("n")
            assert kv is not None and kv.version in (1, 2)

    asyncio.run(main())
