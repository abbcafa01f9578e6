"""The example workflow runs headless on the demo models: MP4 read back (frames, fps, size, audio,
metadata); a second run reloads nothing; the video follows the audio across 2 windows; interrupt
stops sampling mid-way; bad inputs give clear errors and leave no file behind.

Tiny sizes (64x64 and 32x32, 1-2 steps) and one module-wide model set keep this at ~15 s on 2 CPU cores."""
import copy
import json
import os
import subprocess
import sys
import time
import wave

import pytest
import torch

import wanfp4
from wanfp4 import cli
from wanfp4.nodes import host
from wanfp4.nodes.headless_core import set_input_dirs
from wanfp4.nodes.runner import WorkflowError, execute, load_workflow, run_file
from wanfp4.wan import pipeline
from wanfp4.wan.audio_input import AudioInputError
from wanfp4.wan.model_cache import MODEL_CACHE
from wanfp4.wan.video_io import probe_mp4

ROOT = os.path.dirname(wanfp4.__file__)
EXAMPLES = os.path.join(ROOT, "example_workflows")
API = os.path.join(EXAMPLES, "api", "infinitetalk_fp4.json")
SPEECH = os.path.join(EXAMPLES, "wanfp4_example_speech.wav")
MODEL_FILES = 6  # DiT (+ patch), VAE, umT5, CLIP vision, wav2vec2, MelBand RoFormer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo model set, written through the CLI as scripts/demo.sh does."""
    d = tmp_path_factory.mktemp("models")
    out = subprocess.run([sys.executable, "-m", "wanfp4", "demo-models", str(d)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 7 and all(os.path.isfile(p) for p in out.stdout.split())
    yield str(d)
    # leave no headless state behind for other test modules
    MODEL_CACHE.clear()
    host.set_models_dir(os.environ.get("WANFP4_MODELS_DIR"))
    host.set_output_dirs(None)
    host.request_interrupt(False)
    set_input_dirs([])


@pytest.fixture
def windows(monkeypatch):
    """Records every GenerationResult the sampler node produces (services imports `generate` per call)."""
    results = []
    real = pipeline.generate

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(pipeline, "generate", spy)
    return results


def small_workflow(tmp_path, name="wf.json", **sampler):
    with open(API, encoding="utf-8") as fh:
        wf = json.load(fh)
    s = next(n for n in wf.values() if n["class_type"] == "WanFP4InfiniteTalkSampler")
    s["inputs"].update({"width": 64, "height": 64, "steps": 2, **sampler})
    path = tmp_path / name
    path.write_text(json.dumps(wf))
    return str(path)


def headless(models, out_dir):
    """What run_file sets up, for tests that call execute() on an edited prompt."""
    host.set_models_dir(models)
    host.set_output_dirs(str(out_dir), str(out_dir / "temp"))
    set_input_dirs([EXAMPLES])


def speech_frames(fps=16):
    with wave.open(SPEECH) as w:
        return int(w.getnframes() / w.getframerate() * fps)


def test_example_workflow_runs_and_mp4_reads_back(models, tmp_path, capsys, windows):
    MODEL_CACHE.clear()
    before, hits = MODEL_CACHE.loads, MODEL_CACHE.hits      # the counters are process-wide
    out_dir = tmp_path / "out"
    wf = small_workflow(tmp_path, frames=33)
    assert cli.main(["run", wf, "--models", models, "--output", str(out_dir)]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(out_dir / "WanFP4" / "infinitetalk_00001.mp4")
    assert MODEL_CACHE.loads - before == MODEL_FILES and windows[-1].windows == 1 and windows[-1].model_calls == 2 * 3
    info = probe_mp4(path)
    assert info["frames"] == 33 and info["fps"] == 16.0 and (info["width"], info["height"]) == (64, 64)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert abs(info["audio_seconds"] - 33 / 16) < 0.08 and info["audio_codec"] == "aac"
    assert json.loads(info["metadata"]["prompt"]) == load_workflow(wf)[0]
    loads = MODEL_CACHE.loads
    # second run: only sampler settings change -> nothing reloads, the counter moves on
    outputs = run_file(small_workflow(tmp_path, "wf2.json", frames=21, seed=7), models, str(out_dir))
    item = next(iter(outputs.values()))["images"][0]
    assert (item["filename"], item["subfolder"], item["type"]) == ("infinitetalk_00002.mp4", "WanFP4", "output")
    assert MODEL_CACHE.loads == loads and MODEL_CACHE.hits - hits >= MODEL_FILES
    assert probe_mp4(item["fullpath"])["frames"] == 21
    assert sorted(os.listdir(out_dir / "WanFP4")) == ["infinitetalk_00001.mp4", "infinitetalk_00002.mp4"]


def test_video_follows_audio_length(models, tmp_path, windows):
    # the 5.9 s speech clip at 16 fps covers 94 frames: frames=201 runs 2 windows (81 + 72) and trims to the audio
    outputs = run_file(small_workflow(tmp_path, frames=201, steps=1, width=32, height=32), models, str(tmp_path))
    info = probe_mp4(next(iter(outputs.values()))["images"][0]["fullpath"])
    assert windows[-1].windows == 2 and windows[-1].num_frames == speech_frames() == 94
    assert info["frames"] == 94 and (info["width"], info["height"]) == (32, 32)
    assert abs(info["audio_seconds"] - 94 / 16) < 0.08


def test_interrupt_stops_sampling(models, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    headless(models, out_dir)
    prompt, _ = load_workflow(small_workflow(tmp_path, frames=33))
    seen, clocks = [], []

    class InterruptAfterFirstStep(host.Progress):
        def __init__(self, total, label="Sampling", started=None):
            clocks.append((started, time.time()))
            super().__init__(total, label, started)

        def update(self, n=1):
            super().update(n)
            seen.append((self.value, self.total))
            host.request_interrupt(True)  # the user presses Cancel once the first step is done

    monkeypatch.setattr(host, "Progress", InterruptAfterFirstStep)
    with pytest.raises(host.InterruptedByUser):
        execute(prompt)
    assert seen == [(1, 2)]  # stopped before the second of 2 steps
    assert clocks[0][0] is not None and clocks[0][0] < clocks[0][1]  # the bar's clock started with step 1
    host.check_interrupt()  # the request was consumed: the next run is not interrupted
    assert not os.path.exists(out_dir)


def test_missing_model_names_file_and_folders(models, tmp_path):
    out_dir = tmp_path / "out"
    headless(models, out_dir)
    prompt, _ = load_workflow(small_workflow(tmp_path))
    p = copy.deepcopy(prompt)
    p["14"]["inputs"]["model"] = "nope.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        execute(p)
    msg = str(e.value)
    assert "nope.safetensors" in msg and "diffusion_models" in msg
    assert os.path.join(models, "diffusion_models") in msg and os.path.join(models, "unet") in msg
    assert not os.path.exists(out_dir)


def test_unknown_core_node_needs_comfyui(tmp_path):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"1": {"class_type": "KSampler", "inputs": {}}}))
    with pytest.raises(WorkflowError, match="'KSampler' needs ComfyUI"):
        execute(load_workflow(str(path))[0])


def test_cli_run_reports_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "wanfp4", "run", str(bad), "--output", str(tmp_path / "out")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "not valid JSON" in out.stderr and str(bad) in out.stderr
    assert out.stdout == "" and not os.path.exists(tmp_path / "out")


def test_silent_and_empty_audio(models):
    from wanfp4.wan import services

    enc = services.load_audio_encoder(os.path.join(models, "audio_encoders", "wav2vec2-chinese-base_fp16.safetensors"),
                                      device="cpu")
    silent = services.encode_audio(enc, {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}, fps=16)
    assert silent["features"].shape == (16, 12, 32) and torch.isfinite(silent["features"]).all()
    with pytest.raises(AudioInputError, match="audio is empty"):
        services.encode_audio(enc, {"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, fps=16)
    with pytest.raises(ValueError, match="at least one frame"):  # 1/32 s < one frame at 16 fps
        services.encode_audio(enc, {"waveform": torch.zeros(1, 1, 500), "sample_rate": 16000}, fps=16)
