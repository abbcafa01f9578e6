"""The example workflow: every node type exists, links type-check, widget values are valid, the
UI and API twins agree, and the settings are the seed test case."""
import json
import os

import pytest

import wanfp4
from wanfp4.nodes import NODE_CLASS_MAPPINGS
from wanfp4.nodes.headless_core import CORE_NODES
from wanfp4.nodes.workflow_format import SEED_NAMES, is_widget, ui_to_api

ROOT = os.path.dirname(wanfp4.__file__)
UI_PATH = os.path.join(ROOT, "example_workflows", "infinitetalk_fp4.json")
API_PATH = os.path.join(ROOT, "example_workflows", "api", "infinitetalk_fp4.json")
FILE_FOLDERS = {"model": "diffusion_models", "infinitetalk_patch": "model_patches", "model_name": None}


def _cls(t):
    return NODE_CLASS_MAPPINGS.get(t) or CORE_NODES.get(t)


@pytest.fixture(scope="module")
def ui():
    with open(UI_PATH, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def api():
    with open(API_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def test_every_node_type_exists(ui, api):
    for node in ui["nodes"]:
        assert _cls(node["type"]) is not None, node["type"]
    for node in api.values():
        assert _cls(node["class_type"]) is not None


def test_links_type_check(ui):
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, slot, dst, dst_slot, typ in ui["links"]:
        out_type = _cls(nodes[src]["type"]).RETURN_TYPES[slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert inp["link"] == link_id
        spec = _cls(nodes[dst]["type"]).INPUT_TYPES()
        want = {**spec.get("required", {}), **spec.get("optional", {})}[inp["name"]][0]
        assert out_type == typ == want == inp["type"], (src, dst, inp["name"])
        assert link_id in nodes[src]["outputs"][slot]["links"]


def test_required_inputs_all_connected_or_set(api):
    for nid, node in api.items():
        spec = _cls(node["class_type"]).INPUT_TYPES()
        for name in spec.get("required", {}):
            assert name in node["inputs"], f"node {nid} {node['class_type']} misses {name}"


def test_widget_values_valid(api):
    for nid, node in api.items():
        spec = _cls(node["class_type"]).INPUT_TYPES()
        allspec = {**spec.get("required", {}), **spec.get("optional", {})}
        for name, value in node["inputs"].items():
            s = allspec[name]
            if isinstance(value, list):
                continue
            assert is_widget(s)
            kind, opts = s[0], (s[1] if len(s) > 1 else {})
            if isinstance(kind, list):
                if kind and not name.startswith(("model", "infinitetalk", "image", "audio")):
                    assert value in kind, (nid, name, value)
            elif kind in ("INT", "FLOAT"):
                assert opts.get("min", value) <= value <= opts.get("max", value), (nid, name)
            elif kind == "BOOLEAN":
                assert isinstance(value, bool)
            elif kind == "STRING":
                assert isinstance(value, str)


def test_ui_and_api_twins_agree(ui, api):
    assert ui_to_api(ui, lambda t: _cls(t).INPUT_TYPES()) == api


def test_seed_settings(api):
    by_type = {n["class_type"]: n["inputs"] for n in api.values()}
    s = by_type["WanFP4InfiniteTalkSampler"]
    assert (s["width"], s["height"], s["frames"], s["fps"], s["steps"], s["cfg"], s["shift"], s["scheduler"],
            s["denoise"]) == (640, 720, 81, 16.0, 6, 7.0, 7.0, "euler", 1.0)
    assert by_type["WanFP4Quantization"]["mode"] == "fp4_experimental"
    assert by_type["WanFP4Attention"]["mode"] == "sageattn_3_fp4"
    t = by_type["WanFP4HardwareTuning"]
    assert (t["blocks_to_swap"], t["auto_tuning"], t["vram_threshold_percent"]) == (40, True, 50)
    assert by_type["WanFP4AudioEncode"]["fps"] == 16.0
    assert by_type["LoadImage"]["image"] == "wanfp4_example_portrait.png"
    assert by_type["LoadAudio"]["audio"] == "wanfp4_example_speech.wav"
    # the audio goes through vocal isolation before the encoder
    enc = next(n for n in api.values() if n["class_type"] == "WanFP4AudioEncode")
    assert api[enc["inputs"]["audio"][0]]["class_type"] == "WanFP4VocalIsolation"
    for f in ("wanfp4_example_portrait.png", "wanfp4_example_speech.wav"):
        assert os.path.exists(os.path.join(ROOT, "example_workflows", f))


def test_generated_files_are_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mk", os.path.join(ROOT, "scripts", "make_example_workflow.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ui_new, api_new = mod.build()
    with open(UI_PATH, encoding="utf-8") as fh:
        assert json.load(fh) == json.loads(json.dumps(ui_new))
    with open(API_PATH, encoding="utf-8") as fh:
        assert json.load(fh) == json.loads(json.dumps(api_new))


def test_seed_widget_keeps_control_value(ui):
    sampler = next(n for n in ui["nodes"] if n["type"] == "WanFP4InfiniteTalkSampler")
    names = [n for sec in ("required", "optional")
             for n, s in (_cls(sampler["type"]).INPUT_TYPES().get(sec) or {}).items() if is_widget(s)]
    i = names.index("seed")
    assert sampler["widgets_values"][i] == 42 and sampler["widgets_values"][i + 1] == "fixed"
    assert SEED_NAMES
