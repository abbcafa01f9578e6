"""WanFP4: Wan2.1 InfiniteTalk talking-video generation for ComfyUI, quantized and fast.

ComfyUI imports this folder as a package under its own folder name and reads the two
mappings below. Everything inside uses relative imports so the same code is also the
importable package ``wanfp4`` (see pyproject.toml).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
