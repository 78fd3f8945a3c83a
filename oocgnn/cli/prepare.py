"""``oocgnn prepare SOURCE ... --out STORE``: convert a dataset into a store.

Sources: ``ogb`` (OGB node-property downloads by name: ogbn-arxiv, ogbn-products,
ogbn-papers100M), ``arrays`` (your own graph: .npy edges, features, labels and
splits; edges also as csv), ``ondisk`` (a DGL GraphBolt OnDiskDataset folder with
its metadata.yaml), ``ogbn-papers100M`` and ``mag240m`` (exact OGB layouts,
streamed), ``synthetic`` (generated, up to billions of edges), ``pyg`` (any
``torch_geometric.datasets`` class taking ``(root, name)``).  Every source is
streamed in bounded RAM; features holding NaN or infinities are refused, naming
the first such row.  Re-running the same command resumes a killed build; a
finished store of the same inputs is reused unless ``--overwrite``.

    oocgnn prepare ogb --name ogbn-products --root ~/data --out stores/products
    oocgnn prepare arrays --edge-index E.npy --node-feat X.npy --node-label Y.npy --out stores/mine
    oocgnn prepare ondisk --root ~/data/my_graphbolt_dataset --out stores/gb
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

    q = kinds.add_parser("ogb", help="an OGB node-property download by name (ogbn-arxiv, ogbn-products, "
                                     "ogbn-papers100M), read offline")
    q.add_argument("--name", required=True,
                   help="ogbn-arxiv or ogbn-products (csv.gz download), ogbn-papers100M (npz); metadata from ogb's "
                        "master.csv (ogbn-proteins and ogbn-mag are refused: no node features / heterogeneous)")
    q.add_argument("--root", required=True, type=Path,
                   help="folder holding the unzipped dataset folder (ogbn_arxiv/ or arxiv/, ...), or that folder")
    _common(q)

    q = kinds.add_parser("arrays", help="your own graph: .npy edge index, features, labels (edges also csv)")
    q.add_argument("--edge-index", required=True, type=Path,
                   help="edges: .npy of shape (2, E) or (E, 2), integer node ids; or .csv / .csv.gz lines 'src,dst' "
                        "(no header)")
    q.add_argument("--node-feat", required=True, type=Path,
                   help="features: .npy [N, F] float16/32/64 (read in blocks, any size); N = its rows")
    q.add_argument("--node-label", required=True, type=Path,
                   help="labels: .npy [N] or [N, 1] integer classes (-1 = unlabelled; classes = max + 1), or [N, T] "
                        "0/1 targets with NaN = unknown (a multi-label task)")
    for name in ("train", "valid", "test"):
        q.add_argument(f"--{name}-idx", type=Path, default=None,
                       help=f"{name} nodes: .npy of node ids or a boolean mask [N] (give all three, or none)")
    q.add_argument("--split-ratio", default=None,
                   help="without split files: TRAIN,VALID,TEST fractions of the labelled nodes, split at random "
                        "(default 0.8,0.1,0.1)")
    q.add_argument("--split-seed", type=int, default=0, help="seed of the --split-ratio split (default 0)")
    _common(q)

    q = kinds.add_parser("ondisk", help="a DGL GraphBolt OnDiskDataset folder (metadata.yaml)")
    q.add_argument("--root", required=True, type=Path,
                   help="the folder holding metadata.yaml (its preprocessed/ folder is ignored): one untyped node "
                        "and edge entry, node feature 'feat', one node-classification task")
    _common(q)

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
    if args.source == "ogb":
        from oocgnn.prepare.sources.ogb import make_ogb_source
        return make_ogb_source(args.name, args.root, undirected=args.undirected, progress=args.progress)
    if args.source == "arrays":
        from oocgnn.prepare.sources.arrays import ArraysSource, parse_split_ratio
        ratio = parse_split_ratio(args.split_ratio) if args.split_ratio is not None else None
        return ArraysSource(args.edge_index, args.node_feat, args.node_label, train_idx=args.train_idx,
                            valid_idx=args.valid_idx, test_idx=args.test_idx, split_ratio=ratio,
                            split_seed=args.split_seed, progress=args.progress)
    if args.source == "ondisk":
        from oocgnn.prepare.sources.ondisk import OnDiskSource
        return OnDiskSource(args.root, progress=args.progress)
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
