"""tokensampler: exact, fast next-token sampling with Rust kernels.

>>> import numpy as np, tokensampler as ts
>>> int(ts.sample(np.array([0.0, 5.0, 1.0], dtype=np.float32), temperature=0))
1
"""

from importlib import metadata as _metadata

from ._native import SamplingError, get_num_threads
from .params import SamplingParams
from .sampling import SampleOutput, Sampler, probs, sample, set_num_threads
from .verify import VerifyOutput, verify

try:
    __version__ = _metadata.version("tokensampler")
except _metadata.PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "SampleOutput",
    "Sampler",
    "SamplingError",
    "SamplingParams",
    "VerifyOutput",
    "__version__",
    "get_num_threads",
    "probs",
    "sample",
    "set_num_threads",
    "verify",
]
