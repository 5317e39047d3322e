"""The pod contract's etcd settings (``RPCJOB_ETCD_*``) as :class:`rpcjob.etcd.Client` arguments.

The client itself is generic and reads no environment; the programs that run under the pod
contract (sidecar, operator, worker) translate the environment here, and pass :data:`ENV_NAMES`
so that the client's errors name the variable to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from rpcjob import contract as c
from rpcjob.etcd import ClientSettings, SettingNames

ENV_NAMES = SettingNames(
    endpoints=c.ENV_ETCD_ENDPOINTS,
    ca=c.ENV_ETCD_CA,
    cert=c.ENV_ETCD_CERT,
    key=c.ENV_ETCD_KEY,
    user=c.ENV_ETCD_USER,
    password=c.ENV_ETCD_PASSWORD,
)


def client_settings(env: Mapping[str, str] | None = None) -> ClientSettings:
    """TLS and auth keyword arguments from ``RPCJOB_ETCD_{CA,CERT,KEY,USER,PASSWORD}`` (unset or
    empty: None), with :data:`ENV_NAMES`."""
    e = os.environ if env is None else env
    return ClientSettings(
        ca=e.get(c.ENV_ETCD_CA) or None,
        cert=e.get(c.ENV_ETCD_CERT) or None,
        key=e.get(c.ENV_ETCD_KEY) or None,
        user=e.get(c.ENV_ETCD_USER) or None,
        password=e.get(c.ENV_ETCD_PASSWORD) or None,
        names=ENV_NAMES,
    )
