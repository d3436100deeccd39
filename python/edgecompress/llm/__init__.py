"""Large language models from GGUF files (llama.cpp's format) on the engine.

``load(path, weights="native", n_ctx=None)`` gives an ``LLM`` with ``tokenize``, ``detokenize``,
``logits(ids)``, ``generate(prompt, ...)``, ``chat(messages, ...)`` and ``perplexity(text)``.
Underneath: ``GGUFFile`` reads and checks a GGUF file (memory-mapped, nothing copied) and
``dequantize`` turns a tensor's GGML blocks into float32 exactly as llama.cpp's ``gguf`` package does.
"""

from .api import LLM, Timings, load
from .gguf_file import GGUFFile, GGUFTensorInfo
from .quants import block_size, bytes_per_block, dequantize

__all__ = ["GGUFFile", "GGUFTensorInfo", "LLM", "Timings", "block_size", "bytes_per_block", "dequantize", "load"]
