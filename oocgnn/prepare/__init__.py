"""Turning sources (OGB downloads, PyG datasets, synthetic graphs) into dataset stores."""
