"""The InfiniteTalk sampler node: streaming windows, text + audio CFG, progress and interrupt."""
from __future__ import annotations

import time

from ..wan import services
from . import host
from .types import AUDIO_EMBEDS, CATEGORY, IMAGE_EMBEDS, MODEL, SCHEDULERS, TEXT_EMBEDS, VAE


class WanFP4InfiniteTalkSampler:
    DESCRIPTION = ("Generates the talking video: 81-frame windows that carry 9 motion frames forward, so any "
                   "length of audio works. Outputs frames and the audio trimmed to the video.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("frames", "audio")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "From WanFP4 Model Loader."}),
                "vae": (VAE, {"tooltip": "From WanFP4 VAE Loader."}),
                "text_embeds": (TEXT_EMBEDS, {"tooltip": "From WanFP4 Text Encode."}),
                "image_embeds": (IMAGE_EMBEDS, {"tooltip": "From WanFP4 Image Encode."}),
                "audio_embeds": (AUDIO_EMBEDS, {"tooltip": "From WanFP4 Audio Encode."}),
                "width": ("INT", {"default": 640, "min": 64, "max": 2048, "step": 16,
                                  "tooltip": "Video width in pixels (multiple of 16). The image is scaled to cover "
                                             "and centre-cropped."}),
                "height": ("INT", {"default": 720, "min": 64, "max": 2048, "step": 16,
                                   "tooltip": "Video height in pixels (multiple of 16)."}),
                "frames": ("INT", {"default": 81, "min": 1, "max": 10001, "step": 4,
                                   "tooltip": "Maximum length in frames. The video follows the audio up to this "
                                              "length. Not 4k+1? It is rounded, with a warning."}),
                "fps": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 60.0, "step": 1.0,
                                  "tooltip": "Frame rate; must match the audio encode node's fps."}),
                "steps": ("INT", {"default": 6, "min": 1, "max": 100,
                                  "tooltip": "Denoising steps per window (40 for the base model, 4-8 with a distill "
                                             "LoRA)."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                  "tooltip": "Text guidance. 1.0 skips the negative prompt (2 model calls per step "
                                             "instead of 3)."}),
                "audio_cfg": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                        "tooltip": "Audio guidance: lip-sync strength (3-5 works best; 2 with a "
                                                   "distill LoRA)."}),
                "shift": ("FLOAT", {"default": 7.0, "min": 0.1, "max": 30.0, "step": 0.1,
                                    "tooltip": "Timestep shift of the flow schedule (7 for 480p, 11 for 720p)."}),
                "scheduler": (SCHEDULERS, {"default": "euler",
                                           "tooltip": "euler = InfiniteTalk's shifted Euler; unipc and dpmpp_2m are "
                                                      "multistep solvers."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                      "tooltip": "1.0 starts from pure noise. Lower values start from the noised "
                                                 "start image and keep the last part of the schedule."}),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Noise seed (one seed drives all windows)."}),
                "motion_frames": ("INT", {"default": 9, "min": 1, "max": 33, "step": 4,
                                          "tooltip": "Frames carried from one window into the next (4k+1)."}),
                "color_correction_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                                        "tooltip": "Pulls each frame's colours towards the start "
                                                                   "image (stops drift in long videos); 0 = off."}),
            },
        }

    def sample(self, model, vae, text_embeds, image_embeds, audio_embeds, width, height, frames, fps, steps, cfg,
               audio_cfg, shift, scheduler, denoise, seed, motion_frames, color_correction_strength):
        progress = {"bar": None, "started": None}

        def check_interrupt():
            if progress["started"] is None:  # the first check opens the first step
                progress["started"] = time.time()
            host.check_interrupt()

        def on_step(done, total):  # first called when step 1 is done: the bar's clock starts with step 1
            if progress["bar"] is None:
                progress["bar"] = host.Progress(total, "InfiniteTalk sampling", started=progress["started"])
            progress["bar"].update(done - progress["bar"].value)

        images, audio = services.run_infinitetalk(
            model, vae, text_embeds, image_embeds, audio_embeds,
            width=width, height=height, frames=frames, fps=fps, steps=steps, cfg=cfg, audio_cfg=audio_cfg,
            shift=shift, scheduler=scheduler, denoise=denoise, seed=seed, motion_frames=motion_frames,
            color_correction=color_correction_strength,
            device=host.torch_device(), on_step=on_step, check_interrupt=check_interrupt,
        )
        return (images, audio)
