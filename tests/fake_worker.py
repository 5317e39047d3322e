"""A worker-side protocol peer of rpcjob-sidecar for tests: a real process on the real socket.

Usage: fake_worker.py EVENTS_FILE join|hello. Says Hello, opens the Session, reports JOINING and
(in ``join`` mode) joins torch's group *in the store* exactly as torch 2.13 writes it (token,
``names/<rank>``, ``_ALL_WORKER_INFOS``, ``addrs/<name>``; see rpcjob.torchkeys) and reports
JOINED; appends every event it receives to EVENTS_FILE as a JSON line, acks every EVICT
(unless FAKE_NO_ACK=1), answers DRAIN with a store-level leave + LEAVING + LEFT and exits 0
(unless FAKE_IGNORE_DRAIN=1).
RPCJOB_TEST_HOOK=die-in-critical-section: SIGKILL itself while holding the join token.
stdin commands: ``join`` (report JOINED), ``leave`` (LEAVING, LEFT, exit 0), ``leave-exit``
(LEAVING, torch's leave, exit without LEFT), ``close`` (end the stream without LEFT),
``failed`` (JOIN_FAILED), ``rehello`` (a new incarnation), ``metrics NAME VALUE``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]

from rpcjob import torchkeys as tk
from rpcjob._store_wait import wait_for_keys
from rpcjob.etcd import Client, Compare, Op
from rpcjob.worker.client import SidecarClient, pb

R = pb.WorkerReport
out_lock = threading.Lock()


def as_dict(msg: Any) -> dict[str, Any]:
    d: dict[str, Any] = MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return d


def record(path: str, kind: str, **fields: Any) -> None:
    with out_lock, open(path, "a") as f:
        f.write(json.dumps({"kind": kind, **fields}) + "\n")


class TorchStoreEmulation:
    """The store writes of torch's dynamic join/leave (docs/architecture.md#membership)."""

    def __init__(self, ident: Any) -> None:
        self.c = Client(
            list(ident.etcd_endpoints), ca=ident.etcd_ca or None, cert=ident.etcd_cert or None,
            key=ident.etcd_key or None, user=ident.etcd_user or None,
            password=ident.etcd_password or None,
        )  # fmt: skip
        self.p = ident.store_prefix
        self.name, self.rank = ident.worker_name, ident.rank

    def _take(self, op: str) -> str:
        token = self.p + tk.TOKEN_KEY
        mine = tk.worker_token(self.name, op)
        while True:
            res = self.c.txn(
                [Compare.version(token, "=", 0)], [Op.put(token, mine)],
                [Op.txn([Compare.value(token, "=", "")], [Op.put(token, mine)], [Op.get(token)])],
            )  # fmt: skip
            if res.succeeded or res.responses[0].succeeded:  # type: ignore[union-attr]
                return mine
            holder = res.responses[0].responses[0].kvs[0].value.decode()  # type: ignore[union-attr]
            self._wait_key(self.p + tk.waiter_key(holder))

    def _wait_key(self, key: str) -> None:
        # torch's wait on the holder's waiter key, as our Store does it: read, then watch from
        # the read's revision (a watch "from now" misses a put made before etcd created it).
        wait_for_keys(self.c, [key.encode()], time.monotonic() + 60)

    def _release(self, mine: str) -> None:
        self.c.put(self.p + tk.TOKEN_KEY, "")
        self.c.put(self.p + tk.waiter_key(mine), tk.DONE)

    def _infos(self) -> list[tuple[str, int]]:
        kv = self.c.get(self.p + tk.ALL_WORKER_INFOS_KEY)
        return tk.parse_worker_infos(kv.value.decode() if kv else "")

    def join(self, die: bool) -> None:
        mine = self._take("join")
        self.c.put(self.p + tk.name_key(self.rank), self.name)
        infos = [*self._infos(), (self.name, self.rank)]
        self.c.put(self.p + tk.ALL_WORKER_INFOS_KEY, tk.format_worker_infos(infos))
        self.c.put(self.p + tk.addr_key(self.name), f"uv://127.0.0.1:{40000 + self.rank}")
        if die:
            os.kill(os.getpid(), 9)
        self._release(mine)

    def leave(self) -> None:
        mine = self._take("leave")
        infos = [i for i in self._infos() if i != (self.name, self.rank)]
        self.c.put(self.p + tk.ALL_WORKER_INFOS_KEY, tk.format_worker_infos(infos))
        self._release(mine)


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    client = SidecarClient()
    no_ack = os.environ.get("FAKE_NO_ACK") == "1"
    state: dict[str, Any] = {}

    def incarnation(join: bool) -> None:
        ident = client.hello(fresh_rank=bool(state), timeout=120)
        d = as_dict(ident)
        d.pop("etcd_password", None)
        record(path, "IDENTITY", **d)
        session = client.session()
        state["session"] = session
        session.report(R.JOINING)
        state["torch"] = torch = TorchStoreEmulation(ident)
        if join:
            torch.join(os.environ.get("RPCJOB_TEST_HOOK") == "die-in-critical-section")
            session.report(R.JOINED)
        threading.Thread(target=read_events, args=(session,), daemon=True).start()

    def read_events(session: Any) -> None:
        try:
            for ev in session.events():
                d = as_dict(ev)
                d["kind"] = pb.MembershipEvent.Kind.Name(ev.kind)
                record(path, d.pop("kind"), **d)
                if ev.kind == pb.MembershipEvent.EVICT and not no_ack:
                    session.report(R.EVICTED, peer=ev.peer.name, event_id=ev.id)
                if ev.kind == pb.MembershipEvent.DRAIN and not os.environ.get("FAKE_IGNORE_DRAIN"):
                    leave(session)
        except Exception as e:
            record(path, "STREAM_ERROR", error=str(e)[:300])
            return
        record(path, "STREAM_END")
        if state.get("left"):
            os._exit(0)

    def leave(session: Any) -> None:
        # The sidecar ends the stream once it has recorded LEFT: exit only then (read_events),
        # or LEFT could be lost with the process and the leave would count as a crash.
        session.report(R.LEAVING)
        state["torch"].leave()
        state["left"] = True
        session.report(R.LEFT)
        session.close()

    incarnation(mode == "join")
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        session = state["session"]
        if cmd[0] == "join":
            state["torch"].join(False)
            session.report(R.JOINED)
        elif cmd[0] == "leave":
            leave(session)
        elif cmd[0] == "leave-exit":  # torch's leave done, LEFT lost with the process
            session.report(R.LEAVING)
            state["torch"].leave()
            session.close()
            record(path, "EXIT")
            os._exit(0)
        elif cmd[0] == "close":
            session.close()
        elif cmd[0] == "failed":
            session.report(R.JOIN_FAILED, detail="test: join failed")
            session.close()
        elif cmd[0] == "rehello":
            incarnation(True)
        elif cmd[0] == "metrics":
            session.report(R.METRICS, metrics={cmd[1]: float(cmd[2])})
        record(path, "DONE", cmd=cmd[0])


if __name__ == "__main__":
    main()
