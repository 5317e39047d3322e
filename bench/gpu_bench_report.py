"""The report of bench/gpu_bench.py: every result as JSON, each scenario's correctness checks,
one line per bandwidth figure against the hand-set anchor, and the closing JSON line (the
figures docs/benchmarks.md records).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _get(res: dict[str, Any], *path: str) -> float | None:
    """The number at ``path``; None where that run did not get so far."""
    cur: Any = res
    for k in path:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return float(cur) if isinstance(cur, (int, float)) else None


def ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 4) if x and y else None


def print_checks(res: dict[str, Any], scenarios: tuple[str, ...]) -> None:
    """The round-trip checks (keys like ``E_to_L_after_join``) of each scenario's workers."""
    for scen in scenarios:
        checks = {
            f"{w}.{k}": v
            for w, r in res.get(scen, {}).items()
            if isinstance(r, dict)
            for k, v in r.items()
            if k[:1].isupper() and k[1:2] == "_"
        }
        if checks:
            print(f"\nchecks ({scen}):", json.dumps(checks, indent=1))


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """Print the bandwidth of each path against the hand-set anchor; the closing line's keys."""

    def g(*path: str) -> float | None:
        return _get(res, *path)

    hs_runs = [v for v in (g("handset_own", "w0", "bw", "gbps"),
                           g("handset_own_again", "w0", "bw", "gbps")) if v]  # fmt: skip
    hs = statistics.mean(hs_runs) if hs_runs else None
    hs_all = g("handset_all", "w0", "bw", "gbps")
    store_path = g("rpcjob", "worker_0", "bw_maps", "gbps")
    store_leave = g("rpcjob", "worker_0", "bw_maps_after_leave", "gbps")
    side = g("sidecar", "worker_0", "bw_maps", "gbps")
    side_leave = g("sidecar", "worker_0", "bw_maps_after_leave", "gbps")
    cpu = g("sidecar", "worker_0", "bw_cpu_staging", "gbps") or g(
        "rpcjob", "worker_0", "bw_cpu_staging", "gbps"
    )
    rj = side or store_path
    print(f"\nhandset runs (GB/s): {[round(v, 1) for v in hs_runs]}  all-visible: {hs_all}")
    for label, v in (("store-driven + guards", store_path), ("after leave", store_leave),
                     ("real sidecar path", side), ("sidecar, after leave", side_leave),
                     ("cpu staging", cpu)):  # fmt: skip
        if v:
            print(f"{label:24s} {v:8.2f} GB/s   x{ratio(v, hs)} of handset")
    return {
        "gbps_handset": hs,
        "gbps_handset_runs": hs_runs,
        "gbps_handset_all_visible": hs_all,
        "gbps_rpcjob": rj,
        "gbps_rpcjob_path": "sidecar" if side else "store-driven",
        "gbps_rpcjob_store_driven": store_path,
        "gbps_rpcjob_after_leave": side_leave or store_leave,
        "gbps_cpu_staging": cpu,
        "ratio_vs_handset": ratio(rj, hs),
        "ratio_vs_cpu_staging": ratio(rj, cpu),
    }


def isolation(res: dict[str, Any], netns: list[str]) -> dict[str, Any]:
    """Per network-namespace setting: derived maps vs hand-set maps in the same isolation."""
    iso: dict[str, Any] = {}
    for k in netns:
        nrj = _get(res, k, "worker_0", "bw_maps", "gbps")
        nhs = _get(res, f"{k}_handset", "w0", "bw", "gbps")
        ncpu = _get(res, k, "worker_0", "bw_cpu_staging", "gbps")
        iso[k] = {
            "gbps_rpcjob": nrj,
            "gbps_rpcjob_after_leave": _get(res, k, "worker_0", "bw_maps_after_leave", "gbps"),
            "gbps_handset": nhs,
            "gbps_cpu_staging": ncpu,
            "ratio_vs_handset": ratio(nrj, nhs),
            "ratio_vs_cpu_staging": ratio(nrj, ncpu),
            "error": res[k].get("error"),
        }
        print(f"{k:24s} rpcjob {nrj} GB/s, hand-set {nhs} GB/s (x{ratio(nrj, nhs)}), "
              f"cpu staging {ncpu} GB/s")  # fmt: skip
    return iso


def summarize(res: dict[str, Any], a: argparse.Namespace) -> None:
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2), flush=True)
    netns = [k for k in res if k.startswith("netns") and not k.endswith("_handset")]
    print_checks(res, ("rpcjob", "sidecar", *netns))
    figures = headline(res)
    iso = isolation(res, netns)
    print(json.dumps({"isolated": iso, **figures, "card": res["card"]}))
