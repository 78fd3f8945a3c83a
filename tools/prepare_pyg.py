#!/usr/bin/env python
"""Convert a small torch_geometric dataset (local raw files) into an oocgnn store.

Thin wrapper: same as `oocgnn prepare pyg ...`; run with --help for the flags.
"""
import sys

from oocgnn.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "pyg", *sys.argv[1:]]))
