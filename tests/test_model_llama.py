"""The Llama-family model: KV-cache decoding equals a full forward pass, left padding changes
nothing, and our forward equals transformers' LlamaForCausalLM on the same weights.

Tolerance: float32 everywhere, |ours - reference| <= ATOL = 1e-4 on logits of magnitude ~1
(different but equivalent op orders: fused q/k/v, SDPA kernels, masks).
"""

from __future__ import annotations

import json

import pytest
from model_helpers import ATOL, left_pad, random_model, tiny_llama_config, write_byte_tokenizer

torch = pytest.importorskip("torch")

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # small, so that the test positions fall in every band of the scaling
    "original_max_position_embeddings": 16,
}

CONFIGS = {
    "gqa-llama3-rope": {"rope_scaling": LLAMA3_SCALING, "tie_word_embeddings": False},
    "mha-tied": {"n_kv_head": 4, "tie_word_embeddings": True},
    "linear-rope-bias": {
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "attention_bias": True,
        "mlp_bias": True,
    },
    "mqa-wide-heads": {"n_head": 4, "n_kv_head": 1, "head_dim": 16},
}


def _cached_decode(model, rows, n_new, seqs):
    """Prefill the left-padded prompts, then feed seqs' next tokens one step at a time;
    return per row the logits at every real position."""
    idx, pad = left_pad(rows)
    P = idx.size(1)
    cache = model.new_kv_cache(len(rows), P + n_new)
    out = [[] for _ in rows]
    with torch.inference_mode():
        logits = model(idx, kv_cache=cache, pad=pad)
        for b, r in enumerate(rows):
            out[b].append(logits[b, P - len(r) :])
        for t in range(n_new):
            nxt = torch.tensor([[s[len(r) + t]] for s, r in zip(seqs, rows)])
            logits = model(nxt, kv_cache=cache)
            for b in range(len(rows)):
                out[b].append(logits[b])
    return [torch.cat(o) for o in out]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_decode_equals_full_forward(name: str) -> None:
    model = random_model(tiny_llama_config(**CONFIGS[name]), seed=1, scale=20)
    g = torch.Generator().manual_seed(0)
    lens, n_new = [5, 2, 9], 7
    seqs = [torch.randint(0, 300, (n + n_new,), generator=g).tolist() for n in lens]
    rows = [s[:n] for s, n in zip(seqs, lens)]
    with torch.inference_mode():
        ref = [model(torch.tensor([s]))[0] for s in seqs]  # each row alone, no cache
    got = _cached_decode(model, rows, n_new, seqs)
    for b in range(len(seqs)):
        torch.testing.assert_close(got[b], ref[b], atol=ATOL, rtol=0)
    # A padded batch without a cache gives the same logits too.
    idx, pad = left_pad(seqs)
    with torch.inference_mode():
        full = model(idx, pad=pad)
    for b, s in enumerate(seqs):
        torch.testing.assert_close(full[b, idx.size(1) - len(s) :], ref[b], atol=ATOL, rtol=0)


def test_last_only_and_cache_reset() -> None:
    model = random_model(tiny_llama_config(), seed=2)
    x = torch.tensor([[1, 2, 3, 4]])
    cache = model.new_kv_cache(1, 8)
    with torch.inference_mode():
        full = model(x)
        last = model(x, kv_cache=cache, last_only=True)
        assert last.shape == (1, 1, 300)
        torch.testing.assert_close(last[0, 0], full[0, -1], atol=ATOL, rtol=0)
        cache.reset()
        again = model(x, kv_cache=cache, last_only=True)
    torch.testing.assert_close(again, last, atol=0, rtol=0)


def test_cache_prefill_broadcasts_one_prompt() -> None:
    """nanochat's pattern: prefill a prompt once at batch 1, copy it into a batch-B cache."""
    model = random_model(tiny_llama_config(), seed=3)
    prompt = torch.tensor([[5, 6, 7]])
    one = model.new_kv_cache(1, 8)
    many = model.new_kv_cache(3, 8)
    with torch.inference_mode():
        model(prompt, kv_cache=one)
        many.prefill(one)
        step = model(torch.tensor([[9], [10], [11]]), kv_cache=many)
        for b, t in enumerate([9, 10, 11]):
            ref = model(torch.tensor([[5, 6, 7, t]]))[0, -1]
            torch.testing.assert_close(step[b, -1], ref, atol=ATOL, rtol=0)


def test_context_overflow_is_an_error() -> None:
    model = random_model(tiny_llama_config(max_seq_len=8))
    with pytest.raises(ValueError, match="context length"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = model.new_kv_cache(1, 4)
    with pytest.raises(ValueError, match="overflow"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


HF_CONFIGS = {
    "gqa-llama3-untied": {
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_scaling": LLAMA3_SCALING,
        "tie_word_embeddings": False,
    },
    "tied-headdim-bias": {
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 16,
        "attention_bias": True,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
    },
}


@pytest.mark.transformers
@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_matches_transformers_llama(tmp_path, name: str) -> None:
    transformers = pytest.importorskip("transformers")
    from tokensampler.model import load

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=256,
        pad_token_id=None,
        **HF_CONFIGS[name],
    )
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so that a mis-mapped norm weight shows
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "bias" in n:
                p.copy_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    write_byte_tokenizer(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llama"

    model, tok = load(tmp_path, device="cpu", dtype="float32")
    assert model.config.tie_word_embeddings == cfg.tie_word_embeddings
    assert tok.eos_token_ids == (256,)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (12, 4, 30)]
    with torch.inference_mode():
        for s in seqs:
            ref = hf(torch.tensor([s])).logits[0]
            ours = model(torch.tensor([s]))[0]
            torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
        idx, pad = left_pad(seqs)
        batch = model(idx, pad=pad)
        for b, s in enumerate(seqs):
            ref = hf(torch.tensor([s])).logits[0]
            torch.testing.assert_close(batch[b, idx.size(1) - len(s) :], ref, atol=ATOL, rtol=0)


@pytest.mark.transformers
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_close_to_float32(tmp_path, dtype: str) -> None:
    transformers = pytest.importorskip("transformers")
    from tokensampler.model import load

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=None, eos_token_id=256, pad_token_id=None,
    )  # fmt: skip
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    write_byte_tokenizer(tmp_path)
    m32, _ = load(tmp_path, device="cpu", dtype="float32")
    m16, _ = load(tmp_path, device="cpu", dtype=dtype)
    assert m16.dtype == getattr(torch, dtype)
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.inference_mode():
        a, b = m32(x), m16(x).float()
    # ~3 significant digits in bf16 through two layers: loose, but catches a broken path.
    torch.testing.assert_close(b, a, atol=0.05, rtol=0.05)
