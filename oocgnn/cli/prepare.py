"""``oocgnn prepare SOURCE ... --out STORE``: convert a dataset into a store.

Sources: ``ogbn-papers100M`` and ``mag240m`` (exact OGB layouts, streamed),
``synthetic`` (generated, up to billions of edges), ``pyg`` (any
``torch_geometric.datasets`` class taking ``(root, name)``).  Re-running the
same command resumes a killed build; a finished store of the same inputs is
reused unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from oocgnn.prepare.partition import METHODS
from oocgnn.prepare.pipeline import PrepareOptions, prepare_store
from oocgnn.utils.memory import PeakRSSMonitor, format_size, resolve_budget

log = logging.getLogger("oocgnn.prepare")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("store options")
    g.add_argument("--out", required=True, type=Path, help="directory of the store to create (or resume)")
    g.add_argument("--partitions", type=int, default=None,
                   help="number of partitions (contiguous id ranges a batch is made of); default from graph size")
    g.add_argument("--partitioner", choices=METHODS, default="auto",
                   help="metis (best cut, graph must fit the budget), multilevel (out of core: coarsen on disk "
                        "until METIS fits, refine back; near-METIS cut), ldg (restreaming, 3 passes, weaker cut), "
                        "range (source order); auto = metis when it fits --memory-budget, else multilevel "
                        "(ldg if not even that fits)")
    g.add_argument("--undirected", action=argparse.BooleanOptionalAction, default=True,
                   help="add reverse edges as OGB baselines do (default on); --no-undirected keeps directions")
    g.add_argument("--feature-dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of stored features (float16 halves disk and I/O)")
    g.add_argument("--seed", type=int, default=0, help="seed of the partitioner")
    g.add_argument("--memory-budget", default=None,
                   help="RAM for sort buffers etc., e.g. 12GB (default: half of the available RAM)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="convert a dataset into an oocgnn store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)

    q = kinds.add_parser("ogbn-papers100M", help="OGB ogbn-papers100M download (raw/data.npz layout)")
    q.add_argument("--root", required=True, type=Path,
                   help="folder holding ogbn_papers100M/ or papers100M-bin/ (or that folder itself)")
    _common(q)

    q = kinds.add_parser("mag240m", help="OGB-LSC MAG240M download (mag240m_kddcup2021/)")
    q.add_argument("--root", required=True, type=Path, help="folder holding mag240m_kddcup2021/ (or that folder)")
    q.add_argument("--with-authors-institutions", action="store_true",
                   help="add authors and institutions as nodes with mean-of-neighbour features (OGB R-GNN baseline)")
    _common(q)

    q = kinds.add_parser("synthetic", help="generated community graph with power-law degrees")
    q.add_argument("--nodes", type=int, required=True, help="number of nodes")
    q.add_argument("--edges", type=int, required=True, help="number of directed edges to generate")
    q.add_argument("--features", type=int, default=64, help="feature width (default 64)")
    q.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    q.add_argument("--homophily", type=float, default=0.6,
                   help="probability that an edge stays inside its community (default 0.6)")
    q.add_argument("--communities", type=int, default=None, help="number of communities (default ~1 per 1000 nodes)")
    q.add_argument("--power-law-exponent", type=float, default=2.3, help="degree power-law exponent (default 2.3)")
    _common(q)

    q = kinds.add_parser("pyg", help="a torch_geometric.datasets class taking (root, name), from local raw files")
    q.add_argument("--class", dest="class_name", required=True, help="dataset class, e.g. Planetoid, Amazon, Coauthor")
    q.add_argument("--name", required=True, help="dataset name, e.g. Cora, CiteSeer, Photo, CS")
    q.add_argument("--root", required=True, type=Path, help="PyG root folder holding NAME/raw (never written to)")
    q.add_argument("--split-seed", type=int, default=0, help="seed of the split when the dataset has none")
    _common(q)
    p.set_defaults(func=run)


def make_source(args: argparse.Namespace):
    """The GraphSource for the parsed ``prepare`` arguments."""
    if args.source == "ogbn-papers100M":
        from oocgnn.prepare.sources.ogbn_papers import Papers100MSource
        return Papers100MSource(args.root)
    if args.source == "mag240m":
        from oocgnn.prepare.sources.mag240m import MAG240MSource
        return MAG240MSource(args.root, with_authors_institutions=args.with_authors_institutions)
    if args.source == "synthetic":
        from oocgnn.prepare.sources.synthetic import SyntheticSource
        return SyntheticSource(num_nodes=args.nodes, num_edges=args.edges, num_features=args.features,
                               num_classes=args.classes, seed=args.seed, communities=args.communities,
                               homophily=args.homophily, power_law_exponent=args.power_law_exponent)
    from oocgnn.prepare.sources.pyg import PygSource
    return PygSource(args.class_name, args.name, args.root, split_seed=args.split_seed)


def run(args: argparse.Namespace) -> int:
    budget = resolve_budget(args.memory_budget)
    source = make_source(args)
    options = PrepareOptions(undirected=args.undirected, partitions=args.partitions, partitioner=args.partitioner,
                             feature_dtype=args.feature_dtype, seed=args.seed)
    log.info("preparing %s into %s (memory budget %s)", args.source, args.out, format_size(budget))
    with PeakRSSMonitor() as mon:
        ds = prepare_store(source, args.out, options, memory_budget=budget, overwrite=args.overwrite,
                           progress=args.progress)
    part = ds.manifest["partition"]
    log.info("store ready: %s", ds)
    log.info("partitions: %d (%s), edge cut %.1f%%; peak RSS %s (budget %s)", part["num_partitions"], part["method"],
             100 * part["edge_cut_fraction"], format_size(mon.peak), format_size(budget))
    report = args.out / "prepare_report.json"
    if report.exists():
        data = json.loads(report.read_text())
        data["peak_rss_bytes"] = max(mon.peak, data.get("peak_rss_bytes", 0))
        data["memory_budget_bytes"] = budget
        from oocgnn.utils.atomic import atomic_write_json
        atomic_write_json(report, data)
    return 0
