"""oocgnn: out-of-core, disk-backed GNN training on graphs far larger than RAM."""
from oocgnn._version import __version__
from oocgnn.store import Dataset, open_dataset

__all__ = ["Dataset", "open_dataset", "__version__"]
