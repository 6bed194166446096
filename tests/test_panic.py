"""Panics (issue #6): a Rust panic inside a kernel is a RuntimeError, never an abort, and the
interpreter stays usable.

``tokensampler._native._debug_panic(on_worker)`` panics on purpose inside the same
``catch_unwind`` guard as the kernels, on the calling thread or on a rayon worker. The error
must be an ordinary ``Exception`` (``RuntimeError``, not PyO3's ``PanicException``, a
``BaseException``) with a message that says what happened, and every public call must work
afterwards: in this process, after many panics, from many threads at once, and in a fresh
subprocess whose first native call is the panic.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tokensampler as ts
from tokensampler import _native

X = np.random.default_rng(0).standard_normal((4, 30_000)).astype(np.float32)  # rayon path
X1 = X[0].copy()


def everything_works() -> None:
    """One of each public call, including a batched (rayon) one, with fixed expectations."""
    assert int(ts.sample(np.array([0.0, 3.0, 1.0]), temperature=0)) == 1
    ids = ts.sample(X, seed=5, top_k=50)
    assert ids.shape == (4,)
    np.testing.assert_array_equal(ids, ts.sample(X, seed=5, top_k=50))
    p = ts.probs(X, top_p=0.9)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    s = ts.Sampler(seed=1, temperature=0.7)
    assert s(X1).shape == () and s.step == 1
    with pytest.raises(ValueError, match="row 0"):
        ts.sample(np.array([np.nan, 1.0]))


@pytest.mark.parametrize("on_worker", [False, True])
def test_panic_is_a_clear_runtime_error(on_worker: bool) -> None:
    with pytest.raises(RuntimeError) as info:
        _native._debug_panic(on_worker)
    err = info.value
    assert isinstance(err, Exception)  # `except Exception` catches it
    assert type(err).__name__ != "PanicException"
    msg = str(err)
    assert "internal error in a tokensampler kernel" in msg
    assert "please report" in msg
    assert "deliberate panic" in msg  # the panic's own message is kept
    everything_works()


def test_many_panics_leave_no_trace() -> None:
    for i in range(200):
        with pytest.raises(RuntimeError):
            _native._debug_panic(i % 2 == 0)
        if i % 50 == 0:
            everything_works()
    everything_works()


def test_panic_with_a_custom_pool() -> None:
    """A panic on a worker of a pool made by set_num_threads; the pool keeps working."""
    try:
        ts.set_num_threads(2)
        with pytest.raises(RuntimeError):
            _native._debug_panic(True)
        everything_works()
        ts.set_num_threads(3)
        with pytest.raises(RuntimeError):
            _native._debug_panic(True)
        everything_works()
    finally:
        ts.set_num_threads(0)


def test_panics_in_threads_while_others_sample() -> None:
    want = ts.sample(X, seed=9, top_p=0.8)
    errors: list[BaseException] = []
    panics = [0]
    lock = threading.Lock()

    def panicker(i: int) -> None:
        for _ in range(20):
            try:
                _native._debug_panic(i % 2 == 0)
            except RuntimeError:
                with lock:
                    panics[0] += 1
            except BaseException as e:  # noqa: BLE001 - a PanicException would land here
                errors.append(e)

    def sampler() -> None:
        for _ in range(20):
            try:
                np.testing.assert_array_equal(ts.sample(X, seed=9, top_p=0.8), want)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=panicker, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=sampler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert panics[0] == 80
    everything_works()


@pytest.mark.parametrize("on_worker", [False, True])
def test_panic_in_a_fresh_subprocess(on_worker: bool) -> None:
    """The first native call of a new interpreter panics; the process then works and exits 0
    (no abort, no hang at exit with rayon's threads alive)."""
    code = textwrap.dedent(
        f"""
        import numpy as np
        from tokensampler import _native
        import tokensampler as ts
        try:
            _native._debug_panic({on_worker})
        except RuntimeError as e:
            print("caught:", e)
        else:
            raise SystemExit("no error")
        try:
            _native._debug_panic({not on_worker})
        except Exception as e:
            print("caught again:", type(e).__name__)
        x = np.random.default_rng(0).standard_normal((4, 30000)).astype(np.float32)
        assert ts.sample(x, seed=1).shape == (4,)
        assert ts.Sampler(seed=1)(x[0]).shape == ()
        assert abs(float(ts.probs(x[0]).sum()) - 1) < 1e-5
        print("alive")
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "caught: internal error in a tokensampler kernel" in r.stdout
    assert "caught again: RuntimeError" in r.stdout
    assert r.stdout.rstrip().endswith("alive")
