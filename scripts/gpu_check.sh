#!/usr/bin/env bash
# The GPU checks, on one CUDA machine, in under five minutes (docs/design.md section 14):
#   1. the CUDA tests (tests/test_torch.py's test_cuda_round_trip, tests/test_device_bridge.py's
#      CUDA tests): none may be skipped;
#   2. ts.probs / ts.sample on CUDA bfloat16 logits equal the CPU result bit for bit;
#   3. tokensampler.generate with the embedded SmolLM2 on CUDA (float32) equals the CPU greedy
#      output token for token;
#   4. the compiled decode step (model.compile_decode) on CUDA generates the same greedy tokens;
#   5. a short benchmark: tokens/s and the per-step split (forward / copy / sample) for
#      B = 1, 8, 64, with the device bridge's copies and syncs per step.
# Without a CUDA device it fails at once (exit 1) with "gpu_check: FAILED: no CUDA device":
# it never skips silently. The five minutes start after scripts/setup.sh (which builds the
# extension when it is stale). Arguments: none. TOKENSAMPLER_GPU_CHECK_STEPS sets the benchmark's
# steps per batch size (default 64).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TS_ROOT"

fail() {
  echo "gpu_check: FAILED: $*" >&2
  exit 1
}

no_cuda="no CUDA device (torch.cuda.is_available() is False): scripts/gpu_check.sh only runs on a CUDA machine, and has checked nothing"
has_cuda() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; }
# The CUDA check comes first, before anything is built: a machine without CUDA fails here.
if [[ -x "$PY" ]]; then
  has_cuda || fail "$no_cuda"
fi
bash "$TS_ROOT/scripts/setup.sh"  # builds the extension when it is stale (not timed)
has_cuda || fail "$no_cuda"
start=$SECONDS
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"== {p.name}, torch {torch.__version__}, CUDA {torch.version.cuda}")'

echo "== 1. CUDA tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$PY" -m pytest -q -p no:cacheprovider -rs -k "cuda" \
  tests/test_torch.py tests/test_device_bridge.py 2>&1 | tee "$log" ||
  fail "the CUDA tests failed (above)"
if grep -qE "[0-9]+ skipped|SKIPPED" "$log"; then
  fail "CUDA tests were skipped on a CUDA machine (above)"
fi

echo "== 2-5. probs on bf16, generate CPU vs CUDA, compiled decode, benchmark"
"$PY" - <<'EOF' || fail "a GPU check failed (above)"
import os
import sys
import time

import numpy as np
import torch

import tokensampler as ts
from tokensampler.device import BRIDGE
from tokensampler.generate import generate, warm_up
from tokensampler.model import load

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        failures.append(what)


# 2. probs / sample on CUDA bf16 logits equal the CPU result
g = torch.Generator().manual_seed(0)
x = (torch.randn(64, 49152, generator=g) * 4).to(torch.bfloat16)
kw = dict(temperature=0.8, top_k=100, top_p=0.9, min_p=0.02, repetition_penalty=1.2)
hist = torch.randint(0, 49152, (64, 32), generator=g)
xc = x.cuda()
BRIDGE.reset_counters()
p_gpu = ts.probs(xc, history=hist, **kw)
c = BRIDGE.counters()
check(p_gpu.device.type == "cuda", "probs returns on the logits' device")
check(torch.equal(p_gpu.cpu(), ts.probs(x, history=hist, **kw)), "probs on CUDA bf16 == CPU")
check(c.d2h == 1 and c.h2d == 1 and c.syncs == 1, f"probs: one copy each way, one sync ({c})")
check(c.d2h_bytes == x.numel() * 2, "the bf16 logits crossed as bf16 (no upcast)")
ids_gpu = ts.sample(xc, history=hist, seed=7, **kw)
check(torch.equal(ids_gpu.cpu(), ts.sample(x, history=hist, seed=7, **kw)),
      "sample on CUDA bf16 == CPU")

# 3. generate with SmolLM2: CUDA float32 greedy == CPU greedy
prompts = ["What is the capital of France?", "Write a haiku about the sea."]
gen_kw = dict(chat=True, temperature=0, max_new_tokens=32)
cpu_model, tok = load(device="cpu", dtype="float32")
want = generate(cpu_model, tok, prompts, **gen_kw).token_ids
del cpu_model
model, tok = load(device="cuda", dtype="float32")
BRIDGE.reset_counters()
got = generate(model, tok, prompts, **gen_kw)
c = BRIDGE.counters()
steps = max(len(r) for r in got.token_ids)  # sampling steps (the loop ends when all rows do)
check(got.token_ids == want, "generate on CUDA (float32, greedy) == CPU greedy")
if got.token_ids != want:
    for r, (a, b) in enumerate(zip(got.token_ids, want)):
        n = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        print(f"  row {r}: first difference at token {n}: cuda {a[n:n + 4]} cpu {b[n:n + 4]}")
check(c.d2h == steps and c.syncs == steps and c.h2d == steps - 1,
      f"generate: one logits copy and one sync per step ({c}, {steps} steps)")

# 4. the compiled decode step on CUDA
t0 = time.perf_counter()
model.compile_decode()
warm_up(model, 64, 32, batch_size=len(prompts))
print(f"      compile + warm-up: {time.perf_counter() - t0:.1f} s")
comp = generate(model, tok, prompts, **gen_kw).token_ids
check(comp == got.token_ids, "compiled decode step on CUDA == eager CUDA greedy")
model.compile_decode(False)

# 5. benchmark: tokens/s and the per-step split for B = 1, 8, 64 (extra syncs to time them)
steps = int(os.environ.get("TOKENSAMPLER_GPU_CHECK_STEPS", "64"))
bmodel, _ = load(device="cuda")  # the default: bfloat16 on CUDA
print(f"\n      benchmark: SmolLM2-135M, {bmodel.dtype}, {steps} decode steps, "
      "temperature 0.7 top_p 0.9")
print("      B   tokens/s   step ms   forward ms   copy ms   sample ms   d2h/h2d/syncs per step")
with torch.inference_mode():
    for B in (1, 8, 64):
        sampler = ts.Sampler(temperature=0.7, top_p=0.9, seed=0)
        cache = bmodel.new_kv_cache(B, 256)
        idx = torch.randint(0, bmodel.vocab_size, (B, 16), device="cuda")
        logits = bmodel(idx, kv_cache=cache, last_only=True)
        torch.cuda.synchronize()
        t_fwd = t_copy = t_sample = 0.0
        BRIDGE.reset_counters()
        t_start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            host = BRIDGE.to_host(logits[:, -1, :])
            t1 = time.perf_counter()
            ids = sampler(host).numpy()
            t2 = time.perf_counter()
            nxt = BRIDGE.to_device([ids.reshape(B, 1)], bmodel.device)[0]
            t3 = time.perf_counter()
            logits = bmodel(nxt, kv_cache=cache)
            torch.cuda.synchronize()  # only here, to time the forward apart from the copy
            t4 = time.perf_counter()
            t_copy += (t1 - t0) + (t3 - t2)
            t_sample += t2 - t1
            t_fwd += t4 - t3
        total = time.perf_counter() - t_start
        c = BRIDGE.counters()
        per = [f"{v / steps:.2g}" for v in (c.d2h, c.h2d, c.syncs)]
        print(f"      {B:<3} {B * steps / total:9.0f}   {1e3 * total / steps:7.2f}   "
              f"{1e3 * t_fwd / steps:10.2f}   {1e3 * t_copy / steps:7.2f}   "
              f"{1e3 * t_sample / steps:9.2f}   {'/'.join(per)}")
        check(c.d2h == steps and c.h2d == steps and c.syncs == steps,
              f"B={B}: one copy each way and one sync per step")

if failures:
    print(f"\n{len(failures)} GPU check(s) failed: " + "; ".join(failures), file=sys.stderr)
    sys.exit(1)
EOF

elapsed=$((SECONDS - start))
echo "== gpu_check: all passed in ${elapsed} s"
if ((elapsed > 300)); then
  fail "took ${elapsed} s, over the five-minute budget"
fi
