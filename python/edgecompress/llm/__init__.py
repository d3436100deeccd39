"""Large language models from GGUF files (llama.cpp's format).

So far the file layer: ``GGUFFile`` reads and checks a GGUF file (memory-mapped, nothing copied) and
``dequantize`` turns a tensor's GGML blocks into float32, exactly as llama.cpp's ``gguf`` package does.
"""

from .gguf_file import GGUFFile, GGUFTensorInfo
from .quants import block_size, bytes_per_block, dequantize

__all__ = ["GGUFFile", "GGUFTensorInfo", "block_size", "bytes_per_block", "dequantize"]
