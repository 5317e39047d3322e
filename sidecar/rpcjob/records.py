"""The member record (``members/<worker>`` in etcd): one typed model, its one encoder and
decoder, and the one reader of a job's live members.

The sidecar writes a record when its worker has joined (bound to the incarnation's lease) and
watches the others; the operator and ``rpcjob run`` read them to count joined workers. Both go
through :class:`MemberRecord` so that the JSON layout is written down once. Torch-free.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rpcjob import contract
from rpcjob.etcd import KV, Client

log = logging.getLogger("rpcjob.records")


class InvalidRecord(ValueError):
    """A member record that is not a JSON object with an integer ``rank``."""


@dataclass(frozen=True)
class MemberRecord:
    name: str  # the RPC worker name <role>_<index>
    rank: int
    pod: str = ""
    node: str = ""
    ip: str = ""
    devices: tuple[str, ...] = ()
    incarnation: int = 0  # etcd revision of the rank allocation
    joined: int = 0  # etcd revision of the member record (0 until written)
    clique: str = ""

    @property
    def role(self) -> str:
        """The role part of the worker name ("" for a name that is not <role>_<index>)."""
        return contract.role_of(self.name)

    def encode(self) -> str:
        d = asdict(self)
        d["devices"] = list(self.devices)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], name: str | None = None, joined: int = 0
    ) -> MemberRecord:
        """Read a decoded record; ``name`` (from the key) wins over the record's own field.

        Tolerant of older sidecars: missing fields take their defaults, and integer ``gpus``
        stand for ``cuda:<i>`` devices."""
        devices = d.get("devices", d.get("gpus", ())) or ()
        try:
            return cls(
                name=str(name if name is not None else d["name"]),
                rank=int(d.get("rank", -1)),
                pod=str(d.get("pod", "")),
                node=str(d.get("node", "")),
                ip=str(d.get("ip", "")),
                devices=tuple(x if isinstance(x, str) else f"cuda:{x}" for x in devices),
                incarnation=int(d.get("incarnation", 0)),
                joined=joined or int(d.get("joined", 0)),
                clique=str(d.get("clique", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRecord(f"member record {dict(d)!r}: {e!r}") from None

    @classmethod
    def decode(cls, raw: bytes | str, joined: int = 0, name: str | None = None) -> MemberRecord:
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise InvalidRecord(f"member record is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise InvalidRecord(f"member record is not a JSON object: {raw!r}")
        return cls.from_dict(d, name=name, joined=joined)


def members_from_kvs(kvs: Iterable[KV], keys: contract.JobKeys) -> tuple[MemberRecord, ...]:
    """The records under ``keys.members``, sorted by name. A record that does not decode is
    skipped with a log line: a sidecar of another version must not hide the others."""
    out: list[MemberRecord] = []
    for kv in kvs:
        name = kv.key.decode()[len(keys.members) :]
        try:
            out.append(MemberRecord.decode(kv.value, kv.create_revision, name=name))
        except InvalidRecord as e:
            log.warning("skipping member record %s%s: %s", keys.members, name, e)
    return tuple(sorted(out, key=lambda m: m.name))


def read_members(
    client: Client, keys: contract.JobKeys, timeout: float | None = None
) -> tuple[MemberRecord, ...]:
    """A job's live members, read from etcd (raises the client's EtcdError when unreachable)."""
    return members_from_kvs(client.get_prefix(keys.members, timeout=timeout), keys)


__all__ = ["InvalidRecord", "MemberRecord", "members_from_kvs", "read_members"]
