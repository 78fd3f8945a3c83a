"""Entry point of the ``oocgnn`` command.

Each subcommand lives in its own module under :mod:`oocgnn.cli` exposing
``add_parser(subparsers)`` (registers its flags) and ``run(args) -> int``.  This
module only dispatches and turns user errors into one line on stderr with a
non-zero exit code; bugs keep their traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from oocgnn.errors import OocgnnError, translate_os_error

#: Subcommand name -> module implementing it.  Modules missing from an install
#: (e.g. built by a later issue) are simply not offered.
SUBCOMMANDS = {
    "prepare": "oocgnn.cli.prepare",
    "train": "oocgnn.cli.train",
    "eval": "oocgnn.cli.evaluate",
    "inspect": "oocgnn.cli.inspect",
    "report": "oocgnn.cli.report",
}

EXIT_INTERRUPTED = 130


def _requested_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line, if any (first non-option word)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with ``only`` just that subcommand's: importing every
    subcommand pulls in torch and PyG (seconds), which `oocgnn inspect` does not need."""
    parser = argparse.ArgumentParser(
        prog="oocgnn",
        description=(
            "Out-of-core GNN training on graphs larger than RAM. Typical flow: "
            "`oocgnn prepare ... --out STORE`, then `oocgnn train --data STORE --run-dir RUN`."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OUTDATED_IGNORE", "1")  # ogb checks PyPI on import otherwise
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    args.argv = argv  # `train --nproc-per-node N` relaunches itself with these
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except OocgnnError as exc:
        if not getattr(exc, "quiet", False):
            rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
            where = f" (rank {rank})" if rank is not None else ""
            print(f"oocgnn {args.command}{where}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        translated = translate_os_error(exc, getattr(exc, "filename", "") or "", "writing")
        if isinstance(translated, OocgnnError):
            print(f"oocgnn {args.command}: error: {translated}", file=sys.stderr)
            return translated.exit_code
        raise
    except KeyboardInterrupt:
        print(f"oocgnn {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
