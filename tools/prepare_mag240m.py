#!/usr/bin/env python
"""Convert an OGB-LSC MAG240M download into an oocgnn store.

Thin wrapper: same as `oocgnn prepare mag240m ...`; run with --help for the flags.
"""
import sys

from oocgnn.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "mag240m", *sys.argv[1:]]))
