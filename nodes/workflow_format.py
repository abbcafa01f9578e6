"""UI-format (editor) <-> API-format (POST /prompt) workflows for plain graphs.

ComfyUI converts UI to API format only in its frontend JS. This covers what the pack's own
workflows use — widgets in INPUT_TYPES order, the seed's control_after_generate value, links,
muted/bypassed nodes — so the example's twins can be generated and checked against each other,
and the headless runner accepts either format.
"""
from __future__ import annotations

from typing import Callable

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
SEED_NAMES = ("seed", "noise_seed")


def is_widget(spec) -> bool:
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        return True
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind in WIDGET_TYPES and not opts.get("forceInput", False)


def widget_names(input_types: dict) -> list[str]:
    """Names of the inputs shown as widgets, in the order their values appear in widgets_values."""
    names = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            if is_widget(spec):
                names.append(name)
    return names


def ui_to_api(workflow: dict, input_types_of: Callable[[str], dict]) -> dict:
    """Convert a UI-format workflow to the API prompt dict. `input_types_of(class_type)` -> INPUT_TYPES()."""
    links = {l[0]: l for l in workflow.get("links", [])}
    prompt: dict = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        if node["type"] in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode"):
            continue
        spec = input_types_of(node["type"])
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        vi = 0
        for name in widget_names(spec):
            if vi >= len(values):
                break
            inputs[name] = values[vi]
            vi += 1
            if name in SEED_NAMES and vi < len(values) and values[vi] in ("fixed", "increment", "decrement", "randomize"):
                vi += 1
        for inp in node.get("inputs", []):
            link_id = inp.get("link")
            if link_id is None:
                continue
            link = links[link_id]
            inputs[inp["name"]] = [str(link[1]), link[2]]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt
