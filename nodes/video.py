"""Video Combine: frames (+ audio) -> an MP4 in ComfyUI's output folder, with a preview in the node."""
from __future__ import annotations

import os

from ..wan.video_io import write_mp4
from . import host
from .types import CATEGORY


class WanFP4VideoCombine:
    DESCRIPTION = "Writes the frames (and audio) as an H.264 MP4 with AAC sound; never overwrites a file."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_NODE = True
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames to encode."}),
                "frame_rate": ("FLOAT", {"default": 16.0, "min": 1.0, "max": 120.0, "step": 1.0,
                                         "tooltip": "Frames per second of the MP4 (use the sampler's fps)."}),
                "crf": ("INT", {"default": 19, "min": 0, "max": 51,
                                "tooltip": "H.264 quality: lower is better and larger (17-23 is typical)."}),
                "filename_prefix": ("STRING", {"default": "WanFP4/infinitetalk",
                                               "tooltip": "File name start; a counter is added (prefix_00001.mp4). "
                                                          "May contain a subfolder."}),
                "save_output": ("BOOLEAN", {"default": True,
                                            "tooltip": "Save to the output folder; off = temp folder (preview only)."}),
            },
            "optional": {
                "audio": ("AUDIO", {"tooltip": "Sound to mux (AAC). Trimmed to the video length."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def combine(self, images, frame_rate, crf, filename_prefix, save_output, audio=None, prompt=None,
                extra_pnginfo=None):
        if not filename_prefix or os.path.isabs(filename_prefix) or ".." in filename_prefix.replace("\\", "/").split("/"):
            raise ValueError(f"filename_prefix: {filename_prefix!r} must be a relative name inside the output folder")
        folder = host.output_directory(temp=not save_output)
        metadata = {}
        if prompt is not None:
            metadata["prompt"] = prompt
        if extra_pnginfo:
            for key, value in extra_pnginfo.items():
                metadata[key] = value
        info = write_mp4(images, folder, filename_prefix, fps=frame_rate, crf=crf, audio=audio, metadata=metadata)
        sub = os.path.relpath(os.path.dirname(info.path), folder)
        entry = {
            "filename": os.path.basename(info.path),
            "subfolder": "" if sub == "." else sub.replace(os.sep, "/"),
            "type": "output" if save_output else "temp",
            "format": "video/h264-mp4",
            "frame_rate": frame_rate,
            "fullpath": info.path,
        }
        return {"ui": {"images": [entry], "animated": (True,)}, "result": (info.path,)}
