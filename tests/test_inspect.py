"""`python -m wanfp4 inspect`: one JSON object per usable file, reasons on stderr, non-zero exit."""
import json
import os
import subprocess
import sys

import torch
from tiny_files import split_audio, state, tiny_model, to_scaled_fp8, write_comfy, write_original, write_sharded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*files):
    return subprocess.run([sys.executable, "-m", "wanfp4", "inspect", *map(str, files)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_inspect_prints_one_json_line_per_file_and_fails_on_a_bad_one(tmp_path):
    sd = state(tiny_model())
    base, audio = split_audio(sd)
    dit = write_comfy(f"{tmp_path}/wan_fp8_scaled.safetensors", to_scaled_fp8(base)[0])
    patch = write_original(f"{tmp_path}/patch.safetensors", audio, torch.float16)
    index = write_sharded(f"{tmp_path}/shards", sd, shards=2, dtype=torch.bfloat16)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    r = _run(dit, bad, patch, index)
    assert r.returncode != 0
    assert "broken.safetensors" in r.stderr and "inspect:" in r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [os.path.basename(x["file"]) for x in rows] == ["wan_fp8_scaled.safetensors", "patch.safetensors",
                                                             "diffusion_pytorch_model.safetensors.index.json"]
    for row in rows:
        assert {"file", "kind", "dim", "layers", "heads", "in_dim", "format", "params"} <= set(row)
    d, p, s = rows
    assert (d["kind"], d["dim"], d["layers"], d["heads"], d["in_dim"], d["format"]) == \
        ("wan2.1-i2v", 32, 2, 2, 36, "fp8_e4m3fn_scaled")
    assert d["quant_layout"] == "scaled_fp8" and d["layout"] == "comfyui" and d["ffn_dim"] == 64
    assert (p["kind"], p["format"], p["audio"]["channels"]) == ("infinitetalk-audio", "fp16", 16)
    assert (s["kind"], s["format"], s["shards"]) == ("wan2.1-i2v+infinitetalk", "bf16", 2)
    assert s["params"] == sum(v.numel() for v in sd.values())


def test_inspect_all_good_exits_zero(tmp_path):
    p = write_original(f"{tmp_path}/m.safetensors", state(tiny_model()))
    r = _run(p)
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["kind"] == "wan2.1-i2v+infinitetalk"
