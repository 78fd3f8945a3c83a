"""oocgnn: out-of-core, disk-backed GNN training on graphs far larger than RAM."""
from oocgnn.store import Dataset, open_dataset

__version__ = "0.1.0"
__all__ = ["Dataset", "open_dataset", "__version__"]
