"""The model layer: Llama-family and GPT-2 decoders in plain PyTorch, with a KV cache.

>>> from tokensampler.model import load  # doctest: +SKIP
>>> model, tokenizer = load()  # the embedded SmolLM2-135M-Instruct  # doctest: +SKIP
"""

from .common import DecoderLM, default_device, resolve_dtype
from .config import GPT2Config, LlamaConfig, ModelConfig, ModelLoadError, config_from_hf
from .gpt2 import GPT2
from .kv_cache import KVCache
from .llama import Llama
from .loading import GGUFFile, default_model_path, load, load_gguf, load_hf
from .tokenizer import IncrementalDecoder, Tokenizer

__all__ = [
    "GPT2",
    "DecoderLM",
    "GGUFFile",
    "GPT2Config",
    "IncrementalDecoder",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "ModelConfig",
    "ModelLoadError",
    "Tokenizer",
    "config_from_hf",
    "default_device",
    "default_model_path",
    "load",
    "load_gguf",
    "load_hf",
    "resolve_dtype",
]
