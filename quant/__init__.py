"""Weight quantization: modes, QuantLinear, quantize_model, pre-quantized checkpoints, LoRA merge.

Never imports ComfyUI. GPU kernels plug in through quant/backends.py (register_kernel).
"""
from .apply import quantize_model, set_compute_path
from .backends import register_kernel
from .capabilities import AutoChoice, ComputePlan, Environment, choose_auto_mode, detect_environment, resolve_compute
from .checkpoint import load_quantized, read_quantized_metadata, save_quantized
from .incoming import QuantFormatError
from .linear import QuantLinear, linear_storage_bytes
from .lora import LoraError, merge_loras
from .modes import ALL_MODES, KEEP_IN_BASE_PRECISION, MODES, QUANTIZED_LINEARS, WEIGHT_MODES, should_quantize
from .sizes import model_bytes_per_mode, quantized_size_bytes

__all__ = [
    "quantize_model", "set_compute_path", "register_kernel", "AutoChoice", "ComputePlan", "Environment",
    "choose_auto_mode", "detect_environment", "resolve_compute", "load_quantized", "read_quantized_metadata",
    "save_quantized", "QuantFormatError", "QuantLinear", "linear_storage_bytes", "LoraError", "merge_loras",
    "ALL_MODES", "KEEP_IN_BASE_PRECISION", "MODES", "QUANTIZED_LINEARS", "WEIGHT_MODES", "should_quantize",
    "model_bytes_per_mode", "quantized_size_bytes",
]
