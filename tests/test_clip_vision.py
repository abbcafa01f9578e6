"""CLIP vision: ComfyUI IMAGE handling, Wan preprocessing, penultimate-layer parity with
transformers' CLIPVisionModel built from the same tiny random weights, config detection, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from wanfp4.wan.clip_vision import detect_clip_vision, load_clip_vision
from wanfp4.wan.image_input import clip_preprocess, image_from_comfy
from wanfp4.wan.safetensors_io import ModelFileError

transformers = pytest.importorskip("transformers")

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
HEADS = 4


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=HEADS, image_size=28, patch_size=14, hidden_act="gelu",
                                        layer_norm_eps=1e-5, projection_dim=16)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:   # non-trivial LayerNorms catch pre/post and norm1/norm2 mix-ups
                p.copy_((1 if name.endswith("weight") else 0) + 0.2 * torch.randn_like(p))
    return model


def write_comfy(path, model, meta=True, sd=None, prefix="") -> str:
    sd = sd if sd is not None else {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd = {prefix + k: v for k, v in sd.items()}
    save_file(sd, str(path), metadata={"num_attention_heads": str(HEADS)} if meta else None)
    return str(path)


def wan_pixels(image_nhwc: torch.Tensor, size: int) -> torch.Tensor:
    """Independent reference of Wan's preprocessing: [-1, 1] frame, bicubic to size x size, back to 0..1, mean/std."""
    x = image_nhwc[..., :3].permute(0, 3, 1, 2).float() * 2 - 1
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return (x * 0.5 + 0.5 - MEAN) / STD


def ref_penultimate(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]


def test_parity_with_transformers_penultimate(tmp_path, ref):
    enc = load_clip_vision(write_comfy(tmp_path / "clip_vision_tiny.safetensors", ref))
    assert enc.image_size == 28 and enc.hidden_size == 32 and enc.det["num_layers"] == 3
    assert len(enc.model.encoder.layers) == 2               # the unused last block is not built
    torch.manual_seed(1)
    image = torch.rand(2, 37, 53, 3)
    out = enc.encode_image(image)
    want = ref_penultimate(ref, wan_pixels(image, 28))
    assert out.shape == (2, 5, 32) == want.shape
    assert (out - want).abs().max().item() <= 1e-5
    # last layer's output is different: the test would notice taking the wrong layer
    with torch.no_grad():
        last = ref(pixel_values=wan_pixels(image, 28), output_hidden_states=True).hidden_states[-1]
    assert (out - last).abs().max().item() > 1e-2


def test_prefixed_file_and_no_projection(tmp_path, ref):
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items() if not k.startswith("visual_projection")}
    enc = load_clip_vision(write_comfy(tmp_path / "p.safetensors", ref, sd=sd, prefix="clip."))
    image = torch.rand(1, 28, 28, 3)
    assert (enc.encode_image(image) - ref_penultimate(ref, wan_pixels(image, 28))).abs().max() <= 1e-5


def test_preprocess_matches_independent_computation(tmp_path, ref):
    enc = load_clip_vision(write_comfy(tmp_path / "c.safetensors", ref))
    torch.manual_seed(2)
    image = torch.rand(3, 61, 40, 3)
    got = enc.preprocess(image)
    assert got.shape == (3, 3, 28, 28)
    assert (got - wan_pixels(image, 28)).abs().max() <= 1e-5
    big = clip_preprocess(image_from_comfy(image), 224)
    assert big.shape == (3, 3, 224, 224) and (big - wan_pixels(image, 224)).abs().max() <= 1e-5


def test_alpha_gray_and_single_image(tmp_path, ref):
    enc = load_clip_vision(write_comfy(tmp_path / "c.safetensors", ref))
    torch.manual_seed(3)
    rgb = torch.rand(1, 30, 45, 3)
    rgba = torch.cat([rgb, torch.rand(1, 30, 45, 1)], dim=-1)
    assert torch.equal(enc.encode_image(rgba), enc.encode_image(rgb))
    gray = torch.rand(1, 30, 45, 1)
    assert torch.equal(enc.encode_image(gray), enc.encode_image(gray.expand(-1, -1, -1, 3)))
    gray_alpha = torch.cat([gray, torch.ones_like(gray)], dim=-1)
    assert torch.equal(image_from_comfy(gray_alpha), image_from_comfy(gray))
    assert torch.equal(enc.encode_image(rgb[0]), enc.encode_image(rgb))   # a single [H, W, C] frame
    tiny = torch.rand(1, 1, 1, 3)                                            # any size, even 1 px
    assert enc.encode_image(tiny).shape == (1, 5, 32)
    x = image_from_comfy(rgba)
    assert x.shape == (1, 3, 30, 45) and x.dtype == torch.float32 and torch.equal(x, rgb.permute(0, 3, 1, 2))


@pytest.mark.parametrize("shape", [(1, 0, 10, 3), (0, 8, 8, 3), (1, 8, 0, 3), (1, 8, 8, 0)])
def test_zero_dimension_error_names_input(shape):
    with pytest.raises(ValueError, match=r"start_image: the IMAGE tensor is empty"):
        image_from_comfy(torch.zeros(shape), "start_image")


def test_bad_image_inputs():
    with pytest.raises(ValueError, match="image: IMAGE has 5 channels"):
        image_from_comfy(torch.zeros(1, 4, 4, 5))
    with pytest.raises(ValueError, match=r"image: expected a ComfyUI IMAGE tensor \[N, H, W, C\]"):
        image_from_comfy(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="image: IMAGE dtype torch.uint8 is not a float image"):
        image_from_comfy(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="image: expected a ComfyUI IMAGE tensor"):
        image_from_comfy([[0.0]])


def test_detect_clip_vision_h_shapes():
    s = {"vision_model.embeddings.class_embedding": (1280,),
         "vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14),
         "vision_model.embeddings.position_embedding.weight": (257, 1280),
         "vision_model.pre_layrnorm.weight": (1280,), "visual_projection.weight": (1024, 1280)}
    for i in range(32):
        s[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] = (5120, 1280)
    det = detect_clip_vision(s)
    assert (det["hidden_size"], det["num_heads"], det["num_layers"], det["image_size"], det["num_tokens"],
            det["intermediate_size"], det["hidden_act"], det["projection_dim"]) == \
        (1280, 16, 32, 224, 257, 5120, "gelu", 1024)
    assert detect_clip_vision({"blocks.0.self_attn.q.weight": (8, 8)}) is None
    with pytest.raises(ModelFileError, match="attention heads"):
        detect_clip_vision(_tiny_shapes(40))


def _tiny_shapes(width):
    return {"vision_model.embeddings.class_embedding": (width,),
            "vision_model.embeddings.patch_embedding.weight": (width, 3, 14, 14),
            "vision_model.embeddings.position_embedding.weight": (5, width),
            "vision_model.pre_layrnorm.weight": (width,),
            "vision_model.encoder.layers.0.mlp.fc1.weight": (2 * width, width)}


def test_heads_without_metadata(tmp_path, ref):
    """No metadata: a tiny tower gets head width 16 (32 wide -> 2 heads, not the reference's 4);
    an explicit num_heads wins."""
    path = write_comfy(tmp_path / "nometa.safetensors", ref, meta=False)
    assert load_clip_vision(path).det["num_heads"] == 2
    enc = load_clip_vision(path, num_heads=HEADS)
    image = torch.rand(1, 20, 20, 3)
    assert (enc.encode_image(image) - ref_penultimate(ref, wan_pixels(image, 28))).abs().max() <= 1e-5
    assert (load_clip_vision(path).encode_image(image) - enc.encode_image(image)).abs().max() > 1e-4
    assert detect_clip_vision(_tiny_shapes(768))["num_heads"] == 12
    assert detect_clip_vision(_tiny_shapes(640))["num_heads"] == 10


def test_bad_files(tmp_path, ref):
    t5 = tmp_path / "t5.safetensors"
    save_file({"shared.weight": torch.zeros(4, 4)}, str(t5))
    with pytest.raises(ModelFileError, match="not a CLIP vision model.*shared.weight"):
        load_clip_vision(str(t5))
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()
          if k != "vision_model.encoder.layers.1.mlp.fc2.bias"}
    with pytest.raises(ModelFileError, match=r"vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        load_clip_vision(write_comfy(tmp_path / "partial.safetensors", ref, sd=sd))
    siglip = {k: v.detach().clone() for k, v in ref.state_dict().items() if "class_embedding" not in k}
    with pytest.raises(ModelFileError, match="class_embedding"):
        load_clip_vision(write_comfy(tmp_path / "siglip.safetensors", ref, sd=siglip))
    good = write_comfy(tmp_path / "good.safetensors", ref)
    data = open(good, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(ModelFileError, match="truncated"):
        load_clip_vision(str(tmp_path / "cut.safetensors"))


def test_half_precision_storage(tmp_path, ref):
    enc = load_clip_vision(write_comfy(tmp_path / "c.safetensors", ref), dtype=torch.bfloat16)
    image = torch.rand(1, 28, 28, 3)
    out = enc.encode_image(image)
    want = ref_penultimate(ref, wan_pixels(image, 28))
    assert out.dtype == torch.bfloat16
    assert (out.float() - want).norm() / want.norm() < 0.03
