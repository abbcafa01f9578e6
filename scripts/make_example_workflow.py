"""Writes example_workflows/infinitetalk_fp4.json (UI format) and its API-format twin from one
description, so the two cannot disagree. Run: python scripts/make_example_workflow.py
"""
from __future__ import annotations

import json
import os

from wanfp4.nodes import NODE_CLASS_MAPPINGS
from wanfp4.nodes.headless_core import CORE_NODES
from wanfp4.nodes.workflow_format import SEED_NAMES, is_widget, ui_to_api

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEG = NODE_CLASS_MAPPINGS["WanFP4TextEncode"].INPUT_TYPES()["required"]["negative"][1]["default"]

# (id, class, title, pos, widget values by name, links {input: (from_id, slot)})
NODES = [
    (1, "LoadImage", "Portrait", [0, 0], {"image": "wanfp4_example_portrait.png", "upload": "image"}, {}),
    (2, "LoadAudio", "Speech", [0, 420], {"audio": "wanfp4_example_speech.wav", "audioUI": None, "upload": None}, {}),
    (3, "WanFP4VocalIsolation", None, [360, 420], {"model_name": "MelBandRoformer_fp16.safetensors"}, {"audio": (2, 0)}),
    (4, "WanFP4AudioEncoderLoader", None, [360, 600], {"model_name": "wav2vec2-chinese-base_fp16.safetensors"}, {}),
    (5, "WanFP4AudioEncode", None, [720, 480], {"fps": 16.0, "normalize_loudness": True},
     {"audio_encoder": (4, 0), "audio": (3, 0)}),
    (6, "WanFP4TextEncoderLoader", None, [0, 760], {"model_name": "umt5_xxl_fp16.safetensors", "precision": "bf16"}, {}),
    (7, "WanFP4TextEncode", None, [360, 760],
     {"positive": "A person talks to the camera with natural expressions and lip movements, soft studio light.",
      "negative": NEG, "unload_after": True, "blocks_on_gpu": "auto"}, {"text_encoder": (6, 0)}),
    (8, "WanFP4ClipVisionLoader", None, [360, 0], {"model_name": "clip_vision_h.safetensors"}, {}),
    (9, "WanFP4ImageEncode", None, [720, 0], {}, {"clip_vision": (8, 0), "image": (1, 0)}),
    (10, "WanFP4VAELoader", None, [720, 160], {"model_name": "wan_2.1_vae.safetensors", "precision": "bf16"}, {}),
    (11, "WanFP4Quantization", None, [360, -420], {"mode": "fp4_experimental", "keep_audio_in_base_precision": False}, {}),
    (12, "WanFP4Attention", None, [360, -280], {"mode": "sageattn_3_fp4"}, {}),
    (13, "WanFP4HardwareTuning", None, [360, -180],
     {"blocks_to_swap": 40, "auto_tuning": True, "vram_threshold_percent": 50, "offload_embeddings": False,
      "vae_tiling": "auto", "torch_compile": "auto"}, {}),
    (14, "WanFP4ModelLoader", None, [720, -360],
     {"model": "wan2.1_i2v_480p_14B_bf16.safetensors", "infinitetalk_patch": "wan2.1_infiniteTalk_single_fp16.safetensors",
      "base_precision": "bf16"},
     {"quantization": (11, 0), "attention": (12, 0), "tuning": (13, 0)}),
    (15, "WanFP4InfiniteTalkSampler", None, [1100, 0],
     {"width": 640, "height": 720, "frames": 81, "fps": 16.0, "steps": 6, "cfg": 7.0, "audio_cfg": 4.0, "shift": 7.0,
      "scheduler": "euler", "denoise": 1.0, "seed": 42, "motion_frames": 9, "color_correction_strength": 1.0},
     {"model": (14, 0), "vae": (10, 0), "text_embeds": (7, 0), "image_embeds": (9, 0), "audio_embeds": (5, 0)}),
    (16, "WanFP4VideoCombine", None, [1500, 0],
     {"frame_rate": 16.0, "crf": 19, "filename_prefix": "WanFP4/infinitetalk", "save_output": True},
     {"images": (15, 0), "audio": (15, 1)}),
]

UI_EXTRA_WIDGETS = {"LoadImage": ["upload"], "LoadAudio": ["audioUI", "upload"]}


def _cls(t):
    return NODE_CLASS_MAPPINGS.get(t) or CORE_NODES[t]


def build() -> tuple[dict, dict]:
    links, nodes = [], []
    out_links: dict[tuple, list] = {}
    link_id = 0
    for nid, ctype, title, pos, widgets, ins in NODES:
        for name, (src, slot) in ins.items():
            link_id += 1
            src_type = _cls(next(n[1] for n in NODES if n[0] == src)).RETURN_TYPES[slot]
            links.append([link_id, src, slot, nid, name, src_type])
            out_links.setdefault((src, slot), []).append(link_id)
    order = {n[0]: i for i, n in enumerate(NODES)}
    for nid, ctype, title, pos, widgets, ins in NODES:
        cls = _cls(ctype)
        spec = cls.INPUT_TYPES()
        values = []
        inputs = []
        for section in ("required", "optional"):
            for name, s in (spec.get(section) or {}).items():
                if is_widget(s):
                    values.append(widgets[name])
                    if name in SEED_NAMES:
                        values.append("fixed")
                else:
                    lid = next((l[0] for l in links if l[3] == nid and l[4] == name), None)
                    inputs.append({"name": name, "type": s[0], "link": lid})
        for extra in UI_EXTRA_WIDGETS.get(ctype, []):
            values.append(widgets[extra])
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        outputs = [{"name": names[i], "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
                   for i, t in enumerate(cls.RETURN_TYPES)]
        node = {"id": nid, "type": ctype, "pos": pos, "size": [320, 120], "flags": {}, "order": order[nid], "mode": 0,
                "inputs": inputs, "outputs": outputs, "properties": {"Node name for S&R": ctype},
                "widgets_values": values}
        if title:
            node["title"] = title
        nodes.append(node)
    # UI links carry the target slot index, not the name.
    for l in links:
        tgt = next(n for n in nodes if n["id"] == l[3])
        l[4] = next(i for i, inp in enumerate(tgt["inputs"]) if inp["name"] == l[4])
    ui = {"last_node_id": max(n[0] for n in NODES), "last_link_id": link_id, "nodes": nodes, "links": links,
          "groups": [], "config": {}, "extra": {"info": "WanFP4 InfiniteTalk example (seed test settings)"},
          "version": 0.4}
    api = ui_to_api(ui, lambda t: _cls(t).INPUT_TYPES())
    return ui, api


def main() -> None:
    ui, api = build()
    with open(os.path.join(ROOT, "example_workflows", "infinitetalk_fp4.json"), "w", encoding="utf-8") as fh:
        json.dump(ui, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(ROOT, "example_workflows", "api", "infinitetalk_fp4.json"), "w", encoding="utf-8") as fh:
        json.dump(api, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
