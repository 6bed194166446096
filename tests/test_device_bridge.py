"""The device bridge (`tokensampler.device`): copies, syncs and buffers, proven on the CPU.

No GPU here, so CPU tensors take the device code path through the bridge's test switch
(`BRIDGE.pretend`), and the bridge's counters show what each call moves:

- `Sampler` / `sample` / `probs`: one device->host copy of the logits in their own dtype
  (bfloat16 stays bfloat16), one sync, one host->device copy of the outputs asked for;
- `tokensampler.generate`: one logits copy and one sync per step, one copy of the ids up;
- the Hugging Face routes: the processor (``draw=False``) sends up only the kept ids and
  probabilities (no dense B x V copy), ``draw=True`` the ids; `tokensampler.hf.generate`
  one copy each way per step, the history staying on the host;
- the sync rule per device type (CUDA stream, MPS, XPU, a blocking copy otherwise),
  checked by construction with fakes, and the bug it fixes: under the switch a
  non-blocking copy lands only at the sync, so a device type left unsynchronized would read
  garbage.

`scripts/gpu_check.sh` must fail loudly here (no CUDA). The tests whose names hold "cuda"
and that need a device run there (scripts/gpu_check.sh runs ``-k cuda``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tokensampler as ts
from model_helpers import random_model, tiny_llama_config

torch = pytest.importorskip("torch")
from tokensampler import device as tsdev
from tokensampler.device import BRIDGE, Counters, sync_rule
from tokensampler.generate import generate

ROOT = Path(__file__).resolve().parent.parent
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def logits(b: int, v: int, dtype: Any = torch.float32, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g) * 3).to(dtype)


class Delta:
    delta = Counters()


@contextlib.contextmanager
def Count() -> Iterator[Delta]:
    """Counters over a block: ``with Count() as c: ...`` then ``c.delta``."""
    before, d = BRIDGE.counters(), Delta()
    try:
        yield d
    finally:
        d.delta = BRIDGE.counters() - before


def same(a: Any, b: Any) -> None:
    """Equal values, dtypes and shapes (tensors), or equal plain values."""
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            if x is None:
                assert y is None
            else:
                same(x, y)
    else:
        assert a == b


# ==== the sync rule per device type, by construction ===========================================


def test_cuda_rule_synchronizes_the_current_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    class Stream:
        def synchronize(self) -> None:
            calls.append("stream.synchronize")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: calls.append(d) or Stream())
    rule = sync_rule("cuda")
    assert rule.name == "cuda-stream" and rule.non_blocking and rule.synchronize is not None
    dev = torch.device("cuda", 1)
    rule.synchronize(dev)
    assert calls == [dev, "stream.synchronize"]


def test_mps_rule_calls_torch_mps_synchronize(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    rule = sync_rule("mps")
    assert rule.name == "mps" and rule.non_blocking and rule.synchronize is not None
    rule.synchronize(torch.device("mps"))
    assert calls == ["mps"]


def test_xpu_rule_calls_torch_xpu_synchronize(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(torch.xpu, "synchronize", lambda d=None: calls.append(d))
    rule = sync_rule("xpu")
    assert rule.name == "xpu" and rule.non_blocking and rule.synchronize is not None
    dev = torch.device("xpu", 0)
    rule.synchronize(dev)
    assert calls == [dev]


@pytest.mark.parametrize("device_type", ["hpu", "privateuseone", "npu", "meta"])
def test_other_devices_get_blocking_copies(device_type: str) -> None:
    rule = sync_rule(device_type)
    assert rule.name == "blocking-copy" and not rule.non_blocking and rule.synchronize is None


@pytest.mark.parametrize("device_type", ["cuda", "mps", "xpu"])
def test_each_device_type_is_synchronized_before_numpy_reads(
    monkeypatch: pytest.MonkeyPatch, device_type: str
) -> None:
    """The bug of issue 20: only CUDA was synchronized. Here every device type's own sync
    runs (faked), once per call, and before the kernels read the host copy."""
    calls: list[str] = []

    class Stream:
        def synchronize(self) -> None:
            calls.append("cuda")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: Stream())
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    monkeypatch.setattr(torch.xpu, "synchronize", lambda d=None: calls.append("xpu"))
    x = logits(4, 300)
    want = ts.probs(x, temperature=0.7, top_p=0.9)
    with BRIDGE.pretend(device_type, real_sync=True), Count() as c:
        got = ts.probs(x, temperature=0.7, top_p=0.9)
    assert calls == [device_type]
    assert (c.delta.d2h, c.delta.syncs, c.delta.h2d) == (1, 1, 1)
    same(got, want)


def test_the_switch_models_an_async_copy() -> None:
    """Under the switch a non-blocking copy lands at the sync, as on an accelerator: a host
    copy read before its sync is garbage (what MPS / XPU callers read before the fix)."""
    x = logits(2, 50)
    with BRIDGE.pretend("mps"):
        host = torch.empty_like(x)
        BRIDGE._copy_d2h(host, x, non_blocking=True)
        assert torch.isnan(host).all()
        BRIDGE.synchronize(x.device)
        same(host, x)


def test_a_blocking_rule_copies_and_counts_the_copy_as_the_wait() -> None:
    x = logits(3, 40)
    with BRIDGE.pretend("hpu"), Count() as c:
        got = ts.sample(x, seed=1, temperature=1.0)
    assert (c.delta.d2h, c.delta.syncs, c.delta.h2d) == (1, 1, 1)
    same(got, ts.sample(x, seed=1, temperature=1.0))


# ==== the bridge itself ========================================================================


def test_cpu_tensors_are_not_copied() -> None:
    x = logits(4, 100)
    with Count() as c:
        assert BRIDGE.to_host(x) is x
        ts.sample(x, temperature=1.0)
        ts.probs(x, temperature=1.0)
        s = ts.Sampler(temperature=1.0, seed=0)
        s(x)
        (out,) = BRIDGE.to_device([np.arange(3)], torch.device("cpu"))
    assert c.delta == Counters()
    assert out.tolist() == [0, 1, 2]


def test_host_buffers_are_reused_per_shape_and_dtype() -> None:
    with BRIDGE.pretend("cuda"):
        a = BRIDGE.to_host(logits(4, 100)).data_ptr()
        assert BRIDGE.to_host(logits(4, 100, seed=1)).data_ptr() == a
        assert BRIDGE.to_host(logits(4, 100, torch.bfloat16)).data_ptr() != a
        assert BRIDGE.to_host(logits(2, 100)).data_ptr() != a
        # the bridge's own buffers are host memory, even under the switch
        host = BRIDGE.to_host(logits(4, 100))
        assert not BRIDGE.is_device(host)
        with Count() as c:
            assert BRIDGE.to_host(host) is host
        assert c.delta == Counters()


@pytest.mark.parametrize("first", ["inference_mode", "no_grad"])
def test_host_buffers_outlive_inference_mode(first: str) -> None:
    """A buffer made under torch.inference_mode (the generate loops) is written again outside
    it (Hugging Face's model.generate runs under no_grad), and the other way round."""
    x = logits(3, 77)
    with BRIDGE.pretend("cuda"):
        modes = [torch.inference_mode(), torch.no_grad()]
        for mode in modes if first == "inference_mode" else modes[::-1]:
            with mode:
                same(BRIDGE.to_host(x), x)
                ids = ts.sample(x, temperature=0)
                (back,) = BRIDGE.to_device([ids.numpy()], x.device)
                same(back, ids)


def test_host_buffers_belong_to_one_thread() -> None:
    ptrs: list[int] = []

    def grab() -> None:
        ptrs.append(BRIDGE.to_host(logits(4, 64)).data_ptr())

    with BRIDGE.pretend("cuda"):
        grab()
        t = threading.Thread(target=grab)
        t.start()
        t.join()
    assert len(set(ptrs)) == 2


def test_to_device_packs_every_output_into_one_copy() -> None:
    arrays = [np.arange(5, dtype=np.int64), None, np.linspace(0, 1, 6).reshape(2, 3),
              np.array([True, False, True]), np.array(np.float32(2.5)),
              np.zeros((0, 4), dtype=np.int64)]  # fmt: skip
    with BRIDGE.pretend("cuda"), Count() as c:
        outs = BRIDGE.to_device(arrays, torch.device("cpu"))
    assert (c.delta.h2d, c.delta.d2h, c.delta.syncs) == (1, 0, 0)
    assert outs[1] is None
    for a, t in zip(arrays, outs):
        if a is not None:
            assert t.shape == a.shape and t.numpy().dtype == a.dtype
            np.testing.assert_array_equal(t.numpy(), a)


def test_to_device_waits_before_reusing_a_buffer_no_sync_has_covered() -> None:
    """On MPS / XPU a host->device copy may still read its buffer: the buffer is written
    again only after a device sync that started after that copy (the next step's logits copy
    is one, so a loop pays nothing)."""
    dev = torch.device("cpu")
    with BRIDGE.pretend("mps"):
        slot_ids = [np.arange(4)]
        BRIDGE.to_device(slot_ids, dev)
        # the pretend path does not mark copies in flight; mark one as a device would
        key = ("h2d", ((slot_ids[0].shape, slot_ids[0].dtype.str),))
        slot = BRIDGE._local.slots[key]
        BRIDGE._mark_in_flight(slot, dev, "mps")
        with Count() as c:
            BRIDGE.to_device(slot_ids, dev)
        assert c.delta.syncs == 1  # nothing had synchronized since: wait
        BRIDGE._mark_in_flight(slot, dev, "mps")
        BRIDGE.to_host(logits(1, 8))  # a step's logits copy and its sync
        with Count() as c:
            BRIDGE.to_device(slot_ids, dev)
        assert c.delta.syncs == 0


def test_counters_reset() -> None:
    with BRIDGE.pretend("cuda"):
        ts.sample(logits(2, 30), temperature=1.0)
    assert BRIDGE.counters() != Counters()
    BRIDGE.reset_counters()
    assert BRIDGE.counters() == Counters()


def test_pretend_does_not_nest() -> None:
    with BRIDGE.pretend("cuda"), pytest.raises(RuntimeError, match="nest"), BRIDGE.pretend("mps"):
        pass
    assert BRIDGE.pretending is None


# ==== the sampling API =========================================================================


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_sampler_one_copy_each_way_and_one_sync_per_call(dtype: Any) -> None:
    B, V, calls = 4, 500, 5
    x = logits(B, V, dtype)
    want_s = ts.Sampler(temperature=0.9, top_k=40, seed=3)
    got_s = ts.Sampler(temperature=0.9, top_k=40, seed=3)
    with BRIDGE.pretend("cuda"), Count() as c:
        got = [got_s(x) for _ in range(calls)]
    want = [want_s(x) for _ in range(calls)]
    for g, w in zip(got, want):
        same(g, w)
    d = c.delta
    assert (d.d2h, d.syncs, d.h2d) == (calls, calls, calls)
    # the logits cross in their own dtype (bfloat16 is not widened), the ids as int64
    assert d.d2h_bytes == calls * B * V * x.element_size()
    assert d.h2d_bytes == calls * B * 8


def test_sample_with_logprobs_brings_every_output_back_in_one_copy() -> None:
    x = logits(3, 200, torch.bfloat16)
    kw: dict[str, Any] = dict(temperature=0.8, seed=5, logprobs=True, top_logprobs=4,
                              logprob_token_ids=[1, 2])  # fmt: skip
    want = ts.sample(x, **kw)
    with BRIDGE.pretend("cuda"), Count() as c:
        got = ts.sample(x, **kw)
    same(tuple(got), tuple(want))
    same(got.rank, want.rank)
    same(got.token_logprobs, want.token_logprobs)
    same(got.valid, want.valid)
    assert (c.delta.d2h, c.delta.syncs, c.delta.h2d) == (1, 1, 1)


def test_ids_only_bring_back_only_the_ids() -> None:
    x = logits(8, 300)
    with BRIDGE.pretend("cuda"), Count() as c:
        ts.sample(x, temperature=1.0)
    assert c.delta.h2d_bytes == 8 * 8  # (B,) int64, nothing else


def test_1d_logits_and_keepdim_shapes() -> None:
    x = logits(1, 50)[0]
    with BRIDGE.pretend("cuda"):
        a = ts.sample(x, seed=2, temperature=1.0, logprobs=True)
        p = ts.probs(x, temperature=1.0)
        k = ts.Sampler(temperature=1.0, seed=2)(logits(3, 50), keepdim=True)
    same(a.ids, ts.sample(x, seed=2, temperature=1.0))
    assert a.ids.shape == () and a.logprobs.shape == () and p.shape == (50,)
    assert k.shape == (3, 1)


# ==== tokensampler.generate ====================================================================


def tiny_lm() -> Any:
    return random_model(tiny_llama_config(vocab_size=300, max_seq_len=64, n_layer=1), seed=5,
                        scale=30)  # fmt: skip


@pytest.fixture(scope="module")
def lm() -> Any:
    return tiny_lm()


PROMPTS = [[5, 6, 7, 8], [9, 10]]


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0),
        dict(temperature=0.9, top_p=0.9, seed=4, repetition_penalty=1.3, logprob_token_ids=[1, 2]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generate_one_logits_copy_and_one_sync_per_step(
    lm: Any, kw: dict[str, Any], dtype: Any
) -> None:
    model = lm if dtype == torch.float32 else tiny_lm().to(dtype)
    n = 6
    want = generate(model, None, PROMPTS, max_new_tokens=n, ignore_eos=True, **kw)
    with BRIDGE.pretend("cuda"), Count() as c:
        got = generate(model, None, PROMPTS, max_new_tokens=n, ignore_eos=True, **kw)
    assert got.token_ids == want.token_ids and got.logprobs == want.logprobs
    assert got.token_logprobs == want.token_logprobs
    d, B, V = c.delta, len(PROMPTS), 300
    # n sampling steps: n logits copies (in the model's dtype) and n syncs; the ids go up
    # before each of the n - 1 forward passes after the prefill.
    assert (d.d2h, d.syncs, d.h2d) == (n, n, n - 1)
    assert d.d2h_bytes == n * B * V * torch.empty((), dtype=dtype).element_size()
    assert d.h2d_bytes == (n - 1) * B * 8


def test_generate_stops_early_with_one_copy_per_step(lm: Any) -> None:
    eos = generate(lm, None, PROMPTS, max_new_tokens=4, temperature=0).token_ids[0][1]
    with BRIDGE.pretend("cuda"), Count() as c:
        g = generate(lm, None, PROMPTS, max_new_tokens=20, temperature=0, eos_token_id=eos)
    steps = max(len(r) for r in g.token_ids)
    assert (c.delta.d2h, c.delta.syncs, c.delta.h2d) == (steps, steps, steps - 1)


# ==== Hugging Face =============================================================================


@pytest.fixture(scope="module")
def hf() -> Any:
    pytest.importorskip("transformers")
    import tokensampler.hf as tshf

    return tshf


@pytest.fixture(scope="module")
def hf_model() -> Any:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


IDS = torch.tensor([[0, 0, 5, 17, 5, 9], [11, 3, 40, 40, 7, 23]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0.7, top_k=5),
        dict(temperature=1.0, top_p=0.8, repetition_penalty=1.3),  # kept sets of any size
        dict(temperature=1.0),  # everything kept
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_processor_sends_up_only_the_kept_entries(hf: Any, kw: dict[str, Any], dtype: Any) -> None:
    B, V = 3, 400
    scores = logits(B, V, dtype)
    input_ids = torch.randint(3, V, (B, 7), generator=torch.Generator().manual_seed(1))
    want = hf.TokenSamplerLogitsProcessor(**kw)(input_ids, scores)
    with BRIDGE.pretend("cuda"), Count() as c:
        got = hf.TokenSamplerLogitsProcessor(**kw)(input_ids, scores)
    same(got, want)
    d = c.delta
    assert (d.d2h, d.syncs, d.h2d) == (1, 1, 1)
    kept = int((want > float("-inf")).sum(dim=1).max())
    # int32 ids + float32 probabilities (each part placed at a multiple of 8 bytes)
    assert d.h2d_bytes == 2 * (-(-B * kept * 4 // 8) * 8)
    if kw.get("top_k"):
        assert d.h2d_bytes < B * V * 4  # not the dense (B, V) float32 tensor


def test_processor_in_model_generate_one_copy_each_way_per_step(hf: Any, hf_model: Any) -> None:
    n, k = 5, 4

    def run() -> Any:
        torch.manual_seed(0)
        proc = hf.TokenSamplerLogitsProcessor(temperature=0.8, top_k=k, pad_token_id=0)
        return hf_model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=n,
                                 min_new_tokens=n, **proc.generate_kwargs())  # fmt: skip

    want = run()
    with BRIDGE.pretend("cuda"), Count() as c:
        got = run()
    same(got, want)
    d = c.delta
    assert (d.d2h, d.syncs, d.h2d) == (n, n, n)
    assert d.h2d_bytes == n * IDS.shape[0] * k * 8  # kept ids and values only


def test_processor_draw_mode_one_copy_each_way(hf: Any) -> None:
    scores = logits(2, 100)
    input_ids = torch.tensor([[3, 4], [5, 6]])
    want = hf.TokenSamplerLogitsProcessor(draw=True, seed=3, temperature=1.0)(input_ids, scores)
    with BRIDGE.pretend("cuda"), Count() as c:
        got = hf.TokenSamplerLogitsProcessor(draw=True, seed=3, temperature=1.0)(input_ids, scores)
    same(got, want)
    assert (c.delta.d2h, c.delta.syncs, c.delta.h2d, c.delta.h2d_bytes) == (1, 1, 1, 16)


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(temperature=0.9, seed=2,
                                                          repetition_penalty=1.4)])  # fmt: skip
def test_hf_generate_one_copy_each_way_per_step(hf: Any, hf_model: Any, kw: dict[str, Any]) -> None:
    n = 6
    want = hf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=n,
                       eos_token_id=None, **kw)  # fmt: skip
    with BRIDGE.pretend("cuda"), Count() as c:
        got = hf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=n,
                          eos_token_id=None, **kw)  # fmt: skip
    same(got.sequences, want.sequences)
    assert got.token_ids == want.token_ids and got.finish_reasons == want.finish_reasons
    d, B = c.delta, IDS.shape[0]
    # n steps: the logits down and a sync each; the ids up before each of the n - 1 later
    # forward passes, and the generated block once at the end. The history never moves.
    assert (d.d2h, d.syncs, d.h2d) == (n, n, n)
    assert d.h2d_bytes == (n - 1) * B * 8 + B * n * 8


def test_hf_generate_eos_and_skip_keep_their_rules(hf: Any, hf_model: Any) -> None:
    ref = hf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=6,
                      temperature=0, eos_token_id=None)  # fmt: skip
    eos = ref.token_ids[0][2]
    want = hf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=6,
                       temperature=0, eos_token_id=eos)  # fmt: skip
    with BRIDGE.pretend("cuda"):
        got = hf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=6,
                          temperature=0, eos_token_id=eos)  # fmt: skip
    same(got.sequences, want.sequences)
    assert got.finish_reasons == want.finish_reasons and got.finish_reasons[0] == "eos"
    bias = [{i: float("-inf") for i in range(97)}, {}]  # row 0 has nothing to sample
    skip = hf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=4,
                       temperature=0, eos_token_id=None, on_invalid="skip",
                       logit_bias=bias)  # fmt: skip
    assert skip.finish_reasons == ["invalid", "length"] and skip.token_ids[0] == []
    assert skip.token_ids[1] == ref.token_ids[1][:4]


# ==== on a CUDA machine (scripts/gpu_check.sh runs these) ======================================


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_bridge_counts_and_results(dtype: Any) -> None:
    x = logits(8, 4000, dtype)
    xc = x.cuda()
    kw: dict[str, Any] = dict(temperature=0.8, top_p=0.9, seed=1, logprobs=True)
    with Count() as c:
        got = ts.sample(xc, **kw)
    assert got.ids.device == xc.device
    same(tuple(t.cpu() if t is not None else None for t in got), tuple(ts.sample(x, **kw)))
    assert (c.delta.d2h, c.delta.syncs, c.delta.h2d) == (1, 1, 1)
    assert c.delta.d2h_bytes == x.numel() * x.element_size()


@needs_cuda
def test_cuda_buffers_are_pinned_and_reused() -> None:
    xc = logits(4, 1000).cuda()
    a = BRIDGE.to_host(xc)
    assert a.is_pinned()
    assert BRIDGE.to_host(xc).data_ptr() == a.data_ptr()
    s = ts.Sampler(temperature=1.0, seed=0)
    for _ in range(50):  # reusing the pinned result buffer must never race its copy
        ids = s(xc)
        assert ids.device == xc.device and bool(((ids >= 0) & (ids < 1000)).all())


@needs_cuda
def test_cuda_hf_processor_scatters_on_the_device(hf: Any) -> None:
    scores = logits(4, 500)
    input_ids = torch.randint(3, 500, (4, 7))
    want = hf.TokenSamplerLogitsProcessor(temperature=0.7, top_k=20)(input_ids, scores)
    with Count() as c:
        got = hf.TokenSamplerLogitsProcessor(temperature=0.7, top_k=20)(
            input_ids.cuda(), scores.cuda()
        )
    assert got.device.type == "cuda"
    same(got.cpu(), want)
    assert c.delta.h2d_bytes == 4 * 20 * 8


# ==== scripts/gpu_check.sh =====================================================================


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run the script")
def test_gpu_check_fails_loudly_on_a_machine_without_a_gpu() -> None:
    env = dict(os.environ)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert r.returncode != 0
    assert "gpu_check: FAILED: no CUDA device" in r.stderr
    assert "checked nothing" in r.stderr


def test_bridge_module_stays_importable_without_torch_use() -> None:
    # the bridge only looks at torch through sys.modules (torch stays optional)
    assert tsdev._torch() is torch
