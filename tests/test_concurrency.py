"""Threads (issue #6): concurrent calls give the serial results; the GIL is released.

- 8 Python threads calling ``sample`` / ``probs`` / ``Sampler`` at once, on their own inputs
  and on shared read-only inputs, get exactly (bit for bit) the results of the same calls
  made one after another (fixed seeds), also while other threads' calls fail and while the
  worker pool is resized;
- one ``Sampler`` shared by threads (documented as safe: each call takes a distinct step under
  a lock): N concurrent calls give exactly the multiset of the results of steps 0..N-1;
- the kernels release the GIL: two threads on two cores finish a large one-row-per-call
  workload at least 1.3x faster than one thread doing it all (best of several tries), and a
  pure-Python thread keeps running while another thread is inside a kernel.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tokensampler as ts

try:
    import torch
except ImportError:
    torch = None

N_THREADS = 8
KW = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "min_p": 0.01}


def _as_np(a: Any) -> Any:
    if isinstance(a, ts.SampleOutput):
        return tuple(_as_np(x) for x in a)
    if torch is not None and isinstance(a, torch.Tensor):
        return a.numpy()
    return a


def _equal(a: Any, b: Any) -> bool:
    a, b = _as_np(a), _as_np(b)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


def _jobs(shared: np.ndarray, rng: np.random.Generator) -> list[Callable[[], Any]]:
    """Deterministic calls: own inputs (various dtypes, batch sizes, options) and the shared
    read-only array. Some are batches of >= 65,536 logits, which also run on rayon's pool
    (conftest.py lowers the pool threshold to that size)."""
    jobs: list[Callable[[], Any]] = []
    for k in range(6):
        own = rng.standard_normal((4, 20_000)).astype(np.float32) * 3
        hist = rng.integers(-1, 20_000, size=(4, 30))
        bias = {int(rng.integers(0, 20_000)): -np.inf, 7: 2.0}
        seed = int(rng.integers(0, 2**63))
        half = own.astype(np.float16)
        strided = own.astype(np.float64)[:, ::2]
        jobs += [
            lambda x=own, s=seed: ts.sample(x, seed=s, **KW),
            lambda x=own, h=hist, b=bias: ts.probs(
                x, history=h, logit_bias=b, repetition_penalty=1.3, presence_scale=1.2
            ),
            lambda x=own[k % 4], s=seed: ts.sample(x, seed=s, logprobs=True, top_logprobs=5),
            lambda s=seed: ts.sample(shared, seed=s, temperature=0.7),
            lambda: ts.probs(shared, top_k=100, temperature=1.5),
            lambda s=seed: ts.Sampler(seed=[s, s + 1, s + 2], top_p=0.8)(shared[:3]),
            lambda x=half, s=seed: ts.sample(x, seed=s, min_p=0.05),
            lambda x=strided, s=seed: ts.sample(x, seed=s, top_k=3),
        ]
        if torch is not None:
            t = torch.from_numpy(own).to(torch.bfloat16)
            jobs += [
                lambda t=t, s=seed: ts.sample(t, seed=s, **KW),
                lambda t=t: ts.probs(t, temperature=0.5, top_p=0.9),
            ]
    return jobs


@pytest.fixture(scope="module")
def shared() -> np.ndarray:
    a = np.random.default_rng(1).standard_normal((8, 16_000)).astype(np.float32) * 2
    a.flags.writeable = False  # shared read-only input
    return a


def _run_concurrently(work: list[Callable[[], Any]], n_threads: int) -> list[Any]:
    """Runs every job from `n_threads` threads that start together; returns results in job
    order. Each thread walks the job list from a different offset so that different calls
    (and the same call) overlap in time."""
    results: list[Any] = [None] * len(work)
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)
    order = [list(range(t, len(work), n_threads)) for t in range(n_threads)]

    def worker(idx: list[int]) -> None:
        barrier.wait()
        for i in idx:
            try:
                results[i] = work[i]()
            except BaseException as e:  # noqa: BLE001 - report anything, even a panic
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(o,)) for o in order]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


def test_threads_match_serial(shared: np.ndarray) -> None:
    jobs = _jobs(shared, np.random.default_rng(0))
    serial = [job() for job in jobs]
    # Every job three times, so the same call also runs concurrently with itself.
    work = jobs * 3
    for _ in range(2):
        got = _run_concurrently(work, N_THREADS)
        for i, r in enumerate(got):
            assert _equal(r, serial[i % len(jobs)]), f"job {i % len(jobs)} differs"
    assert not shared.flags.writeable


def test_threads_match_serial_while_others_fail(shared: np.ndarray) -> None:
    """Errors raised in some threads leave the other threads' results untouched."""
    jobs = _jobs(shared, np.random.default_rng(2))[:16]
    serial = [job() for job in jobs]
    bad = shared.copy()
    bad[3, 5] = np.nan

    def failing() -> str:
        try:
            ts.sample(bad, seed=0)
        except ValueError as e:
            return str(e)
        return "no error"

    work = [*jobs, *[failing] * 16]
    got = _run_concurrently(work, N_THREADS)
    assert all(_equal(r, s) for r, s in zip(got, serial))
    assert all("row 3" in msg for msg in got[len(jobs) :])


def test_threads_match_serial_while_pool_resizes(shared: np.ndarray) -> None:
    """set_num_threads from one thread while others run batched (rayon) calls: results do
    not depend on the pool (docs/design.md section 4) and nothing breaks."""
    x = np.random.default_rng(3).standard_normal((16, 8192)).astype(np.float32)
    want = ts.sample(x, seed=11, **KW)
    stop = threading.Event()

    def resizer() -> None:
        n = 0
        while not stop.is_set():
            ts.set_num_threads(n % 3)
            n += 1
            time.sleep(0.001)

    th = threading.Thread(target=resizer)
    th.start()
    try:
        with ThreadPoolExecutor(N_THREADS) as ex:
            got = list(ex.map(lambda _: ts.sample(x, seed=11, **KW), range(200)))
    finally:
        stop.set()
        th.join()
        ts.set_num_threads(0)
    for g in got:
        np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("batch", [1, 4])
def test_shared_sampler_gives_each_call_a_distinct_step(batch: int) -> None:
    n_calls = 400
    x = np.zeros((batch, 1000), dtype=np.float32)  # uniform: every step draws differently
    serial = ts.Sampler(seed=1234, top_k=900)
    want = collections.Counter(tuple(np.atleast_1d(serial(x)).tolist()) for _ in range(n_calls))
    shared_sampler = ts.Sampler(seed=1234, top_k=900)
    barrier = threading.Barrier(N_THREADS)

    def call(_: int) -> tuple[int, ...]:
        if _ < N_THREADS:
            barrier.wait()  # the first call of every thread starts at the same time
        return tuple(np.atleast_1d(shared_sampler(x)).tolist())

    with ThreadPoolExecutor(N_THREADS) as ex:
        got = collections.Counter(ex.map(call, range(n_calls)))
    assert shared_sampler.step == n_calls
    assert got == want
    # The steps really differ: most of the 400 results are distinct.
    assert len(want) > n_calls // 2


def _speedup_once(x: np.ndarray, calls: int, work_fn: Callable[[int], Any] | None = None) -> float:
    """Time of 2 * calls calls on one thread / time of calls calls on each of two threads."""

    def work(n: int) -> None:
        for i in range(n):
            if work_fn is None:
                ts.sample(x, seed=i, top_p=0.9)
            else:
                work_fn(i)

    t0 = time.perf_counter()
    work(2 * calls)
    one = time.perf_counter() - t0
    threads = [threading.Thread(target=work, args=(calls,)) for _ in range(2)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    two = time.perf_counter() - t0
    return one / two


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_gil_is_released_during_kernels() -> None:
    """Two threads on two cores: >= 1.3x the throughput of one thread.

    Note: the workload is one 1,048,576-logit row per call (single rows never use rayon, so
    any parallelism comes from the GIL being released). The ideal is 2x; on a quiet 2-core
    machine it measures 1.5-2.1x, so the threshold is 1.3x, reached by any of up to ten
    tries (the best of several). A kernel that kept the GIL would give ~1.0x.
    When other jobs hold a core for the whole measurement no code can show a speed-up: each
    try also times a reference that surely runs in parallel (numpy's ufuncs release the GIL);
    if its median stays below 1.3x the machine has no spare core and the test is skipped as
    unmeasurable; if the reference mostly scales and the kernels never do, the test fails.
    test_python_runs_while_a_kernel_runs below checks the GIL release in a way that does not
    depend on a free core.
    """
    x = np.random.default_rng(4).standard_normal(1 << 20).astype(np.float32)

    def reference(_: int) -> None:
        np.exp(x)  # numpy releases the GIL in the ufunc loop

    _speedup_once(x, 3)  # warm up: page in, thread pool, caches
    pairs: list[tuple[float, float]] = []  # (kernels, numpy reference), measured back to back
    for _ in range(10):
        ours = _speedup_once(x, 12)
        if ours >= 1.3:
            return
        pairs.append((ours, _speedup_once(x, 40, reference)))
    refs = sorted(r for _, r in pairs)
    if refs[len(refs) // 2] < 1.3:
        pytest.skip(f"machine too busy to measure a speed-up: (kernels, numpy) = {pairs}")
    raise AssertionError(
        f"two threads never 1.3x faster than one while numpy's ufuncs mostly were: "
        f"(kernels, numpy) speed-ups = {pairs}"
    )


def test_python_runs_while_a_kernel_runs() -> None:
    """While one thread is inside a ~60 ms kernel, a pure-Python thread keeps running: the
    longest pause of its loop is a small part of the kernel's time. A kernel holding the GIL
    would pause it for the whole call. Load-independent: even on one busy core the OS shares
    time slices (up to ~10 ms on a loaded VM, hence a call many slices long) between the two
    threads."""
    x = np.random.default_rng(5).standard_normal(1 << 24).astype(np.float32)
    ts.sample(x, seed=0, top_p=0.9)  # warm up
    ticks: list[float] = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())

    th = threading.Thread(target=ticker)
    th.start()
    time.sleep(0.02)
    spans = []
    for i in range(5):
        t0 = time.perf_counter()
        ts.sample(x, seed=i, top_p=0.9)
        spans.append((t0, time.perf_counter()))
    stop.set()
    th.join()
    t = np.array(ticks)
    for t0, t1 in spans:
        inside = t[(t >= t0) & (t <= t1)]
        edges = np.concatenate([[t0], inside, [t1]])
        longest = float(np.diff(edges).max())
        assert longest < 0.5 * (t1 - t0), (
            f"the Python thread paused {longest * 1e3:.1f} ms during a "
            f"{(t1 - t0) * 1e3:.1f} ms kernel call: is the GIL held?"
        )
