"""Model configurations: one dataclass per architecture, read from HF config.json dicts.

The field names follow nanoGPT (`n_layer`, `n_head`, `n_embd`) rather than transformers, and
the defaults describe the embedded default model (SmolLM2-135M) and GPT-2 small, so a bare
`LlamaConfig()` / `GPT2Config()` is a real, loadable shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ModelLoadError(ValueError):
    """A model could not be loaded: bad path, unsupported architecture or tensor type.

    The CLI turns this into a one-line message and exit status 2, so the message must say what
    was wrong and, where possible, what is supported.
    """


@dataclass
class LlamaConfig:
    """Llama-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP."""

    vocab_size: int = 49152  # SmolLM2 vocabulary; Llama 3 uses 128256
    n_layer: int = 30  # transformer blocks
    n_head: int = 9  # query heads
    n_kv_head: int = 3  # key/value heads (GQA); == n_head is plain multi-head attention
    n_embd: int = 576  # residual stream width
    head_dim: int = (
        64  # per-head width; usually n_embd // n_head but Llama-style configs may differ
    )
    intermediate_size: int = 1536  # SwiGLU hidden width
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0  # RoPE base; 10000 for Llama 2, 500000 for Llama 3
    # None = plain RoPE; else a dict with "rope_type" in {"linear", "llama3"} and its parameters,
    # spelled as in HF config.json (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings). GGUF files may instead carry per-frequency divisors,
    # stored here as {"rope_type": "freq_factors", "factors": [...]}.
    rope_scaling: dict[str, Any] | None = None
    max_seq_len: int = 8192  # longest sequence the RoPE tables and KV caches are sized for
    tie_word_embeddings: bool = True  # lm_head shares the token embedding matrix
    attention_bias: bool = False  # bias on q/k/v/o projections (some Llama derivatives)
    mlp_bias: bool = False  # bias on gate/up/down projections

    @property
    def model_type(self) -> str:
        return "llama"


@dataclass
class GPT2Config:
    """GPT-2: learned absolute positions, LayerNorm, GELU (tanh approximation) MLP."""

    vocab_size: int = 50257  # GPT-2 BPE vocabulary
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int = 3072  # MLP hidden width, 4 * n_embd in every released GPT-2
    max_seq_len: int = 1024  # learned position table size (n_positions)
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True  # GPT-2 always ties lm_head to wte

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv_head(self) -> int:
        return self.n_head

    @property
    def model_type(self) -> str:
        return "gpt2"


ModelConfig = LlamaConfig | GPT2Config

# model_type values of HF config.json that our Llama implementation computes exactly.
LLAMA_MODEL_TYPES = ("llama", "mistral")


def _rope_from_hf(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either transformers v4 (`rope_theta` + `rope_scaling`) or v5
    (`rope_parameters` holding both) spellings of config.json."""
    params = d.get("rope_parameters") or {}
    scaling = d.get("rope_scaling") or params or None
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    if scaling is not None:
        scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type == "default":
            return theta, None
        if rope_type not in ("linear", "llama3"):
            raise ModelLoadError(
                f"unsupported rope scaling type {rope_type!r} (supported: none, linear, llama3)"
            )
        scaling = dict(scaling, rope_type=rope_type)
        scaling.pop("type", None)
    return theta, scaling


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    """Build our config from a Hugging Face config.json dict.

    Raises:
        ModelLoadError: for architectures we do not implement.

    >>> config_from_hf({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8}).n_inner
    32
    """
    model_type = d.get("model_type")
    if model_type in LLAMA_MODEL_TYPES:
        if model_type == "mistral" and d.get("sliding_window"):
            # A sliding window only changes results past its length; cap the context there so
            # that what we compute is still exact.
            max_seq = min(int(d.get("max_position_embeddings", 4096)), int(d["sliding_window"]))
        else:
            max_seq = int(d.get("max_position_embeddings", 4096))
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ModelLoadError(f"unsupported hidden_act {act!r} for {model_type} (only silu)")
        n_head = int(d["num_attention_heads"])
        theta, scaling = _rope_from_hf(d)
        return LlamaConfig(
            vocab_size=int(d["vocab_size"]),
            n_layer=int(d["num_hidden_layers"]),
            n_head=n_head,
            n_kv_head=int(d.get("num_key_value_heads") or n_head),
            n_embd=int(d["hidden_size"]),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // n_head),
            intermediate_size=int(d["intermediate_size"]),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=max_seq,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            mlp_bias=bool(d.get("mlp_bias", False)),
        )
    if model_type == "gpt2":
        n_embd = int(d.get("n_embd", 768))
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ModelLoadError(f"unsupported GPT-2 activation_function {act!r} (only gelu_new)")
        if d.get("scale_attn_by_inverse_layer_idx") or d.get("reorder_and_upcast_attn"):
            raise ModelLoadError("unsupported GPT-2 variant (scale_attn_by_inverse_layer_idx)")
        return GPT2Config(
            vocab_size=int(d.get("vocab_size", 50257)),
            n_layer=int(d.get("n_layer", 12)),
            n_head=int(d.get("n_head", 12)),
            n_embd=n_embd,
            n_inner=int(d.get("n_inner") or 4 * n_embd),
            max_seq_len=int(d.get("n_positions", 1024)),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
        )
    raise ModelLoadError(
        f"unsupported architecture {model_type!r} (supported: {', '.join(LLAMA_MODEL_TYPES)}, gpt2)"
    )
