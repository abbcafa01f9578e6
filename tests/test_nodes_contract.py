"""The ComfyUI V1 node contract for every node of the pack."""
import inspect

import pytest

from wanfp4.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
FIXED_IDS = {"WanFP4ModelLoader", "WanFP4Quantization", "WanFP4Attention", "WanFP4InfiniteTalkSampler",
             "WanFP4VideoCombine"}


def test_fixed_node_ids_and_display_names():
    assert FIXED_IDS <= set(NODE_CLASS_MAPPINGS)
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for cls in NODE_CLASS_MAPPINGS.values():
        assert cls.CATEGORY == "WanFP4"


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_input_types_are_valid(name):
    cls = NODE_CLASS_MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for inp, s in (spec.get(section) or {}).items():
            assert isinstance(s, tuple) and 1 <= len(s) <= 2, inp
            kind = s[0]
            opts = s[1] if len(s) > 1 else {}
            assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
            if isinstance(kind, list):
                if "default" in opts:
                    assert opts["default"] in kind, f"{name}.{inp} default not in combo"
            elif kind in ("INT", "FLOAT"):
                d = opts["default"]
                assert opts.get("min", d) <= d <= opts.get("max", d), f"{name}.{inp} default out of range"
                if kind == "INT":
                    assert isinstance(d, int)
            elif kind == "BOOLEAN":
                assert isinstance(opts["default"], bool)
            elif kind == "STRING":
                assert isinstance(opts.get("default", ""), str)
            else:
                assert kind.isupper(), f"{name}.{inp}: custom type names are upper case"


@pytest.mark.parametrize("name", sorted(NODE_CLASS_MAPPINGS))
def test_function_signature_matches_inputs(name):
    cls = NODE_CLASS_MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    fn = getattr(cls, cls.FUNCTION)
    params = inspect.signature(fn).parameters
    names = [p for p in params if p != "self"]
    required = list(spec.get("required", {}))
    optional = list(spec.get("optional", {})) + list(spec.get("hidden", {}))
    for r in required:
        assert r in params and params[r].default is inspect.Parameter.empty, f"{name}: required {r}"
    for o in optional:
        assert o in params and params[o].default is not inspect.Parameter.empty, f"{name}: optional {o}"
    assert set(names) == set(required) | set(optional), f"{name}: extra parameters"
    assert len(cls.RETURN_TYPES) == len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))


def test_selector_nodes_return_their_choice():
    q = NODE_CLASS_MAPPINGS["WanFP4Quantization"]().configure("fp4_scaled_fast")[0]
    assert q["mode"] == "fp4_scaled_fast"
    a = NODE_CLASS_MAPPINGS["WanFP4Attention"]().configure("sageattn_3_fp8")[0]
    assert a["mode"] == "sageattn_3_fp8"
    t = NODE_CLASS_MAPPINGS["WanFP4HardwareTuning"]().configure(40, True, 50)[0]
    assert t == {"blocks_to_swap": 40, "auto": True, "vram_threshold": 0.5, "offload_embeddings": False,
                 "vae_tiling": "auto", "torch_compile": "auto"}


def test_mode_lists_match_the_issue():
    spec_q = NODE_CLASS_MAPPINGS["WanFP4Quantization"].INPUT_TYPES()["required"]["mode"][0]
    assert set(spec_q) == {"auto", "disabled", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp8_e4m3fn_fast", "fp8_e5m2",
                           "fp4_experimental", "fp4_scaled", "fp4_scaled_fast"}
    spec_a = NODE_CLASS_MAPPINGS["WanFP4Attention"].INPUT_TYPES()["required"]["mode"][0]
    assert {"sdpa", "flash_attn_3", "sageattn", "sageattn_3", "sageattn_3_fp8", "sageattn_3_fp4", "auto"} <= set(spec_a)
