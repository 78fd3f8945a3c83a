#!/usr/bin/env python
"""Generate a synthetic community graph (up to billions of edges) straight into an oocgnn store.

Thin wrapper: same as `oocgnn prepare synthetic ...`; run with --help for the flags.
"""
import sys

from oocgnn.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "synthetic", *sys.argv[1:]]))
