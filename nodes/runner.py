"""Headless runner: executes an API-format (or plain UI-format) workflow through the pack's own
nodes, without ComfyUI. `python -m wanfp4 run WORKFLOW.json --models DIR --output DIR`.

Models are looked up in a ComfyUI-style models folder; LoadImage/LoadAudio read from --input,
the workflow's folder and the pack's example_workflows folder.
"""
from __future__ import annotations

import inspect
import json
import os
import time

from ..log import info
from . import NODE_CLASS_MAPPINGS, host
from .headless_core import CORE_NODES, set_input_dirs
from .workflow_format import ui_to_api

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkflowError(ValueError):
    pass


def node_class(class_type: str):
    cls = NODE_CLASS_MAPPINGS.get(class_type) or CORE_NODES.get(class_type)
    if cls is None:
        raise WorkflowError(
            f"node type '{class_type}' needs ComfyUI: the headless runner only has the WanFP4 nodes and "
            f"LoadImage/LoadAudio. Run this workflow inside ComfyUI (POST /prompt) instead."
        )
    return cls


def load_workflow(path: str) -> tuple[dict, dict | None]:
    """(API prompt, UI workflow or None) from a JSON file in either format."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise WorkflowError(f"workflow file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return ui_to_api(data, lambda t: node_class(t).INPUT_TYPES()), data
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise WorkflowError(f"{path}: neither an API-format prompt nor a UI-format workflow")
    return data, None


def _order(prompt: dict) -> list[str]:
    deps = {nid: {v[0] for v in n["inputs"].values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)}
            for nid, n in prompt.items()}
    for nid, ds in deps.items():
        missing = ds - set(prompt)
        if missing:
            raise WorkflowError(f"node {nid} links to missing node(s) {sorted(missing)}")
    order, done, busy = [], set(), set()

    def visit(n):
        if n in done:
            return
        if n in busy:
            raise WorkflowError(f"workflow has a cycle through node {n}")
        busy.add(n)
        for d in sorted(deps[n]):
            visit(d)
        busy.discard(n)
        done.add(n)
        order.append(n)

    for n in sorted(prompt, key=lambda x: (len(x), x)):
        visit(n)
    return order


def execute(prompt: dict, ui_workflow: dict | None = None) -> dict:
    """Run every node (in dependency order); returns {node_id: ui dict} of the output nodes."""
    results: dict[str, tuple] = {}
    outputs: dict[str, dict] = {}
    for nid in _order(prompt):
        node = prompt[nid]
        cls = node_class(node["class_type"])
        kwargs = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] in prompt:
                kwargs[name] = results[value[0]][value[1]]
            else:
                kwargs[name] = value
        hidden = (cls.INPUT_TYPES().get("hidden") or {})
        for name, kind in hidden.items():
            if kind == "PROMPT":
                kwargs[name] = prompt
            elif kind == "EXTRA_PNGINFO":
                kwargs[name] = {"workflow": ui_workflow} if ui_workflow else {}
        fn = getattr(cls(), cls.FUNCTION)
        params = inspect.signature(fn).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in kwargs.items() if accepts_any or k in params}
        required = cls.INPUT_TYPES().get("required", {})
        missing = [k for k in required if k not in kwargs and k in params]
        if missing:
            raise WorkflowError(f"node {nid} ({node['class_type']}): missing required input(s) {missing}")
        out = fn(**kwargs)
        if isinstance(out, dict):
            if "ui" in out:
                outputs[nid] = out["ui"]
            out = out.get("result", ())
        results[nid] = tuple(out)
    return outputs


def run_file(path: str, models_dir: str | None = None, output_dir: str | None = None,
             input_dir: str | None = None) -> dict:
    t0 = time.perf_counter()
    if models_dir:
        host.set_models_dir(os.path.abspath(models_dir))
    host.set_output_dirs(os.path.abspath(output_dir or "output"), os.path.abspath(os.path.join(output_dir or "output", "temp")))
    set_input_dirs([input_dir, os.path.dirname(os.path.abspath(path)), os.path.join(PACK_DIR, "example_workflows")])
    prompt, ui = load_workflow(path)
    outputs = execute(prompt, ui)
    info(f"Workflow finished in {time.perf_counter() - t0:.1f} s")
    return outputs
