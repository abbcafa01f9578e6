"""ComfyUI node classes. Thin: inputs, validation, progress; the work lives in wan/, quant/, attention/."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
