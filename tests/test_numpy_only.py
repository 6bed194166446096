"""tokensampler works without torch: numpy in, numpy out (torch is an optional extra).

Runs in a subprocess where ``import torch`` fails (``sys.modules['torch'] = None``), so a
stray top-level ``import torch`` anywhere in the package is caught.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["torch"] = None  # any "import torch" now raises ImportError
    import numpy as np
    import tokensampler as ts

    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((4, 1000)).astype(dtype)
        h = rng.integers(-1, 1000, size=(4, 20))
        kw = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.01,
                  repetition_penalty=1.1, history=h, logit_bias={3: -np.inf})
        ids = ts.sample(x, seed=1, **kw)
        assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.shape == (4,)
        p = ts.probs(x, **kw)
        assert isinstance(p, np.ndarray) and p.dtype == dtype and p.shape == x.shape
        assert np.allclose(p.sum(axis=1), 1.0) and (p[np.arange(4), ids] > 0).all()
        assert (p[:, 3] == 0).all()
        np.testing.assert_array_equal(ts.Sampler(seed=1, **{k: v for k, v in kw.items()
                                                            if k != "history"})(x, history=h), ids)
        one = ts.sample(x[0], seed=2)
        assert np.shape(one) == () and 0 <= int(one) < 1000
    out = ts.sample(x, seed=3, logprobs=True, top_logprobs=2)
    assert out.ids.shape == (4,) and out.top_ids.shape == (4, 2)
    try:
        ts.probs(np.array([[1.0, float("nan")]]))
    except ValueError as e:
        assert "row 0" in str(e)
    else:
        raise AssertionError("NaN accepted")
    assert sys.modules["torch"] is None
    print("OK")
    """
)


def test_numpy_only_without_torch():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")
