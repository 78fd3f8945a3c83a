#!/usr/bin/env python
"""Convert an ogbn-papers100M download (raw/data.npz layout) into an oocgnn store.

Thin wrapper: same as `oocgnn prepare ogbn-papers100M ...`; run with --help for the flags.
"""
import sys

from oocgnn.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "ogbn-papers100M", *sys.argv[1:]]))
