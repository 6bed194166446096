"""GPT-2: KV-cache decoding equals a full forward pass (left-padded batch), and our forward
equals transformers' GPT2LMHeadModel on the same weights (Conv1D weights transposed on load).

Tolerance: float32, |ours - reference| <= ATOL = 1e-4.
"""

from __future__ import annotations

import json

import pytest
from model_helpers import ATOL, left_pad, random_model, tiny_gpt2_config, write_byte_tokenizer

torch = pytest.importorskip("torch")


def test_kv_cache_decode_equals_full_forward() -> None:
    model = random_model(tiny_gpt2_config(), seed=1, scale=20)
    g = torch.Generator().manual_seed(0)
    lens, n_new = [6, 1, 10], 6
    seqs = [torch.randint(0, 300, (n + n_new,), generator=g).tolist() for n in lens]
    rows = [s[:n] for s, n in zip(seqs, lens)]
    with torch.inference_mode():
        ref = [model(torch.tensor([s]))[0] for s in seqs]
        idx, pad = left_pad(rows)
        P = idx.size(1)
        cache = model.new_kv_cache(len(rows), P + n_new)
        logits = model(idx, kv_cache=cache, pad=pad)
        for b, n in enumerate(lens):
            torch.testing.assert_close(logits[b, P - n :], ref[b][:n], atol=ATOL, rtol=0)
        for t in range(n_new):
            nxt = torch.tensor([[s[n + t]] for s, n in zip(seqs, lens)])
            logits = model(nxt, kv_cache=cache)
            for b, n in enumerate(lens):
                torch.testing.assert_close(logits[b, 0], ref[b][n + t], atol=ATOL, rtol=0)


@pytest.mark.transformers
def test_matches_transformers_gpt2(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from tokensampler.model import GPT2, load

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=256, eos_token_id=256,
    )  # fmt: skip
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # biases and LayerNorm away from their init, so mistakes show
        for n, p in hf.named_parameters():
            if "ln_" in n and n.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    write_byte_tokenizer(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt2"

    model, tok = load(tmp_path, device="cpu", dtype="float32")
    assert isinstance(model, GPT2)
    assert 256 in tok.eos_token_ids
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (3, 17, 40)]
    with torch.inference_mode():
        refs = [hf(torch.tensor([s])).logits[0] for s in seqs]
        for s, ref in zip(seqs, refs):
            torch.testing.assert_close(model(torch.tensor([s]))[0], ref, atol=ATOL, rtol=0)
        idx, pad = left_pad(seqs)
        batch = model(idx, pad=pad)
        for b, (s, ref) in enumerate(zip(seqs, refs)):
            torch.testing.assert_close(batch[b, idx.size(1) - len(s) :], ref, atol=ATOL, rtol=0)


def test_vocab_json_merges_txt_tokenizer(tmp_path) -> None:
    """Old GPT-2 folders have vocab.json + merges.txt and no tokenizer.json."""
    from model_helpers import byte_vocab
    from tokensampler.model import Tokenizer

    vocab = {t: i for i, t in enumerate(byte_vocab())}
    vocab["He"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nH e\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "eos_token_id": 257}))
    tok = Tokenizer.from_folder(tmp_path)
    ids = tok.encode("Hello")
    assert ids[0] == vocab["He"]
    assert tok.decode(ids) == "Hello"
    assert tok.encode("<|endoftext|>") == [257]
    assert tok.eos_token_ids == (257,)
