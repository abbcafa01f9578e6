"""Command line: `python -m wanfp4 inspect|run|demo-models ...`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wanfp4", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="print what the loader detects in model files, one JSON object per file")
    p_inspect.add_argument("files", nargs="+")
    p_run = sub.add_parser("run", help="run a workflow (API or UI format) headless through the pack's nodes")
    p_run.add_argument("workflow")
    p_run.add_argument("--models", help="ComfyUI-style models folder (diffusion_models/, vae/, ...)")
    p_run.add_argument("--output", default="output", help="folder for the videos (default ./output)")
    p_run.add_argument("--input", help="folder with the images/audio the workflow loads")
    p_demo = sub.add_parser("demo-models", help="write a tiny random-weight model set in ComfyUI's folder layout")
    p_demo.add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        from .wan.inspect import inspect_main
        return inspect_main(args.files)
    if args.command == "run":
        from .nodes.runner import WorkflowError, run_file
        try:
            outputs = run_file(args.workflow, args.models, args.output, args.input)
        except (WorkflowError, FileNotFoundError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for ui in outputs.values():
            for item in ui.get("images", []):
                if isinstance(item, dict) and item.get("fullpath"):
                    print(item["fullpath"])
        return 0
    if args.command == "demo-models":
        from .wan.demo_models import write_demo_models
        for path in write_demo_models(args.dir):
            print(path)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
