"""Device smoke run (not collected by pytest): real-size umT5-XXL and CLIP ViT-H/14 with RANDOM
weights in ComfyUI's file layouts -> load times, GPU memory, and errors of bf16 / fp8 / scaled-fp8
against transformers in fp32. Usage: python tests/device_encoders_realsize.py OUT_DIR"""
from __future__ import annotations

import io
import json
import os
import resource
import sys
import time

import sentencepiece as spm
import torch
import transformers
from safetensors.torch import save_file

from wanfp4.wan.clip_vision import load_clip_vision
from wanfp4.wan.text_encoder import load_text_encoder

out_dir = sys.argv[1]
work = os.environ.get("WORK", "/tmp/enc_work")
os.makedirs(work, exist_ok=True)
dev = torch.device("cuda")
report: dict = {"gpu": torch.cuda.get_device_name(0)}
PROMPTS = ["A woman is talking to the camera, natural light, a quiet room.",
           "bright colors, overexposed, static, blurred details, subtitles, worst quality"]


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def gpu_peak_reset():
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


def gib(n):
    return round(n / 2**30, 2)


# ------------------------------------------------------------------ tokenizer
buf = io.BytesIO()
corpus = [p.lower() for p in PROMPTS] * 20 + ["the quick brown fox jumps over the lazy dog"] * 20
spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=48, hard_vocab_limit=False,
                               model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
spiece = buf.getvalue()
sp = spm.SentencePieceProcessor(model_proto=spiece)

# ------------------------------------------------------------------ umT5-XXL
t0 = time.time()
torch.manual_seed(0)
cfg = transformers.UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
                              relative_attention_num_buckets=32, dropout_rate=0.0, is_encoder_decoder=False,
                              use_cache=False)
with torch.device(dev):
    ref = transformers.UMT5EncoderModel(cfg).eval()
sd = {k: v.detach().half().cpu().contiguous() for k, v in ref.state_dict().items() if k != "encoder.embed_tokens.weight"}
sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
fp16_path = os.path.join(work, "umt5_xxl_fp16.safetensors")
save_file(sd, fp16_path)
scaled = {}
for k, v in sd.items():
    if k.endswith(".weight") and v.ndim == 2 and "relative_attention_bias" not in k and k != "shared.weight":
        s = v.float().abs().max() / 448.0
        scaled[k] = (v.float() / s).to(torch.float8_e4m3fn)
        scaled[k[: -len("weight")] + "scale_weight"] = s.reshape(())
    else:
        scaled[k] = v
scaled["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
fp8_path = os.path.join(work, "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
save_file(scaled, fp8_path)
del sd, scaled
report["t5_files_written_s"] = round(time.time() - t0, 1)
report["t5_file_sizes_gib"] = {os.path.basename(p): gib(os.path.getsize(p)) for p in (fp16_path, fp8_path)}

# fp32 reference from the fp16-rounded weights (what the file holds)
with torch.no_grad():
    for p in ref.parameters():
        p.copy_(p.half().float())
ids = [list(sp.encode(" ".join(p.split()))) + [1] for p in PROMPTS]
with torch.no_grad():
    want = [ref(input_ids=torch.tensor([i], device=dev)).last_hidden_state[0] for i in ids]
del ref
torch.cuda.empty_cache()

for label, path, prec in (("fp16 file, bf16", fp16_path, "bf16"), ("fp16 file, fp8 storage", fp16_path, "fp8_e4m3fn"),
                          ("scaled-fp8 file, fp8 storage", fp8_path, "fp8_e4m3fn"),
                          ("scaled-fp8 file, bf16", fp8_path, "bf16")):
    gpu_peak_reset()
    t = time.time()
    enc = load_text_encoder(path, precision=prec, device=dev)
    t_load = time.time() - t
    t = time.time()
    out, lengths = enc.encode(PROMPTS)
    torch.cuda.synchronize()
    t_first = time.time() - t
    t = time.time()
    out, lengths = enc.encode(PROMPTS)
    torch.cuda.synchronize()
    t_enc = time.time() - t
    peak = torch.cuda.max_memory_allocated()
    errs = [rel(out[i, : lengths[i]], want[i]) for i in range(2)]
    zero_tail = all(torch.count_nonzero(out[i, lengths[i]:]).item() == 0 for i in range(2))
    enc.offload()
    report[f"t5[{label}]"] = {"load_s": round(t_load, 1), "first_encode_s": round(t_first, 2),
                              "encode_s": round(t_enc, 3), "gpu_peak_gib": gib(peak), "rel_err_vs_fp32": errs,
                              "shape": list(out.shape), "lengths": lengths, "zero_tail": zero_tail,
                              "dtype": str(out.dtype)}
    print(label, report[f"t5[{label}]"], flush=True)
    del enc, out
    torch.cuda.empty_cache()

# ------------------------------------------------------------------ CLIP ViT-H/14
torch.manual_seed(1)
ccfg = transformers.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                     num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu",
                                     layer_norm_eps=1e-5, projection_dim=1024)
with torch.device(dev):
    cref = transformers.CLIPVisionModelWithProjection(ccfg).eval()
csd = {k: v.detach().half().cpu().contiguous() for k, v in cref.state_dict().items()}
clip_path = os.path.join(work, "clip_vision_h.safetensors")
save_file(csd, clip_path)
with torch.no_grad():
    for p in cref.parameters():
        p.copy_(p.half().float())
image = torch.rand(1, 480, 832, 3)
import torch.nn.functional as F  # noqa: E402

mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
px = (F.interpolate(image.permute(0, 3, 1, 2), size=(224, 224), mode="bicubic", align_corners=False) - mean) / std
with torch.no_grad():
    cwant = cref(pixel_values=px.to(dev), output_hidden_states=True).hidden_states[-2][0]
del cref
torch.cuda.empty_cache()
gpu_peak_reset()
t = time.time()
clip = load_clip_vision(clip_path, device=dev)
t_load = time.time() - t
t = time.time()
feats = clip.encode_image(image)
torch.cuda.synchronize()
report["clip"] = {"load_s": round(t_load, 1), "encode_s": round(time.time() - t, 3), "shape": list(feats.shape),
                  "dtype": str(feats.dtype), "rel_err_fp16_vs_fp32": rel(feats[0], cwant),
                  "gpu_peak_gib": gib(torch.cuda.max_memory_allocated())}
print("clip", report["clip"], flush=True)
report["cpu_maxrss_gib"] = gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
with open(os.path.join(out_dir, "encoders_realsize.json"), "w") as fh:
    json.dump(report, fh, indent=1)
print(json.dumps(report, indent=1))
