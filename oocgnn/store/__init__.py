"""Dataset stores: the on-disk format (``format``), reading (``reader``), writing (``writer``)."""
from oocgnn.store.reader import Dataset, open_dataset

__all__ = ["Dataset", "open_dataset"]
