"""Registers the etcd3:// rendezvous handler with torch without importing torch.

Placeholder: implemented with the EtcdStore (issue 2). Must never import torch itself.
"""


def install_rendezvous_hook() -> None:
    return None
