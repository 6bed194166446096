"""llama.cpp's own sampler test vectors, and a numpy port of its samplers, for the tests.

Sources (ggml-org/llama.cpp, the stored versions read for this port):

- ``tests/test-sampling.cpp`` at commit 07e4038f07a83cd729bbac700e6681757b313b73
  (``test_temp``, ``test_temp_ext``, ``test_xtc``, ``test_typical``, ``test_top_n_sigma``,
  ``test_top_p``, ``test_min_p``, ``test_sampler_queue`` and ``main``'s vectors);
- ``src/llama-sampling.cpp`` at commit 0344068cf112e524eb3fbdbd58c171870b63e56c (the
  samplers: ``llama_sampler_softmax_impl``, ``_temp_impl``, ``_top_k_impl``, ``top_p``,
  ``min_p``, ``typical``, ``temp_ext``, ``xtc``, ``top_n_sigma``, ``penalties``, ``dist``);
- ``common/sampling.cpp`` at commit 00efb3e184262872916bf136b3df63c1822a19bd
  (``common_sampler_init``: which ``llama_sampler_init_*`` each chain entry becomes; the
  temperature entry is ``llama_sampler_init_temp_ext(temp, dynatemp_range, dynatemp_exponent)``)
  and ``common/common.h`` at commit 001d906a6d86e2490e394361e7cc6f478b100088 (the default
  chain ``penalties, dry, top_n_sigma, top_k, typical_p, top_p, min_p, xtc, temperature`` and
  the defaults ``top_k = 40, top_p = 0.95, min_p = 0.05, temp = 0.8, min_keep = 0``).

How the C++ harness checks, and how a vector is translated here. ``sampler_tester`` builds
the candidates from probabilities (``logit = logf(p)``), applies the sampler under test and,
for most tests, ``llama_sampler_init_dist(0)``, which writes the renormalised softmax of the
surviving candidates into ``.p``. ``check()`` then compares ``cur_p.size`` and ``.p`` in the
candidates' *current order* (sorted by logit, descending, after any sampler that sorts) with
1e-5. ``test_xtc`` and ``test_typical`` apply no ``dist``: their expected ``.p`` are the
*unrenormalised* probabilities of the survivors. ``ts.probs`` returns the renormalised final
distribution in *id order*, zero outside the kept set, so each vector below gives the
expected ``ts.probs`` output in id order, derived from the C++ expectation by renormalising
the survivors and placing them at their ids (the original line is quoted with each vector).
"""

from __future__ import annotations

import math

import numpy as np

LLAMA_CPP_TEST_COMMIT = "07e4038f07a83cd729bbac700e6681757b313b73"  # tests/test-sampling.cpp
LLAMA_CPP_SRC_COMMIT = "0344068cf112e524eb3fbdbd58c171870b63e56c"  # src/llama-sampling.cpp
LLAMA_CPP_COMMON_COMMIT = "00efb3e184262872916bf136b3df63c1822a19bd"  # common/sampling.cpp
LLAMA_CPP_COMMON_H_COMMIT = "001d906a6d86e2490e394361e7cc6f478b100088"  # common/common.h

P4 = [0.1, 0.2, 0.3, 0.4]
P4_DESC = [0.4, 0.3, 0.2, 0.1]


def logits_of(probs) -> np.ndarray:
    """The harness's logits: ``logf(probs[i])`` in float32."""
    return np.log(np.asarray(probs, dtype=np.float32))


def _renorm(values):
    v = np.asarray(values, dtype=np.float64)
    return v / v.sum()


# (id, C++ line, probabilities, our keywords, expected ts.probs in id order)
VECTORS: list[tuple[str, str, list, dict, np.ndarray]] = [
    # -- temperature ------------------------------------------------------------------------
    ("temp_1", "test_temp({0.1f, 0.2f, 0.3f, 0.4f}, {0.1f, 0.2f, 0.3f, 0.4f}, 1.0f);",
     P4, {"temperature": 1.0}, np.array(P4)),
    # temp 0: llama.cpp keeps the max logit only; ours: greedy (one-hot at the argmax)
    ("temp_0", "test_temp({0.1f, 0.2f, 0.3f, 0.4f}, {0.0f, 0.0f, 0.0f, 1.0f}, 0.0f);",
     P4, {"temperature": 0.0}, np.array([0.0, 0.0, 0.0, 1.0])),
    # -- temp_ext (dynatemp): llama.cpp's vectors only have delta = 0 ------------------------
    ("temp_ext_1", ("test_temp_ext({0.1f, 0.2f, 0.3f, 0.4f}, {0.1f, 0.2f, 0.3f, 0.4f}, "
                    "1.0f, 0.0f, 1.0f);"),
     P4, {"temperature": 1.0, "dynatemp_range": 0.0, "dynatemp_exponent": 1.0}, np.array(P4)),
    ("temp_ext_0", ("test_temp_ext({0.1f, 0.2f, 0.3f, 0.4f}, {0.0f, 0.0f, 0.0f, 1.0f}, "
                    "0.0f, 0.0f, 1.0f);"),
     P4, {"temperature": 0.0, "dynatemp_range": 0.0, "dynatemp_exponent": 1.0},
     np.array([0.0, 0.0, 0.0, 1.0])),
    # -- XTC (no dist: expected .p are unrenormalised survivors, sorted descending). The C++
    # test uses probability 0.99 with seed 0 (its mt19937 draw passes); ours uses 1.0, which
    # always applies (our coin comes from our own stream).
    ("xtc_0.09", "test_xtc({0.4f, 0.3f, 0.2f, 0.1f}, {0.1f}, 0.99f, 0.09f);",
     P4_DESC, {"xtc_probability": 1.0, "xtc_threshold": 0.09}, np.array([0, 0, 0, 1.0])),
    ("xtc_0.19", "test_xtc({0.4f, 0.3f, 0.2f, 0.1f}, {0.2f, 0.1f}, 0.99f, 0.19f);",
     P4_DESC, {"xtc_probability": 1.0, "xtc_threshold": 0.19},
     np.concatenate([[0, 0], _renorm([0.2, 0.1])])),
    ("xtc_0.29", "test_xtc({0.4f, 0.3f, 0.2f, 0.1f}, {0.3f, 0.2f, 0.1f}, 0.99f, 0.29f);",
     P4_DESC, {"xtc_probability": 1.0, "xtc_threshold": 0.29},
     np.concatenate([[0], _renorm([0.3, 0.2, 0.1])])),
    ("xtc_0.39_not", "test_xtc({0.4f, 0.3f, 0.2f, 0.1f}, {0.4f, 0.3f, 0.2f, 0.1f}, 0.99f, 0.39f);",
     P4_DESC, {"xtc_probability": 1.0, "xtc_threshold": 0.39}, np.array(P4_DESC)),
    # -- typical (no dist: unrenormalised survivors) ----------------------------------------
    ("typical_0.97", "test_typical({0.97f, 0.01f, 0.01f, 0.01f}, {0.97f}, 0.5f);",
     [0.97, 0.01, 0.01, 0.01], {"typical_p": 0.5}, np.array([1.0, 0, 0, 0])),
    ("typical_0.4", "test_typical({0.4f, 0.2f, 0.2f, 0.2f}, {0.2f, 0.2f, 0.2f}, 0.5f);",
     [0.4, 0.2, 0.2, 0.2], {"typical_p": 0.5}, np.array([0, 1 / 3, 1 / 3, 1 / 3])),
    # -- top_n_sigma (the masked tokens stay in cur_p with p = 0: the C++ expectation is
    # already in id order). n = 0 is a no-op "as of PR#13345", like our "off".
    ("top_n_sigma_1", ("test_top_n_sigma({0.1f, 0.2f, 0.3f, 0.4f}, "
                       "{0.0f, 0.0f, 0.428571f, 0.571429f}, 1.00f);"),
     P4, {"top_n_sigma": 1.0}, np.array([0, 0, 0.3 / 0.7, 0.4 / 0.7])),
    ("top_n_sigma_0", "test_top_n_sigma({0.1f, 0.2f, 0.3f, 0.4f}, {0.1f, 0.2f, 0.3f, 0.4f}, 0.00f);",
     P4, {"top_n_sigma": 0.0}, np.array(P4)),
    ("top_n_sigma_3", "test_top_n_sigma({0.1f, 0.2f, 0.3f, 0.4f}, {0.1f, 0.2f, 0.3f, 0.4f}, 3.00f);",
     P4, {"top_n_sigma": 3.0}, np.array(P4)),
    # -- top_p / min_p (min_keep = 0), for the orders: the same rule in every preset ---------
    ("top_p_0.7", "test_top_p({0.1f, 0.2f, 0.3f, 0.4f}, {0.571429f, 0.428571f}, 0.7f);",
     P4, {"top_p": 0.7}, np.concatenate([[0, 0], _renorm([0.3, 0.4])])),
    ("top_p_0.8", "test_top_p({0.1f, 0.2f, 0.3f, 0.4f}, {0.44444f, 0.33333f, 0.22222f}, 0.8f);",
     P4, {"top_p": 0.8}, np.concatenate([[0], _renorm([0.2, 0.3, 0.4])])),
    ("min_p_0.26", "test_min_p({0.1f, 0.2f, 0.3f, 0.4f}, {0.2f/0.9f, 0.3f/0.9f, 0.4f/0.9f}, 0.26f);",
     P4, {"min_p": 0.26}, np.concatenate([[0], _renorm([0.2, 0.3, 0.4])])),
    ("min_p_0.51", "test_min_p({0.1f, 0.2f, 0.3f, 0.4f}, {0.3f/0.7f, 0.4f/0.7f}, 0.51f);",
     P4, {"min_p": 0.51}, np.concatenate([[0, 0], _renorm([0.3, 0.4])])),
    ("min_p_0.76", "test_min_p({0.1f, 0.2f, 0.3f, 0.4f}, {0.4f/0.4f}, 0.76f);",
     P4, {"min_p": 0.76}, np.array([0, 0, 0, 1.0])),
]  # fmt: skip

# The same samplers with ``min_keep`` > 0. test-sampling.cpp has no such vectors (it passes
# min_keep = 0 everywhere except test_sampler_queue's 1); these are derived by hand from the
# C++ code of src/llama-sampling.cpp, on vectors where its rule and ours agree (no ties at
# the min_keep boundary, which the C++ leaves to std::sort).
MIN_KEEP_VECTORS: list[tuple[str, str, list, dict, np.ndarray]] = [
    # top_p: `cum_sum >= p && i + 1 >= min_keep`
    ("top_p_0.1_keep3", "llama_sampler_init_top_p(0.1f, 3)", P4,
     {"top_p": 0.1, "min_tokens_to_keep": 3}, np.concatenate([[0], _renorm([0.2, 0.3, 0.4])])),
    # min_p: the unsorted pass keeps 1 < min_keep, the sorted pass keeps i < min_keep
    ("min_p_0.76_keep2", "llama_sampler_init_min_p(0.76f, 2)", P4,
     {"min_p": 0.76, "min_tokens_to_keep": 2}, np.concatenate([[0, 0], _renorm([0.3, 0.4])])),
    # typical: `cum_sum > p && i >= min_keep - 1` on [.5, .3, .2]: keys .337, .174, .580 ->
    # order .3, .5, .2; typical_p .2 keeps {.3}; min_keep 2 adds .5
    ("typical_0.2_keep2", "llama_sampler_init_typical(0.2f, 2)", [0.5, 0.3, 0.2],
     {"typical_p": 0.2, "min_tokens_to_keep": 2}, np.concatenate([_renorm([0.5, 0.3]), [0]])),
    # xtc: `cur_p->size - pos_last >= min_keep`: removing 3 of 4 leaves 1 < 2, not applied
    ("xtc_0.09_keep2", "llama_sampler_init_xtc(1.0f, 0.09f, 2, 0)", P4_DESC,
     {"xtc_probability": 1.0, "xtc_threshold": 0.09, "min_tokens_to_keep": 2}, np.array(P4_DESC)),
    ("xtc_0.19_keep2", "llama_sampler_init_xtc(1.0f, 0.19f, 2, 0)", P4_DESC,
     {"xtc_probability": 1.0, "xtc_threshold": 0.19, "min_tokens_to_keep": 2},
     np.concatenate([[0, 0], _renorm([0.2, 0.1])])),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# test_sampler_queue: logits log(id) for n_vocab = 10000 (token 0 is -inf, p_i ~ i), samplers
# applied in sequence, top_p and min_p with min_keep = 1.
# ---------------------------------------------------------------------------------------------

# (samplers, top_k, top_p, min_p) as in main(). Left out: top_p = 0.0 (our top_p is in
# (0, 1]) and min_p = 1.0 (our min_p is in [0, 1)), both invalid for us; and the cases that
# are off for us (top_k = n_vocab, top_p = 1) are kept, being checks that nothing is removed.
QUEUE_CASES = [
    ("k", 10000, 1.0, 1.0e-12),  # C++: ("k", 10000, 1.0f, 1.0f); min_p 1 is invalid for us
    ("k", 1, 1.0, 1.0e-12),
    ("p", 10000, 1.0, 1.0e-12),
    ("m", 10000, 1.0, 1e-12),
    ("k", 100, 1.0000, 1e-12),
    ("p", 10000, 0.0003, 1e-12),
    ("p", 10000, 0.8000, 1e-12),
    ("m", 10000, 1.0000, 9997.9 / 9999.0),
    ("m", 10000, 1.0000, 0.1),
    ("kp", 100, 0.8, 0.1),
    ("km", 100, 0.8, 0.1),
    ("pk", 100, 0.8, 0.1),
    ("pm", 100, 0.8, 0.1),
    ("mk", 100, 0.8, 0.1),
    ("mp", 100, 0.8, 9997.9 / 9999.0),
    ("mp", 100, 0.8, 0.1),
    ("kpm", 100, 0.8, 0.1),
    ("kmp", 100, 0.8, 0.1),
    ("pkm", 100, 0.8, 0.1),
    ("pmk", 100, 0.8, 0.1),
    ("mkp", 100, 0.8, 0.1),
    ("mpk", 100, 0.8, 0.1),
]
QUEUE_STAGE = {"k": "top_k", "p": "top_p", "m": "min_p"}


def queue_expected(n_vocab: int, samplers: str, top_k: int, top_p: float, min_p: float):
    """The kept id range [lo, n_vocab - 1] of test_sampler_queue, and the margin of each
    top_p / min_p decision (relative distance of the boundary mass / ratio from its
    threshold, to check that float32 rounding cannot flip it).

    The C++ expectations restated exactly: probabilities are proportional to the ids of the
    current range [lo, n - 1] (token 0 has p = 0 and never counts). top_k keeps the k largest
    ids; top_p keeps the largest ids down to the first m whose cumulative id sum reaches
    ceil(top_p * sum(lo..n-1)) (the C++ loop, exact in integers); min_p keeps ids with
    id / (n - 1) >= min_p. (The C++ 'm' check is the weaker size <= ceil((1 - min_p) n).)
    """
    lo = 1
    margins = []
    top = n_vocab - 1
    for s in samplers:
        if s == "k":
            if 0 < top_k < n_vocab:
                lo = max(lo, n_vocab - top_k)
        elif s == "p":
            if top_p < 1.0:
                total = (top * (top + 1) - (lo - 1) * lo) // 2
                target = top_p * total
                cum, m = 0, top + 1
                while cum < target:
                    m -= 1
                    cum += m
                margins.append(min(abs(cum - target), abs(cum - m - target)) / total)
                lo = max(lo, m)
        elif s == "m" and min_p > 0.0:
            m = max(1, math.ceil(min_p * top))
            margins.append(
                min(abs(m / top - min_p), abs((m - 1) / top - min_p)) / max(min_p, 1e-300)
            )
            lo = max(lo, m)
    return lo, margins


# ---------------------------------------------------------------------------------------------
# A numpy port of the llama.cpp samplers (src/llama-sampling.cpp), on a candidate list.
# float64 throughout; sorts are stable (ties: the earlier candidate first, i.e. the lower id
# for fresh candidates), where the C++ partial_sort / std::sort leave tie order unspecified.
# ---------------------------------------------------------------------------------------------


class Candidates:
    """``llama_token_data_array``: ids, logits, p, sorted flag, in the current order."""

    def __init__(self, logits):
        self.logit = np.array(logits, dtype=np.float64)
        self.id = np.arange(self.logit.size)
        self.p = np.zeros(self.logit.size)
        self.sorted = False

    def _take(self, idx) -> None:
        self.logit, self.id, self.p = self.logit[idx], self.id[idx], self.p[idx]

    def sort_desc(self) -> None:
        self._take(np.argsort(-self.logit, kind="stable"))
        self.sorted = True

    # llama_sampler_softmax_impl
    def softmax(self, do_sort: bool) -> None:
        if do_sort and not self.sorted:
            self.sort_desc()
        max_l = self.logit[0] if self.sorted else self.logit.max()
        e = np.exp(self.logit - max_l)
        self.p = e / e.sum()

    # llama_sampler_temp_impl
    def temp(self, t: float) -> None:
        if t <= 0.0:
            i = int(np.argmax(self.logit))  # the first maximum in the current order
            keep = self.logit[i]
            self.logit = np.full_like(self.logit, -np.inf)
            self.logit[i] = keep
            return
        self.logit = self.logit / t

    # llama_sampler_top_k_impl (exactly k: no ties kept)
    def top_k(self, k: int) -> None:
        if k <= 0:
            return
        k = min(k, self.logit.size)
        if not self.sorted:
            self.sort_desc()
        self._take(np.arange(k))

    def top_p(self, p: float, min_keep: int) -> None:
        if p >= 1.0:
            return
        self.softmax(False)
        if not self.sorted:
            self.sort_desc()
        cum = np.cumsum(self.p)
        last = self.logit.size
        for i in range(self.logit.size):
            if cum[i] >= p and i + 1 >= min_keep:
                last = i + 1
                break
        self._take(np.arange(last))

    def min_p(self, p: float, min_keep: int) -> None:
        if p <= 0.0 or self.logit.size == 0:
            return
        if not self.sorted:
            min_logit = self.logit.max() + math.log(p)
            sel = np.flatnonzero(self.logit >= min_logit)
            if sel.size and sel.size >= min_keep:
                self._take(sel)
                return
            self.sort_desc()
        min_logit = self.logit[0] + math.log(p)
        i = 1
        while i < self.logit.size:
            if self.logit[i] < min_logit and i >= min_keep:
                break
            i += 1
        self._take(np.arange(i))

    # llama_sampler_typical_apply (strict `cum_sum > p`; the first last_idx in key order)
    def typical(self, p: float, min_keep: int) -> None:
        if p >= 1.0:
            return
        self.softmax(True)
        with np.errstate(divide="ignore", invalid="ignore"):
            logp = np.log(self.p)
            entropy = float(np.sum(-self.p * logp))  # NaN if a candidate has p == 0, as in C++
            shifted = np.abs(-logp - entropy)
        order = np.argsort(shifted, kind="stable")
        cum = np.cumsum(self.p[order])
        last = order.size
        for i in range(order.size):
            if cum[i] > p and (min_keep == 0 or i >= min_keep - 1):
                last = i + 1
                break
        self._take(order[:last])
        self.sorted = False

    def temp_ext(self, temp: float, delta: float, exponent: float) -> None:
        if delta > 0.0:
            min_temp = max(0.0, temp - delta)
            max_temp = temp + delta
            if self.logit.size <= 1:
                return
            max_entropy = -math.log(1.0 / self.logit.size)
            self.softmax(True)
            pos = self.p > 0.0
            entropy = float(-(self.p[pos] * np.log(self.p[pos])).sum())
            dyn_temp = min_temp + (max_temp - min_temp) * (entropy / max_entropy) ** exponent
            self.temp(dyn_temp)
            e = np.exp(self.logit - self.logit[0])
            self.p = e / e.sum()
        else:
            self.temp(temp)

    # llama_sample_xtc_apply; `chance` is the uniform draw of its mt19937
    def xtc(self, probability: float, threshold: float, min_keep: int, chance: float) -> None:
        if probability <= 0.0 or threshold > 0.5 or self.logit.size < 2:
            return
        if chance > probability:
            return
        self.softmax(True)
        pos_last = 0
        for i in range(self.logit.size):
            if self.p[i] >= threshold:
                pos_last = i
            else:
                break
        if self.logit.size - pos_last >= min_keep and pos_last > 0:
            self._take(np.arange(pos_last, self.logit.size))

    # llama_sampler_top_n_sigma_apply (masked tokens stay, with logit -inf)
    def top_n_sigma(self, n: float) -> None:
        if n <= 0.0 or self.logit.size <= 1:
            return
        valid = self.logit != -np.inf
        mx = max(self.logit[0], self.logit[valid].max()) if valid.any() else self.logit[0]
        mean = self.logit[valid].mean() if valid.any() else 0.0
        std = (
            math.sqrt(((self.logit[valid] - mean) ** 2).sum() / valid.sum()) if valid.any() else 0.0
        )
        self.logit = np.where(self.logit < mx - n * std, -np.inf, self.logit)
        self.softmax(True)

    # llama_sampler_penalties_apply (penalty_last_n covering the whole history)
    def penalties(self, history, repeat: float, freq: float, present: float) -> None:
        if repeat == 1.0 and freq == 0.0 and present == 0.0:
            return
        counts = np.bincount(np.asarray(history, dtype=np.int64), minlength=int(self.id.max()) + 1)
        c = counts[self.id].astype(np.float64)
        seen = c > 0
        pen = np.where(self.logit <= 0, self.logit * repeat, self.logit / repeat)
        self.logit = np.where(seen, pen - (c * freq + seen * present), self.logit)
        self.sorted = False

    # llama_sampler_dist_apply: the renormalised softmax, placed in id order
    def dist(self, vocab: int) -> np.ndarray:
        out = np.zeros(vocab)
        if self.logit.size == 1:
            out[self.id[0]] = 1.0
            return out
        e = np.exp(self.logit - self.logit.max())
        out[self.id] = e / e.sum()
        return out


def llama_cpp_chain(
    logits,
    *,
    history=(),
    samplers=("penalties", "top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc",
              "temperature"),
    temperature=0.8,
    top_k=40,
    top_p=0.95,
    min_p=0.05,
    typical_p=1.0,
    top_n_sigma=-1.0,
    xtc_probability=0.0,
    xtc_threshold=0.1,
    xtc_chance=0.0,
    dynatemp_range=0.0,
    dynatemp_exponent=1.0,
    min_keep=0,
    repetition_penalty=1.0,
    frequency_penalty=0.0,
    presence_penalty=0.0,
) -> np.ndarray:  # fmt: skip
    """``common_sampler_init``'s chain (common/sampling.cpp) applied to one row, followed by
    ``dist``: the final distribution in id order. Defaults: common_params_sampling's (DRY off,
    mirostat off). ``xtc_chance`` stands for the chain's mt19937 draw (0: XTC applies)."""
    c = Candidates(logits)
    vocab = c.logit.size
    for s in samplers:
        if s == "penalties":
            c.penalties(history, repetition_penalty, frequency_penalty, presence_penalty)
        elif s == "top_n_sigma":
            c.top_n_sigma(top_n_sigma)
        elif s == "top_k":
            c.top_k(int(top_k or 0))
        elif s == "typical_p":
            c.typical(typical_p, min_keep)
        elif s == "top_p":
            c.top_p(top_p, min_keep)
        elif s == "min_p":
            c.min_p(min_p, min_keep)
        elif s == "xtc":
            c.xtc(xtc_probability, xtc_threshold, min_keep, xtc_chance)
        elif s == "temperature":
            c.temp_ext(temperature, dynatemp_range, dynatemp_exponent)
        else:
            raise ValueError(s)
    return c.dist(vocab)


# ---------------------------------------------------------------------------------------------
# Issue 16: test_penalties and test_dry (the history-aware samplers), and literal ports of
# llama.cpp's DRY and mirostat for cross-checking the oracle's own versions.
#
# Sources: tests/test-sampling.cpp at commit f0817df540977d3e3bd9038e7e108fa4f3b4bbde (the
# newest stored; its test_penalties / test_dry vectors are the same as at 07e4038f, which
# called llama_sampler_init_dry_testing without a context size); src/llama-sampling.cpp at
# commit 0344068cf112e524eb3fbdbd58c171870b63e56c (``llama_sampler_penalties_apply``,
# ``llama_sampler_dry_apply``, ``llama_sampler_init_dry_testing``,
# ``llama_sampler_mirostat_apply``, ``llama_sampler_mirostat_v2_apply``; the DRY code is the
# same at e19fb5f1a30ce42690ad7093ddbd382ac287c9fd).
#
# How they map to our keywords.
# - test_penalties calls ``llama_sampler_init_penalties(last_tokens.size(), repeat, freq,
#   present)`` and accepts every token of ``last_tokens``: penalty_last_n = len(history)
#   (the window is the whole history, so these vectors hold for -1 too). The derived
#   ``PENALTY_WINDOW_VECTORS`` below put extra ids *before* that history, which a window of
#   len(history) must ignore, and check penalty_last_n = 0 (no penalties).
# - test_dry calls ``llama_sampler_init_dry_testing(1024, multiplier, base, allowed_length,
#   dry_penalty_last_n, seq_breakers)`` (context size 1024) and accepts every token of
#   ``last_tokens``. The context size (1024) is larger than every history (<= 7 ids), so
#   last_n_repeat = min(len(history), dry_penalty_last_n): our dry_penalty_last_n as given
#   (each vector passes len(history)); our -1 (= the whole history, total_context_size =
#   len(history)) gives the same results. No vector needs the context size to bind, so none
#   is skipped. An empty ``seq_breakers`` ({}) is our None (no breakers).
# - Both harnesses apply ``llama_sampler_init_dist(0)`` after the sampler under test, and
#   neither sampler sorts (``cur_p->sorted = false``): the expected .p are already in id
#   order and every candidate is kept, so they are the expected ``ts.probs`` outputs as they
#   stand (tolerance 1e-5, the harness's). Some expected values are 0.000000f for a
#   probability ~2e-9; ``ts.probs`` gives the small positive value, within 1e-5.
# ---------------------------------------------------------------------------------------------

LLAMA_CPP_TEST_COMMIT_16 = "f0817df540977d3e3bd9038e7e108fa4f3b4bbde"  # tests/test-sampling.cpp
LLAMA_CPP_DRY_SRC_COMMITS = (
    "0344068cf112e524eb3fbdbd58c171870b63e56c",
    "e19fb5f1a30ce42690ad7093ddbd382ac287c9fd",
)  # src/llama-sampling.cpp (the DRY code is identical in both)

P5 = [0.2, 0.2, 0.2, 0.2, 0.2]


def _pen(history, repeat, freq, present, **extra):
    kw = {"history": list(history), "penalty_last_n": len(history), "repetition_penalty": repeat,
          "frequency_penalty": freq, "presence_penalty": present}  # fmt: skip
    kw.update(extra)
    return kw


# (id, C++ line, probabilities, our keywords, expected ts.probs in id order)
PENALTY_VECTORS: list[tuple[str, str, list, dict, np.ndarray]] = [
    ("pen_rep_0", "test_penalties({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0}, {0, 0.25f, 0.25f, 0.25f, 0.25f},   50.0f, 0.0f, 0.0f);",
     P5, _pen([0], 50.0, 0.0, 0.0), np.array([0, 0.25, 0.25, 0.25, 0.25])),
    ("pen_rep_012", "test_penalties({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0, 1, 2}, {0, 0, 0, 0.5f, 0.5f},       50.0f, 0.0f, 0.0f);",
     P5, _pen([0, 1, 2], 50.0, 0.0, 0.0), np.array([0, 0, 0, 0.5, 0.5])),
    ("pen_rep_01200", "test_penalties({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0, 1, 2, 0, 0}, {0, 0, 0, 0.5f, 0.5f}, 50.0f, 0.0f, 0.0f);",
     P5, _pen([0, 1, 2, 0, 0], 50.0, 0.0, 0.0), np.array([0, 0, 0, 0.5, 0.5])),
    ("pen_fp_0", "test_penalties({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0},             {0.000011f, 0.249997f, 0.249997f, 0.249997f, 0.249997f}, 1.0f, 5.0f, 5.0f);",
     P5, _pen([0], 1.0, 5.0, 5.0), np.array([0.000011, 0.249997, 0.249997, 0.249997, 0.249997])),
    ("pen_fp_012", "test_penalties({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0, 1, 2},       {0.000023f, 0.000023f, 0.000023f, 0.499966f, 0.499966f}, 1.0f, 5.0f, 5.0f);",
     P5, _pen([0, 1, 2], 1.0, 5.0, 5.0),
     np.array([0.000023, 0.000023, 0.000023, 0.499966, 0.499966])),
    ("pen_fp_01200", "test_penalties({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0, 1, 2, 0, 0}, {0.000000f, 0.000023f, 0.000023f, 0.499977f, 0.499977f}, 1.0f, 5.0f, 5.0f);",
     P5, _pen([0, 1, 2, 0, 0], 1.0, 5.0, 5.0),
     np.array([0.0, 0.000023, 0.000023, 0.499977, 0.499977])),
]  # fmt: skip

# Derived from PENALTY_VECTORS (not in test-sampling.cpp): the same windows after an older
# history the window must not see (ids 3 and 4, which would otherwise be penalised too), and
# penalty_last_n = 0, which turns the penalties off (llama.cpp: an empty ring buffer).
PENALTY_WINDOW_VECTORS: list[tuple[str, str, list, dict, np.ndarray]] = []
for _name, _line, _p, _kw, _want in PENALTY_VECTORS:
    _older = [3, 4, 4, 3]
    _where = f"derived: [3, 4, 4, 3] + history, penalty_last_n = {_kw['penalty_last_n']}"
    PENALTY_WINDOW_VECTORS.append(
        (f"{_name}_after_older", f"{_where}; {_line}", _p,
         dict(_kw, history=_older + _kw["history"]), _want)
    )  # fmt: skip
    PENALTY_WINDOW_VECTORS.append(
        (f"{_name}_last_n_0", f"derived: penalty_last_n = 0 (off); {_line}", _p,
         dict(_kw, penalty_last_n=0), np.array(_p))
    )  # fmt: skip


def _dry(history, multiplier, base, allowed, last_n, breakers):
    return {"history": list(history), "dry_multiplier": multiplier, "dry_base": base,
            "dry_allowed_length": allowed, "dry_penalty_last_n": last_n,
            "dry_sequence_breakers": breakers}  # fmt: skip


DRY_VECTORS: list[tuple[str, str, list, dict, np.ndarray]] = [
    ("dry_short", "test_dry({0.25f, 0.25f, 0.25f, 0.25f}, {0, 1}, {0.25f, 0.25f, 0.25f, 0.25f}, 1.0f, 1.1f, 2, 4, {});",
     [0.25] * 4, _dry([0, 1], 1.0, 1.1, 2, 4, None), np.array([0.25] * 4)),
    ("dry_repeat", "test_dry({0.25f, 0.25f, 0.25f, 0.25f}, {0, 1, 2, 0, 1}, {0.296923f, 0.296923f, 0.109232f, 0.296923f}, 1.0f, 1.1f, 2, 5, {});",
     [0.25] * 4, _dry([0, 1, 2, 0, 1], 1.0, 1.1, 2, 5, None),
     np.array([0.296923, 0.296923, 0.109232, 0.296923])),
    ("dry_breaker", "test_dry({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0, 1, 3, 4, 0, 1}, {0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, 1.0f, 1.1f, 2, 6, {{3}});",
     P5, _dry([0, 1, 3, 4, 0, 1], 1.0, 1.1, 2, 6, [[3]]), np.array(P5)),
    ("dry_multiplier_2", "test_dry({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0, 1, 2, 0, 1}, {0.241818f, 0.241818f, 0.032727f, 0.241818f, 0.241818f}, 2.0f, 1.1f, 2, 5, {});",
     P5, _dry([0, 1, 2, 0, 1], 2.0, 1.1, 2, 5, None),
     np.array([0.241818, 0.241818, 0.032727, 0.241818, 0.241818])),
    ("dry_allowed_4", "test_dry({0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, {0, 1, 2, 3, 4, 0, 1}, {0.2f, 0.2f, 0.2f, 0.2f, 0.2f}, 1.0f, 1.1f, 4, 7, {});",
     P5, _dry([0, 1, 2, 3, 4, 0, 1], 1.0, 1.1, 4, 7, None), np.array(P5)),
]  # fmt: skip

# The same vectors with dry_penalty_last_n = -1 (our "whole history" = llama.cpp's
# total_context_size = len(history); its tests use 1024 > len(history): the same window).
DRY_WHOLE_HISTORY_VECTORS = [
    (f"{n}_last_n_-1", f"derived: dry_penalty_last_n = -1; {line}", p,
     dict(kw, dry_penalty_last_n=-1), want)
    for n, line, p, kw, want in DRY_VECTORS
]  # fmt: skip


def llama_cpp_dry(
    history, vocab: int, multiplier: float, base: float, allowed_length: int,
    penalty_last_n: int, breakers=(), context_size: int | None = None,
) -> np.ndarray:  # fmt: skip
    """Literal port of ``llama_sampler_dry_apply`` (with ``llama_sampler_init_dry_testing``'s
    token breakers), Z-algorithm included, returning the per-token amounts it subtracts
    (float64). The accepted tokens are ``history`` (negative ids dropped: our padding);
    ``context_size`` None = len(history)."""
    out = np.zeros(vocab)
    hist = [int(t) for t in history if int(t) >= 0]
    total = len(hist) if context_size is None else int(context_size)
    if multiplier == 0.0 or base < 1.0 or penalty_last_n == 0:
        return out
    eff = total if penalty_last_n == -1 else max(penalty_last_n, 0)
    last_tokens = hist[len(hist) - min(eff, len(hist)) :]  # ring_buffer(eff) after accept()s
    last_n_repeat = min(min(len(last_tokens), eff), total)
    if last_n_repeat <= allowed_length:
        return out

    def rat(i):
        return last_tokens[len(last_tokens) - 1 - i]

    processed: dict[int, list[list[int]]] = {}
    for b in breakers or ():
        if len(b) == 0:
            continue
        processed.setdefault(int(b[0]), []).append([int(t) for t in b[1:]])
    repeat_count = [0] * last_n_repeat
    max_token_repeat: dict[int, int] = {}
    rep_limit = last_n_repeat
    for i in range(last_n_repeat):
        token = rat(i)
        if token not in processed:
            continue
        longest_match = -1
        for tail in processed[token]:
            seq_len = len(tail)
            if seq_len > longest_match and seq_len <= i:
                match = True
                for offset in range(seq_len):
                    if tail[offset] != rat(i - offset - 1):
                        match = False
                        break
                if match:
                    longest_match = seq_len
        if longest_match >= 0:
            rep_limit = i - longest_match
            break
    if rep_limit < allowed_length:
        return out
    last = last_n_repeat - 1
    rt = lt = 0
    for k in range(1, last_n_repeat):
        if k > rt:
            n = 0
            while n + k < last_n_repeat and rat(n) == rat(n + k):
                n += 1
            repeat_count[last - k] = min(n, rep_limit)
            if n > 0:
                lt = k
                rt = k + n - 1
        else:
            p = k - lt
            right_part_len = rt - k + 1
            if repeat_count[last - p] < right_part_len:
                repeat_count[last - k] = min(repeat_count[last - p], rep_limit)
            else:
                i = rt + 1
                while i < last_n_repeat and rat(i) == rat(i - k):
                    i += 1
                repeat_count[last - k] = min(i - k, rep_limit)
                lt = k
                rt = i - 1
    for i in range(last_n_repeat - 1):
        repeat_len = repeat_count[i]
        if repeat_len >= allowed_length:
            token = rat(last_n_repeat - 2 - i)
            if token not in max_token_repeat or max_token_repeat[token] < repeat_len:
                max_token_repeat[token] = repeat_len
    max_exponent = 0
    if base > 1.000001:
        max_exponent = int(88.7228391 / math.log(base))
    for token, r in max_token_repeat.items():
        if any(len(t) == 0 for t in processed.get(token, [])):
            continue  # a single-token sequence breaker
        repeat_exp = r - allowed_length
        if max_exponent > 0 and repeat_exp > max_exponent:
            repeat_exp = max_exponent
        if 0 <= token < vocab:
            out[token] = multiplier * base**repeat_exp
    return out


def llama_cpp_mirostat(probs_desc, mu: float, tau: float, eta: float, n_vocab: int, m: int = 100):
    """Literal port of ``llama_sampler_mirostat_apply`` up to the truncation, on the
    candidates' probabilities sorted descending (after ``llama_sampler_softmax_impl``):
    returns (k as computed, the number of candidates kept by ``top_k_impl``), float64."""
    p = np.asarray(probs_desc, dtype=np.float64)
    sum_ti_bi = sum_ti_sq = 0.0
    i = 0
    while i < m - 1 and i < p.size - 1:
        t_i = math.log((i + 2) / (i + 1))
        b_i = math.log(p[i] / p[i + 1])
        sum_ti_bi += t_i * b_i
        sum_ti_sq += t_i * t_i
        i += 1
    s_hat = sum_ti_bi / sum_ti_sq
    epsilon_hat = s_hat - 1
    k = (epsilon_hat * 2.0**mu / (1 - float(n_vocab) ** (-epsilon_hat))) ** (1 / s_hat)
    return k, min(max(int(k), 1), p.size)


def llama_cpp_mirostat_v2(probs_desc, mu: float) -> int:
    """``llama_sampler_mirostat_v2_apply``'s truncation: the candidates (sorted descending)
    before the first with -log2(p) > mu, at least one."""
    p = np.asarray(probs_desc, dtype=np.float64)
    size = p.size
    for i in range(p.size):
        if -math.log2(p[i]) > mu:
            size = i
            break
    return max(size, 1)


def llama_cpp_mirostat_update(mu: float, tau: float, eta: float, p_chosen: float) -> float:
    """Both versions: ``mu = mu - eta * (-log2f(p_chosen) - tau)``."""
    return mu - eta * (-math.log2(p_chosen) - tau)
