"""``oocgnn inspect STORE [--json] [--verify]``: what a store holds, and whether it is sound."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from oocgnn.errors import StoreError
from oocgnn.store.reader import open_dataset
from oocgnn.utils.memory import format_size


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="show counts, dtypes, sizes and partitions of a store",
                       description="Show what a dataset store holds; --verify re-checks checksums and invariants.")
    p.add_argument("store", type=Path, help="dataset store directory")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--verify", action="store_true",
                   help="re-read every array: checksums, indptr monotone, indices in range, splits disjoint")
    p.set_defaults(func=run)


def _disk_size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def describe(store: Path) -> dict[str, Any]:
    ds = open_dataset(store)
    sizes = np.diff(ds.partition_ptr)
    m = ds.manifest
    return {
        "path": str(ds.path), "schema_version": m["schema_version"], "source": m["source"]["name"],
        "num_nodes": ds.num_nodes, "num_edges": ds.num_edges, "num_features": ds.num_features,
        "num_classes": ds.num_classes,
        "dtypes": {"features": m["feature_dtype"], "indices": m["indices_dtype"], "labels": m["label_dtype"]},
        "bytes_on_disk": _disk_size(ds.path),
        "splits": m["splits"], "split_note": m["source"].get("split_note", ""),
        "partition": {**m["partition"], "mean_size": float(sizes.mean())},
        "graph": m["graph"], "options": m["options"], "checksum": ds.checksum,
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.store)
    if args.verify:
        from oocgnn.store.verify import verify_store
        problems = verify_store(open_dataset(args.store), progress=not args.json)
        info["verify"] = {"ok": not problems, "problems": problems}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        p = info["partition"]
        print(f"store      {info['path']}  (schema v{info['schema_version']}, from {info['source']})")
        print(f"nodes      {info['num_nodes']:,}   edges {info['num_edges']:,}   features {info['num_features']} "
              f"({info['dtypes']['features']})   classes {info['num_classes']}")
        print(f"on disk    {format_size(info['bytes_on_disk'])}   indices {info['dtypes']['indices']}   "
              f"labels {info['dtypes']['labels']}")
        print("splits     " + "  ".join(f"{k} {v:,}" for k, v in info["splits"].items())
              + (f"   ({info['split_note']})" if info["split_note"] else ""))
        print(f"partitions {p['num_partitions']} by {p['method']}: sizes {p['min_size']:,}..{p['max_size']:,} "
              f"(mean {p['mean_size']:,.0f}), edge cut {100 * p['edge_cut_fraction']:.1f}%")
        if args.verify:
            print("verify     " + ("OK" if info["verify"]["ok"] else "FAILED"))
            for problem in info["verify"]["problems"]:
                print(f"  - {problem}")
    if args.verify and not info["verify"]["ok"]:
        raise StoreError(f"{args.store} failed verification ({len(info['verify']['problems'])} problem(s)); "
                         f"rebuild it with `oocgnn prepare ... --overwrite`")
    return 0
