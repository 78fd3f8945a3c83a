"""Shared test configuration: offline ogb, few torch threads, dataset locations."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OUTDATED_IGNORE", "1")  # ogb would check PyPI on import

import pytest
import torch

torch.set_num_threads(2)

#: ../shared/datasets relative to the repository root (PyG raw layouts).
SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    """Folder with real PyG raw datasets; skips the test when it is absent."""
    if not (SHARED_DATASETS / "Planetoid" / "Cora" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS

# every sparse CSR tensor the code builds (batches, their transposes, SAGE/VISAGNN matrices) is checked
# against torch's invariants, sorted unique columns per row included: cuSPARSE assumes them
torch.sparse.check_sparse_tensor_invariants.enable()
