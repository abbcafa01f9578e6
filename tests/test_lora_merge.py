"""LoRA merge for every key layout, against W + strength * scale * (B @ A) computed here."""

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from log_capture import captured_lines

from wanfp4.quant import LoraError, QuantLinear, merge_loras


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].self_attn = nn.Module()
        self.blocks[0].self_attn.q = nn.Linear(16, 12)
        self.blocks[0].ffn = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))
        self.patch_embedding = nn.Conv3d(4, 16, (1, 2, 2), stride=(1, 2, 2))


def _lora(tmp_path, name, tensors):
    p = tmp_path / name
    save_file(tensors, str(p))
    return str(p)


def _ab(rank=4, n=12, k=16):
    return torch.randn(rank, k), torch.randn(n, rank)


@pytest.mark.parametrize("prefix", ["diffusion_model.", "", "model.diffusion_model."])
@pytest.mark.parametrize("style", ["down_up", "A_B"])
def test_low_rank_layouts(tmp_path, prefix, style):
    m = Tiny()
    w0 = m.blocks[0].self_attn.q.weight.detach().clone()
    a, b = _ab()
    names = ("lora_down", "lora_up") if style == "down_up" else ("lora_A", "lora_B")
    key = f"{prefix}blocks.0.self_attn.q"
    path = _lora(tmp_path, "l.safetensors", {f"{key}.{names[0]}.weight": a, f"{key}.{names[1]}.weight": b,
                                             f"{key}.alpha": torch.tensor(2.0)})
    merge_loras(m, [(path, 0.7)])
    torch.testing.assert_close(m.blocks[0].self_attn.q.weight, w0 + 0.7 * (2.0 / 4) * (b @ a))


def test_no_alpha_means_scale_one_and_kohya_names(tmp_path):
    m = Tiny()
    w0 = m.blocks[0].ffn[2].weight.detach().clone()
    a, b = _ab(2, 16, 24)
    path = _lora(tmp_path, "k.safetensors", {"lora_unet_blocks_0_ffn_2.lora_down.weight": a,
                                             "lora_unet_blocks_0_ffn_2.lora_up.weight": b})
    merge_loras(m, [(path, 1.5)])
    torch.testing.assert_close(m.blocks[0].ffn[2].weight, w0 + 1.5 * (b @ a))


def test_diff_and_diff_b_and_two_loras(tmp_path):
    m = Tiny()
    w0, b0 = m.blocks[0].ffn[0].weight.detach().clone(), m.blocks[0].ffn[0].bias.detach().clone()
    d, db = torch.randn(24, 16), torch.randn(24)
    p1 = _lora(tmp_path, "d.safetensors", {"diffusion_model.blocks.0.ffn.0.diff": d, "diffusion_model.blocks.0.ffn.0.diff_b": db})
    a, b = _ab(3, 24, 16)
    p2 = _lora(tmp_path, "e.safetensors", {"blocks.0.ffn.0.lora_A.weight": a, "blocks.0.ffn.0.lora_B.weight": b})
    merge_loras(m, [(p1, 0.5), (p2, -1.0)])
    torch.testing.assert_close(m.blocks[0].ffn[0].weight, w0 + 0.5 * d - (b @ a))
    torch.testing.assert_close(m.blocks[0].ffn[0].bias, b0 + 0.5 * db)


def test_conv_lora_and_state_dict_target(tmp_path):
    m = Tiny()
    sd = {k: v.detach().clone().to(torch.bfloat16) for k, v in m.state_dict().items()}
    down, up = torch.randn(2, 4, 1, 2, 2), torch.randn(16, 2, 1, 1, 1)
    path = _lora(tmp_path, "c.safetensors", {"diffusion_model.patch_embedding.lora_down.weight": down,
                                             "diffusion_model.patch_embedding.lora_up.weight": up})
    out = merge_loras(sd, [(path, 1.0)])
    want = (m.patch_embedding.weight.detach().to(torch.bfloat16).float()
            + (up.flatten(1) @ down.flatten(1)).reshape(16, 4, 1, 2, 2)).to(torch.bfloat16)
    assert out is sd and sd["patch_embedding.weight"].dtype == torch.bfloat16
    assert torch.equal(sd["patch_embedding.weight"], want)


def test_merge_into_quantized_layer_requantizes(tmp_path):
    m = Tiny()
    m.blocks[0].self_attn.q = q = QuantLinear.from_linear(m.blocks[0].self_attn.q, "fp8_e4m3fn_scaled", torch.float32)
    w0 = q.dequantize_weight()
    a, b = _ab()
    path = _lora(tmp_path, "q.safetensors", {"blocks.0.self_attn.q.lora_A.weight": a, "blocks.0.self_attn.q.lora_B.weight": b})
    merge_loras(m, [(path, 1.0)])
    want = w0 + b @ a
    assert q.weight.dtype == torch.float8_e4m3fn
    assert ((q.dequantize_weight() - want).norm() / want.norm()).item() < 0.03


def test_unknown_keys_warn_and_no_match_raises(tmp_path):
    m = Tiny()
    a, b = _ab()
    ok = _lora(tmp_path, "ok.safetensors", {"blocks.0.self_attn.q.lora_A.weight": a, "blocks.0.self_attn.q.lora_B.weight": b,
                                            "blocks.0.self_attn.q.dora_scale": torch.ones(12),
                                            "blocks.7.self_attn.q.lora_A.weight": a.clone(),
                                            "blocks.7.self_attn.q.lora_B.weight": b.clone()})
    with captured_lines() as lines:
        merge_loras(m, [(ok, 1.0)])   # warns once, does not raise
    err = "\n".join(lines)
    assert "[WARN] LoRA" in err and "ignored 1 unknown keys (dora_scale: 1) and 1 layers not in the model" in err
    assert "merged into 1 layers" in err
    bad = _lora(tmp_path, "sdxl_lora.safetensors", {"lora_unet_down_blocks_0_attn.lora_down.weight": a,
                                                    "lora_unet_down_blocks_0_attn.lora_up.weight": b})
    with pytest.raises(LoraError, match=r"sdxl_lora\.safetensors: LoRA matches no layer"):
        merge_loras(Tiny(), [(bad, 1.0)])
    wrong = _lora(tmp_path, "wrong.safetensors", {"blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 8),
                                                  "blocks.0.self_attn.q.lora_B.weight": torch.randn(7, 4)})
    with pytest.raises(LoraError, match="different model"):
        merge_loras(Tiny(), [(wrong, 1.0)])
