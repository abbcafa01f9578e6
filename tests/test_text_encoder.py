"""umT5 text encoder: key mapping (ComfyUI / Wan layouts), tokenizer discovery, trimming and
padding, fp8 storage, scaled-fp8 files and errors, against transformers' UMT5EncoderModel built
from the same tiny random weights."""
from __future__ import annotations

import io
import os

import pytest
import torch
from safetensors.torch import save_file

from wanfp4.wan.safetensors_io import ModelFileError
from wanfp4.wan.text_encoder import detect_text_encoder, load_text_encoder, wan_key_to_hf

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

CORPUS = [
    "the quick brown fox jumps over the lazy dog", "a portrait of a woman speaking to the camera",
    "bright colors, overexposed, static, blurred details, subtitles", "worst quality, low quality, JPEG artifacts",
    "a man talks in a quiet room, natural light", "der schnelle braune Fuchs", "un homme parle devant la camera",
]
PROMPTS = ["A woman is talking to the camera.", "worst quality, blurred details", ""]
EOS = 1


@pytest.fixture(scope="module")
def spiece() -> bytes:
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 10), model_writer=buf, vocab_size=64,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, minloglevel=2)
    return buf.getvalue()


def sp_ids(spiece: bytes, text: str) -> list[int]:
    sp = spm.SentencePieceProcessor(model_proto=spiece)
    return list(sp.encode(" ".join(text.split()))) + [EOS]


@pytest.fixture(scope="module")
def ref():
    torch.manual_seed(0)
    cfg = transformers.UMT5Config(vocab_size=96, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3,
                                  relative_attention_num_buckets=16, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                  is_encoder_decoder=False, use_cache=False)
    model = transformers.UMT5EncoderModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:      # distinct norm weights catch norm1/norm2 mix-ups
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


def ref_states(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def comfy_sd(model) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd.pop("encoder.embed_tokens.weight", None)
    return sd


def write_comfy(path, model, spiece: bytes | None, sd=None) -> str:
    sd = dict(sd or comfy_sd(model))
    if spiece is not None:
        sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    save_file(sd, str(path))
    return str(path)


# Wan's names written out per block, independently of the module's mapping table.
def to_wan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    for i in range(n):
        a, f = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        out[f"blocks.{i}.norm1.weight"] = sd[a + "layer_norm.weight"]
        for x in "qkvo":
            out[f"blocks.{i}.attn.{x}.weight"] = sd[a + f"SelfAttention.{x}.weight"]
        out[f"blocks.{i}.pos_embedding.embedding.weight"] = sd[a + "SelfAttention.relative_attention_bias.weight"]
        out[f"blocks.{i}.norm2.weight"] = sd[f + "layer_norm.weight"]
        out[f"blocks.{i}.ffn.gate.0.weight"] = sd[f + "DenseReluDense.wi_0.weight"]
        out[f"blocks.{i}.ffn.fc1.weight"] = sd[f + "DenseReluDense.wi_1.weight"]
        out[f"blocks.{i}.ffn.fc2.weight"] = sd[f + "DenseReluDense.wo.weight"]
    return out


def assert_matches_ref(enc, model, spiece, prompts=PROMPTS, tol=1e-5):
    out, lengths = enc.encode(prompts)
    assert out.shape == (len(prompts), 512, model.config.d_model)
    for i, p in enumerate(prompts):
        ids = sp_ids(spiece, p)
        assert lengths[i] == len(ids)
        want = ref_states(model, ids)
        assert (out[i, : len(ids)].float() - want).abs().max().item() <= tol
        assert torch.count_nonzero(out[i, len(ids):]) == 0     # exactly zero past the true length
    return out, lengths


def test_comfy_file_matches_transformers(tmp_path, ref, spiece):
    enc = load_text_encoder(write_comfy(tmp_path / "umt5_tiny.safetensors", ref, spiece), precision="fp32")
    assert enc.dim == 32 and enc.model.config.num_layers == 3 and enc.model.config.num_heads == 4
    out, lengths = assert_matches_ref(enc, ref, spiece)
    assert lengths[2] == 1                                    # empty prompt = just </s>


def test_wan_pth_with_tokenizer_folder(tmp_path, ref, spiece):
    path = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(to_wan(comfy_sd(ref)), path)
    tok_dir = tmp_path / "google" / "umt5-xxl"
    tok_dir.mkdir(parents=True)
    (tok_dir / "spiece.model").write_bytes(spiece)
    enc = load_text_encoder(str(path), precision="fp32")
    assert enc.tokenizer.source.endswith(os.path.join("google", "umt5-xxl", "spiece.model"))
    assert_matches_ref(enc, ref, spiece)


def test_tokenizer_json_folder(tmp_path, ref, spiece):
    """A tokenizer.json (Rust `tokenizers` Unigram built from the same pieces) gives the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    sp = spm.SentencePieceProcessor(model_proto=spiece)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path = tmp_path / "enc.pth"
    torch.save(to_wan(comfy_sd(ref)), path)
    (tmp_path / "tokenizer").mkdir()
    tok.save(str(tmp_path / "tokenizer" / "tokenizer.json"))
    enc = load_text_encoder(str(path), precision="fp32")
    assert enc.tokenizer.source.endswith("tokenizer.json")
    for p in PROMPTS[:2]:
        assert enc.tokenize([p])[0] == tok.encode(p).ids == sp_ids(spiece, p)
    assert_matches_ref(enc, ref, spiece, PROMPTS[:2])


def test_batch_equals_separate_calls(tmp_path, ref, spiece):
    enc = load_text_encoder(write_comfy(tmp_path / "t.safetensors", ref, spiece), precision="fp32")
    both, lens = enc.encode([PROMPTS[0], PROMPTS[1]])
    pos, lp = enc.encode([PROMPTS[0]])
    neg, ln = enc.encode([PROMPTS[1]])
    assert lens == lp + ln and lens[0] != lens[1]
    assert (both[0] - pos[0]).abs().max() <= 1e-5 and (both[1] - neg[0]).abs().max() <= 1e-5


def test_long_prompt_truncated_to_512_with_eos(tmp_path, ref, spiece):
    enc = load_text_encoder(write_comfy(tmp_path / "t.safetensors", ref, spiece), precision="fp32")
    long = " ".join(CORPUS * 30)
    ids = enc.tokenize([long])[0]
    assert len(ids) == 512 and ids[-1] == EOS and ids[:-1] == sp_ids(spiece, long)[:511]
    out, lengths = enc.encode([long, "hi"])
    assert lengths == [512, len(sp_ids(spiece, "hi"))]
    assert torch.count_nonzero(out[0, 511]) > 0 and torch.count_nonzero(out[1, lengths[1]:]) == 0
    small, _ = enc.encode(["hi"], text_len=16)
    assert small.shape == (1, 16, 32)


def _fp8_per_channel(w: torch.Tensor) -> torch.Tensor:
    s = w.abs().amax(dim=1, keepdim=True) / 448.0
    return (w / s).to(torch.float8_e4m3fn).float() * s


def _ref_with(model, transform):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(transform(mod.weight))
    return m


def test_fp8_storage(tmp_path, ref, spiece):
    from wanfp4.quant import QuantLinear

    path = write_comfy(tmp_path / "t.safetensors", ref, spiece)
    enc = load_text_encoder(path, precision="fp8_e4m3fn", compute_dtype=torch.float32)
    q = enc.model.encoder.block[0].layer[0].SelfAttention.q
    wo = enc.model.encoder.block[0].layer[1].DenseReluDense.wo.inner
    assert isinstance(q, QuantLinear) and q.weight.dtype == torch.float8_e4m3fn
    assert isinstance(wo, QuantLinear) and wo.weight.dtype == torch.float8_e4m3fn
    # exact against transformers with the same per-channel fp8-rounded weights ...
    assert_matches_ref(enc, _ref_with(ref, _fp8_per_channel), spiece)
    # ... and within fp8 error of the full-precision model
    out, lengths = enc.encode([PROMPTS[0]])
    want = ref_states(ref, sp_ids(spiece, PROMPTS[0]))
    rel = (out[0, : lengths[0]] - want).norm() / want.norm()
    assert rel < 0.08
    # bf16 compute (the default) runs and stays close
    enc16 = load_text_encoder(path, precision="fp8_e4m3fn")
    out16, _ = enc16.encode([PROMPTS[0]])
    assert out16.dtype == torch.bfloat16
    assert (out16[0, : lengths[0]].float() - want).norm() / want.norm() < 0.1


def test_scaled_fp8_file(tmp_path, ref, spiece):
    """ComfyUI's legacy scaled fp8: weight (e4m3) x scalar `scale_weight`, plus a `scaled_fp8` marker."""
    sd = comfy_sd(ref)
    scaled = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and "relative_attention_bias" not in k and k != "shared.weight":
            s = v.abs().max() / 448.0
            scaled[k] = (v / s).to(torch.float8_e4m3fn)
            scaled[k[: -len("weight")] + "scale_weight"] = s.float().reshape(())
        else:
            scaled[k] = v.half()
    scaled["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = write_comfy(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors", ref, spiece, scaled)

    def dequant(w):
        s = w.abs().max() / 448.0
        return (w / s).to(torch.float8_e4m3fn).float() * s

    want = _ref_with(ref, dequant)
    with torch.no_grad():   # the file stores the small tensors in fp16
        for name, p in want.named_parameters():
            if p.ndim == 1 or "relative_attention_bias" in name or name.endswith("shared.weight"):
                p.copy_(p.half().float())
    assert_matches_ref(load_text_encoder(path, precision="fp32"), want, spiece)
    enc8 = load_text_encoder(path, precision="fp8_e4m3fn", compute_dtype=torch.float32)
    q = enc8.model.encoder.block[1].layer[0].SelfAttention.q
    file_q = scaled["encoder.block.1.layer.0.SelfAttention.q.weight"]
    assert torch.equal(q.weight.view(torch.uint8), file_q.view(torch.uint8))   # file bits kept as they are
    assert_matches_ref(enc8, want, spiece)


def test_missing_tokenizer_lists_searched_places(tmp_path, ref):
    path = write_comfy(tmp_path / "no_tok.safetensors", ref, None)
    with pytest.raises(ModelFileError) as e:
        load_text_encoder(path, precision="fp32")
    msg = str(e.value)
    assert "spiece_model" in msg and "no_tok.safetensors" in msg
    assert os.path.join(str(tmp_path), "google", "umt5-xxl", "spiece.model") in msg
    assert os.path.join(str(tmp_path), "tokenizer.json") in msg


def test_explicit_tokenizer_path(tmp_path, ref, spiece):
    path = write_comfy(tmp_path / "no_tok.safetensors", ref, None)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "spiece.model").write_bytes(spiece)
    enc = load_text_encoder(path, precision="fp32", tokenizer_path=str(tmp_path / "elsewhere"))
    assert_matches_ref(enc, ref, spiece, PROMPTS[:1])


def test_bad_files(tmp_path, ref, spiece):
    clip_like = tmp_path / "clip.safetensors"
    save_file({"vision_model.embeddings.class_embedding": torch.zeros(8)}, str(clip_like))
    with pytest.raises(ModelFileError, match="not a umT5 text encoder.*vision_model.embeddings.class_embedding"):
        load_text_encoder(str(clip_like))
    sd = comfy_sd(ref)
    t5v11 = {k: v for k, v in sd.items() if not ("relative_attention_bias" in k and ".block.0." not in k)}
    with pytest.raises(ModelFileError, match="T5 v1.1"):
        load_text_encoder(write_comfy(tmp_path / "t5xxl.safetensors", ref, spiece, t5v11))
    partial = {k: v for k, v in sd.items() if k != "encoder.block.2.layer.1.DenseReluDense.wi_1.weight"}
    with pytest.raises(ModelFileError, match=r"encoder\.block\.2\.layer\.1\.DenseReluDense\.wi_1\.weight"):
        load_text_encoder(write_comfy(tmp_path / "partial.safetensors", ref, spiece, partial))
    small = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=8, d_model=16, d_kv=4, num_heads=4, d_ff=16, num_layers=1, is_encoder_decoder=False))
    with pytest.raises(ModelFileError, match="do not belong together"):
        load_text_encoder(write_comfy(tmp_path / "small_vocab.safetensors", small, spiece))
    good = write_comfy(tmp_path / "good.safetensors", ref, spiece)
    data = open(good, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_text_encoder(str(tmp_path / "cut.safetensors"))
    with pytest.raises(ModelFileError, match="not found"):
        load_text_encoder(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="precision"):
        load_text_encoder(good, precision="int4")


def test_detect_real_umt5_xxl_shapes():
    shapes = {"shared.weight": (256384, 4096), "encoder.final_layer_norm.weight": (4096,), "spiece_model": (4548313,)}
    for i in range(24):
        a, f = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        shapes.update({a + f"SelfAttention.{x}.weight": (4096, 4096) for x in "qkvo"})
        shapes[a + "SelfAttention.relative_attention_bias.weight"] = (32, 64)
        shapes[a + "layer_norm.weight"] = (4096,)
        shapes.update({f + f"DenseReluDense.{x}.weight": (10240, 4096) for x in ("wi_0", "wi_1")})
        shapes[f + "DenseReluDense.wo.weight"] = (4096, 10240)
        shapes[f + "layer_norm.weight"] = (4096,)
    want = {"family": "umt5", "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "num_heads": 64, "d_ff": 10240,
            "num_layers": 24, "num_buckets": 32}
    det = detect_text_encoder(shapes)
    assert {k: det[k] for k in want} == want and det["layout"] == "comfy" and det["prefix"] == ""
    wan = to_wan({k: v for k, v in shapes.items() if k != "spiece_model"})
    det_wan = detect_text_encoder(wan)
    assert {k: det_wan[k] for k in want} == want and det_wan["layout"] == "wan"
    prefixed = {"text_encoders.umt5xxl.transformer." + k: v for k, v in shapes.items()}
    assert detect_text_encoder(prefixed)["prefix"] == "text_encoders.umt5xxl.transformer."
    assert detect_text_encoder({"blocks.0.self_attn.q.weight": (5120, 5120)}) is None   # a Wan DiT


def test_wan_key_mapping_table():
    assert wan_key_to_hf("blocks.7.ffn.gate.0.weight") == "encoder.block.7.layer.1.DenseReluDense.wi_0.weight"
    assert wan_key_to_hf("blocks.7.ffn.fc1.weight") == "encoder.block.7.layer.1.DenseReluDense.wi_1.weight"
    assert wan_key_to_hf("blocks.7.ffn.fc2.scale_weight") == "encoder.block.7.layer.1.DenseReluDense.wo.scale_weight"
    assert wan_key_to_hf("blocks.0.pos_embedding.embedding.weight") == \
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert wan_key_to_hf("norm.weight") == "encoder.final_layer_norm.weight"
    assert wan_key_to_hf("blocks.0.something.weight") is None


def test_offload_moves_blocks_only(tmp_path, ref, spiece):
    enc = load_text_encoder(write_comfy(tmp_path / "t.safetensors", ref, spiece), precision="bf16")
    assert enc.model.shared.weight.device.type == "cpu"
    out, _ = enc.encode(PROMPTS[:2])
    assert out.dtype == torch.bfloat16 and out.device.type == "cpu"
    assert enc.offload() is enc
    with pytest.raises(TypeError, match="prompt 1"):
        enc.encode(["ok", None])
