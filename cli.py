"""Command line: `python -m wanfp4 inspect|run|demo-models ...`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanfp4", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="print what the loader detects in model files, one JSON object per file")
    p_inspect.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        from .wan.inspect import inspect_main
        return inspect_main(args.files)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
